"""evalkit's version (one place; the package and every manifest read it)."""

__version__ = "0.1.0"
