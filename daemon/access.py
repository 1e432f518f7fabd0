"""Who may do what: the roles a token grants and the permission matrix (docs/access.md).

Pure: no I/O. Two questions are asked of every request, in this order:

1. Does the caller's role carry the permission at all? If not: 403 with the reason
   ("role operator may not read tracks"). Knowing that a kind of data exists is no secret.
2. Is the object in the caller's scope (caseload, team, everyone)? If not: 404, exactly
   like an object that does not exist, so a token cannot learn that another officer's
   subject has an alert or a track (daemon.officer_api answers this one).

Roles attach to tokens, not to people. An `officer` token acts as the officer it names
with that officer's role in subjects.yaml (officer, supervisor or command) and caseload;
`operator` and `admin` tokens grant no caseload at all. A person who is both an
administrator and an officer holds two tokens, and uses the officer one to act on alerts
(least privilege: a stolen admin token reads no track).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from alerts.policy import Directory, OfficerInfo, Role


class TokenRole(StrEnum):
    """What a token was issued for (`api_tokens.role`)."""

    OFFICER = "officer"  # the named officer's config role and caseload
    OPERATOR = "operator"
    ADMIN = "admin"


class Permission(StrEnum):
    ALERTS_READ = "read alerts"
    ALERTS_ACT = "acknowledge, note or resolve alerts"
    LOCATIONS_READ = "read tracks, positions or zones"
    SILENCES_READ = "list silences"
    SILENCES_WRITE = "create or end silences"
    SILENCES_EVERYONE = "silence a rule for everyone"
    CONFIG_READ = "read the config status"
    CONFIG_RELOAD = "reload the config"
    TOKENS_MANAGE = "create, list or revoke tokens"
    AUDIT_READ = "read the audit log"


CASELOAD_ROLES: Final = frozenset({Role.OFFICER, Role.SUPERVISOR, Role.COMMAND})

_CASELOAD: Final = frozenset({
    Permission.ALERTS_READ, Permission.ALERTS_ACT, Permission.LOCATIONS_READ,
    Permission.SILENCES_READ, Permission.SILENCES_WRITE,
})

# The matrix (docs/access.md explains each cell).
PERMISSIONS: Final[Mapping[Role, frozenset[Permission]]] = {
    Role.OFFICER: _CASELOAD,
    Role.SUPERVISOR: _CASELOAD,
    # Command may also mute a rule for everyone (a tower outage: gnss_lost everywhere).
    Role.COMMAND: _CASELOAD | {Permission.SILENCES_EVERYONE},
    # Operators tune the system: config, and silences as maintenance windows. They see
    # silences (ids, rules, reasons: no locations) but no alert, track or position.
    Role.OPERATOR: frozenset({
        Permission.SILENCES_READ, Permission.SILENCES_WRITE, Permission.SILENCES_EVERYONE,
        Permission.CONFIG_READ, Permission.CONFIG_RELOAD,
    }),
    # Administrators manage who has access and watch what was done with it; they read
    # no location data and act on no alert.
    Role.ADMIN: frozenset({Permission.TOKENS_MANAGE, Permission.AUDIT_READ}),
}


def role_for_token(token_role: TokenRole, officer_role: Role | None) -> Role | None:
    """The role a request acts with: an officer token's officer's role from the config
    (None when the officer is gone from it: refused like a wrong token), else the token's."""
    if token_role is TokenRole.OFFICER:
        return officer_role if officer_role in CASELOAD_ROLES else None
    return Role.OPERATOR if token_role is TokenRole.OPERATOR else Role.ADMIN


def allows(role: Role, permission: Permission) -> bool:
    return permission in PERMISSIONS.get(role, frozenset())


def refusal(role: Role, permission: Permission) -> str:
    return f"role {role.value} may not {permission.value}"


def has_caseload(role: Role) -> bool:
    return role in CASELOAD_ROLES


def in_caseload(directory: Directory, caller: OfficerInfo, owner: str | None) -> bool:
    """Whether a subject whose officer is `owner` is in the caller's scope: command sees
    everyone, a supervisor their team's subjects, an officer their own; roles without a
    caseload (operator, admin) nobody, whatever their id."""
    if not has_caseload(caller.role):
        return False
    if caller.role is Role.COMMAND:
        return True
    if owner is None:
        return False
    return owner == caller.officer_id or owner in directory.team_of(caller.officer_id)
