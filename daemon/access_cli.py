"""`emon audit`: the audit log from the database, and who a command-line caller is.

The CLI talks to PostgreSQL with the database's credential, so whoever runs it can read
what that credential can: the credential is the boundary, not this code. What the CLI
adds is the record. A command-line caller is:

    actor   the officer named with `--as ID` (checked against subjects.yaml, and for
            `emon track` the subject must be in that officer's caseload), else the OS
            account as `os:<user>`
    source  `cli:<os user>@<host>`, always

so the audit log says both whose purpose a read served and which login on which machine
made it. Every `emon audit` is itself written to the log, in the same transaction as the
read (no answer without its row).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from daemon.configfiles import ConfigError, LoadedConfig, load_config
from daemon.store.access_repo import AUDIT_LIMIT_MAX, AccessStore, AuditQuery
from daemon.store.errors import StoreError

DEFAULT_LIMIT: Final = 1000
DETAIL_MAX_CHARS: Final = 120


class CliAccessError(Exception):
    """The command-line caller cannot do this (unknown officer, out of caseload)."""


@dataclass(frozen=True, slots=True)
class CliCaller:
    actor: str
    source: str


def os_account() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's anonymous uid)
        return "unknown"


def cli_caller(as_officer: str | None, loaded: LoadedConfig | None) -> CliCaller:
    source = f"cli:{os_account()}@{socket.gethostname()}"
    if as_officer is None:
        return CliCaller(f"os:{os_account()}", source)
    if loaded is not None and as_officer not in loaded.core.alerting.directory.officers:
        raise CliAccessError(f"--as {as_officer}: no such officer in subjects.yaml")
    return CliCaller(as_officer, source)


def _time(text: str | None, flag: str) -> datetime | None:
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise CliAccessError(f"{flag}: not an ISO 8601 time: {text!r}") from None
    if at.tzinfo is None:
        raise CliAccessError(f"{flag}: needs a UTC offset: {text!r}")
    return at.astimezone(UTC)


def format_entry(row: dict[str, Any]) -> str:
    detail = json.dumps(row["detail"], ensure_ascii=False, default=str, sort_keys=True)
    if len(detail) > DETAIL_MAX_CHARS:
        detail = detail[: DETAIL_MAX_CHARS - 1] + "…"
    return (
        f"{row['at'].astimezone(UTC):%Y-%m-%d %H:%M:%S}Z  {row['actor']:<14} "
        f"{row['action']:<22} {row['object']:<36} {row['source']:<28} {detail}"
    )


def _cmd_audit(args: argparse.Namespace) -> int:
    from daemon.store.migrations import migrate
    from daemon.store.pool import open_pool

    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"emon audit: config {args.config} invalid: {len(exc.problems)} problem(s)",
              file=sys.stderr)
        return 2
    dsn = loaded.settings.database.dsn
    if not dsn:
        print("no database: set EMON_DATABASE_URL or database.dsn", file=sys.stderr)
        return 2
    try:
        caller = cli_caller(args.as_officer, loaded)
        if not 1 <= args.limit <= AUDIT_LIMIT_MAX:
            raise CliAccessError(f"--limit must be 1..{AUDIT_LIMIT_MAX}")
        query = AuditQuery(
            since=_time(args.start, "--from"), until=_time(args.end, "--to"),
            actor=args.actor, action=args.action, subject_id=args.subject, limit=args.limit,
        )
    except CliAccessError as exc:
        print(f"emon audit: {exc}", file=sys.stderr)
        return 2

    async def run() -> list[dict[str, Any]]:
        await migrate(dsn)
        async with open_pool(dsn, min_size=1, max_size=1, name="emon-audit") as pool:
            return await AccessStore(pool).read_audit(
                query, actor=caller.actor, source=caller.source
            )

    try:
        rows = asyncio.run(run())
    except StoreError as exc:
        print(f"emon audit: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for row in rows:
            print(json.dumps({**row, "at": row["at"].isoformat()}, ensure_ascii=False,
                             default=str))
    else:
        for row in rows:
            print(format_entry(row))
        more = " (limit reached: narrow with --from/--to)" if len(rows) == query.limit else ""
        print(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}{more}", file=sys.stderr)
    return 0


def add_as_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--as", dest="as_officer", default=None, metavar="OFFICER_ID",
        help=f"the officer on whose behalf you {what} (recorded in the audit log; "
        "default: your OS account)",
    )


def add_parser(sub: Any, default_config: Path) -> None:
    audit = sub.add_parser(
        "audit", help="the audit log: who read or did what, when, from where (itself audited)"
    )
    audit.add_argument("--from", dest="start", default=None, help="RFC 3339 time with offset")
    audit.add_argument("--to", dest="end", default=None, help="end (exclusive)")
    audit.add_argument("--actor", default=None, help="officer id, os:<user>, retention, ...")
    audit.add_argument("--action", default=None,
                       help="e.g. track.read; a prefix ending in '.' (alert.) for a family")
    audit.add_argument("--subject", default=None,
                       help="entries about a subject: its tracks, alerts and silences")
    audit.add_argument("--limit", type=int, default=DEFAULT_LIMIT,
                       help=f"newest N entries, printed oldest first (default {DEFAULT_LIMIT})")
    audit.add_argument("--json", action="store_true", help="one JSON object per entry")
    audit.add_argument("--config", type=Path, default=default_config)
    add_as_argument(audit, "read the log")
    audit.set_defaults(func=_cmd_audit)
