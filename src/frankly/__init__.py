"""Frankly: a support inbox where a disclosed assistant drafts and a person sends every message."""

__version__ = "0.1.0"
