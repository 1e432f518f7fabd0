"""Scenarios live: publish to the broker a running daemon reads, watch its alerts, compare.

The scenario is moved to the latest day on which all of it lies in the past (the daemon
refuses fixes from the future and keeps time of day for curfews), published (optionally
paced with `speed`), and the alerts on `emon/v1/alerts/#` for the scenario's subjects are
collected until every expectation is met (then a short settle catches unexpected ones) or
the timeout passes. Times are checked on the alerts' own event times: a live run cannot see
when the daemon decided in scenario time.

Device state in the daemon carries over between runs: a device whose newest fix is newer
than the scenario's treats the scenario's fixes as late, and an alert still unresolved from
an earlier run is updated, not opened. Run live scenarios against a fresh daemon (or fresh
devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import aiomqtt

from daemon.configfiles import LoadedConfig
from daemon.wire import ALERTS_TOPIC_PREFIX
from simulators.publisher import publish
from simulators.scenario import (
    CompiledScenario,
    Observed,
    Scenario,
    ScenarioError,
    ScenarioResult,
    compile_scenario,
    evaluate,
    live_day,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_LIVE_TIMEOUT_S: Final = 30.0
"""How long after the last publish missing alerts are waited for."""
SETTLE_S: Final = 2.0
"""After every expectation is met, how long unexpected alerts are still collected."""
MAX_LIVE_DAYS_BACK: Final = 8
QOS_AT_LEAST_ONCE: Final = 1


@dataclass(frozen=True, slots=True)
class LiveTarget:
    host: str
    port: int
    speed: float | None = None
    timeout_s: float = DEFAULT_LIVE_TIMEOUT_S
    client_id: str = "emon-sim-scenario"


def compile_for_live(scenario: Scenario, loaded: LoadedConfig, now: datetime) -> CompiledScenario:
    if scenario.model.clock_driven:
        raise ScenarioError(
            f"{scenario.path}: clock-driven scenario (its alerts come from the daemon's clock, "
            "not from a message): run it offline, or live in real time"
        )
    day = live_day(scenario.model, now)
    for _ in range(MAX_LIVE_DAYS_BACK):
        compiled = compile_scenario(scenario, loaded.core, day)
        if compiled.end <= now:
            return compiled
        day -= timedelta(days=1)
    raise ScenarioError(f"{scenario.path}: cannot place the scenario in the past week")


def _all_met(compiled: CompiledScenario, observed: Sequence[Observed]) -> bool:
    verdicts = evaluate(compiled, observed)
    return all(v.ok for v in verdicts if v.label == "expected")


async def run_live(
    scenario: Scenario, loaded: LoadedConfig, target: LiveTarget, now: datetime | None = None
) -> ScenarioResult:
    """Publish the scenario to a running daemon's broker and judge the alerts it publishes.

    Raises `aiomqtt.MqttError` if the broker cannot be reached."""
    compiled = compile_for_live(scenario, loaded, now or datetime.now(UTC))
    observed: list[Observed] = []
    earliest = compiled.start - timedelta(minutes=1)
    subscribed = asyncio.Event()
    arrived = asyncio.Event()  # set on each alert kept: the driver re-checks expectations

    async def collect() -> None:
        async with aiomqtt.Client(
            target.host, target.port, identifier=f"{target.client_id}-watch"
        ) as watcher:
            await watcher.subscribe(ALERTS_TOPIC_PREFIX + "#", qos=QOS_AT_LEAST_ONCE)
            subscribed.set()
            async for message in watcher.messages:
                if not isinstance(message.payload, bytes):
                    continue
                try:
                    alert = json.loads(message.payload)
                except ValueError:
                    _LOGGER.warning("unreadable alert message on %s", message.topic.value)
                    continue
                if not isinstance(alert, dict) or alert.get("subject_id") not in compiled.subjects:
                    continue
                item = Observed(alert, None)
                try:
                    if item.transition_at < earliest:
                        continue  # an older alert of the same subject (earlier run, a tick)
                except (KeyError, ValueError):
                    continue
                observed.append(item)
                arrived.set()

    async def drive() -> None:
        await asyncio.wait_for(subscribed.wait(), target.timeout_s)
        await publish(
            compiled.messages, host=target.host, port=target.port, speed=target.speed,
            client_id=target.client_id, progress=False,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + target.timeout_s
        while not _all_met(compiled, observed):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(arrived.wait(), remaining)
        await asyncio.sleep(SETTLE_S)

    async with asyncio.TaskGroup() as tasks:
        collector = tasks.create_task(collect(), name="emon-sim-live-collector")
        driver = tasks.create_task(drive(), name="emon-sim-live-driver")
        await driver
        collector.cancel()
    verdicts = evaluate(compiled, observed)
    note = f"live on {compiled.start.astimezone(compiled.tz):%Y-%m-%d} via {target.host}:" \
           f"{target.port}"
    return ScenarioResult(scenario, "live", verdicts, observed, len(compiled.messages), note)
