"""ComputeNet: one control plane and one OpenAI-compatible gateway over a fleet of LLM compute."""

__version__ = "0.1.0"
