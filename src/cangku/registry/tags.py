"""Tag moves and the floating-tag policy, inside the caller's transaction.

Every tag change goes through `push_tag` or `remove_tags`, so every change is recorded in the
tag history and the floating tags (`1.9`, `1`, `latest`) move in the same transaction as the
push or delete that caused them: a puller never sees a half-moved set. The SQL lives in
metadata/tags.py; this module holds the rules (which tags move, the policy, the reasons).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from cangku.content.errors import Denied, RequestInvalid
from cangku.content.versions import (
    ALL_KEYS,
    LATEST,
    LINE_END,
    Version,
    is_floating_tag,
    line_key,
    line_of,
    parse_version,
)
from cangku.events import records as events
from cangku.metadata import Connection, Row
from cangku.metadata import tags as tag_rows
from cangku.registry.context import RequestContext
from cangku.registry.records import TagChange

# Default page sizes of a tag's history and of the version tree.
HISTORY_PAGE = 100
VERSIONS_PAGE = 100
# Above every precedence key (their first byte is a digit count, at most 128).
_ABOVE_ALL = b"\xff"


# A tag to point at a digest: (tag, previous digest, reason, client-managed, the version tag
# a floating tag follows).
_Move = tuple[str, str | None, str, bool, str | None]


@dataclass(frozen=True, slots=True)
class _Change:
    """One change of the tag history, before it is written."""

    repository_id: int
    changed_at: float
    change: events.TagChange


@dataclass(frozen=True, slots=True)
class TagPolicy:
    floating: bool = True
    immutable_versions: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """The release tag a floating tag follows, and the digest it points at."""

    tag: str
    digest: str
    # SemVer precedence key, when it last changed, name: the newest release has the highest.
    rank: tuple[bytes, float, str]


def resolve_policy(connection: Connection, name: str, defaults: TagPolicy) -> TagPolicy:
    """The repository's own setting, else its namespace's, else the server's default."""
    rows = tag_rows.policy_rows(connection, name, name.split("/")[0])
    by_scope = {row.scope: row for row in rows}
    floating, immutable = defaults.floating, defaults.immutable_versions
    for scope in ("namespace", "repository"):
        row = by_scope.get(scope)
        if row is not None and row.floating is not None:
            floating = row.floating
        if row is not None and row.immutable_versions is not None:
            immutable = row.immutable_versions
    return TagPolicy(floating=floating, immutable_versions=immutable)


def set_policy(
    connection: Connection,
    scope: str,
    name: str,
    *,
    floating: bool | None,
    immutable_versions: bool | None,
) -> None:
    """Set the given switches of a repository or namespace (None leaves one as it is)."""
    values = {
        key: value
        for key, value in (("floating", floating), ("immutable_versions", immutable_versions))
        if value is not None
    }
    tag_rows.write_policy(connection, scope, name, values)


def newest_release(connection: Connection, repository_id: int, floating_tag: str) -> Release | None:
    """The newest release of the line `floating_tag` follows (SemVer 2.0 precedence; of
    equals, the one changed last), or None. At most two index seeks, however many versions
    the repository holds."""
    line = line_of(floating_tag)
    if line is None:
        return None
    found = tag_rows.newest_releases_of_line(
        connection, repository_id, line.prefix, line.low, line.high
    )
    if not found:
        return None
    best = max(found, key=lambda row: (row.release_key, row.updated_at, row.name))
    return Release(best.name, best.manifest_digest, (best.release_key, best.updated_at, best.name))


def history_page(
    connection: Connection, repository_id: int, tag: str, limit: int, before: int | None
) -> tuple[list[TagChange], int | None]:
    """Up to `limit` changes of `tag`, newest first, older than change `before` if given;
    and the `before` of the next page (None when this is the last)."""
    rows = tag_rows.history_page(connection, repository_id, tag, limit + 1, before)
    changes = [_change(row) for row in rows[:limit]]
    return changes, (changes[-1].id if len(rows) > limit else None)


def newest_move(
    connection: Connection, repository_id: int, tag: str, digest: str
) -> TagChange | None:
    """The newest change that moved `tag` onto `digest`."""
    row = tag_rows.newest_move(connection, repository_id, tag, digest)
    return None if row is None else _change(row)


def _change(row: Row[Any]) -> TagChange:
    return TagChange(
        id=row.id,
        tag=row.tag,
        old_digest=row.old_digest,
        new_digest=row.new_digest,
        changed_at=row.changed_at,
        actor=row.actor,
        reason=row.reason,
    )


