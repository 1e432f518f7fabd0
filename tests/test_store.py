"""daemon.store against a real PostgreSQL server (the `pg_dsn` fixture: a fresh database)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo

from alerts.model import (
    Alert,
    AlertState,
    AlertTransition,
    RuleId,
    Tier,
    TransitionKind,
    alert_id_for,
)
from daemon.store import (
    AlertRepository,
    InvalidRowError,
    PingWriter,
    StoreClosedError,
    StoreError,
    StoreInfo,
    migrate,
    open_pool,
)
from daemon.store.migrations import load_migrations
from daemon.store.schema import timescale_available
from geofence.observation import DeviceEvent, DeviceEventType, FixSource, LocationFix

pytestmark = pytest.mark.services

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
# Later issues add migrations; these tests are about 0001/0002 and the runner.
MIGRATION_VERSIONS = [m.version for m in load_migrations()]
LATEST_VERSION = MIGRATION_VERSIONS[-1]
# Generous bounds for "eventually": CI machines are slow, and these only cap a failure.
EVENTUALLY_SECONDS = 10.0
POLL_SECONDS = 0.02


def fix(device: str, i: int, **extra: Any) -> LocationFix:
    return LocationFix(
        device_id=device,
        ts=T0 + timedelta(seconds=i),
        lat=31.2 + i * 1e-5,
        lon=121.4 - i * 1e-5,
        accuracy_m=8.5,
        source=FixSource.GNSS,
        received_at=T0 + timedelta(seconds=i, milliseconds=300),
        battery_pct=None if i % 2 else 77.0,
        extra=dict(extra),
    )


def event(device: str, i: int, kind: DeviceEventType = DeviceEventType.STRAP_OPEN) -> DeviceEvent:
    return DeviceEvent(
        device_id=device,
        ts=T0 + timedelta(seconds=i),
        type=kind,
        received_at=T0 + timedelta(seconds=i, milliseconds=500),
        attributes={"seq": i},
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def scalar(dsn: str, query: str, params: list[Any] | None = None) -> Any:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def execute(dsn: str, query: str) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(query)


async def count(dsn: str, table: str) -> int:
    return int(await scalar(dsn, f"SELECT count(*) FROM {table}"))


async def eventually_count(dsn: str, table: str, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_SECONDS
    while (n := await count(dsn, table)) != expected:
        assert loop.time() < deadline, f"{table} has {n} rows, expected {expected}"
        await asyncio.sleep(POLL_SECONDS)


_BLOCKED_WRITE = (
    "wait_event_type = 'Lock' AND (query LIKE 'COPY pings %%' OR query LIKE 'INSERT INTO pings %%')"
)


async def writer_blocked_on_lock(dsn: str, writes: int = 1) -> None:
    """Wait until `writes` COPY/INSERTs of the writer wait for a table lock the test holds."""
    query = "SELECT count(*) FROM pg_stat_activity WHERE " + _BLOCKED_WRITE
    for _ in range(int(EVENTUALLY_SECONDS / POLL_SECONDS)):
        if await scalar(dsn, query) >= writes:
            return
        await asyncio.sleep(POLL_SECONDS)
    pytest.fail("the writer never blocked on the table lock")


async def prepare_days(dsn: str, first: datetime, last: datetime) -> None:
    """Create the day partitions of the test data's days (the daemon's maintenance job
    does this ahead of time for today's; without them the writer makes them on demand,
    which would change what these tests exercise)."""
    info = await migrate(dsn)
    if info.timescale:
        return
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        for table in ("pings", "device_events", "zone_transitions"):
            await conn.execute(
                "SELECT emon_ensure_day_partitions(%s::regclass, %s, %s)",
                [table, first.date(), last.date()],
            )


@pytest.fixture
async def migrated(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    await prepare_days(pg_dsn, T0 - timedelta(days=1), T0 + timedelta(days=2))
    return pg_dsn


# ----------------------------------------------------------------------- migrations


async def test_migrate_twice_is_idempotent_and_reports_layout(pg_dsn: str) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        expect_timescale = await timescale_available(conn)

    first = await migrate(pg_dsn)
    second = await migrate(pg_dsn)

    assert first == second == StoreInfo(timescale=expect_timescale, version=LATEST_VERSION)
    layout = "timescale" if expect_timescale else "plain"
    async with await AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
        rows = await cur.fetchall()
        assert rows[:2] == [("0001", "core_tables"), ("0002", f"time_series.{layout}")]
        assert [version for version, _ in rows] == MIGRATION_VERSIONS
        cur = await conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
            " AND tablename = ANY(%s)",
            [["pings", "device_events", "alerts", "alert_history", "store_rejects"]],
        )
        assert await cur.fetchone() == (5,)
        if not expect_timescale:
            # Partitioned parents (their partitions carry copies of these indexes).
            cur = await conn.execute(
                "SELECT c.relname FROM pg_class c JOIN pg_am a ON a.oid = c.relam"
                " WHERE c.relkind = 'I' AND a.amname = 'brin' ORDER BY c.relname"
            )
            assert await cur.fetchall() == [
                ("device_events_ts_brin",), ("pings_ts_brin",), ("zone_transitions_ts_brin",)
            ]


async def test_concurrent_migrations_do_not_race(pg_dsn: str) -> None:
    infos = await asyncio.gather(*(migrate(pg_dsn) for _ in range(4)))

    assert len(set(infos)) == 1
    assert await count(pg_dsn, "schema_migrations") == len(MIGRATION_VERSIONS)


async def test_forced_plain_layout_is_recorded_and_kept(pg_dsn: str) -> None:
    info = await migrate(pg_dsn, timescale=False)
    # A later start in auto mode follows the recorded layout.
    again = await migrate(pg_dsn)

    assert info == again == StoreInfo(timescale=False, version=LATEST_VERSION)
    name = await scalar(pg_dsn, "SELECT name FROM schema_migrations WHERE version = '0002'")
    assert name == "time_series.plain"


async def test_requiring_timescale_without_it_fails(pg_dsn: str) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        if await timescale_available(conn):
            pytest.skip("TimescaleDB is available on this server")
    with pytest.raises(StoreError, match="TimescaleDB"):
        await migrate(pg_dsn, timescale=True)


@pytest.mark.timescale
async def test_timescale_layout_makes_hypertables(pg_dsn: str) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        if not await timescale_available(conn):
            pytest.skip("TimescaleDB is not available on this server")

    info = await migrate(pg_dsn)

    assert info.timescale
    async with await AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute(
            "SELECT hypertable_name, compression_enabled FROM timescaledb_information.hypertables"
            " ORDER BY hypertable_name"
        )
        assert await cur.fetchall() == [
            ("device_events", True), ("pings", True), ("zone_transitions", True)
        ]


# --------------------------------------------------------------------------- writer


async def test_writer_stores_pings_and_events_once(migrated: str) -> None:
    dsn = migrated
    fixes = [fix(f"dev-{d}", i) for d in range(5) for i in range(600)]
    events = [event(f"dev-{d}", i) for d in range(5) for i in range(0, 600, 10)]
    # The same (device_id, ts) twice in one run, and an event of another type at the
    # same instant (a different key).
    duplicates: list[LocationFix | DeviceEvent] = [*fixes[:250], *events[:5]]
    same_instant = [event("dev-0", 0, DeviceEventType.BATTERY_LOW)]
    dup_before = metric("emon_store_rows_duplicate_total", table="pings")

    async with open_pool(dsn) as pool, PingWriter(pool) as writer:
        dedup_before = metric("emon_store_dedup_path_writes_total", table="pings")
        first: list[LocationFix | DeviceEvent] = [*fixes, *events]
        for obs in first:
            await writer.put(obs, "subject-" + obs.device_id)
        await writer.flush()
        # Nothing stored twice yet: the fast path (plain COPY) took it all.
        assert metric("emon_store_dedup_path_writes_total", table="pings") == dedup_before
        for obs in [*duplicates, *same_instant]:
            await writer.put(obs, "subject-" + obs.device_id)
        await writer.flush()
        assert metric("emon_store_dedup_path_writes_total", table="pings") > dedup_before
        assert writer.buffered == 0

    assert await count(dsn, "pings") == 3000
    assert await count(dsn, "device_events") == 301
    assert metric("emon_store_rows_duplicate_total", table="pings") - dup_before == 250
    async with await AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT device_id, subject_id, ts, received_at, lat, lon, acc_m, src, battery_pct,"
            " extra FROM pings WHERE device_id = 'dev-3' AND ts = %s",
            [T0 + timedelta(seconds=2)],
        )
        f = fix("dev-3", 2)
        assert await cur.fetchone() == (
            "dev-3", "subject-dev-3", f.ts, f.received_at, f.lat, f.lon, 8.5, "gnss", 77.0, None,
        )  # fmt: skip
        cur = await conn.execute(
            "SELECT type, attributes FROM device_events WHERE device_id = 'dev-0' AND ts = %s"
            " ORDER BY type",
            [T0],
        )
        assert await cur.fetchall() == [("battery_low", {"seq": 0}), ("strap_open", {"seq": 0})]


async def test_replaying_a_batch_stores_nothing_new(migrated: str) -> None:
    dsn = migrated
    batch = [fix("dev-r", i, note="replay") for i in range(1500)] + [event("dev-r", 1)]

    for _ in range(2):
        async with PingWriter(dsn) as writer:  # owns its pool this time
            for obs in batch:
                await writer.put(obs, "subject-r")

    assert await count(dsn, "pings") == 1500
    assert await count(dsn, "device_events") == 1
    extra = await scalar(dsn, "SELECT extra FROM pings LIMIT 1")
    assert extra == {"note": "replay"}


async def test_concurrent_batches_with_the_same_keys_store_each_row_once(
    migrated: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Both workers write the same keys in opposite orders, released at the same
    # instant: they meet in the middle and deadlock; the server aborts one, which is
    # retried (not an outage), and every row is stored once.
    dsn = migrated
    fixes = [fix(f"dev-c{d}", i) for d in range(4) for i in range(500)]
    conflicts_before = metric("emon_store_write_errors_total", error="DeadlockDetected")
    dedup_before = metric("emon_store_dedup_path_writes_total", table="pings")
    async with await AsyncConnection.connect(dsn) as locker:
        await locker.execute("LOCK TABLE pings IN ACCESS EXCLUSIVE MODE")
        async with (
            open_pool(dsn) as pool,
            PingWriter(pool, flush_rows=2000, max_batch_rows=2000, write_concurrency=2) as w,
        ):
            for obs in fixes:
                await w.put(obs, "subject-c")
            await writer_blocked_on_lock(dsn, 1)
            for obs in reversed(fixes):
                await w.put(obs, "subject-c")
            await writer_blocked_on_lock(dsn, 2)
            await locker.commit()
            await w.flush()

    assert await count(dsn, "pings") == 2000
    assert await scalar(dsn, "SELECT count(DISTINCT (device_id, ts)) FROM pings") == 2000
    deadlocks = metric("emon_store_write_errors_total", error="DeadlockDetected")
    dedup_writes = metric("emon_store_dedup_path_writes_total", table="pings")
    # The two batches met: either they deadlocked (usual on plain tables: the server aborts
    # one, which is retried) or one committed first and the other found its keys stored and
    # went through the dedup path (on TimescaleDB they serialise on creating the chunk they
    # both need, measured with 2.28.3; on a loaded machine one batch can also finish before
    # the other starts). Either way the second batch took a recovery path, and rows are
    # stored once.
    assert (deadlocks - conflicts_before) + (dedup_writes - dedup_before) >= 1
    assert "cannot write to the database" not in caplog.text  # not an outage


async def test_few_rows_are_flushed_by_age(migrated: str) -> None:
    dsn = migrated
    age = 0.5
    async with open_pool(dsn) as pool, PingWriter(pool, flush_interval_seconds=age) as writer:
        started = asyncio.get_running_loop().time()
        for i in range(3):
            await writer.put(fix("dev-a", i), "subject-a")
        assert await count(dsn, "pings") == 0  # not due yet: 3 rows, younger than `age`
        await eventually_count(dsn, "pings", 3)
        assert asyncio.get_running_loop().time() - started >= age
        assert writer.buffered == 0


async def test_a_full_batch_is_flushed_without_waiting_for_age(migrated: str) -> None:
    dsn = migrated
    async with (
        open_pool(dsn) as pool,
        PingWriter(pool, flush_rows=10, flush_interval_seconds=3600) as writer,
    ):
        for i in range(10):
            await writer.put(fix("dev-s", i), "subject-s")
        await eventually_count(dsn, "pings", 10)
        for i in range(10, 15):
            await writer.put(fix("dev-s", i), "subject-s")
        await asyncio.sleep(0.3)
        assert await count(dsn, "pings") == 10  # 5 rows: neither full nor old enough
        assert writer.buffered == 5
    assert await count(dsn, "pings") == 15  # the rest on exit


async def test_a_backlog_is_written_in_larger_batches(migrated: str) -> None:
    dsn = migrated
    batches_before = metric("emon_store_batches_total")
    async with PingWriter(dsn, flush_rows=100, max_batch_rows=1000) as writer:
        # put() does not yield while there is room, so all 3000 are buffered first.
        for i in range(3000):
            await writer.put(fix("dev-l", i), "subject-l")
        await writer.flush()
    assert await count(dsn, "pings") == 3000
    assert metric("emon_store_batches_total") - batches_before == 3


async def test_full_buffer_backpressure_and_overflow(migrated: str) -> None:
    dsn = migrated
    overflow_before = metric("emon_store_buffer_overflow_total")
    waits_before = metric("emon_store_put_waits_total")
    async with await AsyncConnection.connect(dsn) as locker:
        # Hold the writer's INSERT so the buffer fills up behind it.
        await locker.execute("LOCK TABLE pings IN ACCESS EXCLUSIVE MODE")
        async with (
            open_pool(dsn) as pool,
            PingWriter(
                pool, flush_rows=2, buffer_rows=4, flush_interval_seconds=0.01, write_concurrency=2
            ) as writer,
        ):
            # One batch of 2 per worker, both stuck behind the lock...
            for i in range(2):
                await writer.put(fix("dev-b", i), "subject-b")
            await writer_blocked_on_lock(dsn, 1)
            for i in range(2, 4):
                await writer.put(fix("dev-b", i), "subject-b")
            await writer_blocked_on_lock(dsn, 2)
            # ...so the buffer (4 rows) fills up.
            for i in range(4, 8):
                assert writer.try_put(fix("dev-b", i), "subject-b")
            assert not writer.try_put(fix("dev-b", 8), "subject-b")
            assert metric("emon_store_buffer_overflow_total") - overflow_before == 1

            blocked = asyncio.create_task(writer.put(fix("dev-b", 9), "subject-b"))
            await asyncio.sleep(0.2)
            assert not blocked.done()
            assert metric("emon_store_put_waits_total") - waits_before == 1

            await locker.commit()  # release the table
            await blocked
            await writer.flush()
    assert await count(dsn, "pings") == 9  # 0..7 and 9; 8 was refused


async def test_unstorable_values_are_refused_at_put(migrated: str) -> None:
    async with PingWriter(migrated) as writer:
        with pytest.raises(InvalidRowError, match="timezone-aware"):
            await writer.put(replace(fix("dev-n", 1), ts=datetime(2025, 3, 1)), "s")  # noqa: DTZ001
        with pytest.raises(InvalidRowError, match="JSON"):
            await writer.put(fix("dev-n", 2, blob=object()), "s")
    with pytest.raises(StoreClosedError):
        await writer.put(fix("dev-n", 3), "s")


async def test_a_row_the_database_refuses_is_isolated_not_lost(migrated: str) -> None:
    dsn = migrated
    rejected_before = metric("emon_store_rows_rejected_total", table="pings")
    async with PingWriter(dsn) as writer:
        for i in range(100):
            # jsonb cannot hold U+0000: a data error for this row only.
            obs = fix("dev-p", i, note="a\x00b") if i == 37 else fix("dev-p", i)
            await writer.put(obs, "subject-p")

    assert await count(dsn, "pings") == 99
    assert metric("emon_store_rows_rejected_total", table="pings") - rejected_before == 1
    row_text = await scalar(dsn, "SELECT row_text FROM store_rejects WHERE table_name = 'pings'")
    assert "dev-p" in row_text
    assert "\\\\u0000" in row_text


async def _terminate_backends(dsn: str, where: str, *, database: str | None = None) -> int:
    """Kill backends of `database` (default: the DSN's own) matching `where`."""
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = coalesce(%s, current_database()) AND pid <> pg_backend_pid()"
        " AND " + where
    )
    return int(await scalar(dsn, query, [database]))


