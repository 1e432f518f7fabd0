"""Periodic store maintenance: partitions ahead, retention, TimescaleDB policies, rollups.

Run by the daemon at start-up and every `store.maintenance_interval_minutes` (an
APScheduler job), and by `emon db maintain`. Each step runs in its own transaction with
a short lock timeout, so a step that has to wait for a table lock (a long report holding
one) gives up and is retried next time instead of queueing every writer behind it; a
failed step is logged and the others still run. Two daemons on one database take turns
through an advisory lock (the second skips the run).

Layouts:
* plain PostgreSQL: day partitions are created `partitions_ahead_days` ahead and dropped
  once wholly older than the table's retention (`emon_drop_day_partitions`).
* TimescaleDB: chunks are created by TimescaleDB; retention and compression are
  TimescaleDB policies (jobs run by the extension), set from settings at start-up.
Both: resolved alerts past `resolved_alerts_days` are deleted with their history, and
rollups older than `rollups_days`; the rollups of the last `rollup_lookback_hours` are
recomputed (late, store-and-forward pings and transitions are folded in).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg import AsyncConnection

from daemon.store import rollup
from daemon.store.errors import StoreError
from daemon.store.pool import Pool
from daemon.store.settings import RetentionSettings, StoreSettings

_LOGGER = logging.getLogger(__name__)

TIME_SERIES_TABLES: Final = ("pings", "device_events", "zone_transitions")
# "emonmain" in ASCII: one maintenance run at a time per database.
MAINTENANCE_LOCK_KEY: Final = 0x656D6F6E6D61696E
# DDL (CREATE/DROP partition) needs a brief exclusive lock on the parent table.
LOCK_TIMEOUT_MS: Final = 5_000
STEP_TIMEOUT_SECONDS: Final = 300.0
# Partitions are kept for the day before today too (UTC): late pings of yesterday.
PARTITIONS_BEHIND_DAYS: Final = 1


@dataclass(slots=True)
class MaintenanceReport:
    partitions_created: int = 0
    partitions_dropped: list[str] = field(default_factory=list)
    alerts_deleted: int = 0
    rollup_rows: int = 0
    policies_set: list[str] = field(default_factory=list)
    failed_steps: list[str] = field(default_factory=list)
    skipped: bool = False


async def run_maintenance(
    pool: Pool,
    *,
    timescale: bool,
    store: StoreSettings,
    retention: RetentionSettings,
    subjects: Mapping[str, ZoneInfo],
    now: datetime,
    set_policies: bool = False,
) -> MaintenanceReport:
    """One maintenance run; `set_policies` also (re)sets the TimescaleDB policies."""
    report = MaintenanceReport()
    async with pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            cur = await conn.execute("SELECT pg_try_advisory_lock(%s)", [MAINTENANCE_LOCK_KEY])
            row = await cur.fetchone()
            if row is None or not row[0]:
                _LOGGER.info("store maintenance skipped: another process is running it")
                report.skipped = True
                return report
            try:
                await conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
                steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
                if timescale:
                    if set_policies:
                        steps.append(("policies", lambda: _set_policies(conn, retention, report)))
                else:
                    steps.append(("partitions", lambda: _partitions(conn, store, now, report)))
                    steps.append(("retention", lambda: _drop_old(conn, retention, now, report)))
                steps.append(("alerts", lambda: _delete_alerts(conn, retention, now, report)))
                steps.append(
                    ("rollups", lambda: _rollups(conn, store, retention, subjects, now, report))
                )
                for name, step in steps:
                    try:
                        async with asyncio.timeout(STEP_TIMEOUT_SECONDS):
                            await step()
                    except (psycopg.Error, TimeoutError, StoreError) as exc:
                        report.failed_steps.append(name)
                        _LOGGER.error("store maintenance step %s failed: %s", name, exc)
            finally:
                await conn.execute("RESET lock_timeout")
                await conn.execute("SELECT pg_advisory_unlock(%s)", [MAINTENANCE_LOCK_KEY])
        finally:
            await conn.set_autocommit(False)
    _LOGGER.info(
        "store maintenance: %s partitions created, %s dropped, %s alerts deleted, "
        "%s rollup rows, policies %s, failed steps %s",
        report.partitions_created,
        len(report.partitions_dropped),
        report.alerts_deleted,
        report.rollup_rows,
        report.policies_set or "-",
        report.failed_steps or "-",
    )
    return report


async def _partitions(
    conn: AsyncConnection[Any], store: StoreSettings, now: datetime, report: MaintenanceReport
) -> None:
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=PARTITIONS_BEHIND_DAYS)
    last = today + timedelta(days=store.partitions_ahead_days)
    for table in TIME_SERIES_TABLES:
        cur = await conn.execute(
            "SELECT emon_ensure_day_partitions(%s::regclass, %s, %s)", [table, first, last]
        )
        row = await cur.fetchone()
        report.partitions_created += int(row[0]) if row is not None else 0


async def _drop_old(
    conn: AsyncConnection[Any],
    retention: RetentionSettings,
    now: datetime,
    report: MaintenanceReport,
) -> None:
    today = now.astimezone(UTC).date()
    for table in TIME_SERIES_TABLES:
        # A partition goes once all of its day is older than the retention period.
        keep_from = today - timedelta(days=retention.days_for(table))
        cur = await conn.execute(
            "SELECT emon_drop_day_partitions(%s::regclass, %s)", [table, keep_from]
        )
        dropped = [str(r[0]) for r in await cur.fetchall()]
        if dropped:
            _LOGGER.info("retention: dropped %s partition(s) of %s", len(dropped), table)
        report.partitions_dropped += dropped


async def _delete_alerts(
    conn: AsyncConnection[Any],
    retention: RetentionSettings,
    now: datetime,
    report: MaintenanceReport,
) -> None:
    cutoff = now - timedelta(days=retention.resolved_alerts_days)
    cur = await conn.execute(
        "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < %s", [cutoff]
    )
    report.alerts_deleted += max(cur.rowcount, 0)


async def _rollups(
    conn: AsyncConnection[Any],
    store: StoreSettings,
    retention: RetentionSettings,
    subjects: Mapping[str, ZoneInfo],
    now: datetime,
    report: MaintenanceReport,
) -> None:
    cutoff = now - timedelta(days=retention.rollups_days)
    await conn.execute("DELETE FROM subject_hourly WHERE bucket < %s", [cutoff])
    await conn.execute("DELETE FROM subject_daily WHERE day_end < %s", [cutoff])
    start = rollup.floor_hour(now - timedelta(hours=store.rollup_lookback_hours))
    end = rollup.floor_hour(now) + rollup.HOUR
    async with conn.transaction():
        hourly, daily = await rollup.refresh(conn, subjects, start, end, now)
    report.rollup_rows += hourly + daily


async def _set_policies(
    conn: AsyncConnection[Any], retention: RetentionSettings, report: MaintenanceReport
) -> None:
    """Retention and compression policies from settings (idempotent: replaced each start)."""
    for table in TIME_SERIES_TABLES:
        keep = timedelta(days=retention.days_for(table))
        compress = timedelta(days=retention.compress_after_days)
        async with conn.transaction():
            await conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", [table])
            await conn.execute("SELECT add_retention_policy(%s, %s::interval)", [table, keep])
            await conn.execute("SELECT remove_compression_policy(%s, if_exists => true)", [table])
            await conn.execute("SELECT add_compression_policy(%s, %s::interval)", [table, compress])
        report.policies_set.append(table)
    for view in ("pings_per_subject_hourly", "pings_per_subject_daily"):
        keep = timedelta(days=retention.rollups_days)
        async with conn.transaction():
            await conn.execute("SELECT remove_retention_policy(%s, if_exists => true)", [view])
            await conn.execute("SELECT add_retention_policy(%s, %s::interval)", [view, keep])
        report.policies_set.append(view)
