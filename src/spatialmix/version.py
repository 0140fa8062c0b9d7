"""The version of spatialmix (also what pyproject.toml reads)."""

__version__ = "0.1.0"
"""The version of spatialmix."""
