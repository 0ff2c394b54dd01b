"""The small JSON API (/api/v1/...) that the UI and scripts use."""

from __future__ import annotations

from starlette.routing import BaseRoute

from cangku.api import descriptions, events, repositories, usage, usage_history
from cangku.auth.access import AccessControl
from cangku.config import EventSettings
from cangku.registry import Registry


def api_routes(
    registry: Registry, access: AccessControl | None, events_settings: EventSettings | None = None
) -> list[BaseRoute]:
    """`access` None is the no-authentication mode."""
    return (
        repositories.routes(registry, access)
        + usage.routes(registry, access)
        + descriptions.routes(registry, access)  # issue 17
        + usage_history.routes(registry, access)  # issue 17
        + events.routes(registry, access, events_settings or EventSettings())  # issue 16
    )
