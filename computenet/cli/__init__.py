"""The `computenet` command."""
