"""The `emon` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from daemon.configfiles import ConfigError, LoadedConfig, load_config

_LOGGER = logging.getLogger("emon")

DEFAULT_CONFIG_DIR = Path("config")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Their routine chatter (every tick run, every failed reconnect attempt during an outage
    # that emon already reports once) would bury the lines an operator needs.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)


def _load_or_report(directory: Path) -> LoadedConfig | None:
    try:
        loaded = load_config(directory)
        for warning in loaded.warnings:
            print(f"{directory}/{warning}", file=sys.stderr)
        return loaded
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{directory}/{problem}", file=sys.stderr)
        print(f"config invalid: {len(exc.errors)} problem(s)", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from daemon.app import Daemon, DaemonError

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    if args.validate_config:
        print(f"config {args.config} valid (version {loaded.core.version})")
        return 0

    async def main() -> None:
        await Daemon(loaded, freeze_gc=True).run()  # its own process: daemon/gcpolicy.py

    try:
        asyncio.run(main())
    except DaemonError as exc:
        _LOGGER.error("%s", exc)
        return 1
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from daemon.replay import replay_lines

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    source = sys.stdin if str(args.input) == "-" else args.input.open(encoding="utf-8")
    with source:
        stats = replay_lines(
            source, loaded.core, loaded.settings.tick_interval_seconds, sys.stdout,
            None if args.quiet else sys.stderr, escalation=args.escalation,
        )
    return 0 if stats.bad_lines == 0 else 3


def _cmd_config_check(args: argparse.Namespace) -> int:
    from daemon.configtools import config_check

    return config_check(args.directory, sys.stdout, as_json=args.json)


def _cmd_config_schema(args: argparse.Namespace) -> int:
    from daemon.configschema import write_schemas

    return write_schemas(args.out, check_only=args.check, out=sys.stdout)


def _cmd_config_diff(args: argparse.Namespace) -> int:
    from daemon.whatif import run_diff

    return run_diff(args)


def _cmd_db_migrate(args: argparse.Namespace) -> int:
    from daemon.store.errors import StoreError
    from daemon.store.migrations import migrate

    loaded = _load_or_report(args.config)
    if loaded is None:
        return 2
    dsn = loaded.settings.database.dsn
    if not dsn:
        print("no database: set EMON_DATABASE_URL or database.dsn", file=sys.stderr)
        return 2
    try:
        info = asyncio.run(migrate(dsn))
    except StoreError as exc:
        print(f"migration failed: {exc}", file=sys.stderr)
        return 1
    print(f"schema at {info.version} ({'TimescaleDB' if info.timescale else 'plain PostgreSQL'})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from daemon.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="emon", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    run.add_argument("--validate-config", action="store_true",
                     help="validate the config and exit")
    run.set_defaults(func=_cmd_run)

    replay = sub.add_parser("replay", help="run the core offline over a JSONL recording")
    replay.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    replay.add_argument("--quiet", action="store_true", help="no progress on stderr")
    replay.add_argument("--escalation", action="store_true",
                        help="also the escalation steps (notified, escalated, reminded) the "
                        "policies would send if nobody acknowledged")
    replay.add_argument("input", type=Path, help="JSONL file, or - for stdin")
    replay.set_defaults(func=_cmd_replay)

    config = sub.add_parser("config", help="operator config tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check", help="validate a config directory: one line per problem, exit 1 if invalid"
    )
    check.add_argument("directory", type=Path)
    check.add_argument("--json", action="store_true", help="one JSON object per problem")
    check.set_defaults(func=_cmd_config_check)
    schema = config_sub.add_parser(
        "schema", help="write the JSON Schema files editors use to complete and check config"
    )
    schema.add_argument("--out", type=Path, default=DEFAULT_CONFIG_DIR / "schema")
    schema.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if the files there are stale")
    schema.set_defaults(func=_cmd_config_schema)
    from daemon.whatif import add_diff_arguments

    diff = config_sub.add_parser(
        "diff", help="what-if: replay stored pings through two configs, print alert changes"
    )
    add_diff_arguments(diff)
    diff.set_defaults(func=_cmd_config_diff)

    db = sub.add_parser("db", help="database tools")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_migrate = db_sub.add_parser("migrate", help="apply schema migrations")
    db_migrate.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    db_migrate.set_defaults(func=_cmd_db_migrate)

    demo = sub.add_parser("demo", help="live demo: local broker and database, simulated day")
    demo.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    demo.add_argument("--speed", type=float, default=720.0,
                      help="virtual seconds per wall second (720: a day in 2 minutes)")
    demo.add_argument("--run-dir", type=Path, default=Path(".run/demo"))
    demo.add_argument("--verbose", action="store_true", help="show the daemon's INFO log")
    demo.add_argument("--exit-after-day", action="store_true",
                      help="stop once the simulated day is published and processed")
    demo.set_defaults(func=_cmd_demo)

    from daemon.alerts_cli import add_parsers as add_alert_parsers

    add_alert_parsers(sub, DEFAULT_CONFIG_DIR)

    from daemon.broker_cli import add_parser as add_broker_parser
    from daemon.reports import add_parsers as add_store_parsers
    from simulators.cli import add_parser as add_sim_parser

    add_broker_parser(sub)
    add_sim_parser(sub)
    add_store_parsers(sub, db_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
