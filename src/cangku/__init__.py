"""Cangku: a self-hosted Docker/OCI container registry."""

__version__ = "0.1.0"