def version_page(
    connection: Connection, repository_id: int, limit: int, last: str | None
) -> tuple[list[tuple[str, str]], str | None]:
    """Up to `limit` version tags as (tag, digest), highest precedence first (of equals, by
    name, descending), after the version tag `last` if given; and the `last` of the next
    page (None when this is the last). One index range read (ix_tags_version)."""
    if last is None:
        key, after = _ABOVE_ALL, ""
    else:
        version = parse_version(last)
        if version is None:
            raise RequestInvalid(f"last must be a version tag, not {last[:50]!r}")
        key, after = version.precedence_key(), last
    rows = tag_rows.versions_below(connection, repository_id, key, after, limit + 1)
    page = [(row.name, row.manifest_digest) for row in rows[:limit]]
    return page, (page[-1][0] if len(rows) > limit else None)


def floating_states(
    connection: Connection, repository_id: int, floating_tags: set[str]
) -> dict[str, dict[str, str | bool | None]]:
    """Of these floating tags, those that exist: tag → {tag, digest, follows, client_managed},
    where `follows` is the release the tag points at as the policy has it, or None when a
    client set it elsewhere."""
    states: dict[str, dict[str, str | bool | None]] = {}
    for tag, state in tag_states(connection, repository_id, sorted(floating_tags)).items():
        best = newest_release(connection, repository_id, tag)
        follows = best.tag if best is not None and best.digest == state.digest else None
        states[tag] = {
            "tag": tag,
            "digest": state.digest,
            "follows": follows,
            "client_managed": state.client_managed,
        }
    return states


def floating_tags_of(tag_names: list[str]) -> set[str]:
    """The floating tags of these version tags' lines, and `latest`."""
    found = {LATEST}
    for tag in tag_names:
        version = parse_version(tag)
        if version is not None:
            found.update(version.floating_tags())
    return found


@dataclass(frozen=True, slots=True)
class TagState:
    digest: str
    # Pushed by a client over the policy's choice: the policy leaves it where it is.
    client_managed: bool


def tag_states(connection: Connection, repository_id: int, names: list[str]) -> dict[str, TagState]:
    """Tag → its state, for those of `names` that exist: one statement."""
    rows = tag_rows.states(connection, repository_id, names)
    return {row.name: TagState(row.manifest_digest, bool(row.client_managed)) for row in rows}


def current_digest(connection: Connection, repository_id: int, tag: str) -> str | None:
    return tag_rows.digest_of(connection, repository_id, tag)


def push_tag(
    connection: Connection,
    repository_id: int,
    name: str,
    tag: str,
    digest: str,
    policy: TagPolicy,
    context: RequestContext,
) -> str | None:
    """A client pushed `tag` → `digest`: check the policy, move it, move the floating tags.

    A client's push always moves the tag it names (docs/tags.md, "Mirroring and syncing"):
    a floating tag pushed at another digest than the policy would give it becomes
    client-managed, and the policy stops moving it until it is released (`release_tag`).
    Returns the warning to give the client then, else None. Raises Denied only for a
    changed immutable version.
    """
    version = parse_version(tag)
    floating_tags = (
        version.floating_tags()
        if version is not None and version.is_release and policy.floating
        else ()
    )
    # The tag's own state and its floating tags' in one statement; for a release whose
    # floating tags move, with the releases ranked next above it in that same statement.
    # The pushed tag is ranked as the write will leave it (changed now), so that all the
    # tags are written together after this one read.
    now = time.time()
    outranked: tuple[bool, bool, bool] | None = None
    if version is not None and floating_tags:
        states, outranked = _states_and_outranked(
            connection, repository_id, [tag, *floating_tags], version, (tag, now)
        )
    else:
        states = tag_states(connection, repository_id, [tag, *floating_tags])
    state = states.get(tag)
    previous = state.digest if state is not None else None
    if version is not None and policy.immutable_versions and previous not in (None, digest):
        raise Denied(
            f"version {tag} of {name} is immutable: it already points at {previous}. Push a new "
            f"version, or turn this off with `cangku repo policy {name} --immutable-versions off`"
        )
    managed = state is not None and state.client_managed
    warning = None
    if policy.floating and version is None and not managed and is_floating_tag(tag):
        warning = _overrides_policy(connection, repository_id, name, tag, digest)
        managed = warning is not None
    reason = "pushed; client-managed from now on" if warning else "pushed"
    moves: list[_Move] = [(tag, previous, reason, managed, None)]
    if outranked is not None:
        for floating, newer in zip(floating_tags, outranked, strict=True):
            # Lines nest: not the newest of MAJOR.MINOR, not the newest of the wider ones.
            if newer:
                break
            floating_state = states.get(floating)
            if floating_state is not None and floating_state.client_managed:
                continue
            previous_floating = floating_state.digest if floating_state is not None else None
            moves.append((floating, previous_floating, f"follows {tag}", False, tag))
    history: list[_Change] = []
    _write_moves(connection, repository_id, digest, moves, now, history)
    _write_history(connection, name, context, history)
    return warning


