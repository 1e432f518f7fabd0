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
Both: resolved alerts past `resolved_alerts_days` are deleted with their history (open
ones never), finished notifications, ended sessions and silences and rejected rows past
theirs, the audit log through `emon_purge_audit_log` (the one DELETE its trigger allows, and
only for rows older than a year), and rollups older than `rollups_days`; each deletion is
recorded as a `retention.purge` audit row. The rollups of the last `rollup_lookback_hours`
are recomputed (late, store-and-forward pings and transitions are folded in).
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
from psycopg.types.json import Jsonb

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
    # Rows deleted by retention per data class (table) other than partitions and alerts.
    rows_deleted: dict[str, int] = field(default_factory=dict)
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
                    ("small tables", lambda: _delete_expired_rows(conn, retention, now, report))
                )
                steps.append(("audit_log", lambda: _purge_audit_log(conn, retention, now, report)))
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
        "other rows deleted %s, %s rollup rows, policies %s, failed steps %s",
        report.partitions_created,
        len(report.partitions_dropped),
        report.alerts_deleted,
        report.rows_deleted or "-",
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
    # Open and acknowledged alerts are never deleted, however old: someone still owes them
    # a decision. History, escalation state and outbox rows go with the alert (cascade).
    async with conn.transaction():
        cur = await conn.execute(
            "DELETE FROM alerts WHERE state = 'resolved' AND resolved_at < %s", [cutoff]
        )
        deleted = max(cur.rowcount, 0)
        if deleted:
            await conn.execute(
                "INSERT INTO audit_log (actor, action, object, source, detail)"
                " VALUES ('retention', 'retention.purge', 'alerts', 'maintenance', %s)",
                [Jsonb({"before": cutoff.isoformat(), "rows": deleted})],
            )
    report.alerts_deleted += deleted


# Per data class: the table, what makes a row expire, and the retention it follows. Only
# finished things expire: a pending notification, a live session or silence never does.
_EXPIRING_ROWS: Final = (
    ("notification_outbox", "status <> 'pending' AND finished_at < %s",
     "delivered_notifications_days"),
    ("console_sessions", "coalesce(ended_at, expires_at) < %s", "console_sessions_days"),
    ("silences", "coalesce(ended_at, expires_at) < %s", "silences_days"),
    # Rows PostgreSQL refused (docs/storage.md) are ping data: kept as long as pings.
    ("store_rejects", "rejected_at < %s", "pings_days"),
)


async def _delete_expired_rows(
    conn: AsyncConnection[Any],
    retention: RetentionSettings,
    now: datetime,
    report: MaintenanceReport,
) -> None:
    for table, expired, setting in _EXPIRING_ROWS:
        cutoff = now - timedelta(days=getattr(retention, setting))
        async with conn.transaction():
            cur = await conn.execute(f"DELETE FROM {table} WHERE {expired}", [cutoff])
            deleted = max(cur.rowcount, 0)
            if deleted:
                # What was destroyed under the retention policy is itself on record.
                await conn.execute(
                    "INSERT INTO audit_log (actor, action, object, source, detail)"
                    " VALUES ('retention', 'retention.purge', %s, 'maintenance', %s)",
                    [table, Jsonb({"before": cutoff.isoformat(), "rows": deleted})],
                )
        if deleted:
            report.rows_deleted[table] = report.rows_deleted.get(table, 0) + deleted


async def _purge_audit_log(
    conn: AsyncConnection[Any],
    retention: RetentionSettings,
    now: datetime,
    report: MaintenanceReport,
) -> None:
    """Through the one door migration 0007 leaves in the append-only trigger: the
    function sets a transaction-local flag, and the trigger still refuses rows younger
    than a year whatever the settings say."""
    cutoff = now - timedelta(days=retention.audit_log_days)
    async with conn.transaction():
        cur = await conn.execute(
            "SELECT emon_purge_audit_log(%s, 'maintenance')", [cutoff]
        )
        row = await cur.fetchone()
    deleted = int(row[0]) if row is not None else 0
    if deleted:
        report.rows_deleted["audit_log"] = deleted


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
