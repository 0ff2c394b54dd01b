"""`python -m cangku.healthcheck`: the container's HEALTHCHECK, exit 0 when `/readyz` says ok.

It reads the settings as `cangku serve` does (the file `$CANGKU_CONFIG_FILE`, default
/etc/cangku/config.yml when present, then CANGKU_*), so it asks the port the server listens
on. A server listening on every address is asked on loopback. Exit 1: not ready or no answer.
"""

from __future__ import annotations

import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path

from cangku.config import config_file_from_environment, load_settings

DEFAULT_CONFIG = Path("/etc/cangku/config.yml")
TIMEOUT = 4.0  # seconds; the image's HEALTHCHECK allows 5


def readiness_url() -> str:
    settings = load_settings(config_file_from_environment(DEFAULT_CONFIG))
    host = settings.host
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{host}:{settings.port}/readyz"


def main() -> int:
    url = readiness_url()
    # The certificate names the public host, not loopback: only the answer matters here.
    context = ssl._create_unverified_context() if url.startswith("https") else None
    # Loopback: never through an HTTP proxy named in the environment.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(url, timeout=TIMEOUT) as response:
            status = int(response.status)
    except urllib.error.HTTPError as error:
        print(f"{url}: {error.code} {error.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1
    return 0 if status == 200 else 1


if __name__ == "__main__":
    sys.exit(main())
