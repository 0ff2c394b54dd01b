"""The small JSON API (/api/v1/...) that the UI and scripts use."""

from __future__ import annotations

from starlette.routing import BaseRoute

from cangku.api import usage
from cangku.registry import Registry


def api_routes(registry: Registry) -> list[BaseRoute]:
    return usage.routes(registry)