async def test_writer_survives_its_connection_being_killed_mid_batch(migrated: str) -> None:
    dsn = migrated
    errors_before = metric("emon_store_write_errors_total", error="AdminShutdown")
    async with open_pool(dsn) as pool, PingWriter(pool, flush_rows=200) as writer:
        for i in range(1000):
            await writer.put(fix("dev-k", i), "subject-k")
        await writer.flush()

        async with await AsyncConnection.connect(dsn) as locker:
            await locker.execute("LOCK TABLE pings IN ACCESS EXCLUSIVE MODE")
            for i in range(1000, 1300):
                await writer.put(fix("dev-k", i), "subject-k")
            # Kill the writer's backend inside its transaction, blocked on its write.
            await writer_blocked_on_lock(dsn)
            assert await _terminate_backends(dsn, _BLOCKED_WRITE) == 1
            await locker.commit()

        for i in range(1300, 2000):
            await writer.put(fix("dev-k", i), "subject-k")
            if i % 250 == 0:  # and kill idle pooled connections too
                await _terminate_backends(dsn, "application_name = 'emon'")
        await writer.flush()

    assert await count(dsn, "pings") == 2000
    assert await scalar(dsn, "SELECT count(DISTINCT (device_id, ts)) FROM pings") == 2000
    assert metric("emon_store_write_errors_total", error="AdminShutdown") > errors_before


