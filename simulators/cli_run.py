"""`emon sim run FILE... [--expect] [--live]`: scenarios, offline or against a running daemon."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiomqtt

from simulators.scenario import (
    Scenario,
    ScenarioError,
    ScenarioResult,
    compile_scenario,
    dumps_line,
    format_result,
    load_scenario,
    load_scenario_config,
    run_offline,
    scenario_files,
)
from simulators.scenario_live import DEFAULT_LIVE_TIMEOUT_S, LiveTarget, compile_for_live, run_live
from simulators.scripted_day import SimMessage, write_jsonl

EXIT_OK: Final = 0
EXIT_EXPECTATIONS_FAILED: Final = 1
EXIT_BAD_SCENARIO: Final = 2
EXIT_BROKER_ERROR: Final = 3


def add_run_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parse_broker: argparse._ActionType,
    positive_float: argparse._ActionType,
) -> None:
    parser = sub.add_parser(
        "run",
        help="run scenarios (YAML) offline through replay, or live against a running daemon",
        description=(
            "Compile scenario files (or every *.yaml in a directory) into device messages. "
            "With --expect, check the alerts against the scenario's expectations and exit 1 "
            "with a readable diff when any fails: offline through the same pure pipeline "
            "as `emon replay` (default), or --live against a daemon reading the broker. "
            "Without --expect, write the messages (--out) or publish them (--live)."
        ),
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE",
                        help="scenario YAML files or directories of them")
    parser.add_argument("--expect", action="store_true",
                        help="check expectations; exit 1 with a diff on failure")
    parser.add_argument("--live", action="store_true",
                        help="publish to the broker (a running daemon evaluates)")
    parser.add_argument("--config", type=Path, default=None,
                        help="config directory instead of the scenario's own")
    parser.add_argument("--broker", type=parse_broker, default="127.0.0.1:1883",
                        metavar="HOST:PORT", help="MQTT broker for --live (127.0.0.1:1883)")
    parser.add_argument("--speed", type=positive_float, default=None, metavar="X",
                        help="--live: virtual time X times wall time (default: fastest)")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_LIVE_TIMEOUT_S,
                        metavar="SECONDS", help="--live: wait this long for missing alerts")
    parser.add_argument("--out", metavar="FILE.jsonl",
                        help="write the messages as a replay file ('-' = stdout)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON line per scenario result instead of the text diff")
    parser.add_argument("--verbose", action="store_true",
                        help="show met expectations of passing scenarios too")
    parser.set_defaults(func=run_command)


def _status_line(result: ScenarioResult) -> str:
    pending = result.scenario.model.pending
    if pending is None:
        return format_result(result)
    if result.passed:
        return (format_result(result) + "\n    pending scenario now PASSES: remove `pending` "
                "from it")
    return format_result(result).replace("FAIL ", "PENDING ", 1) + f"\n    pending: {pending}"


def run_command(args: argparse.Namespace) -> int:
    try:
        files = scenario_files(args.files)
        scenarios = [load_scenario(path) for path in files]
    except ScenarioError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_BAD_SCENARIO
    if not scenarios:
        sys.stderr.write("emon sim run: no scenario files\n")
        return EXIT_BAD_SCENARIO
    if not args.expect:
        return _produce(args, scenarios)
    failed = 0
    results: list[ScenarioResult] = []
    for scenario in scenarios:
        try:
            loaded = load_scenario_config(scenario, args.config)
            if args.live:
                host, port = args.broker
                result = asyncio.run(
                    run_live(scenario, loaded,
                             LiveTarget(host, port, args.speed, args.timeout))
                )
            else:
                result = run_offline(compile_scenario(scenario, loaded.core), loaded)
        except ScenarioError as exc:
            sys.stderr.write(f"{exc}\n")
            return EXIT_BAD_SCENARIO
        except aiomqtt.MqttError as exc:
            sys.stderr.write(f"emon sim run: MQTT broker: {exc}\n")
            return EXIT_BROKER_ERROR
        results.append(result)
        if args.json:
            sys.stdout.write(dumps_line(result) + "\n")
        else:
            sys.stdout.write(_status_line(result) + "\n")
        sys.stdout.flush()
        if not result.passed and scenario.model.pending is None:
            failed += 1
        if result.passed and scenario.model.pending is not None:
            failed += 1  # a fixed gap must be acknowledged by removing `pending`
    if not args.json and len(results) > 1:
        passed = sum(r.passed for r in results)
        pending = sum(1 for r in results if not r.passed and r.scenario.model.pending)
        sys.stdout.write(f"{passed} passed, {failed} failed, {pending} pending "
                         f"(of {len(results)} scenarios)\n")
    return EXIT_EXPECTATIONS_FAILED if failed else EXIT_OK


def _produce(args: argparse.Namespace, scenarios: Sequence[Scenario]) -> int:
    from simulators.publisher import publish

    messages: list[SimMessage] = []
    now = datetime.now(UTC)
    for scenario in scenarios:
        try:
            loaded = load_scenario_config(scenario, args.config)
            compiled = (
                compile_for_live(scenario, loaded, now) if args.live
                else compile_scenario(scenario, loaded.core)
            )
        except ScenarioError as exc:
            sys.stderr.write(f"{exc}\n")
            return EXIT_BAD_SCENARIO
        messages += compiled.messages
    messages.sort(key=lambda m: (m.at, m.topic))
    if args.out is not None:
        write_jsonl(messages, args.out)
        return EXIT_OK
    if not args.live:
        sys.stderr.write("emon sim run: give --expect, --out FILE or --live\n")
        return EXIT_BAD_SCENARIO
    host, port = args.broker
    try:
        asyncio.run(publish(messages, host=host, port=port, speed=args.speed,
                            client_id="emon-sim-scenario", progress=True))
    except aiomqtt.MqttError as exc:
        sys.stderr.write(f"emon sim run: MQTT broker {host}:{port}: {exc}\n")
        return EXIT_BROKER_ERROR
    return EXIT_OK
