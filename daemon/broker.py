"""Broker accounts from the roster: Mosquitto's password file and ACL file.

Every device in config/subjects.yaml gets an account named after its device id, allowed
to publish on its own topics only (`emon/v1/devices/<id>/location` and `/event`, through
two ACL patterns; an OwnTracks phone `<user>.<device>`: account `<user>`, topics
`owntracks/<user>/+`) and to read nothing. Every officer gets an account named after the
officer id: their own command, reply and notification topics, and the alerts of the
subjects in their care (a supervisor: their team's; the command role: all). Service
accounts: the daemon (reads device topics and commands; writes alerts, dead letters,
replies, notifications and the operators' channel), alert readers (consoles: all alerts)
and operators (dead letters and the operators' channel). config/mosquitto/README.md is
the operator's side.

Passwords are random (192 bits), so they need no key stretching; the file holds their
PBKDF2-SHA512 hashes in Mosquitto's own format (`$7$<iterations>$<salt>$<hash>`, what
`mosquitto_passwd` writes), generated here with hashlib so that no broker tools are
needed where the roster is managed. Regenerating keeps the hash of every account that
still exists (its device keeps working), creates passwords for new accounts only, drops
accounts no longer in the roster (revoked at the broker's next SIGHUP), and rotates on
request.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from daemon.commands import COMMANDS_SUBSCRIPTION, COMMANDS_TOPIC_PREFIX, reply_topic
from daemon.configfiles import LoadedConfig, OfficerRole
from daemon.notifiers.mqtt import officer_topic
from daemon.owntracks import OWNTRACKS_DEVICE_PATTERN, OWNTRACKS_USER_PATTERN
from daemon.protectedwire import PROTECTED_SUBSCRIPTION, protected_topic
from daemon.reload import OPERATORS_CONFIG_TOPIC
from daemon.wire import (
    ALERTS_TOPIC_PREFIX,
    DEADLETTER_TOPIC_PREFIX,
    DEVICE_SUBSCRIPTIONS,
    DEVICE_TOPIC_PREFIX,
    OWNTRACKS_TOPIC_PREFIX,
)
from geofence.observation import DeviceKind

DEFAULT_DAEMON_ACCOUNT = "emon-daemon"
DEFAULT_ALERTS_READER = "alerts-reader"
DEFAULT_OPERATOR = "operator"
DEVICE_CHANNELS = ("location", "event")
DEVICE_ACCOUNT_PATTERN = "%u"  # Mosquitto's placeholder for the user name in ACL patterns

# Mosquitto's PBKDF2-SHA512 format ($7$) with mosquitto_passwd's defaults: 101 iterations,
# a 12-byte salt, a 64-byte derived key. The passwords are random, not chosen by people,
# so more iterations would add no protection, only CPU per connect: after a broker
# restart every device reconnects at once (bench/bench_broker_accounts.py measures it).
PBKDF2_ALGORITHM_ID = "7"
PBKDF2_ITERATIONS = 101
PBKDF2_SALT_BYTES = 12
PBKDF2_KEY_BYTES = 64
PASSWORD_BYTES = 24  # 192 random bits, 32 URL-safe characters

# Mosquitto splits a password-file line at the first ':' and an ACL line at spaces; MQTT
# forbids wildcards in names used in topics.
_ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH_LINE = re.compile(r"^([^:#\s][^:\s]*):(\$[0-9]+\$.+)$")
PRIVATE_FILE_MODE = 0o600


class BrokerFilesError(Exception):
    """Root error of this module: the roster or an input file cannot make broker files."""


class AccountRole(StrEnum):
    DEVICE = "device"
    OWNTRACKS_USER = "owntracks-user"
    DAEMON = "daemon"
    ALERTS_READER = "alerts-reader"
    OPERATOR = "operator"
    OFFICER = "officer"
    PROTECTED_PHONE = "protected-phone"  # issue 5: a protected person's phone


@dataclass(frozen=True, slots=True)
class Grant:
    access: str  # "read" or "write", as in Mosquitto's ACL file
    topic: str


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    role: AccountRole
    grants: tuple[Grant, ...]


def device_topics(device_id: str) -> tuple[str, ...]:
    return tuple(f"{DEVICE_TOPIC_PREFIX}{device_id}/{channel}" for channel in DEVICE_CHANNELS)


def owntracks_topic(user: str) -> str:
    """What an OwnTracks user may publish on: its own devices' location topics."""
    return f"{OWNTRACKS_TOPIC_PREFIX}{user}/+"