async def test_outage_is_logged_once_and_every_row_is_stored(
    migrated: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = migrated
    dbname = await scalar(dsn, "SELECT current_database()")
    # The database is made to refuse connections from another one (it cannot refuse
    # them from its own sessions), which is also where the test watches from.
    admin = make_conninfo(dsn, dbname="postgres")
    caplog.set_level(logging.WARNING, logger="daemon.store.writer")
    async with (
        open_pool(dsn, min_size=1) as pool,
        PingWriter(pool, flush_rows=50, batch_timeout_seconds=0.5, retry_max_seconds=0.2) as writer,
    ):
        await execute(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            await _terminate_backends(admin, "application_name = 'emon'", database=dbname)
            for i in range(500):
                await writer.put(fix("dev-o", i), "subject-o")
                if i % 50 == 0:
                    await asyncio.sleep(0.1)  # spread the rows over ~1 s of outage
            assert writer.buffered > 0
        finally:
            await execute(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        await writer.flush()

    assert await count(dsn, "pings") == 500
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write to the database" in m for m in messages) == 1, messages
    assert sum("recovered" in m for m in messages) == 1, messages


async def test_shutdown_with_the_database_down_reports_unwritten_rows(
    migrated: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = migrated
    dbname = await scalar(dsn, "SELECT current_database()")
    admin = make_conninfo(dsn, dbname="postgres")
    abandoned_before = metric("emon_store_rows_abandoned_total")
    async with open_pool(dsn, min_size=1) as pool:
        writer = PingWriter(
            pool,
            batch_timeout_seconds=0.3,
            close_drain_timeout_seconds=1.0,
            close_stop_timeout_seconds=2.0,
        )
        await execute(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')
        try:
            await _terminate_backends(admin, "application_name = 'emon'", database=dbname)
            started = asyncio.get_running_loop().time()
            async with writer:
                for i in range(10):
                    await writer.put(fix("dev-x", i), "subject-x")
            # Bounded by the drain and stop timeouts, not by the outage.
            assert asyncio.get_running_loop().time() - started < 3.5
        finally:
            await execute(admin, f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        with pytest.raises(StoreClosedError):
            writer.try_put(fix("dev-x", 11), "subject-x")

    assert metric("emon_store_rows_abandoned_total") - abandoned_before == 10
    assert "ping writer stopped with 10 rows unwritten" in caplog.text


# --------------------------------------------------------------------------- alerts


def make_alert(at: datetime, **changes: Any) -> Alert:
    opened = T0
    base = Alert(
        alert_id=alert_id_for("subject-1", RuleId.EXCLUSION_ENTRY, "zone-9", opened),
        subject_id="subject-1",
        device_id="dev-1",
        rule=RuleId.EXCLUSION_ENTRY,
        zone_id="zone-9",
        tier=Tier.CRITICAL,
        state=AlertState.OPEN,
        opened_at=opened,
        updated_at=at,
        officer_id="officer-7",
        trigger={"ping": fix("dev-1", 0).to_wire()},
        last_evidence={"ping": fix("dev-1", 0).to_wire(), "seen_at": at},
        reason="entered exclusion zone",
    )
    return replace(base, **changes)


async def test_alerts_record_upsert_history_idempotent(migrated: str) -> None:
    opened = AlertTransition(TransitionKind.OPENED, T0, make_alert(T0))
    t1 = T0 + timedelta(minutes=1)
    updated = AlertTransition(TransitionKind.UPDATED, t1, make_alert(t1, count=2))
    t2 = T0 + timedelta(minutes=5)
    acked = AlertTransition(
        TransitionKind.ACKNOWLEDGED,
        t2,
        make_alert(
            t2, count=2, state=AlertState.ACKNOWLEDGED, acknowledged_at=t2, acknowledged_by="o7"
        ),
        actor="o7",
        note="calling subject",
    )
    alert_id = opened.alert.alert_id

    async with AlertRepository(migrated) as repo:
        await repo.record([opened])
        await repo.record([opened])  # redelivered
        await repo.record([updated, acked])
        # An older snapshot arriving late (replay, retry) must not win.
        await repo.record([updated])
        await repo.record([opened])

        alerts = await repo.list_alerts()
        assert len(alerts) == 1
        row = alerts[0]
        assert row["alert_id"] == alert_id
        assert row["state"] == "acknowledged"
        assert row["count"] == 2
        assert row["updated_at"] == t2
        assert row["acknowledged_by"] == "o7"
        assert row["trigger"] == {"ping": fix("dev-1", 0).to_wire()}
        assert row["last_evidence"]["seen_at"] == t2.isoformat()

        history = await repo.history(alert_id)
        assert [(h["kind"], h["at"]) for h in history] == [
            ("opened", T0),
            ("updated", t1),
            ("acknowledged", t2),
        ]
        assert history[2]["actor"] == "o7"
        assert history[2]["note"] == "calling subject"
        assert history[2]["payload"]["transition"] == "acknowledged"
        assert history[0]["alert_id"] == alert_id

        assert [a["alert_id"] for a in await repo.list_alerts(state="acknowledged")] == [alert_id]
        assert await repo.list_alerts(state="open") == []
        assert len(await repo.list_alerts(subject_id="subject-1", state="acknowledged")) == 1
        assert await repo.list_alerts(subject_id="subject-2") == []
        assert await repo.history("00000000-0000-0000-0000-000000000000") == []


async def test_alert_record_failure_is_a_store_error(migrated: str) -> None:
    bad = AlertTransition(TransitionKind.OPENED, T0, make_alert(T0, alert_id="not-a-uuid"))
    async with open_pool(migrated) as pool:
        repo = AlertRepository(pool)
        with pytest.raises(StoreError):
            await repo.record([bad])
        assert await repo.list_alerts() == []


async def test_psycopg_errors_do_not_leak_from_migrate() -> None:
    with pytest.raises(StoreError) as info:
        await migrate("host=127.0.0.1 port=1 dbname=nope connect_timeout=2")
    assert isinstance(info.value.__cause__, psycopg.Error)


async def test_request_flush_writes_now_without_waiting_for_age_or_idleness(
    migrated: str,
) -> None:
    # Neither the age (an hour) nor idleness (off) nor size would write these rows.
    async with PingWriter(migrated, flush_rows=1_000, flush_interval_seconds=3600.0) as writer:
        for i in range(10):
            target = await writer.put(fix("dev-r", i), "subject-r")
        await asyncio.sleep(0.2)
        assert writer.durable_seq == 0
        writer.request_flush()
        await asyncio.wait_for(writer.wait_durable(target), 10)
        assert await count(migrated, "pings") == 10
