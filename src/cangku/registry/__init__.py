"""Use cases: what a registry does. Transactions live here; no HTTP types."""

from cangku.registry.service import Registry

__all__ = ["Registry"]
