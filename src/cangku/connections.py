"""Slow or greedy clients: deadlines for request headers and bodies, and a cap on the
connections one address may hold open (issue 12, item 14).

uvicorn bounds only the idle time between requests (`timeout_keep_alive`). Without more, a
client that sends its request line a byte every few seconds (slowloris), or promises a
body and stops sending it, holds a connection, its buffers and an application task for as
long as it likes; a few hundred such connections exhaust the server. These hooks add:

- a **header deadline**: from the connection's start, or a request's first byte, the whole
  header block must arrive within `connections.header_timeout` seconds, else 408 and close
  (nginx's `client_header_timeout`);
- a **body idle timeout**: while the application waits for request body bytes, at most
  `connections.body_idle_timeout` seconds may pass without any, else the connection closes
  and the application sees a disconnect (an upload keeps nothing of the cut-off chunk).
  Time in which *we* stopped reading (flow control, `Expect: 100-continue` not yet
  answered) does not count against the client (nginx's `client_body_timeout`). A body
  answered before it all came (401, 404, 413) is read and dropped for at most
  `connections.header_timeout` seconds from the answer, with pauses no longer than uvicorn's
  keep-alive timeout, then the connection closes (nginx's `lingering_time` and
  `lingering_timeout`);
- a **per-address cap**: an address holding `connections.per_address` connections gets a
  503 with `Retry-After` on the next one, closed at once. Addresses in
  `auth.trusted_proxies` are exempt: every client behind a reverse proxy shares its address.

uvicorn's own keep-alive timeout (`timeout_keep_alive`: a connection idle between requests
closes) is kept, while other requests are under way as a `Deadline` too: uvicorn scheduled a
TimerHandle per response and the next request cancelled it, ~3 µs of a small request's CPU
here (docs/performance.md, "The keep-alive timer (session 10)").

The hooks override uvicorn's httptools protocol callbacks (pinned in pyproject.toml;
tests/api/test_slow_clients.py drives them through a real socket).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("cangku")


def _plain_response(status: str, text: str, *extra: str) -> bytes:
    body = text.encode()
    head = [
        f"HTTP/1.1 {status}",
        "content-type: text/plain; charset=utf-8",
        *extra,
        "connection: close",
        f"content-length: {len(body)}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REQUEST_TIMEOUT = _plain_response("408 Request Timeout", "request headers took too long\n")
TOO_MANY_CONNECTIONS = _plain_response(
    "503 Service Unavailable", "too many connections from your address\n", "retry-after: 1"
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Seconds for the header block and between body bytes; connections per address
    (0: no cap); the networks exempt from the cap (trusted reverse proxies)."""

    header_timeout: float = 30.0
    body_idle_timeout: float = 60.0
    per_address: int = 128
    exempt: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())

    def capped(self, host: str) -> bool:
        if self.per_address <= 0:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return True
        return not any(address in network for network in self.exempt)


class Deadline:
    """A one-shot timer for a deadline that moves on every request: `arm(delay)` and
    disarming (setting `due` to None) only set `due` (loop time, seconds); a TimerHandle is
    scheduled only when none is pending at or before `due`. When that handle fires early
    (the deadline moved on since) it is scheduled again at `due`; `callback` runs once the
    loop time reaches `due`.

    Each request arms the header deadline, disarms it, arms the body deadline and disarms
    it: as TimerHandles that were four heap operations and three handles per request
    (docs/performance.md, "Manifest GET against c4986c2 (session 8)");
    as deadlines, a handle per timeout period per connection."""

    __slots__ = ("_callback", "_handle", "_loop", "_when", "clock", "due")

    # Handles may fire up to the clock's resolution before their time: a deadline this close
    # counts as reached (its timeouts are whole seconds).
    SLACK = 0.001

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self._handle: asyncio.TimerHandle | None = None
        self._when = 0.0  # The pending handle's time.
        self.due: float | None = None
        self.clock = loop_clock(loop)

    def arm(self, delay: float) -> None:
        """Run the callback `delay` seconds from now, unless disarmed or re-armed before."""
        due = self.due = self.clock() + delay
        handle = self._handle
        if handle is None or self._when > due:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(due, self._fire)
            self._when = due

    def close(self) -> None:
        """Disarm and drop the pending handle (the connection is gone)."""
        self.due = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        due = self.due
        if due is None:
            return
        if due - self.clock() > self.SLACK:
            self._handle = self._loop.call_at(due, self._fire)
            self._when = due
            return
        self.due = None
        self._callback()


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """`loop.time`, or for asyncio's own loops the clock it reads (`time.monotonic`, the
    same values) without a Python call around it: the guards read it a few times a request."""
    if isinstance(loop, asyncio.BaseEventLoop) and type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


