"""Which repository a /v2 request is for, when the registry mirrors upstreams.

Three ways reach an upstream's namespace `<upstream>/<name>` (docs/proxy.md):
- the prefix path `/v2/docker.io/library/alpine/...`: already the namespaced name, nothing
  to rewrite;
- the `ns` query parameter containerd and podman send to a mirror
  (`/v2/library/alpine/manifests/3?ns=docker.io`; OCI dist-spec "Pulling manifests": a
  registry MAY route by `ns` and SHOULD answer with `OCI-Namespace`);
- neither (dockerd's `registry-mirrors`): a name not pushed locally goes to the `default`
  upstream, `library/` included. A locally pushed repository always wins.

Only reads (GET, HEAD) are routed: a push always names the repository it writes, so a push
of a new local repository never lands in a mirror's namespace.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cangku.config import ProxySettings
from cangku.metadata.browse import repository_id
from cangku.metadata.store import MetadataStore

# The repository-scoped read routes (distribution/routes.py): the name, then the resource.
# Upload sessions (`/blobs/uploads/…`, GET for their status) belong to a push: never routed.
_REPOSITORY_PATH = re.compile(
    r"/v2/(?P<name>.+?)(?P<rest>/(?:manifests|blobs(?!/uploads(?:/|$))|tags|referrers)/.*)"
)

NAMESPACE_HEADER = b"oci-namespace"
# The scope key holding the name the client used, when the path was rewritten: the access
# control accepts tokens for it and names it in challenges (auth/access.py).
REQUESTED_NAME = "cangku.requested_name"
# The keys a rewritten scope changes: never copied back to the request's own scope.
_REWRITTEN = frozenset({"path", "raw_path", REQUESTED_NAME})


class UpstreamRouting:
    """ASGI middleware in front of the distribution API: rewrites the path of a read routed
    to an upstream to `/v2/<upstream>/<name>/...` and, for `ns`, answers `OCI-Namespace`."""

    def __init__(self, app: ASGIApp, proxy: ProxySettings, metadata: MetadataStore) -> None:
        self.app = app
        self.proxy = proxy
        self.metadata = metadata

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        match = _REPOSITORY_PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
            return
        name, rest = match["name"], match["rest"]
        namespace = await self.namespace(name, _ns(scope))
        if namespace is None:
            await self.app(scope, receive, send)
            return
        upstream, answer_header = namespace
        outer = scope
        if not name.startswith(f"{upstream}/"):
            path = f"/v2/{upstream}/{name}{rest}"
            scope = {**scope, "path": path, "raw_path": path.encode(), REQUESTED_NAME: name}
        try:
            await self._call(scope, receive, send, upstream, answer_header)
        finally:
            if scope is not outer:
                # What the routing below records for the layers above (the route's name for
                # the metrics, the user for the access log) lands on the rewritten copy;
                # the requested path stays what the client sent.
                for key, value in scope.items():
                    if key not in _REWRITTEN:
                        outer[key] = value

    async def _call(
        self, scope: Scope, receive: Receive, send: Send, upstream: str, answer_header: bool
    ) -> None:
        if not answer_header:
            await self.app(scope, receive, send)
            return

        async def send_with_namespace(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (NAMESPACE_HEADER, upstream.encode()),
                ]
            await send(message)

        await self.app(scope, receive, send_with_namespace)

    async def namespace(self, name: str, ns: str | None) -> tuple[str, bool] | None:
        """The upstream `name` is routed to and whether to answer `OCI-Namespace`; None to
        serve `name` as it is (a local repository, or a prefix path already namespaced)."""
        if ns is not None and self.proxy.upstream(ns) is not None:
            return ns, True
        # An `ns` this registry does not mirror is ignored (the spec's MAY): the name is
        # looked up as if none had been sent.
        first = name.partition("/")[0]
        if self.proxy.upstream(first) is not None:
            return None
        default = self.proxy.default
        if default is None:
            return None
        # Asked on every such read: remembered until the next commit (metadata/store.py).
        local = await self.metadata.read_cached(
            ("proxy.local", name), lambda connection: repository_id(connection, name)
        )
        if local is not None:
            return None  # Pushed locally: local repositories always win.
        return default.name, False


def _ns(scope: Scope) -> str | None:
    raw: bytes = scope.get("query_string", b"")
    query = raw.decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == "ns":
            return value
    return None
