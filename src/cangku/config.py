"""One typed settings object, built once from defaults < YAML file < CANGKU_* env < CLI flags.

Environment variables use `__` for nesting: `CANGKU_STORAGE__FSYNC=true`,
`CANGKU_AUTH__OPEN=true`. docs/configuration.md lists every option.

This module is the only one that reads the environment: `Settings` (CANGKU_*),
`config_file_from_environment` (CANGKU_CONFIG_FILE, which names the file the settings come
from) and `tracing_environment` (OpenTelemetry's own OTEL_* variables).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from cangku.content.names import REPOSITORY_NAME
from cangku.content.units import format_duration, parse_duration, parse_size


class S3Settings(BaseModel):
    """An S3-compatible object store for blobs (docs/scale-out.md)."""

    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=3, max_length=63)
    # Keys start with this ("cangku/"); "" for the whole bucket.
    prefix: str = ""
    # Omit for AWS; e.g. http://127.0.0.1:7480 for Ceph RGW.
    endpoint: str | None = None
    # None: the standard AWS environment / config files decide.
    region: str | None = None
    # Path-style URLs (endpoint/bucket/key), for stores without a DNS name per bucket.
    path_style: bool = False
    # Both or neither; neither: the standard AWS environment / config files.
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    # Blob GETs answer 307 to a short-lived pre-signed URL instead of streaming the bytes.
    redirect: bool = False

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        if value.startswith("/") or "//" in value or any(ord(c) < 32 for c in value):
            raise ValueError("storage.s3.prefix must be relative, like 'cangku/'")
        return value if value == "" or value.endswith("/") else value + "/"

    @field_validator("endpoint")
    @classmethod
    def _valid_endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("storage.s3.endpoint must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _key_pair(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("storage.s3.access_key_id and secret_access_key go together")
        return self


class StorageSettings(BaseModel):
    # Where blob bytes live: the data directory, or an S3-compatible object store.
    driver: Literal["filesystem", "s3"] = "filesystem"
    # Flush blob bytes to disk before recording them (power-loss safety; costs push speed).
    fsync: bool = False
    s3: S3Settings | None = None

    @model_validator(mode="after")
    def _s3_configured(self) -> StorageSettings:
        if self.driver == "s3" and self.s3 is None:
            raise ValueError("storage.driver s3 needs storage.s3 (at least its bucket)")
        return self


class TagSettings(BaseModel):
    # Server defaults; namespaces and repositories override them (`cangku repo policy`).
    floating: bool = True
    immutable_versions: bool = False


# Seconds, written in the configuration as "1h", "30m", "24h" or "0" (or a number of seconds).
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

# Bytes, written as "200GiB", "500MB" or a number of bytes.
Size = Annotated[int, BeforeValidator(parse_size)]


class GcSettings(BaseModel):
    """Online garbage collection (docs/garbage-collection.md)."""

    # How often the server collects; 0 turns the schedule off (`cangku gc` still works).
    interval: Duration = 3600.0
    # Unreferenced blobs (and untagged manifests) younger than this are never collected.
    grace: Duration = 3600.0
    # "keep", or "delete-after DURATION": untagged, unreferenced manifests are deleted once
    # they have been so for DURATION.
    untagged: str = "keep"

    @field_validator("untagged")
    @classmethod
    def _valid_untagged(cls, value: str) -> str:
        parse_untagged_policy(value)
        return value

    @property
    def delete_untagged_after(self) -> float | None:
        """None to keep untagged manifests, else the seconds after which they go."""
        return parse_untagged_policy(self.untagged)


def parse_untagged_policy(value: str) -> float | None:
    words = value.split()
    if words == ["keep"]:
        return None
    if len(words) == 2 and words[0] == "delete-after":
        return parse_duration(words[1])
    raise ValueError(f"gc.untagged must be 'keep' or 'delete-after DURATION', not {value!r}")


class UploadSettings(BaseModel):
    # Upload sessions without activity for this long are purged by garbage collection.
    expire: Duration = 86400.0
    # A mount without `from` links the blob from a repository the caller may pull, if any
    # (OCI dist-spec "Mounting a blob from another repository", automatic content discovery).
    automatic_mount: bool = False
    # Upload sessions one user (or, without one, one address) may keep open at once.
    max_open_per_owner: int = Field(default=64, ge=1)


class ConnectionSettings(BaseModel):
    """Slow or greedy clients (cangku/connections.py)."""

    # The whole request header block must arrive within this long.
    header_timeout: Duration = Field(default=30.0, gt=0)
    # At most this long without a byte of a request body the application waits for.
    body_idle_timeout: Duration = Field(default=60.0, gt=0)
    # Connections one address may hold open at once (0: no cap; trusted proxies are exempt).
    per_address: int = Field(default=128, ge=0)


class AuthSettings(BaseModel):
    # No authentication at all: only for trusted networks.
    open: bool = False
    # The token service's name: the `service` of challenges and the audience of tokens.
    service: str = "cangku"
    token_lifetime_seconds: float = Field(default=300.0, gt=0, le=86400)
    # PEM file of the EC P-256 token signing key (default: DATA/token-signing-key.pem).
    token_key: Path | None = None
    # Whether a repository without its own setting may be pulled by anyone.
    public_by_default: bool = False
    # Proxies whose X-Forwarded-Proto/Host are believed (addresses or networks).
    trusted_proxies: list[str] = Field(default_factory=list)

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)
        return value


class MetricsSettings(BaseModel):
    """Prometheus metrics at `/metrics` (docs/operations.md)."""

    enabled: bool = True
    # HOST:PORT of a listener of its own for /metrics (then not on the main one); None: the
    # main listener serves it.
    listen: str | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str | None) -> str | None:
        if value is not None:
            split_listen(value)
        return value


class UpstreamSettings(BaseModel):
    """One registry the pull-through cache mirrors (docs/proxy.md, issue 13)."""

    model_config = ConfigDict(extra="forbid")

    # The namespace prefix (`/v2/docker.io/library/alpine/...`) and the `ns` query value
    # (OCI dist-spec "Pulling manifests", `ns`) this upstream answers to: one name component.
    name: str
    # Where the upstream's /v2 API is: http or https, no path, query or credentials.
    url: str
    # Names neither prefixed nor sent with `ns` (dockerd's `registry-mirrors`) and not
    # pushed locally go to this upstream; at most one upstream is the default.
    default: bool = False
    # Basic credentials for the upstream's token flow; the password is read from
    # `password_file` (a secret mounted in a file) or given as `password` (the environment).
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    # A tag is checked upstream (manifest HEAD) at most this often.
    revalidate: Duration = Field(default=300.0, ge=0)
    # Who may pull through this upstream when its repository has no visibility of its own
    # (`cangku repo visibility`): everyone (True), or only signed-in users (False).
    public: bool = True

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        # One component of the repository-name grammar: "docker.io", "ghcr.io", "quay.io".
        if "/" in value or not REPOSITORY_NAME.fullmatch(value):
            raise ValueError(f"upstream name {value!r} is not one repository-name component")
        return value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        host = rest.rstrip("/")
        if scheme not in ("http", "https") or not sep or not host:
            raise ValueError(f"upstream url {value!r} must be http(s)://host[:port]")
        if any(char in host for char in "/?#@ "):
            raise ValueError(f"upstream url {value!r}: no path, query or credentials")
        return f"{scheme}://{host}"

    @model_validator(mode="after")
    def _one_password(self) -> UpstreamSettings:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and not self.username:
            raise ValueError("a password needs a username")
        return self

    def read_password(self) -> str | None:
        """The upstream password (None without one), read from `password_file` each time so
        a rotated secret is picked up. OSError when the file cannot be read."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        return self.password.get_secret_value() if self.password is not None else None


