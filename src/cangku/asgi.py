"""Names shared by the ASGI server (`server.py`) and the application, free of dependencies so
that the application never imports the server (uvicorn) to learn them."""

from __future__ import annotations

# The ASGI extension for sending a file zero-copy (os.sendfile): offered in
# `scope["extensions"]` by server.py's protocol, used by distribution/blobs.py. Message:
# `{"type": ZERO_COPY_SEND, "file": BinaryIO, "offset": int, "count": int}` (bytes).
ZERO_COPY_SEND = "http.response.zerocopysend"


class ReceivedBody(bytearray):
    """A piece of a request body as the server read it from the socket (server.py, `recv_into`
    straight into it), handed to the application in an `http.request` message; the server
    reuses it only once nobody else holds a reference to it (server.BatchPool). So a consumer
    may keep it (e.g. hash and write it in a worker thread, storage/filesystem.py) without
    copying it first, as it may keep `bytes`."""

    __slots__ = ()