def _states_and_outranked(
    connection: Connection,
    repository_id: int,
    names: list[str],
    version: Version,
    pushed: tuple[str, float],
) -> tuple[dict[str, TagState], tuple[bool, bool, bool]]:
    """`tag_states` of `names`, and whether another release outranks release `version`
    (pushed as tag `pushed[0]` at time `pushed[1]`) in its MAJOR.MINOR line, its MAJOR line
    and among all releases (SemVer 2.0 precedence; of equals, the one changed last, then the
    name): one statement, one index seek per spelling.

    A line is a contiguous range of release keys that holds the pushed one, so the release
    ranked next above it, of its own spelling, outranks it in exactly the lines whose range
    holds that release's key; `latest` follows both spellings, so any release above it, of
    either, outranks it there."""
    tag, now = pushed
    state_rows, above = tag_rows.states_and_releases_above(
        connection, repository_id, names, (version.precedence_key(), now, tag), ALL_KEYS[1]
    )
    states = {
        row.name: TagState(row.manifest_digest, bool(row.client_managed)) for row in state_rows
    }
    same = above.get(version.prefix)
    minor_high = line_key(version.major, version.minor) + LINE_END
    major_high = line_key(version.major) + LINE_END
    return states, (
        same is not None and same < minor_high,
        same is not None and same < major_high,
        bool(above),
    )


def remove_tags(
    connection: Connection,
    repository_id: int,
    name: str,
    removed: dict[str, str],
    policy: TagPolicy,
    context: RequestContext,
) -> None:
    """Tags of repository `name` were deleted (tag → the digest it had): record it, fall
    floating tags back."""
    for tag in removed:
        tag_rows.delete_tag(connection, repository_id, tag)
    record_removed_tags(connection, repository_id, name, removed, policy, context)


def record_removed_tags(
    connection: Connection,
    repository_id: int,
    name: str,
    removed: dict[str, str],
    policy: TagPolicy,
    context: RequestContext,
) -> None:
    """`remove_tags` for tags whose rows the caller already deleted (tag → the digest it
    had): record it in the tag history, fall floating tags back."""
    history: list[_Change] = []
    for tag, digest in removed.items():
        _record(repository_id, tag, digest, None, "deleted", None, history)
    if policy.floating:
        _fall_back(connection, repository_id, removed, history)
    _write_history(connection, name, context, history)


def _fall_back(
    connection: Connection,
    repository_id: int,
    removed: dict[str, str],
    history: list[_Change],
) -> None:
    # Floating tags that pointed at a deleted release follow the highest one left in their line.
    # Client-managed ones stay where the client put them.
    releases = [
        (tag, digest, version)
        for tag, digest in removed.items()
        if (version := parse_version(tag)) is not None and version.is_release
    ]
    candidates = {floating for _, _, version in releases for floating in version.floating_tags()}
    states = tag_states(connection, repository_id, sorted(candidates)) if candidates else {}
    affected: dict[str, str] = {}
    for tag, digest, version in releases:
        for floating in version.floating_tags():
            state = states.get(floating)
            was_removed_with_it = removed.get(floating) == digest
            still_points_at_it = state is not None and state.digest == digest
            if state is not None and state.client_managed:
                continue
            if was_removed_with_it or still_points_at_it:
                affected.setdefault(floating, tag)
    for floating, deleted_tag in affected.items():
        best = newest_release(connection, repository_id, floating)
        state = states.get(floating)
        previous = state.digest if state is not None else None
        if best is None:
            if previous is not None:
                tag_rows.delete_tag(connection, repository_id, floating)
                _record(
                    repository_id,
                    floating,
                    previous,
                    None,
                    f"{deleted_tag} was deleted; no release left in its line",
                    deleted_tag,
                    history,
                )
            continue
        _move(
            connection,
            repository_id,
            floating,
            previous,
            best.digest,
            f"{deleted_tag} was deleted; follows {best.tag}",
            best.tag,
            history,
        )


