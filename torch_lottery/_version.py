"""The package version: the single source that the package, its files and its build read."""

__all__ = ["__version__"]

__version__ = "0.1.0"
