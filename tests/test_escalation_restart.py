"""Escalation state lives in PostgreSQL: `kill -9` the daemon between two steps, start it
again, and the next step goes out on time, exactly once. Also: two sweepers on the same
database (two daemons) never send a step twice.

Real processes (`python -m daemon.cli run`), real Mosquitto and PostgreSQL; the ladder is
short (4 s steps, 0.5 s sweeps) so the test takes seconds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
import pytest

from alerts.lifecycle import AlertBook
from alerts.model import Finding, FindingKind, RuleId, Tier
from daemon.localservices import MosquittoProcess, find_free_port
from daemon.notifiers.routing import Router
from daemon.policyfile import PoliciesFile, compile_alerting
from daemon.store.lifecycle_repo import LifecycleStore
from daemon.store.migrations import migrate
from daemon.store.pool import open_pool
from tests.daemon_harness import REPO, config_dir, publish_event

pytestmark = [pytest.mark.services, pytest.mark.fault]

STEP_SECONDS = 4.0
SWEEP_SECONDS = 0.5
# "On time": a step may go out at most one sweep interval late, plus scheduling slack on a
# loaded 2-core machine.
ON_TIME_SLACK_SECONDS = SWEEP_SECONDS + 1.5
POLICIES = f"""
sweep_interval_seconds: {SWEEP_SECONDS}
tiers:
  critical:
    steps:
      - {{targets: [officer], timeout_seconds: {STEP_SECONDS}}}
      - {{targets: [supervisor], timeout_seconds: {STEP_SECONDS}}}
      - {{targets: [command], timeout_seconds: 3600}}
    reminder_interval_seconds: 3600
