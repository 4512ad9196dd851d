"""`python -m computenet` is the `computenet` command."""

from computenet.cli.main import main

main()
