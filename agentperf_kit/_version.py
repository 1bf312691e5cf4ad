"""The toolkit's version (one place; read by pyproject and recorded in every result)."""

__version__ = "0.3.0"
