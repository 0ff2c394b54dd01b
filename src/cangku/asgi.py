"""Names shared by the ASGI server (`server.py`) and the application, free of dependencies so
that the application never imports the server (uvicorn) to learn them."""

from __future__ import annotations

# The ASGI extension for sending a file zero-copy (os.sendfile): offered in
# `scope["extensions"]` by server.py's protocol, used by distribution/blobs.py. Message:
# `{"type": ZERO_COPY_SEND, "file": BinaryIO, "offset": int, "count": int}` (bytes).
ZERO_COPY_SEND = "http.response.zerocopysend"
