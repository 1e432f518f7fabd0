"""`emon sim`: publish the scripted demo day, write it as a replay file, or list its alerts."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import date, datetime, timedelta
from typing import Final

import aiomqtt

from simulators.publisher import publish
from simulators.scripted_day import LOCAL_TZ, expected_alerts, scripted_day, write_jsonl

_LOGGER = logging.getLogger(__name__)

DEFAULT_BROKER: Final = "127.0.0.1:1883"
DEFAULT_MQTT_PORT: Final = 1883
DEFAULT_PING_INTERVAL_S: Final = 60

EXIT_OK: Final = 0
EXIT_BROKER_ERROR: Final = 1
EXIT_INTERRUPTED: Final = 130


def parse_broker(value: str) -> tuple[str, int]:
    """`HOST:PORT`, `HOST`, `[v6addr]:PORT` or `[v6addr]` -> (host, port)."""
    host, port = value, DEFAULT_MQTT_PORT
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise argparse.ArgumentTypeError(f"bad broker address {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"bad broker address {value!r}")
            port = _parse_port(rest[1:], value)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        port = _parse_port(port_text, value)
    if not host:
        raise argparse.ArgumentTypeError(f"bad broker address {value!r}: no host")
    return host, port


def _parse_port(text: str, whole: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad broker port in {whole!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"broker port out of range in {whole!r}")
    return port


def _parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from None


def _positive_float(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {value!r}")
    return number


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return number


def default_day(now: datetime | None = None) -> date:
    """Yesterday in the subjects' time zone, so every timestamp of the day is in the past."""
    current = now if now is not None else datetime.now(LOCAL_TZ)
    return current.astimezone(LOCAL_TZ).date() - timedelta(days=1)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `sim` subcommand; it sets `func(args) -> exit code`."""
    parser = subparsers.add_parser(
        "sim",
        help="simulate the scripted demo day (publish, write a replay file, or list alerts)",
        description=(
            "Simulate three ankle tags (s001..s003) through one scripted local day "
            "(Asia/Shanghai) that should raise exactly the alerts printed by --expect. "
            "By default the messages are published to the MQTT broker."
        ),
    )
    parser.add_argument(
        "--day",
        type=_parse_day,
        default=None,
        metavar="YYYY-MM-DD",
        help="local day to simulate (default: yesterday in Asia/Shanghai)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed for GNSS noise (1)")
    parser.add_argument(
        "--ping-interval",
        type=_positive_int,
        default=DEFAULT_PING_INTERVAL_S,
        metavar="SECONDS",
        help=f"seconds between location fixes per tag ({DEFAULT_PING_INTERVAL_S})",
    )
    parser.add_argument(
        "--broker",
        type=parse_broker,
        default=DEFAULT_BROKER,
        metavar="HOST:PORT",
        help=f"MQTT broker ({DEFAULT_BROKER})",
    )
    parser.add_argument(
        "--speed",
        type=_positive_float,
        default=None,
        metavar="X",
        help="run virtual time X times faster than wall time (default: as fast as possible)",
    )
    parser.add_argument("--client-id", default="emon-sim", help="MQTT client identifier (emon-sim)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress lines on stderr while publishing"
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--out",
        metavar="FILE.jsonl",
        help="write the replay file instead of publishing ('-' = stdout)",
    )
    mode.add_argument(
        "--expect",
        action="store_true",
        help="print the expected alerts as JSON lines and exit",
    )
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(
        dest="sim_command", metavar="{run,fleet,load}",
        description="Without a command, `emon sim` simulates the scripted demo day.",
    )
    from simulators.cli_fleet import add_fleet_parser
    from simulators.cli_run import add_run_parser
    from simulators.load import add_load_parser

    add_run_parser(commands, parse_broker, _positive_float)
    add_fleet_parser(commands, parse_broker, _positive_float, _positive_int)
    add_load_parser(commands, parse_broker, _positive_float, _positive_int)


def run(args: argparse.Namespace) -> int:
    """Carry out `emon sim` for parsed `args`; returns the process exit code."""
    if args.expect:
        for alert in expected_alerts():
            sys.stdout.write(json.dumps(alert.to_json(), separators=(",", ":")) + "\n")
        sys.stdout.flush()
        return EXIT_OK

    day: date = args.day if args.day is not None else default_day()
    messages = scripted_day(day, seed=args.seed, ping_interval_seconds=args.ping_interval)

    if args.out is not None:
        try:
            count = write_jsonl(messages, args.out)
        except BrokenPipeError:
            # stdout closed early (e.g. `| head`): not an error; keep Python's exit quiet.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return EXIT_OK
        _LOGGER.info("Wrote %s messages for %s to %s", count, day, args.out)
        return EXIT_OK

    host, port = args.broker
    try:
        count = asyncio.run(
            publish(
                messages,
                host=host,
                port=port,
                speed=args.speed,
                client_id=args.client_id,
                progress=not args.quiet,
            )
        )
    except aiomqtt.MqttError as exc:
        sys.stderr.write(f"emon sim: MQTT broker {host}:{port}: {exc}\n")
        return EXIT_BROKER_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("emon sim: interrupted\n")
        return EXIT_INTERRUPTED
    _LOGGER.info("Published %s messages for %s to %s:%s", count, day, host, port)
    return EXIT_OK
