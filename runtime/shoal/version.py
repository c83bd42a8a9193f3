"""Shoal's version: a leaf module, so everything below the package face can import it."""

__version__ = "0.1.0"