"""


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return bool(json.load(response).get("ok"))
    except OSError:
        return False


@contextmanager
def daemon_process(
    config: Path, mosquitto: MosquittoProcess, dsn: str, log: Path, client_id: str
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = find_free_port()
    env = dict(os.environ)
    env.update(EMON_MQTT_HOST=mosquitto.host, EMON_MQTT_PORT=str(mosquitto.port),
               EMON_DATABASE_URL=dsn, EMON_HTTP_PORT=str(port))
    settings = config / "settings.yaml"
    text = settings.read_text(encoding="utf-8")
    settings.write_text(text.replace("client_id: emon-daemon", f"client_id: {client_id}"))
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", "run", "--config", str(config)],
            env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def wait_healthy(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    for _ in range(600):
        if await asyncio.to_thread(_healthy, port):
            return
        if process.poll() is not None:
            tail = await asyncio.to_thread(log.read_text, errors="replace")
            raise AssertionError("daemon exited during start-up:\n" + tail[-3000:])
        await asyncio.sleep(0.1)
    raise AssertionError("daemon not healthy in time")


async def ladder_rows(dsn: str) -> list[tuple[str, datetime, int]]:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT kind, at, (payload->'notification'->>'step')::int FROM alert_history"
            " WHERE kind IN ('notified', 'escalated') ORDER BY at, id"
        )
        return [(str(k), at, int(step)) for k, at, step in await cur.fetchall()]


async def test_kill_between_two_steps_then_the_next_step_is_on_time_and_once(
    mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path
) -> None:
    config = config_dir(tmp_path, POLICIES)
    log = tmp_path / "daemon.log"
    client_id = f"emon-r-{uuid.uuid4().hex[:6]}"
    escalated_seen: list[tuple[dict[str, Any], datetime]] = []
    async with aiomqtt.Client(mosquitto.host, mosquitto.port,
                              identifier=f"t-watch-{uuid.uuid4().hex[:6]}") as watch:
        await watch.subscribe("emon/v1/alerts/s001", qos=1)
        await watch.subscribe("emon/v1/officers/+/notifications", qos=1)

        async def collect() -> None:
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                if body.get("transition") == "escalated":
                    escalated_seen.append((body | {"_topic": message.topic.value},
                                           datetime.now(UTC)))

        collector = asyncio.create_task(collect())
        try:
            with daemon_process(config, mosquitto, pg_dsn, log, client_id) as (first, port):
                await wait_healthy(first, port, log)
                await publish_event(mosquitto.host, mosquitto.port, "tag-s001", "strap_open")
                for _ in range(200):
                    rows = await ladder_rows(pg_dsn)
                    if rows:
                        break
                    await asyncio.sleep(0.05)
                assert [(k, s) for k, _, s in rows] == [("notified", 0)]
                opened_at = rows[0][1]
                # Well before step 2 is due (opened + 4 s): kill -9, no drain.
                assert datetime.now(UTC) < opened_at + timedelta(seconds=STEP_SECONDS - 1)
                first.kill()
                first.wait()
            with daemon_process(config, mosquitto, pg_dsn, log, client_id) as (second, port):
                await wait_healthy(second, port, log)
                second_ready_at = datetime.now(UTC)
                due = opened_at + timedelta(seconds=STEP_SECONDS)
                for _ in range(400):
                    rows = await ladder_rows(pg_dsn)
                    if len(rows) >= 2:
                        break
                    await asyncio.sleep(0.05)
                # Let one more step interval pass so a duplicate would have shown up.
                await asyncio.sleep(STEP_SECONDS + 2 * SWEEP_SECONDS)
                rows = await ladder_rows(pg_dsn)
        finally:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)

    # Each step exactly once, stamped with its due time.
    assert [(k, s) for k, _, s in rows] == [("notified", 0), ("escalated", 1), ("escalated", 2)]
    assert rows[1][1] == due
    assert rows[2][1] == due + timedelta(seconds=STEP_SECONDS)
    # On time: published on the alerts topic within a sweep interval (plus slack) of due.
    on_alerts_topic = [(b, t) for b, t in escalated_seen if b["_topic"].startswith("emon/v1/al")]
    assert [b["notification"]["step"] for b, _ in on_alerts_topic] == [1, 2]
    # A step that fell due while no daemon ran (a slow restart on a loaded machine) goes
    # out as soon as the new daemon is up; the next one is judged against its own due time.
    lateness = (on_alerts_topic[0][1] - max(due, second_ready_at)).total_seconds()
    assert on_alerts_topic[0][1] >= due
    assert lateness <= ON_TIME_SLACK_SECONDS, lateness
    next_due = due + timedelta(seconds=STEP_SECONDS)
    next_lateness = (on_alerts_topic[1][1] - max(next_due, second_ready_at)).total_seconds()
    assert on_alerts_topic[1][1] >= next_due
    assert next_lateness <= ON_TIME_SLACK_SECONDS, next_lateness
    # The supervisor's own topic got step 2 once; command's got step 3 once.
    to_officers = sorted(b["_topic"] for b, _ in escalated_seen if "/officers/" in b["_topic"])
    assert to_officers == [
        "emon/v1/officers/cmd-futian/notifications",
        "emon/v1/officers/sup-wang/notifications",
    ]


async def test_two_sweepers_never_send_a_step_twice(pg_dsn: str) -> None:
    """Two daemons sweep the same database at the same time: each step once."""
    await migrate(pg_dsn)
    policies = PoliciesFile.model_validate(
        {"tiers": {"critical": {"steps": [{"targets": ["officer"], "timeout_seconds": 60},
                                          {"targets": ["supervisor"], "timeout_seconds": 60}]}}}
    )
    officers = {"off-li": ("officer", "sup-wang"), "sup-wang": ("supervisor", None)}
    config = compile_alerting(policies, officers)
    router = Router(policies, {})
    book = AlertBook(lambda _subject: "off-li", config.tier_policies())
    t0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    transitions = [
        t
        for i in range(60)
        for t in book.apply(
            Finding(f"s{i:03d}", f"tag-{i}", RuleId.STRAP_OPEN, None, Tier.CRITICAL,
                    FindingKind.RAISED, t0, {"event": {}}, "test")
        )
    ]
    async with open_pool(pg_dsn, min_size=2, max_size=4) as pool_a, open_pool(
        pg_dsn, min_size=2, max_size=4
    ) as pool_b:
        store_a, store_b = LifecycleStore(pool_a), LifecycleStore(pool_b)
        await store_a.record(transitions, config, router)

        async def sweeper(store: LifecycleStore, now: datetime) -> int:
            total = 0
            for _ in range(50):
                got = await store.sweep(now, config, router, lambda *_: None, limit=7)
                total += len(got)
                if not got:
                    break
            return total

        for now in (t0, t0 + timedelta(seconds=61)):
            counts = await asyncio.gather(sweeper(store_a, now), sweeper(store_b, now))
            assert sum(counts) == 60  # every alert's step once, split between the two
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT kind, count(*), count(DISTINCT alert_id) FROM alert_history"
            " WHERE kind IN ('notified', 'escalated') GROUP BY kind ORDER BY kind"
        )
        assert await cur.fetchall() == [("escalated", 60, 60), ("notified", 60, 60)]
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT (alert_id, transition_kind, officer_id))"
            " FROM notification_outbox"
        )
        assert await cur.fetchone() == (120, 120)  # one MQTT notification per step


async def test_alerts_from_before_escalation_get_a_ladder_at_start(pg_dsn: str) -> None:
    """An upgrade: unresolved alerts recorded without escalation state (before migration
    0003) are backfilled, so they escalate too; resolved ones are not."""
    from daemon.store.alerts_repo import AlertRepository

    await migrate(pg_dsn)
    book = AlertBook(lambda _subject: "off-li")
    t0 = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)
    [open_one] = book.apply(Finding("s001", "tag-s001", RuleId.STRAP_OPEN, None, Tier.CRITICAL,
                                    FindingKind.RAISED, t0, {"event": {}}, "old"))
    [other] = book.apply(Finding("s002", "tag-s002", RuleId.STRAP_OPEN, None, Tier.CRITICAL,
                                 FindingKind.RAISED, t0, {"event": {}}, "old"))
    resolved = book.resolve(other.alert.alert_id, "off-li", "false_alarm", t0)
    async with open_pool(pg_dsn, min_size=1, max_size=2) as pool:
        await AlertRepository(pool).record([open_one, other, *resolved])  # the old path
        store = LifecycleStore(pool)
        config = compile_alerting(PoliciesFile(), {"off-li": ("officer", None)})
        assert await store.backfill(config) == 1
        assert await store.backfill(config) == 0
        row = await store.escalation(open_one.alert.alert_id)
        assert row is not None
        assert (row["phase"], row["step"]) == ("ladder", -1)
        assert await store.escalation(other.alert.alert_id) is None
