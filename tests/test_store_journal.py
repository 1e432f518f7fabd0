"""The ping writer with its on-disk journal, against a real PostgreSQL server.

Outages are made by refusing connections to the test's own database and cutting its
sessions (tests.storekit.database_down), so the shared server keeps serving other tests.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from psycopg import AsyncConnection

from daemon.store import PingWriter, Pool, migrate, open_pool
from daemon.store.journal import Journal
from daemon.transitions import TransitionState, ZoneRole, ZoneTransition
from geofence.observation import FixSource, LocationFix
from tests.storekit import database_down, rows, scalar, tiny_filesystem

pytestmark = pytest.mark.services

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
EVENTUALLY_SECONDS = 20.0
POLL_SECONDS = 0.02
# Short timeouts: an outage is noticed in well under a second.
BATCH_TIMEOUT_SECONDS = 0.5
RETRY_INITIAL_SECONDS = 0.05
RETRY_MAX_SECONDS = 0.2


def fast_writer(pool: Pool, journal: Journal | None = None, **options: Any) -> PingWriter:
    return PingWriter(
        pool,
        journal=journal,
        batch_timeout_seconds=BATCH_TIMEOUT_SECONDS,
        retry_initial_seconds=RETRY_INITIAL_SECONDS,
        retry_max_seconds=RETRY_MAX_SECONDS,
        **options,
    )


def fix(device: str, i: int) -> LocationFix:
    return LocationFix(
        device_id=device,
        ts=T0 + timedelta(seconds=i),
        lat=22.5 + i * 1e-6,
        lon=114.0 - i * 1e-6,
        accuracy_m=9.0,
        source=FixSource.GNSS,
        received_at=T0 + timedelta(seconds=i, milliseconds=250),
        battery_pct=50.0,
        extra={"seq": i} if i % 7 == 0 else {},
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def eventually(predicate: Any, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + EVENTUALLY_SECONDS
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(POLL_SECONDS)


@pytest.fixture
async def migrated(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    return pg_dsn


async def stored_in_order(dsn: str, device: str) -> list[int]:
    """Seconds offsets of a device's pings in the order their transactions ran (xmin)."""
    found = await rows(
        dsn,
        "SELECT extract(epoch FROM ts - %s)::int FROM pings WHERE device_id = %s"
        " ORDER BY xmin::text::bigint, ts",
        [T0, device],
    )
    return [int(r[0]) for r in found]


