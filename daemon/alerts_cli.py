"""`emon alerts ...`, `emon silences ...` (clients of the daemon's HTTP API) and
`emon token ...` (straight to the database; `emon audit` is in daemon.access_cli).

Why the API for alerts and silences: the daemon's AlertBook is the single writer of alert
state. A CLI writing the database directly would leave the running daemon's book stale (it
would go on escalating an alert the database says is acknowledged) and would skip the
publish on the alerts topic; through the API the action is the same one an officer's app
makes, with the same token, caseload scope and audit.

Why the database for tokens: creating a token is an operator's act on the host (there is no
token yet to call the API with), and tokens are not alert state the daemon holds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ENV_API_URL = "EMON_API_URL"
ENV_TOKEN = "EMON_TOKEN"
DEFAULT_API_URL = "http://127.0.0.1:9480"
HTTP_TIMEOUT_SECONDS = 15.0


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def _token(args: argparse.Namespace) -> str:
    if args.token_file is not None:
        return Path(args.token_file).read_text(encoding="utf-8").strip()
    token = os.environ.get(ENV_TOKEN, "")
    if not token:
        raise ApiError(0, f"set {ENV_TOKEN} or pass --token-file")
    return token


def call_api(
    base_url: str, token: str, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base_url.rstrip("/") + path, data=data, method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            detail: Any = json.load(exc)
        except ValueError:
            detail = exc.reason
        raise ApiError(exc.code, detail) from None
    except urllib.error.URLError as exc:
        raise ApiError(0, f"cannot reach {base_url}: {exc.reason}") from None


def _print_alerts(alerts: list[dict[str, Any]]) -> None:
    print(f"{'alert_id':36}  {'state':12} {'tier':8} {'rule':16} {'subject':10} "
          f"{'officer':10} opened (UTC)")
    for a in alerts:
        print(
            f"{a['alert_id']:36}  {a['state']:12} {a['tier']:8} {a['rule']:16} "
            f"{a['subject_id']:10} {a.get('officer_id') or '-':10} {a['opened_at'][:19]}"
        )
    print(f"{len(alerts)} alert(s)")


def _cmd_alerts(args: argparse.Namespace) -> int:
    url = args.api_url
    try:
        token = _token(args)
        if args.alerts_command == "list":
            query = f"?state={args.state}&limit={args.limit}"
            if args.subject:
                query += f"&subject={args.subject}"
            result = call_api(url, token, "GET", "/alerts" + query)
            if args.json:
                print(json.dumps(result["alerts"], ensure_ascii=False, indent=2))
            else:
                _print_alerts(result["alerts"])
            return 0
        if args.alerts_command == "show":
            result = call_api(url, token, "GET", f"/alerts/{args.alert_id}")
        elif args.alerts_command == "ack":
            result = call_api(url, token, "POST", f"/alerts/{args.alert_id}/ack",
                              {"note": args.note} if args.note else {})
        elif args.alerts_command == "resolve":
            result = call_api(url, token, "POST", f"/alerts/{args.alert_id}/resolve",
                              {"disposition": args.disposition, "note": args.note})
        else:
            result = call_api(url, token, "POST", f"/alerts/{args.alert_id}/notes",
                              {"note": args.note})
    except ApiError as exc:
        print(f"emon alerts {args.alerts_command}: {exc}", file=sys.stderr)
        return 1 if exc.status else 2
    print(json.dumps(result, ensure_ascii=False, indent=2, default=str))
    return 0


def _cmd_silences(args: argparse.Namespace) -> int:
    url = args.api_url
    try:
        token = _token(args)
        if args.silences_command == "list":
            result = call_api(url, token, "GET", "/silences")
        elif args.silences_command == "add":
            body: dict[str, Any] = {"reason": args.reason, "duration_seconds": args.minutes * 60}
            if args.subject:
                body["subject_id"] = args.subject
            if args.rule:
                body["rule"] = args.rule
            result = call_api(url, token, "POST", "/silences", body)
        else:
            result = call_api(url, token, "DELETE", f"/silences/{args.silence_id}")
    except ApiError as exc:
        print(f"emon silences {args.silences_command}: {exc}", file=sys.stderr)
        return 1 if exc.status else 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    from daemon.access import TokenRole
    from daemon.access_cli import cli_caller
    from daemon.configfiles import load_config
    from daemon.officer_api import PRINCIPAL_RE
    from daemon.store.access_repo import AccessStore, new_token
    from daemon.store.errors import StoreError
    from daemon.store.migrations import migrate
    from daemon.store.pool import open_pool

    loaded = load_config(args.config)
    dsn = loaded.settings.database.dsn
    if not dsn:
        print("no database: set EMON_DATABASE_URL or database.dsn", file=sys.stderr)
        return 2
    # On the host, with the database's credential: the OS account is who did it.
    caller = cli_caller(None, None)
    role, principal = TokenRole.OFFICER, ""
    if args.token_command == "create":
        if args.officer is not None:
            principal = args.officer
            if principal not in loaded.officers:
                print(f"officer {principal!r} is not in {args.config}/subjects.yaml",
                      file=sys.stderr)
                return 2
        else:
            role = TokenRole.OPERATOR if args.operator is not None else TokenRole.ADMIN
            principal = args.operator if args.operator is not None else args.admin
            if not PRINCIPAL_RE.match(principal):
                print(f"{principal!r}: 1-64 of A-Z a-z 0-9 . _ @ -", file=sys.stderr)
                return 2

    async def run() -> int:
        await migrate(dsn)
        async with open_pool(dsn, min_size=1, max_size=1, name="emon-token") as pool:
            store = AccessStore(pool)
            if args.token_command == "create":
                token = new_token()
                expires = (
                    datetime.now(UTC) + timedelta(days=args.expires_days)
                    if args.expires_days else None
                )
                token_id = await store.create_token(
                    principal, args.label, expires, token, role=role,
                    actor=caller.actor, source=caller.source,
                )
                print(f"token id {token_id} for {role.value} {principal}"
                      f"{f' (expires {expires:%Y-%m-%d})' if expires else ''}", file=sys.stderr)
                print("shown once; only its SHA-256 is stored:", file=sys.stderr)
                print(token)
                return 0
            if args.token_command == "list":
                for row in await store.list_tokens(args.officer):
                    state = "revoked" if row["revoked_at"] else "active"
                    print(f"{row['token_id']}  {row['officer_id']:12} {row['role']:8} "
                          f"{state:8} {row['label']!r} created {row['created_at']:%Y-%m-%d}")
                return 0
            if args.token_id is None:
                revoked = await store.revoke_person(
                    args.officer, actor=caller.actor, source=caller.source
                )
                print(f"revoked {len(revoked)} token(s) of {args.officer}", file=sys.stderr)
                return 0 if revoked else 1
            ok = await store.revoke_token(args.token_id, actor=caller.actor, source=caller.source)
            print("revoked" if ok else "no such active token", file=sys.stderr)
            return 0 if ok else 1

    try:
        return asyncio.run(run())
    except StoreError as exc:
        print(f"emon token: {exc}", file=sys.stderr)
        return 1


def add_parsers(sub: Any, default_config: Path) -> None:
    def api_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--api-url", default=os.environ.get(ENV_API_URL, DEFAULT_API_URL),
                       help=f"daemon HTTP address (env {ENV_API_URL})")
        p.add_argument("--token-file", type=Path, default=None,
                       help=f"file holding your token (default: env {ENV_TOKEN})")

    alerts = sub.add_parser("alerts", help="officer actions on alerts (through the daemon's API)")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    listing = alerts_sub.add_parser("list", help="alerts in your caseload")
    listing.add_argument("--state", default="unresolved",
                         choices=["unresolved", "open", "acknowledged", "resolved", "all"])
    listing.add_argument("--subject", default=None)
    listing.add_argument("--limit", type=int, default=200)
    listing.add_argument("--json", action="store_true")
    show = alerts_sub.add_parser("show", help="one alert with its escalation and history")
    show.add_argument("alert_id")
    ack = alerts_sub.add_parser("ack", help="acknowledge: you own it now")
    ack.add_argument("alert_id")
    ack.add_argument("--note", default=None)
    resolve = alerts_sub.add_parser("resolve", help="resolve with a disposition")
    resolve.add_argument("alert_id")
    resolve.add_argument("--disposition", required=True,
                         choices=["confirmed_violation", "false_alarm", "device_fault",
                                  "approved"])
    resolve.add_argument("--note", default=None)
    note = alerts_sub.add_parser("note", help="add a note")
    note.add_argument("alert_id")
    note.add_argument("note")
    for p in (listing, show, ack, resolve, note):
        api_args(p)
        p.set_defaults(func=_cmd_alerts)

    silences = sub.add_parser("silences", help="silences (through the daemon's API)")
    silences_sub = silences.add_subparsers(dest="silences_command", required=True)
    s_list = silences_sub.add_parser("list", help="silences in force")
    s_add = silences_sub.add_parser("add", help="mute a subject, a rule, or both, for a while")
    s_add.add_argument("--subject", default=None)
    s_add.add_argument("--rule", default=None)
    s_add.add_argument("--reason", required=True)
    s_add.add_argument("--minutes", type=float, required=True)
    s_end = silences_sub.add_parser("end", help="end a silence early")
    s_end.add_argument("silence_id")
    for p in (s_list, s_add, s_end):
        api_args(p)
        p.set_defaults(func=_cmd_silences)

    token = sub.add_parser("token", help="officers' API tokens (database)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="new token for an officer, operator or admin (printed once)"
    )
    who = create.add_mutually_exclusive_group(required=True)
    who.add_argument("--officer", help="an officer in subjects.yaml: their role and caseload")
    who.add_argument("--operator", help="a person id: config and silences, no caseload")
    who.add_argument("--admin", help="a person id: tokens and the audit log, no caseload")
    create.add_argument("--label", default="")
    create.add_argument("--expires-days", type=float, default=90.0,
                        help="0 for no expiry (default 90)")
    t_list = token_sub.add_parser("list", help="tokens (never their values)")
    t_list.add_argument("--officer", default=None, help="only this person's tokens")
    revoke = token_sub.add_parser("revoke", help="revoke a token by id, or all of a person's")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("token_id", nargs="?", default=None)
    which.add_argument("--officer", default=None,
                       help="every active token of this person (officer, operator or admin id)")
    for p in (create, t_list, revoke):
        p.add_argument("--config", type=Path, default=default_config)
        p.set_defaults(func=_cmd_token)

    from daemon.access_cli import add_parser as add_audit_parser

    add_audit_parser(sub, default_config)
