"""Kluis: end-to-end encrypted messaging that survives a seizure of its server."""

__version__ = "0.1.0"
