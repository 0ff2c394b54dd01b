"""Names shared by the ASGI server (`server.py`) and the application, free of dependencies so
that the application never imports the server (uvicorn) to learn them."""

from __future__ import annotations

from typing import Protocol

# The ASGI extension for sending a file zero-copy (os.sendfile): offered in
# `scope["extensions"]` by server.py's protocol, used by distribution/blobs.py. Message:
# `{"type": ZERO_COPY_SEND, "file": BinaryIO, "offset": int, "count": int}` (bytes).
ZERO_COPY_SEND = "http.response.zerocopysend"

# The ASGI extension for sending a body read from a blocking source by a thread of the
# server's own, which sends each piece to the client's socket itself (no hop through the
# event loop per piece; docs/performance.md, "S3 pulls: sending from the read thread
# (session 9)"). Offered where ZERO_COPY_SEND is. Message:
# `{"type": STREAM_SEND, "source": BlockingSource, "count": int}` (bytes). The server owns
# the source from then on and closes it, sent or not, and ends the response (no body may
# follow it).
STREAM_SEND = "http.response.streamsend"


class BlockingSource(Protocol):
    """Bytes read by blocking calls, e.g. botocore's StreamingBody."""

    def read(self, size: int = -1) -> bytes:
        """At most `size` bytes; b"" at the end. Raises when the source fails (a body shorter
        than its Content-Length: botocore's IncompleteReadError)."""
        ...

    def close(self) -> None: ...


class ReceivedBody(bytearray):
    """A piece of a request body as the server read it from the socket (server.py, `recv_into`
    straight into it), handed to the application in an `http.request` message; the server
    reuses it only once nobody else holds a reference to it (server.BatchPool). So a consumer
    may keep it (e.g. hash and write it in a worker thread, storage/filesystem.py) without
    copying it first, as it may keep `bytes`."""

    __slots__ = ()