def owntracks_user(device_id: str, kind: DeviceKind) -> str | None:
    """The OwnTracks user of a roster phone whose id is `<user>.<device>`
    (daemon/owntracks.py), else None (a wire v1 device)."""
    if kind is not DeviceKind.PHONE:
        return None
    user, dot, device = device_id.partition(".")
    if dot and OWNTRACKS_USER_PATTERN.match(user) and OWNTRACKS_DEVICE_PATTERN.match(device):
        return user
    return None


def _subjects_in_care(loaded: LoadedConfig) -> dict[str, set[str] | None]:
    """Officer id -> the subjects whose alerts the officer may read (None: all of them).

    An officer reads the alerts of the subjects in their charge; a supervisor also those
    of every officer under them (at any depth); the command role reads every alert."""
    officers = loaded.subjects.officers
    own: dict[str, set[str]] = {o.id: set() for o in officers}
    for subject in loaded.subjects.subjects:
        own.setdefault(subject.officer, set()).add(subject.id)
    reports: dict[str, list[str]] = {}
    for officer in officers:
        if officer.supervisor is not None:
            reports.setdefault(officer.supervisor, []).append(officer.id)
    care: dict[str, set[str] | None] = {}
    for officer in officers:
        if officer.role is OfficerRole.COMMAND:
            care[officer.id] = None
            continue
        subjects: set[str] = set()
        seen: set[str] = set()
        pending = [officer.id]
        while pending:  # the officer and everyone below (a cycle is walked once)
            current = pending.pop()
            if current in seen:
                continue
            seen.add(current)
            subjects |= own.get(current, set())
            pending.extend(reports.get(current, ()))
        care[officer.id] = subjects
    return care


