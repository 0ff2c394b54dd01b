"""Who may do what: actions on repositories, from ownership, organizations and visibility."""

from __future__ import annotations

from dataclasses import dataclass, field

PULL, PUSH, DELETE = "pull", "push", "delete"
ALL_ACTIONS = frozenset({PULL, PUSH, DELETE})
ROLES = {
    "owner": ALL_ACTIONS,
    "writer": frozenset({PULL, PUSH}),
    "reader": frozenset({PULL}),
}
TOKEN_SCOPES = {"read": frozenset({PULL}), "write": ALL_ACTIONS}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated account (or, with name None, the anonymous caller)."""

    name: str | None
    is_admin: bool = False
    # Namespace → actions: the user's own namespace and those of their organizations.
    namespaces: dict[str, frozenset[str]] = field(default_factory=dict)
    # An access token's scope limits what its owner could otherwise do.
    limit: frozenset[str] = ALL_ACTIONS
    # When the account's credentials last changed (refresh tokens issued before are void).
    credentials_changed_at: float = 0.0
    token_id: str | None = None

    @property
    def is_anonymous(self) -> bool:
        return self.name is None

    def actions(self, repository: str, public: bool) -> frozenset[str]:
        if self.is_admin:
            granted = ALL_ACTIONS
        else:
            granted = self.namespaces.get(repository.split("/", 1)[0], frozenset())
            if public:
                granted = granted | {PULL}
        return granted & self.limit

    def may_see(self, repository: str, public: bool) -> bool:
        return PULL in self.actions(repository, public)


ANONYMOUS = Principal(name=None)