async def test_an_outage_goes_to_the_journal_and_every_row_comes_back_once_in_order(
    migrated: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = migrated
    caplog.set_level(logging.WARNING, logger="daemon.store.writer")
    async with (
        open_pool(dsn, min_size=1) as pool,
        Journal(tmp_path / "journal") as journal,
        fast_writer(pool, journal, flush_rows=50) as writer,
    ):
        for i in range(200):
            await writer.put(fix("dev-o", i), "subject-o")
        await writer.flush()
        async with database_down(dsn):
            for i in range(200, 1_200):
                target = await writer.put(fix("dev-o", i), "subject-o")
                if i % 100 == 0:
                    await asyncio.sleep(0.05)  # spread the rows over the outage
            # Every row is durable (in the journal) while the database is still down:
            # this is what lets the daemon acknowledge MQTT messages during an outage.
            await asyncio.wait_for(writer.wait_durable(target), EVENTUALLY_SECONDS)
            assert writer.journalling
            assert writer.written_seq < writer.durable_seq == writer.seq
            assert journal.pending_rows > 0
            assert metric("emon_store_journal_rows") > 0
            assert metric("emon_store_journalling") == 1
        await asyncio.wait_for(writer.flush(), EVENTUALLY_SECONDS)
        await eventually(lambda: not writer.journalling, "the writer to leave the journal")
        assert journal.empty
        # Back to normal: new rows go straight to the database.
        for i in range(1_200, 1_300):
            await writer.put(fix("dev-o", i), "subject-o")
        await writer.flush()
        assert journal.empty

    assert await scalar(dsn, "SELECT count(*) FROM pings") == 1_300
    assert await scalar(dsn, "SELECT count(DISTINCT (device_id, ts)) FROM pings") == 1_300
    order = await stored_in_order(dsn, "dev-o")
    journalled = [n for n in order if 200 <= n < 1_200]
    # The journal was written back oldest first, one transaction after the other.
    assert journalled == sorted(journalled)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot write to the database" in m for m in messages) == 1, messages
    assert any("journal replayed" in m for m in messages), messages


async def test_rows_kept_in_the_journal_at_shutdown_are_written_by_the_next_start(
    migrated: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = migrated
    abandoned_before = metric("emon_store_rows_abandoned_total")
    async with open_pool(dsn, min_size=1) as pool:
        async with database_down(dsn):
            loop = asyncio.get_running_loop()
            started = loop.time()
            async with (
                Journal(tmp_path / "journal") as journal,
                fast_writer(pool, journal, close_drain_timeout_seconds=5.0) as w,
            ):
                for i in range(300):
                    await w.put(fix("dev-s", i), "subject-s")
            # Closing did not wait for the database: the rows were safe on disk.
            assert loop.time() - started < 4.0
        assert metric("emon_store_rows_abandoned_total") == abandoned_before
        assert any(p.suffix == ".jrnl" for p in (tmp_path / "journal").iterdir())
        assert await scalar(dsn, "SELECT count(*) FROM pings") == 0

        # The next start replays the journal before anything new.
        async with (
            Journal(tmp_path / "journal") as journal,
            fast_writer(pool, journal) as writer,
        ):
            assert writer.journalling
            for i in range(300, 350):
                await writer.put(fix("dev-s", i), "subject-s")
            await asyncio.wait_for(writer.flush(), EVENTUALLY_SECONDS)
            await eventually(lambda: journal.empty, "the journal to drain")
    assert await scalar(dsn, "SELECT count(*) FROM pings") == 350
    order = await stored_in_order(dsn, "dev-s")
    assert order == sorted(order)
    assert not (tmp_path / "journal").exists()  # nothing left to replay: no directory


async def test_a_full_buffer_spills_to_the_journal_instead_of_stopping_ingest(
    migrated: str, tmp_path: Path
) -> None:
    dsn = migrated
    spills_before = metric("emon_store_journal_spills_total", reason="buffer_full")
    async with (
        open_pool(dsn, min_size=1) as pool,
        Journal(tmp_path / "journal") as journal,
        PingWriter(
            pool, journal=journal, flush_rows=50, buffer_rows=100, batch_timeout_seconds=1.5
        ) as writer,
    ):
        for i in range(100):
            await writer.put(fix("dev-b", i), "subject-b")
        await writer.flush()
        async with await AsyncConnection.connect(dsn) as locker:
            # The database is slow (a long lock), not down: batches wait, the buffer fills.
            await locker.execute("LOCK TABLE pings IN ACCESS EXCLUSIVE MODE")
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(100, 3_100):
                await writer.put(fix("dev-b", i), "subject-b")
            # 3,000 rows with a buffer of 100 while nothing could be written: they went
            # to the journal (after the batches already waiting on the lock timed out).
            assert loop.time() - started < 1.5 + 3.0
            assert writer.journalling
            await locker.rollback()
        await asyncio.wait_for(writer.flush(), EVENTUALLY_SECONDS)
    assert metric("emon_store_journal_spills_total", reason="buffer_full") > spills_before
    assert await scalar(dsn, "SELECT count(*) FROM pings") == 3_100
    assert await scalar(dsn, "SELECT count(DISTINCT ts) FROM pings") == 3_100


@pytest.mark.parametrize("limit", ["journal_max_bytes", "disk_full"])
async def test_a_journal_that_cannot_grow_makes_put_wait_and_loses_nothing(
    migrated: str, tmp_path: Path, limit: str, caplog: pytest.LogCaptureFixture
) -> None:
    dsn = migrated
    if limit == "disk_full":
        context = tiny_filesystem(tmp_path, size="192k")
        directory = context.__enter__() / "journal"
        max_bytes, segment_bytes = 10**9, 10**8
        error = "ENOSPC"
    else:
        context = None
        directory = tmp_path / "journal"
        max_bytes, segment_bytes = 150_000, 150_000
        error = "full"
    errors_before = metric("emon_store_journal_write_errors_total", error=error)
    waits_before = metric("emon_store_put_waits_total")
    try:
        async with (
            open_pool(dsn, min_size=1) as pool,
            Journal(directory, max_bytes=max_bytes, segment_bytes=segment_bytes) as journal,
            fast_writer(pool, journal, flush_rows=100, buffer_rows=1_000) as w,
        ):
            async with database_down(dsn):
                put = 0
                blocked: asyncio.Task[int] | None = None
                for i in range(20_000):
                    blocked = asyncio.create_task(w.put(fix("dev-f", i), "subject-f"))
                    done, _ = await asyncio.wait({blocked}, timeout=2.0)
                    if not done:
                        break  # backpressure: put waits for room
                    put += 1
                    blocked = None
                assert blocked is not None, "put never waited"
                assert 1_000 < put < 20_000
                assert "cannot append to the journal" in caplog.text
            # The database is back: the journal drains, the waiting put completes.
            await asyncio.wait_for(blocked, EVENTUALLY_SECONDS)
            await asyncio.wait_for(w.flush(), EVENTUALLY_SECONDS)
    finally:
        if context is not None:
            context.__exit__(None, None, None)
    assert metric("emon_store_journal_write_errors_total", error=error) > errors_before
    assert metric("emon_store_put_waits_total") > waits_before
    assert await scalar(dsn, "SELECT count(*) FROM pings") == put + 1
    assert await scalar(dsn, "SELECT count(DISTINCT ts) FROM pings") == put + 1


async def test_a_row_for_a_day_without_a_partition_is_stored(migrated: str) -> None:
    dsn = migrated
    layout_is_plain = await scalar(
        dsn, "SELECT to_regproc('emon_ensure_day_partitions') IS NOT NULL"
    )
    created_before = metric("emon_store_partitions_created_on_demand_total")
    old = datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)  # a leap day, long before the range
    async with open_pool(dsn, min_size=1) as pool, PingWriter(pool, flush_rows=10) as writer:
        late = LocationFix("dev-p", old, 22.5, 114.0, 5.0, FixSource.GNSS, old, None, {})
        await writer.put(late, "subject-p")
        await writer.put(fix("dev-p", 1), "subject-p")
        await writer.flush()
    assert await scalar(dsn, "SELECT count(*) FROM pings") == 2
    assert await scalar(dsn, "SELECT count(*) FROM store_rejects") == 0
    if layout_is_plain:
        assert await scalar(dsn, "SELECT to_regclass('pings_p20240229') IS NOT NULL")
        assert metric("emon_store_partitions_created_on_demand_total") == created_before + 1


async def test_zone_transitions_are_stored_once(migrated: str, tmp_path: Path) -> None:
    dsn = migrated
    transitions = [
        ZoneTransition(
            "dev-z", "subject-z", "home-z", "presence", state, T0 + timedelta(minutes=i),
            T0 + timedelta(minutes=i, seconds=1), ZoneRole.HOME, previous,
        )
        for i, (state, previous) in enumerate(
            [
                (TransitionState.INSIDE, None),
                (TransitionState.OUTSIDE, TransitionState.INSIDE),
                (TransitionState.INSIDE, TransitionState.OUTSIDE),
            ]
        )
    ]
    async with (
        open_pool(dsn, min_size=1) as pool,
        Journal(tmp_path / "journal") as journal,
        fast_writer(pool, journal, flush_rows=10) as writer,
    ):
        for t in transitions:
            await writer.put(t, t.subject_id)
        await writer.flush()
        async with database_down(dsn):  # and once more through the journal
            for t in transitions:
                await writer.put(t, t.subject_id)
            await asyncio.wait_for(writer.wait_durable(writer.seq), EVENTUALLY_SECONDS)
        await asyncio.wait_for(writer.flush(), EVENTUALLY_SECONDS)
    stored = await rows(
        dsn, "SELECT zone_id, kind, state, previous, role FROM zone_transitions ORDER BY ts"
    )
    assert stored == [
        ("home-z", "presence", "inside", None, "home"),
        ("home-z", "presence", "outside", "inside", "home"),
        ("home-z", "presence", "inside", "outside", "home"),
    ]
