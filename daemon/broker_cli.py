"""`emon broker acl` and `emon broker passwords`: Mosquitto's files from the roster."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.broker import (
    DEFAULT_ALERTS_READER,
    DEFAULT_OPERATOR,
    Account,
    BrokerFilesError,
    build_accounts,
    parse_password_file,
    plan_passwords,
    render_acl,
    render_credentials,
    render_password_file,
    write_private,
)
from daemon.configfiles import ConfigError, load_config

EXIT_CONFIG_INVALID = 2
EXIT_BROKER_FILES = 1


def _accounts(args: argparse.Namespace) -> list[Account] | int:
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{args.config}/{problem}", file=sys.stderr)
        print(f"config invalid: {len(exc.problems)} problem(s)", file=sys.stderr)
        return EXIT_CONFIG_INVALID
    return build_accounts(
        loaded,
        alerts_readers=args.alerts_reader or [DEFAULT_ALERTS_READER],
        operators=args.operator or [DEFAULT_OPERATOR],
    )


def _cmd_acl(args: argparse.Namespace) -> int:
    try:
        accounts = _accounts(args)
        if isinstance(accounts, int):
            return accounts
        write_private(args.out, render_acl(accounts, str(args.config)))
    except BrokerFilesError as exc:
        print(f"broker acl: {exc}", file=sys.stderr)
        return EXIT_BROKER_FILES
    devices = sum(1 for a in accounts if a.role.value in ("device", "owntracks-user"))
    print(f"{args.out}: {len(accounts)} accounts ({devices} devices); reload the broker (SIGHUP)")
    return 0


def _cmd_passwords(args: argparse.Namespace) -> int:
    out: Path = args.out
    try:
        accounts = _accounts(args)
        if isinstance(accounts, int):
            return accounts
        existing = (
            parse_password_file(out.read_text(encoding="utf-8"), str(out)) if out.exists() else {}
        )
        plan = plan_passwords(accounts, existing, args.rotate or ())
        if plan.new_passwords:
            if args.credentials is None:
                raise BrokerFilesError(
                    f"{len(plan.new_passwords)} account(s) need a new password: "
                    "give --credentials FILE to receive them"
                )
            # Credentials first: if that fails, the password file still matches the
            # devices in the field.
            write_private(
                args.credentials,
                render_credentials(plan.new_passwords, str(args.config)),
                exclusive=True,
            )
        write_private(out, render_password_file(plan.entries, str(args.config)))
    except (BrokerFilesError, OSError) as exc:
        print(f"broker passwords: {exc}", file=sys.stderr)
        return EXIT_BROKER_FILES
    print(
        f"{out}: {len(plan.entries)} accounts: {len(plan.kept)} kept, "
        f"{len(plan.new_passwords)} new or rotated"
        + (f" (passwords in {args.credentials})" if plan.new_passwords else "")
        + f", {len(plan.revoked)} revoked; reload the broker (SIGHUP)"
    )
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=Path("config"),
                        help="config directory holding subjects.yaml (the roster)")
    parser.add_argument("--out", type=Path, required=True, help="file to write")
    parser.add_argument("--alerts-reader", action="append", metavar="ACCOUNT",
                        help=f"account that may read alerts (repeatable; default "
                             f"{DEFAULT_ALERTS_READER}); one per console")
    parser.add_argument("--operator", action="append", metavar="ACCOUNT",
                        help=f"account that may read dead letters and the operators' channel "
                             f"(repeatable; default {DEFAULT_OPERATOR})")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    broker = sub.add_parser("broker", help="Mosquitto password and ACL files from the roster")
    broker_sub = broker.add_subparsers(dest="broker_command", required=True)

    acl = broker_sub.add_parser("acl", help="write the ACL file (config/mosquitto/README.md)")
    _common(acl)
    acl.set_defaults(func=_cmd_acl)

    passwords = broker_sub.add_parser(
        "passwords", help="write or update the password file (hashes only)"
    )
    _common(passwords)
    passwords.add_argument("--credentials", type=Path,
                           help="new file (mode 0600) that receives the plain passwords of "
                                "new or rotated accounts")
    passwords.add_argument("--rotate", action="append", metavar="ACCOUNT",
                           help="give this account a new password (repeatable)")
    passwords.set_defaults(func=_cmd_passwords)