def build_accounts(
    loaded: LoadedConfig,
    *,
    alerts_readers: Sequence[str] = (DEFAULT_ALERTS_READER,),
    operators: Sequence[str] = (DEFAULT_OPERATOR,),
) -> list[Account]:
    """Every broker account the roster calls for: the daemon, alert readers (consoles),
    operators, one per officer, then one per device (or OwnTracks user).

    The daemon's account is `mqtt.username` from settings.yaml (default emon-daemon).
    Raises BrokerFilesError listing every name that cannot be an account or is taken twice.
    """
    daemon_name = loaded.settings.mqtt.username or DEFAULT_DAEMON_ACCOUNT
    accounts = [
        Account(
            daemon_name,
            AccountRole.DAEMON,
            (
                # Exactly what the daemon subscribes to (wire v1, OwnTracks, commands)...
                *(Grant("read", topic) for topic in (*DEVICE_SUBSCRIPTIONS,
                                                     PROTECTED_SUBSCRIPTION,
                                                     COMMANDS_SUBSCRIPTION)),
                # ...and publishes.
                Grant("write", f"{ALERTS_TOPIC_PREFIX}#"),
                Grant("write", f"{DEADLETTER_TOPIC_PREFIX}#"),
                Grant("write", reply_topic("+")),
                Grant("write", officer_topic("+")),
                Grant("write", OPERATORS_CONFIG_TOPIC),
            ),
        ),
        *(
            Account(name, AccountRole.ALERTS_READER, (Grant("read", f"{ALERTS_TOPIC_PREFIX}#"),))
            for name in alerts_readers
        ),
        *(
            Account(
                name,
                AccountRole.OPERATOR,
                (
                    Grant("read", f"{DEADLETTER_TOPIC_PREFIX}#"),
                    Grant("read", OPERATORS_CONFIG_TOPIC),
                ),
            )
            for name in operators
        ),
    ]
    for officer_id, subjects in sorted(_subjects_in_care(loaded).items()):
        alert_reads = (
            (Grant("read", f"{ALERTS_TOPIC_PREFIX}#"),)
            if subjects is None
            else tuple(Grant("read", f"{ALERTS_TOPIC_PREFIX}{s}") for s in sorted(subjects))
        )
        accounts.append(
            Account(
                officer_id,
                AccountRole.OFFICER,
                (
                    Grant("write", f"{COMMANDS_TOPIC_PREFIX}{officer_id}"),
                    Grant("read", reply_topic(officer_id)),
                    Grant("read", officer_topic(officer_id)),
                    *alert_reads,
                ),
            )
        )
    owntracks_users: set[str] = set()
    for device_id, spec in sorted(loaded.core.devices.items()):
        user = owntracks_user(device_id, spec.kind)
        if user is not None:
            # One account per OwnTracks user: the app logs in as <user> and publishes
            # owntracks/<user>/<device> for each of that user's phones.
            if user not in owntracks_users:
                owntracks_users.add(user)
                accounts.append(
                    Account(user, AccountRole.OWNTRACKS_USER,
                            (Grant("write", owntracks_topic(user)),))
                )
            continue
        accounts.append(
            Account(
                device_id,
                AccountRole.DEVICE,
                tuple(Grant("write", topic) for topic in device_topics(device_id)),
            )
        )
    # Issue 5: a protected person's phone publishes its own position topic only.
    accounts.extend(
        Account(person.id, AccountRole.PROTECTED_PHONE,
                (Grant("write", protected_topic(person.id)),))
        for person in sorted(loaded.subjects.protected_persons, key=lambda p: p.id)
    )
    problems: list[str] = []
    seen: dict[str, AccountRole] = {}
    for account in accounts:
        if not _ACCOUNT_NAME.match(account.name):
            problems.append(
                f"{account.role.value} {account.name!r}: not usable as a broker account name "
                "(letters, digits, '_', '.', '-'; Mosquitto's files cannot hold ':' or spaces)"
            )
        if account.name in seen:
            problems.append(
                f"{account.role.value} {account.name!r}: name already used by a "
                f"{seen[account.name].value} account"
            )
        seen.setdefault(account.name, account.role)
    if problems:
        raise BrokerFilesError("; ".join(problems))
    return accounts


def render_acl(accounts: Iterable[Account], source: str) -> str:
    """Mosquitto ACL text: a `user` block per service account, and for the devices two
    `pattern` lines that give every account write access to its own device topics.

    Patterns, not a block per device: Mosquitto 2.0.11 loads per-user ACL blocks in
    super-linear time (bench/bench_broker.py, broker start: 10,000 blocks 1.5 s, 40,000
    blocks 29 s, 100,000 not within 30 s), while two patterns cost the same for any fleet
    (100,000 accounts: 0.44 s). Who is a device is then decided by the password file
    alone. A pattern applies to every account, so any account may publish as a device (or
    OwnTracks user) named after itself; build_accounts() refuses a roster in which such a
    name would belong to someone else, so the daemon refuses those messages as
    unknown_device.
    """
    accounts = list(accounts)
    by_pattern = (AccountRole.DEVICE, AccountRole.OWNTRACKS_USER, AccountRole.PROTECTED_PHONE)
    services = [a for a in accounts if a.role not in by_pattern]
    devices = sum(1 for a in accounts if a.role is AccountRole.DEVICE)
    owntracks = sum(1 for a in accounts if a.role is AccountRole.OWNTRACKS_USER)
    lines = [
        f"# Written by `emon broker acl` from {source}; regenerate, do not edit.",
        "# Anonymous clients get nothing (and allow_anonymous is false anyway).",
        "",
        f"# Devices ({devices} accounts in the password file) and OwnTracks users",
        f"# ({owntracks}): each may publish on its own topics only, and read nothing.",
        *(f"pattern write {topic}" for topic in device_topics(DEVICE_ACCOUNT_PATTERN)),
        f"pattern write {owntracks_topic(DEVICE_ACCOUNT_PATTERN)}",
        "# Protected persons' phones: their own position topic only (never stored).",
        f"pattern write {protected_topic(DEVICE_ACCOUNT_PATTERN)}",
    ]
    for account in services:
        lines.append("")
        lines.append(f"# {account.role.value}")
        lines.append(f"user {account.name}")
        lines.extend(f"topic {grant.access} {grant.topic}" for grant in account.grants)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """`$7$<iterations>$<base64 salt>$<base64 key>`: Mosquitto's PBKDF2-SHA512 entry."""
    salt = secrets.token_bytes(PBKDF2_SALT_BYTES) if salt is None else salt
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return f"${PBKDF2_ALGORITHM_ID}${iterations}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, encoded: str) -> bool:
    """True if `password` matches a `$7$` entry (for checks and tests; the broker verifies)."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != PBKDF2_ALGORITHM_ID:
        return False
    try:
        iterations = int(parts[2])
        salt = base64.b64decode(parts[3], validate=True)
        expected = base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    key = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations)
    return hmac.compare_digest(key, expected)


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def parse_password_file(text: str, source: str) -> dict[str, str]:
    """{account: hash entry} of a Mosquitto password file; comments and blanks skipped."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _HASH_LINE.match(line)
        if match is None:
            raise BrokerFilesError(
                f"{source}:{number}: not a hashed 'user:$N$...' entry (plain-text passwords "
                "are not accepted)"
            )
        entries[match.group(1)] = match.group(2)
    return entries


