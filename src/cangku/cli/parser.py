"""The command line: every command, its arguments and the function it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from cangku import __version__
from cangku.cli import descriptions, events, migrate_storage, retention
from cangku.cli.common import (
    _add_delete_repositories,
    _add_policy_switches,
    _command,
    _duration,
    _size,
)
from cangku.cli.database import DB_UPGRADE_HELP, db_upgrade_run
from cangku.cli.gc import GC_HELP, gc_run
from cangku.cli.organizations import member_remove_run, member_set, org_add, org_del, org_list
from cangku.cli.proxy import PURGE_HELP, purge_run
from cangku.cli.quotas import quota_run
from cangku.cli.repositories import release_tag_run, repo_set_run, tag_policy_run
from cangku.cli.tokens import token_create, token_list, token_revoke
from cangku.cli.usage import usage_run
from cangku.cli.users import (
    user_add,
    user_del,
    user_disable,
    user_enable,
    user_import,
    user_list,
    user_passwd,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cangku", description="A Docker/OCI container registry.")
    parser.add_argument("--version", action="version", version=f"cangku {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = _command(commands, "serve", "run the registry server")
    serve.add_argument("--listen", help="HOST:PORT to listen on (default 127.0.0.1:5000)")
    serve.add_argument(
        "--open", action="store_true", help="no authentication at all (trusted networks only)"
    )
    serve.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")

    user = commands.add_parser("user", help="accounts").add_subparsers(dest="action", required=True)
    add = _command(user, "add", "add a user", run=user_add)
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may do everything")
    add.add_argument("--password-stdin", action="store_true", required=True)
    passwd = _command(user, "passwd", "change a user's password", run=user_passwd)
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true", required=True)
    user_delete = _command(user, "del", "delete a user and its namespace's settings", run=user_del)
    user_delete.add_argument("name")
    _add_delete_repositories(user_delete)
    _command(user, "disable", "stop a user from logging in", run=user_disable).add_argument("name")
    _command(user, "enable", "let a disabled user log in again", run=user_enable).add_argument(
        "name"
    )
    _command(user, "list", "list users", run=user_list)
    _command(
        user, "import-htpasswd", "add the bcrypt entries of an htpasswd file", run=user_import
    ).add_argument("file", type=Path)

    org = commands.add_parser("org", help="organizations").add_subparsers(
        dest="action", required=True
    )
    _command(org, "add", "add an organization", run=org_add).add_argument("name")
    org_delete = _command(
        org, "del", "delete an organization and its namespace's settings", run=org_del
    )
    org_delete.add_argument("name")
    _add_delete_repositories(org_delete)
    _command(org, "list", "list organizations and members", run=org_list)
    member = org.add_parser("member", help="members").add_subparsers(dest="member", required=True)
    member_add = _command(member, "add", "add a member or change their role", run=member_set)
    member_add.add_argument("organization")
    member_add.add_argument("user")
    member_add.add_argument("--role", choices=["owner", "writer", "reader"], required=True)
    member_remove = _command(member, "remove", "remove a member", run=member_remove_run)
    member_remove.add_argument("organization")
    member_remove.add_argument("user")

    token = commands.add_parser("token", help="personal access tokens").add_subparsers(
        dest="action", required=True
    )
    create = _command(token, "create", "create a token (shown once)", run=token_create)
    create.add_argument("user")
    create.add_argument("--name", required=True)
    create.add_argument("--scope", choices=["read", "write"], required=True)
    _command(token, "list", "list a user's tokens", run=token_list).add_argument("user")
    revoke = _command(token, "revoke", "revoke a token", run=token_revoke)
    revoke.add_argument("user")
    revoke.add_argument("token", nargs="?", help="the token's name or id")
    revoke.add_argument("--all", action="store_true", help="every active token of the user")

    repo = commands.add_parser("repo", help="repositories").add_subparsers(
        dest="action", required=True
    )
    repo_set = _command(repo, "set", "set a repository's visibility", run=repo_set_run)
    repo_set.add_argument("name")
    visibility = repo_set.add_mutually_exclusive_group(required=True)
    visibility.add_argument("--public", dest="public", action="store_true")
    visibility.add_argument("--private", dest="public", action="store_false")
    repo_policy = _command(
        repo, "policy", "show or set a repository's tag policy", run=tag_policy_run
    )
    repo_policy.add_argument("name", help="repository, e.g. jimo/my-image")
    _add_policy_switches(repo_policy)
    repo_policy.set_defaults(scope="repository")
    release = _command(
        repo,
        "release-tag",
        "hand a client-managed floating tag (latest, 1, 1.9) back to the floating-tag policy",
        run=release_tag_run,
    )
    release.add_argument("name", help="repository, e.g. jimo/my-image")
    release.add_argument("tag", help="the floating tag, e.g. latest")
    _add_description_commands(repo)
    retention.add_commands(commands, _command)
    events.add_commands(commands, _command)  # issue 16: cangku webhooks

    namespace = commands.add_parser("namespace", help="namespaces").add_subparsers(
        dest="action", required=True
    )
    namespace_policy = _command(
        namespace,
        "policy",
        "show or set the tag policy every repository of a namespace inherits",
        run=tag_policy_run,
    )
    namespace_policy.add_argument("name", help="namespace, e.g. jimo")
    _add_policy_switches(namespace_policy)
    namespace_policy.set_defaults(scope="namespace")

    database = commands.add_parser("db", help="the metadata database").add_subparsers(
        dest="action", required=True
    )
    upgrade = _command(
        database, "upgrade", "migrate the database schema (shared databases)", run=db_upgrade_run
    )
    upgrade.description = DB_UPGRADE_HELP

    gc = _command(commands, "gc", "collect garbage now (safe while the server runs)", run=gc_run)
    gc.description = GC_HELP
    gc.add_argument(
        "--dry-run", action="store_true", help="print what would be deleted; delete nothing"
    )
    gc.add_argument(
        "--grace",
        type=_duration,
        help="keep unreferenced blobs younger than this (default: gc.grace, 1h)",
    )
    proxy = commands.add_parser("proxy", help="the pull-through cache").add_subparsers(
        dest="action", required=True
    )
    proxy_purge = _command(proxy, "purge", "purge cached repositories", run=purge_run)
    proxy_purge.description = PURGE_HELP
    proxy_purge.add_argument(
        "target", help="a mirror repository (docker.io/library/alpine) or an upstream (docker.io)"
    )
    migrate_storage.add_command(
        _command(
            commands,
            "migrate-storage",
            "copy the registry into other stores (e.g. PostgreSQL + S3) and back",
            run=migrate_storage.migrate_storage_run,
        )
    )
    usage = _command(
        commands, "usage", "bytes stored per namespace and repository, and quotas", run=usage_run
    )
    usage.add_argument("--json", action="store_true", help="print the JSON of /api/v1/usage")
    quota = commands.add_parser("quota", help="storage quotas per namespace").add_subparsers(
        dest="action", required=True
    )
    quota_set = _command(
        quota, "set", "cap a namespace's deduplicated usage (e.g. 10GiB, 500MB)", run=quota_run
    )
    quota_set.add_argument("namespace")
    quota_set.add_argument("size", type=_size)
    _command(quota, "unset", "remove a namespace's quota", run=quota_run).add_argument("namespace")
    _command(quota, "list", "every quota with its usage", run=quota_run)
    return parser


def _add_description_commands(
    repo: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """`repo describe` and `repo pulls` (issue 17); the work is in cli/descriptions.py."""
    describe = _command(
        repo,
        "describe",
        "show or set a repository's description and Markdown overview",
        run=descriptions.describe_run,
    )
    describe.add_argument("name")
    describe.add_argument("--description", help='one line, at most 100 characters ("" unsets)')
    describe.add_argument(
        "--overview-file", type=Path, help="Markdown file for the overview (- reads stdin)"
    )
    describe.add_argument("--clear-overview", action="store_true", help="unset the overview")
    describe.add_argument("--json", action="store_true", help="print the API's JSON")
    pulls = _command(
        repo, "pulls", "pulls of a repository, per tag and digest", run=descriptions.pulls_run
    )
    pulls.add_argument("name")
    pulls.add_argument("--json", action="store_true", help="print the API's JSON")
