"""Command-line entry points and developer tooling for the Python Kaito operator."""

__version__ = "0.1.0"
