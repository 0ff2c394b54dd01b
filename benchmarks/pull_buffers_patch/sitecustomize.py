"""Experiment-only socket settings for `benchmarks/pull_buffers.py` (docs/performance.md,
"Pull socket buffers (session 9)"). On PYTHONPATH, Python imports this module at start-up;
each setting applies only when its environment variable is set, so a server started without
them is the tree as it is:

- PULLBUF_SNDBUF: SO_SNDBUF (bytes; the kernel doubles it) on the client's socket of every
  threaded zero-copy send (`server._FileSender`), which ends the kernel's autotuning for it.
- PULLBUF_CHUNK: at most this many bytes per `os.sendfile` call in `_send_until_stalled`.
- PULLBUF_RCVBUF: SO_RCVBUF (bytes) on boto3's connections to the S3 store.
- PULLBUF_AHEAD: `storage.s3.STREAM_AHEAD`, chunks read ahead of the client.
"""

from __future__ import annotations

import os
import socket
from typing import Any

if sndbuf := int(os.environ.get("PULLBUF_SNDBUF", "0")):
    import cangku.server as server

    created = server._FileSender.__init__

    def with_sndbuf(self: Any, transport: Any, file: int) -> None:
        created(self, transport, file)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)

    server._FileSender.__init__ = with_sndbuf  # type: ignore[method-assign]

if chunk := int(os.environ.get("PULLBUF_CHUNK", "0")):
    import cangku.server as server

    whole = server._send_until_stalled

    def until_stalled(out: int, file: int, offset: int, count: int) -> tuple[int, bool]:
        # The server's own loop, asked for at most `chunk` bytes per os.sendfile call.
        sent = 0
        while sent < count:
            wanted = min(chunk, count - sent)
            moved, ended = whole(out, file, offset + sent, wanted)
            sent += moved
            if ended or moved < wanted:  # The file ended, or the socket stalled.
                return sent, ended
        return sent, False

    server._send_until_stalled = until_stalled

if ahead := int(os.environ.get("PULLBUF_AHEAD", "0")):
    import cangku.storage.s3 as s3

    s3.STREAM_AHEAD = ahead

if rcvbuf := int(os.environ.get("PULLBUF_RCVBUF", "0")):
    import cangku.storage.s3 as s3

    made = s3.client_from_settings

    def with_rcvbuf(settings: Any) -> Any:
        client = made(settings)
        # botocore passes these to urllib3 for every new connection (private, experiment only).
        options = client._endpoint.http_session._socket_options
        options.append((socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf))
        return client

    s3.client_from_settings = with_rcvbuf