def _overrides_policy(
    connection: Connection, repository_id: int, name: str, tag: str, digest: str
) -> str | None:
    """The warning when a client's push of floating tag `tag` names another digest than the
    policy gives it (the newest release of its line); None while the line has no release
    (the tag then follows the first release that arrives) or when the digests agree."""
    best = newest_release(connection, repository_id, tag)
    if best is None or best.digest == digest:
        return None
    line = "all releases" if tag == LATEST else f"the {tag}.x line"
    # One line of ASCII without double quotes: it goes into a Warning header (RFC 9111 §5.5).
    return (
        f"tag {tag} of {name} is now client-managed: it stays where you pushed it instead of "
        f"following the newest release of {line} (now {best.tag}); release it with "
        f"`cangku repo release-tag {name} {tag}` or POST "
        f"/api/v1/repositories/{name}/tags/{tag}/release"
    )


def release_tag(
    connection: Connection, repository_id: int, name: str, tag: str, context: RequestContext
) -> str | None:
    """Hand a client-managed floating tag back to the policy: it moves to the newest release
    of its line now (if there is one) and follows it from then on. Returns the release it
    follows, or None. Raises RequestInvalid for a tag that is not a floating tag."""
    if not is_floating_tag(tag):
        raise RequestInvalid(f"{tag[:128]} is not a floating tag (latest, MAJOR or MAJOR.MINOR)")
    tag_rows.clear_client_managed(connection, repository_id, tag)
    state = tag_states(connection, repository_id, [tag]).get(tag)
    best = newest_release(connection, repository_id, tag)
    if state is None or best is None:
        return None
    history: list[_Change] = []
    _write_moves(
        connection,
        repository_id,
        best.digest,
        [(tag, state.digest, f"released; follows {best.tag}", False, best.tag)],
        time.time(),
        history,
    )
    _write_history(connection, name, context, history)
    return best.tag


def version_columns(tag: str) -> dict[str, object]:
    """The `tags` columns that index a version tag (schema.py): NULL for other tags."""
    version = parse_version(tag)
    if version is None:
        return {"version_prefix": None, "version_key": None, "release_key": None}
    key = version.precedence_key()
    return {
        "version_prefix": version.prefix,
        "version_key": key,
        "release_key": key if version.is_release else None,
    }


def _move(
    connection: Connection,
    repository_id: int,
    tag: str,
    previous: str | None,
    digest: str,
    reason: str,
    follows: str | None,
    history: list[_Change],
) -> None:
    """Point `tag` at `digest` (it pointed at `previous`); the change joins `history`."""
    _write_moves(
        connection,
        repository_id,
        digest,
        [(tag, previous, reason, False, follows)],
        time.time(),
        history,
    )


def _write_moves(
    connection: Connection,
    repository_id: int,
    digest: str,
    moves: list[_Move],
    now: float,
    history: list[_Change],
) -> None:
    """Point each move (`_Move`) at `digest`, new tags and existing ones in one statement;
    the changes join `history`."""
    tag_rows.point_tags(
        connection,
        [
            {
                "repository_id": repository_id,
                "name": tag,
                "manifest_digest": digest,
                "updated_at": now,
                "client_managed": managed or None,
                **version_columns(tag),
            }
            for tag, _, _, managed, _ in moves
        ],
    )
    for tag, previous, reason, _, follows in moves:
        if previous != digest:
            _record(repository_id, tag, previous, digest, reason, follows, history)


def _record(
    repository_id: int,
    tag: str,
    old: str | None,
    new: str | None,
    reason: str,
    follows: str | None,
    history: list[_Change],
) -> None:
    history.append(
        _Change(repository_id, time.time(), events.TagChange(tag, old, new, reason, follows))
    )


def _write_history(
    connection: Connection, name: str, context: RequestContext, history: list[_Change]
) -> None:
    """The changes of one push or delete, in order: into the tag history in one statement,
    and into the events outbox (issue 16), in the caller's transaction."""
    tag_rows.insert_history(
        connection,
        [
            {
                "repository_id": change.repository_id,
                "tag": change.change.tag,
                "old_digest": change.change.previous,
                "new_digest": change.change.digest,
                "changed_at": change.changed_at,
                "actor": context.caller,
                "reason": change.change.reason,
            }
            for change in history
        ],
    )
    events.tag_changes(connection, name, context, [change.change for change in history])