class ProxySettings(BaseModel):
    """The pull-through cache (docs/proxy.md). No upstreams: no cache."""

    model_config = ConfigDict(extra="forbid")

    upstreams: list[UpstreamSettings] = Field(default_factory=list)
    # Garbage collection evicts the least recently pulled cached content until what only
    # mirrors hold fits in this many bytes (proxy/eviction.py); None: no limit.
    max_size: Size | None = Field(default=None, ge=0)
    # Garbage collection evicts cached content not pulled for this long; None: never.
    evict_after: Duration | None = Field(default=None, gt=0)

    @field_validator("upstreams")
    @classmethod
    def _distinct(cls, value: list[UpstreamSettings]) -> list[UpstreamSettings]:
        names = [upstream.name for upstream in value]
        if len(set(names)) != len(names):
            raise ValueError("two upstreams have the same name")
        if sum(upstream.default for upstream in value) > 1:
            raise ValueError("at most one upstream is the default")
        return value

    def upstream(self, name: str) -> UpstreamSettings | None:
        return next((upstream for upstream in self.upstreams if upstream.name == name), None)

    @property
    def default(self) -> UpstreamSettings | None:
        return next((upstream for upstream in self.upstreams if upstream.default), None)


class EventEndpoint(BaseModel):
    """A receiver of events (docs/events.md): every event, or those of `types` and, for
    events about tags, those whose tag matches one of the `tags` patterns (fnmatch)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    # Standard Webhooks secret: "whsec_" and the base64 of 24 to 64 random bytes.
    secret: SecretStr
    types: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    # "cloudevents" (CloudEvents 1.0 JSON), or "distribution": Distribution's notification
    # envelope for consumers of registry:2 (events/distribution.py).
    format: Literal["cloudevents", "distribution"] = "cloudevents"

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"events endpoint url must be http(s)://HOST/…, not {value[:200]!r}")
        if parts.username is not None or parts.password is not None:
            raise ValueError("events endpoint url must not carry credentials")
        return value

    @field_validator("secret")
    @classmethod
    def _valid_secret(cls, value: SecretStr) -> SecretStr:
        from cangku.events.signing import secret_key

        secret_key(value.get_secret_value())
        return value

    @field_validator("types")
    @classmethod
    def _valid_types(cls, value: list[str]) -> list[str]:
        from cangku.events.records import TYPES

        unknown = sorted(set(value) - set(TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown}; known: {list(TYPES)}")
        return value


class EventSettings(BaseModel):
    """Event delivery to webhooks (docs/events.md)."""

    endpoints: list[EventEndpoint] = Field(default_factory=list)
    # Deliver to endpoints on loopback, link-local or private addresses (SSRF guard).
    allow_private: bool = False
    # One attempt's limit: connect, send and read the reply.
    timeout: Duration = Field(default=5.0, gt=0, le=60)
    # Retries back off from 1 s, doubling up to an hour; an event this old is given up.
    max_age: Duration = Field(default=86400.0, gt=0)
    # Events (and their deliveries) older than this, delivered or given up, are pruned from
    # the outbox: the delivery history reaches back this far.
    keep: Duration = Field(default=7 * 86400.0, gt=0)
    # Record `io.cangku.pulled` events: one per repository and manifest digest per pull
    # statistics flush (10 s), with the count; sent only to endpoints naming the type.
    pulled: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CANGKU_", env_nested_delimiter="__", extra="forbid"
    )

    listen: str = "127.0.0.1:5000"
    data: Path = Path("data")
    # Defaults to the SQLite file in the data directory.
    database_url: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # "text": one line per record; "json": one JSON object per line with the same fields.
    log_format: Literal["text", "json"] = "text"
    # On SIGTERM: stop accepting, let running requests finish for this long, then exit.
    shutdown_timeout: Duration = Field(default=30.0, ge=0)
    # HTTPS: both or neither.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    storage: StorageSettings = Field(default_factory=StorageSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    tags: TagSettings = Field(default_factory=TagSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    uploads: UploadSettings = Field(default_factory=UploadSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    connections: ConnectionSettings = Field(default_factory=ConnectionSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    events: EventSettings = Field(default_factory=EventSettings)
    # The password of the `admin` account created on the first start (CANGKU_ADMIN_PASSWORD);
    # None or empty: a random one, written to DATA/initial-admin-password.
    admin_password: SecretStr | None = None

    @field_validator("listen")
    @classmethod
    def _valid_listen(cls, value: str) -> str:
        split_listen(value)
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together")
        return self

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]

    def listens_on_loopback(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def config_file_from_environment(default: Path) -> Path | None:
    """The YAML file named by CANGKU_CONFIG_FILE (else `default`), if it exists; None if not.
    Read before the settings, since it says where they come from (the image's entrypoint and
    healthcheck use it)."""
    path = Path(os.environ.get("CANGKU_CONFIG_FILE") or default)
    return path if path.is_file() else None


# The OpenTelemetry SDK's environment variables that cangku's tracing set-up reads
# (cangku.tracing.configure_tracing); they keep OpenTelemetry's names, not CANGKU_*.
OTEL_PREFIX = "OTEL_"


def tracing_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The OTEL_* variables of `environ` (default: the process environment), name → value."""
    source = os.environ if environ is None else environ
    return {name: value for name, value in source.items() if name.startswith(OTEL_PREFIX)}


def split_listen(value: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT`."""
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"listen must be HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


class _FileSource(PydanticBaseSettingsSource):
    """Values from the YAML configuration file, below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self.values = values

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return self.values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return self.values


def load_settings(
    config_file: Path | None = None, *, environment: bool = True, **overrides: Any
) -> Settings:
    """Build the settings; `overrides` are CLI flags (None means "not given").

    `environment=False` ignores the `CANGKU_*` variables: for a second registry's file (the
    target of `migrate-storage`) while the variables describe the first.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        loaded = yaml.safe_load(config_file.read_text())
        if loaded is not None and not isinstance(loaded, dict):
            raise ValueError(f"{config_file} must hold a YAML mapping")
        file_values = loaded or {}

    class _Settings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            if not environment:
                return (init_settings, _FileSource(settings_cls, file_values))
            return (init_settings, env_settings, _FileSource(settings_cls, file_values))

    given = {key: value for key, value in overrides.items() if value is not None}
    return _Settings(**given)