class LimitedConfig(uvicorn.Config):
    """uvicorn's configuration, carrying the connection limits to each protocol instance."""

    def __init__(self, app: Any, *, connection_limits: ConnectionLimits, **options: Any) -> None:
        super().__init__(app, **options)
        self.connection_limits = connection_limits


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header deadline, body idle timeout and cap."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.limits: ConnectionLimits = getattr(
            self.config, "connection_limits", ConnectionLimits()
        )
        self._header_deadline = Deadline(self.loop, self._header_timed_out)
        self._keep_alive = Deadline(self.loop, self.timeout_keep_alive_handler)
        self._body_deadline = Deadline(self.loop, self._body_timed_out)
        self._clock = self._header_deadline.clock
        self._awaiting_body = False
        self._last_read_at = self._clock()
        # While the rest of a body answered early is dropped: since when, and until when.
        self._discard_started = self._discard_until = 0.0
        host = self.client[0] if self.client else ""
        if self.limits.capped(host):
            # `connections` already holds this one.
            held = sum(
                1
                for other in self.connections
                if isinstance(other, HttpToolsProtocol) and other.client and other.client[0] == host
            )
            if held > self.limits.per_address:
                log.warning("refused a connection from %s: it holds %d already", host, held - 1)
                transport.write(TOO_MANY_CONNECTIONS)
                transport.close()
                return
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request under way is not idle: the keep-alive may have been armed by the end of
        # an answered body that came in the same read as this request (on_message_complete).
        self._keep_alive.due = None
        if self._header_deadline.due is None:  # Not armed.
            self._header_deadline.arm(self.limits.header_timeout)

    def on_headers_complete(self) -> None:
        self._header_deadline.due = None  # Disarmed.
        super().on_headers_complete()
        # httptools calls on_message_complete for a request without a body before any
        # body timer could matter; for one with a body, wait for its bytes from here.
        self._awaiting_body = True
        self._last_read_at = self._clock()
        self._body_deadline.arm(self.limits.body_idle_timeout)

    def data_received(self, data: bytes) -> None:
        # Any bytes from the client count as progress of a body (chunk framing too): a time
        # stamp per read, where re-arming a timer per body piece cost a TimerHandle each.
        self._last_read_at = self._clock()
        super().data_received(data)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_body = False
        self._body_deadline.due = None  # Disarmed.
        cycle = self.cycle
        if (
            cycle is not None
            and cycle.response_complete
            and not self.pipeline
            and self._keep_alive.due is None
            and not self.transport.is_closing()
        ):
            # The end of a body answered before it came (dropped meanwhile): the connection
            # is idle from here, as after a response; its bytes disarmed the keep-alive.
            self._keep_alive.arm(self.timeout_keep_alive)

    def on_response_complete(self) -> None:
        # uvicorn 0.54's, with the keep-alive timeout armed as a Deadline, not a TimerHandle
        # per response, while other requests are under way. A request alone arms uvicorn's
        # TimerHandle as before: with the deadline there too, GETs on one keep-alive
        # connection were 3-12 % fewer per second (docs/performance.md, "The keep-alive
        # timer (session 10)"), as when session 9 joined a lone request's head and body:
        # on this VM, reaching the event loop's wait a few µs sooner after an answer costs.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        self.flow.resume_reading()
        if self.pipeline:  # The next pipelined request, waiting for this answer.
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif len(self.tasks) > 1:
            self._keep_alive.arm(self.timeout_keep_alive)
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        if self._awaiting_body:
            # Answered before the body was all there (401, 404, 413): the rest is read and
            # dropped so that the connection can serve a next request, but for no longer than
            # that request's headers may take, nor with pauses longer than the keep-alive
            # timeout (nginx's lingering_time and lingering_timeout); else any byte now and
            # then would hold the connection open for good (uvicorn re-arms no timer).
            now = self.loop.time()
            self._discard_started = now
            self._discard_until = now + self.limits.header_timeout
            self._arm_body_timer(min(self.timeout_keep_alive, self.limits.header_timeout))

    # -- timers ----------------------------------------------------------------------------
    def _unset_keepalive_if_required(self) -> None:
        # uvicorn's hook, called for every read and when the connection is lost: either way
        # of arming the keep-alive (on_response_complete) is undone.
        self._keep_alive.due = None
        # uvicorn's own (a call less: this runs for every read).
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None

    def _arm_header_timer(self) -> None:
        self._header_deadline.arm(self.limits.header_timeout)

    def _header_timed_out(self) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request's headers while we still answer the one before (a long
            # download): its deadline starts when we are ready for it, not before.
            self._arm_header_timer()
            return
        self.transport.write(REQUEST_TIMEOUT)  # Nothing of ours is being sent: say why.
        self.transport.close()

    def _arm_body_timer(self, delay: float | None = None) -> None:
        self._body_deadline.arm(self.limits.body_idle_timeout if delay is None else delay)

    def _body_timed_out(self) -> None:
        if not self._awaiting_body or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None:
            return
        if cycle.response_complete:
            # The rest of a body answered without it (on_response_complete): still coming?
            now = self.loop.time()
            idle_left = max(self._last_read_at, self._discard_started) + self.timeout_keep_alive
            left = min(idle_left, self._discard_until) - now
            if left > 0:
                self._arm_body_timer(left)
                return
            log.info(
                "closed a connection from %s: the rest of an answered request body did not "
                "come in time",
                self.client[0] if self.client else "?",
            )
            self.transport.close()
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            # We are not reading (the application is busy with what it has, or has not asked
            # for the body yet): the client is not the slow one.
            self._last_read_at = self.loop.time()
            self._arm_body_timer()
            return
        idle = self.loop.time() - self._last_read_at
        if idle < self.limits.body_idle_timeout:
            # Bytes came since the timer was set: wait out the rest from the last of them.
            self._arm_body_timer(self.limits.body_idle_timeout - idle)
            return
        log.warning(
            "closed a connection from %s: no request body bytes for %.0f s",
            self.client[0] if self.client else "?",
            self.limits.body_idle_timeout,
        )
        self.transport.close()

    def _cancel_timers(self) -> None:
        for deadline in (
            getattr(self, "_header_deadline", None),
            getattr(self, "_body_deadline", None),
            getattr(self, "_keep_alive", None),
        ):
            if deadline is not None:
                deadline.close()
        # uvicorn's keep-alive TimerHandle (a request alone, on_response_complete): uvicorn
        # cancels it only on a clean close, and pending it keeps the protocol alive.
        HttpToolsProtocol._unset_keepalive_if_required(self)
