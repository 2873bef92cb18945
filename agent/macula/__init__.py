"""Macula agent: a lean edge node for a fractal, federated mesh over QUIC."""

__version__ = "0.1.0"
