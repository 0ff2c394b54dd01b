"""`cangku serve`: run the registry server."""

from __future__ import annotations

import contextlib
import sys

from cangku import __version__
from cangku.cli.common import log
from cangku.config import Settings


def serve_forever(settings: Settings) -> int:
    import uvicorn

    from cangku.app import create_app
    from cangku.config import tracing_environment
    from cangku.observability import configure_logging
    from cangku.server import server_config
    from cangku.tracing import configure_tracing

    configure_logging(settings)
    if settings.auth.open and not settings.listens_on_loopback():
        log.warning(
            "!!! cangku listens on %s WITHOUT AUTHENTICATION (--open): anyone who can reach it "
            "may push, pull and delete. Use it only on a trusted network. !!!",
            settings.listen,
        )
    try:
        tracing = configure_tracing(tracing_environment())
    except ValueError as error:
        print(f"cangku: invalid configuration: {error}", file=sys.stderr)
        return 2
    from cangku.metadata.store import SchemaMismatch

    try:
        app = create_app(settings, tracing=tracing)
    except SchemaMismatch as error:
        print(f"cangku: {error}", file=sys.stderr)
        return 2
    scheme = "https" if settings.tls_cert else "http"
    log.info(
        "cangku %s serving on %s://%s with data in %s%s",
        __version__,
        scheme,
        settings.listen,
        settings.data,
        " (no authentication)" if settings.auth.open else "",
    )
    server = uvicorn.Server(server_config(app, settings))
    # Ctrl-C: uvicorn shuts down gracefully, then re-raises the signal; nothing more to do.
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    # 3, as uvicorn.run says it: the application's startup failed. (A port already in use
    # exits with 3 from inside uvicorn.)
    return 0 if server.started else 3
