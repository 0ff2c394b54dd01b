"""The pull-through cache (issue 13, docs/proxy.md): requests routed to an upstream's
namespace (routing.py)."""

from __future__ import annotations
