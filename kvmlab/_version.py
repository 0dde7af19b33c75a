"""kvmlab's version (a leaf: run provenance records it without importing the package)."""

__version__ = "0.1.0"