@dataclass(frozen=True)
class PasswordPlan:
    entries: dict[str, str]  # account -> hash entry, in account order
    new_passwords: dict[str, str]  # account -> plain password, for the credentials file
    kept: tuple[str, ...]
    revoked: tuple[str, ...]


def plan_passwords(
    accounts: Sequence[Account], existing: Mapping[str, str], rotate: Iterable[str] = ()
) -> PasswordPlan:
    """Keep existing hashes, make passwords for new (and rotated) accounts, drop the rest."""
    names = [a.name for a in accounts]
    unknown = sorted(set(rotate) - set(names))
    if unknown:
        raise BrokerFilesError(f"cannot rotate unknown account(s): {', '.join(unknown)}")
    to_rotate = set(rotate)
    entries: dict[str, str] = {}
    new_passwords: dict[str, str] = {}
    kept: list[str] = []
    for name in names:
        if name in existing and name not in to_rotate:
            entries[name] = existing[name]
            kept.append(name)
        else:
            password = new_password()
            new_passwords[name] = password
            entries[name] = hash_password(password)
    revoked = tuple(sorted(set(existing) - set(names)))
    return PasswordPlan(entries, new_passwords, tuple(kept), revoked)


def render_password_file(entries: Mapping[str, str], source: str) -> str:
    header = (
        f"# Written by `emon broker passwords` from {source}: PBKDF2-SHA512 hashes only.\n"
        "# Regenerate from the roster (existing accounts keep their password), do not edit.\n"
    )
    return header + "".join(f"{name}:{entry}\n" for name, entry in entries.items())


def render_credentials(new_passwords: Mapping[str, str], source: str) -> str:
    lines = [
        f"# New broker credentials from `emon broker passwords` ({source}).",
        "# One 'account password' per line. Load each into its device (or the daemon's",
        "# environment variable), then delete this file: the broker keeps only hashes.",
    ]
    lines.extend(f"{name} {password}" for name, password in new_passwords.items())
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str, *, exclusive: bool = False) -> None:
    """Write `text` to `path` readable by its owner only, atomically (temp file + rename).

    `exclusive`: refuse to replace an existing file (credentials not yet provisioned).
    """
    if exclusive and path.exists():
        raise BrokerFilesError(f"{path} exists; provision and remove it first")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.chmod(PRIVATE_FILE_MODE)
        if exclusive:
            # link() fails if the target appeared meanwhile; rename() would replace it.
            os.link(tmp, path)
        else:
            tmp.replace(path)
    except FileExistsError:
        raise BrokerFilesError(f"{path} exists; provision and remove it first") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
