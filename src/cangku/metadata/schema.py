"""The metadata tables. Alembic migrations in `migrations/versions/` create and evolve them.

Times are Unix seconds (float) so SQLite and PostgreSQL compare them the same way.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

repositories = Table(
    "repositories",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
    # Anyone (also anonymous) may pull a public repository; NULL: the server's default.
    Column("public", Boolean),
)

# Every verified blob, once, whatever the number of repositories that hold it.
blobs = Table(
    "blobs",
    metadata,
    Column("digest", String(200), primary_key=True),
    Column("size", BigInteger, nullable=False),
    # Refreshed whenever the blob is uploaded or mounted again: the start of its GC grace period.
    Column("created_at", Float, nullable=False),
    Index("ix_blobs_created_at", "created_at"),
)

# Which repository may serve which blob: the result of an upload or a mount.
repository_blobs = Table(
    "repository_blobs",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(200), ForeignKey("blobs.digest"), primary_key=True),
    Column("created_at", Float, nullable=False),
    Index("ix_repository_blobs_digest", "digest"),
)

manifests = Table(
    "manifests",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("digest", String(200), primary_key=True),
    Column("media_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    # The exact bytes as pushed (at most 4 MiB), so the digest is the one the client computed.
    Column("content", LargeBinary, nullable=False),
    Column("artifact_type", String(255)),
    Column("subject_digest", String(200)),
    Column("annotations", String),
    Column("created_at", Float, nullable=False),
    # When garbage collection first found it neither tagged nor needed by a kept manifest;
    # NULL while it is kept. The `gc.untagged: delete-after` policy counts from here.
    Column("untagged_since", Float),
    Index("ix_manifests_subject", "repository_id", "subject_digest"),
    # A repository's manifests newest first (the newest tagged one: registry/descriptions.py).
    Index("ix_manifests_created", "repository_id", "created_at"),
)

# What a manifest points at: its config and layers (kind "blob"), an index's children
# (kind "manifest"). Used to refuse deleting what is needed, and by garbage collection.
manifest_references = Table(
    "manifest_references",
    metadata,
    Column("repository_id", Integer, primary_key=True),
    Column("manifest_digest", String(200), primary_key=True),
    Column("kind", String(16), primary_key=True),
    Column("target_digest", String(200), primary_key=True),
    Index("ix_manifest_references_target", "target_digest"),
)

tags = Table(
    "tags",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("name", String(128), primary_key=True),
    Column("manifest_digest", String(200), nullable=False),
    Column("updated_at", Float, nullable=False),
    # Version tags only (content/versions.py), NULL for other tags, so that the newest
    # release of a line and a page of the version tree are index seeks, not a walk over
    # every tag: the `v` prefix or "", the SemVer precedence key, and that key again for
    # releases only (pre-releases never move floating tags).
    Column("version_prefix", String(1)),
    Column("version_key", LargeBinary),
    Column("release_key", LargeBinary),
    # True for a floating tag a client pushed over the policy's choice: the policy leaves it
    # alone until it is released (docs/tags.md, "Mirroring and syncing"). NULL: false.
    Column("client_managed", Boolean),
    # With the name, "the first N tags on a manifest" stops after N entries.
    Index("ix_tags_manifest", "repository_id", "manifest_digest", "name"),
    # Version tags only (migration 0017): other tags are not written to them, and every
    # query that reads them bounds the key, which implies it is not NULL.
    Index(
        "ix_tags_release",
        "repository_id",
        "version_prefix",
        "release_key",
        "updated_at",
        "name",
        postgresql_where=text("release_key IS NOT NULL"),
        sqlite_where=text("release_key IS NOT NULL"),
    ),
    Index(
        "ix_tags_version",
        "repository_id",
        "version_key",
        "name",
        postgresql_where=text("version_key IS NOT NULL"),
        sqlite_where=text("version_key IS NOT NULL"),
    ),
)

# Every move of a tag: by a push, a delete, or the floating-tag policy. new_digest is NULL
# when the tag was removed. Kept when the repository's tags go, for the audit trail.
tag_history = Table(
    "tag_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("tag", String(128), nullable=False),
    Column("old_digest", String(200)),
    Column("new_digest", String(200)),
    Column("changed_at", Float, nullable=False),
    Column("actor", String(255)),
    Column("reason", String(500), nullable=False),
    Index("ix_tag_history_tag", "repository_id", "tag", "id"),
)

# Tag policies of a repository or a whole namespace; NULL means "inherit" (namespace, then
# the server's defaults).
tag_policies = Table(
    "tag_policies",
    metadata,
    Column("scope", String(16), primary_key=True),  # "repository" or "namespace"
    Column("name", String(255), primary_key=True),
    Column("floating", Boolean),
    Column("immutable_versions", Boolean),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(100), nullable=False),
    Column("is_admin", Boolean, nullable=False, default=False),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    # Tokens issued before this (refresh tokens, cached credentials) stop working.
    Column("credentials_changed_at", Float, nullable=False),
)

organizations = Table(
    "organizations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("created_at", Float, nullable=False),
)

organization_members = Table(
    "organization_members",
    metadata,
    Column(
        "organization_id",
        Integer,
        ForeignKey("organizations.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("role", String(16), nullable=False),  # owner, writer or reader
)

# Personal access tokens: shown once; only a hash of the secret is kept.
access_tokens = Table(
    "access_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(64), nullable=False),
    Column("secret_hash", String(64), nullable=False),
    Column("scope", String(8), nullable=False),  # read or write
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float),
    Column("revoked_at", Float),
)

# Signed-in browser sessions: the cookie names one, and signing out deletes it, so a copy of
# the cookie stops working too. Only a hash of the cookie's session id is kept.
web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
)

# Failed logins (auth/ratelimit.py): one row per failure within the window, `key` the sha256
# of what was limited (an account at an address, or an address), never the name itself.
login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False),
    Column("failed_at", Float, nullable=False),
    Index("ix_login_failures_key", "key", "failed_at"),
    Index("ix_login_failures_failed_at", "failed_at"),
)

# Storage quotas per namespace (the first component of repository names): pushes that would
# take the namespace's deduplicated usage above `limit_bytes` are refused.
quotas = Table(
    "quotas",
    metadata,
    Column("namespace", String(255), primary_key=True),
    Column("limit_bytes", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Open upload sessions (their bytes live in storage, `registry/sessions.py`): who opened each
# and where, so that the sessions one owner keeps open are bounded and a namespace's quota
# counts the bytes they hold. `owner` is the user's name, or `address:<ip>` without one.
upload_sessions = Table(
    "upload_sessions",
    metadata,
    Column("session", String(64), primary_key=True),
    Column("repository", String(255), nullable=False),
    Column("namespace", String(255), nullable=False),
    Column("owner", String(255)),
    Column("created_at", Float, nullable=False),
    Index("ix_upload_sessions_owner", "owner"),
    Index("ix_upload_sessions_namespace", "namespace"),
)

# Who may write to an upload session right now (issue 15, registry/upload_leases.py): a row
# per session being appended to, finished or cancelled; a lease past `expires_at` (seconds
# since the epoch) was left by a request that died and may be taken over.
upload_leases = Table(
    "upload_leases",
    metadata,
    Column("session", String(64), primary_key=True),
    Column("holder", String(32), nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_upload_leases_expires", "expires_at"),
)

# What a repository is, set by its owners (issue 17): a one-line description and a Markdown
# overview. NULL: not set, the pages fall back to the newest image's annotations and labels.
repository_descriptions = Table(
    "repository_descriptions",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("description", String(100)),
    Column("overview", Text),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(255)),
)

# Pulls (manifest GETs by clients) counted in memory and added here in batches
# (registry/pulls.py). kind "tag": pulls by that tag; kind "digest": every GET that served
# that manifest; kind "total" (reference ""): the repository's pulls.
pull_statistics = Table(
    "pull_statistics",
    metadata,
    Column(
        "repository_id",
        Integer,
        ForeignKey("repositories.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("kind", String(8), primary_key=True),
    Column("reference", String(200), primary_key=True),
    Column("pulls", BigInteger, nullable=False),
    Column("last_pulled_at", Float, nullable=False),
)

# Retention policies (registry/retention.py): scope "repository", "namespace" or "server"
# (name ""); `rules` is the policy as JSON. The most specific one applies.
retention_policies = Table(
    "retention_policies",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("rules", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Usage over time (registry/usage_history.py): per UTC day ("YYYY-MM-DD") and namespace, the
# deduplicated bytes stored at the day's last snapshot (NULL: none taken), the manifests
# pushed and the pulls.
usage_days = Table(
    "usage_days",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("namespace", String(255), primary_key=True),
    Column("stored_bytes", BigInteger),
    Column("pushes", BigInteger, nullable=False),
    Column("pulls", BigInteger, nullable=False),
)

# Issue 16: the events outbox. A row is written in the same transaction as the change it
# reports (a push, a tag move, a delete), so an event is never lost and never reports a change
# that was rolled back. `id` orders the events; `event_id` is the CloudEvents `id` receivers
# de-duplicate by; `payload` is the CloudEvent in structured JSON mode (events/records.py).
# (A flag, not a cursor over `id`: on PostgreSQL ids commit out of order, and a cursor would
# skip an event whose transaction committed after a later one's.)
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False, unique=True),
    Column("type", String(100), nullable=False),
    Column("repository", String(255), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("payload", Text, nullable=False),
    # NULL until the delivery worker has added its deliveries (one per endpoint taking it).
    Column("fanned_out", Boolean),
    Index("ix_events_fan_out", "fanned_out", "id"),
    # Pruning (events/pruning.py) walks the oldest events first.
    Index("ix_events_created", "created_at"),
)

# One event to one endpoint. `state`: "pending" (due at `next_attempt_at`; a claimed attempt
# pushes it ahead by a lease, so a worker that dies mid-send is retried), "delivered" or
# "failed" (gave up after `events.max_age`). The last attempt's HTTP status, error and
# latency (seconds) are the delivery history.
event_deliveries = Table(
    "event_deliveries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("event_id", Integer, ForeignKey("events.id", ondelete="CASCADE"), nullable=False),
    Column("endpoint", String(2000), nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("finished_at", Float),
    Column("last_status", Integer),
    Column("last_error", String(500)),
    Column("latency", Float),
    Index("ix_event_deliveries_due", "state", "next_attempt_at"),
    Index("ix_event_deliveries_endpoint", "endpoint", "id"),
    # Pruning asks, per old event, whether a delivery of it is still pending.
    Index("ix_event_deliveries_event", "event_id"),
)

# Issue 16: webhook endpoints of a namespace (`repository` NULL) or of one repository, made by
# their owners (events/webhooks.py). Their deliveries name them as `webhook:<id>` in
# `event_deliveries.endpoint` (server-wide endpoints from the configuration go by their URL).
# `secret` is the Standard Webhooks secret: stored, as signing needs it, and shown only once,
# in the reply that created the endpoint. `types` and `tags` are JSON lists (empty: all).
webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(255), nullable=False),
    Column("repository", String(255)),
    Column("url", String(2000), nullable=False),
    Column("secret", String(200), nullable=False),
    Column("types", Text, nullable=False),
    Column("tags", Text, nullable=False),
    Column("format", String(16), nullable=False),
    Column("created_by", String(255)),
    Column("created_at", Float, nullable=False),
    Index("ix_webhooks_scope", "namespace", "repository"),
)

# Issue 15: `cangku migrate-storage` runs into this database from the registry named by
# `source` (its database and blob store, without secrets). A row without `finished_at` is an
# interrupted run, which the same source may resume; any other content makes the command
# refuse the target unless told to overwrite it. Never copied by the command itself.
storage_migrations = Table(
    "storage_migrations",
    metadata,
    Column("source", String(2000), primary_key=True),
    Column("started_at", Float, nullable=False),
    Column("finished_at", Float),
)
