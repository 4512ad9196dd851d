"""`python -m computenet.engines.sim --model NAME --port N`: run one simulated replica."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
