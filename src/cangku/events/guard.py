"""The SSRF guard of event delivery: an endpoint's host is resolved once, every address it
resolves to must be public (unless `events.allow_private`), and the connection goes to the
address that was checked, never to a second resolution (DNS rebinding: a name that answers a
public address to the check and a loopback one to the connect).

Used when an endpoint is created (events/webhooks.py) and before every attempt
(events/delivery.py).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

# host, port → the addresses it resolves to (as text).
Resolver = Callable[[str, int], Awaitable[list[str]]]


class Refused(Exception):
    """The endpoint's address is not one the registry may send to (the SSRF guard)."""


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses of `host` from the system resolver (getaddrinfo), in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]).split("%")[0] for info in infos]


@dataclass(frozen=True, slots=True)
class Target:
    """Where one attempt connects: `url` with the checked address in place of the name;
    `host` the Host header (the name, with a port that is not the scheme's default);
    `server_name` the name for TLS (SNI and the certificate check), None over plain HTTP."""

    url: httpx.URL
    host: str
    server_name: str | None


async def resolve(url: str, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """Resolve `url`'s host once and check every address it resolves to; the Target pins the
    first. Raises Refused when it cannot be resolved or (unless `allow_private`) when any
    address is loopback, link-local, private, reserved or otherwise not global
    (`ipaddress.is_global`, IANA special-purpose registries)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        # An address in the URL is its own answer (no lookup, nothing to rebind).
        addresses = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await resolver(host, port)
        except OSError as error:
            raise Refused(f"cannot resolve {host[:100]}: {error}") from None
    if not addresses:
        raise Refused(f"{host[:100]} has no address")
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not allow_private and not address.is_global:
            raise Refused(
                f"{host[:100]} resolves to {address}, not a public address "
                "(events.allow_private is off)"
            )
    original = httpx.URL(url)
    return Target(
        url=original.copy_with(host=addresses[0]),
        host=original.netloc.decode("ascii"),
        server_name=host if parts.scheme == "https" else None,
    )


async def check_address(
    url: str, allow_private: bool, resolver: Resolver = system_resolver
) -> None:
    """Raise Refused when `url`'s host resolves to an address the guard refuses (resolve)."""
    if not allow_private:
        await resolve(url, allow_private, resolver)
