"""Store wiring for the daemon shell: the journal for these settings, and maintenance.

Kept out of daemon/app.py so the daemon only calls three things: `open_journal`,
`writer_options` and `maintain`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from daemon.configfiles import Settings
from daemon.store.journal import Journal, journal_subdir
from daemon.store.maintenance import MaintenanceReport, run_maintenance
from daemon.store.pool import Pool
from daemon.store.settings import AckPolicy
from daemon.store.writer import FLUSH_IDLE_SECONDS
from geofence.config import CoreConfig

_LOGGER = logging.getLogger(__name__)


async def database_identity(pool: Pool) -> tuple[str, str]:
    """(database name, cluster system identifier), which name the journal directory."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT current_database()")
        row = await cur.fetchone()
        name = str(row[0]) if row is not None else "unknown"
        try:
            cur = await conn.execute("SELECT system_identifier::text FROM pg_control_system()")
            row = await cur.fetchone()
            system_id = str(row[0]) if row is not None else "unknown"
        except psycopg.errors.InsufficientPrivilege:
            # Not granted to ordinary roles on some installations: the name must do.
            await conn.rollback()
            system_id = "unknown"
    return name, system_id


@asynccontextmanager
async def open_journal(settings: Settings, pool: Pool) -> AsyncIterator[Journal]:
    """The journal of this daemon: one directory per database and MQTT client id."""
    name, system_id = await database_identity(pool)
    journal_settings = settings.store.journal
    directory = settings.store.journal_dir() / journal_subdir(
        name, system_id, settings.mqtt.client_id
    )
    async with Journal(
        directory,
        fsync=journal_settings.fsync,
        max_bytes=journal_settings.max_bytes,
        segment_bytes=journal_settings.segment_bytes,
    ) as journal:
        _LOGGER.info(
            "journal at %s (fsync %s, up to %s bytes)",
            directory,
            journal_settings.fsync.value,
            journal_settings.max_bytes,
        )
        yield journal


def writer_options(settings: Settings) -> dict[str, Any]:
    """PingWriter keyword arguments for these settings."""
    durable = settings.store.ack is AckPolicy.DURABLE
    return {
        "buffer_rows": settings.store.buffer_rows,
        # Producers that wait for durability stop sending when their window of
        # unacknowledged messages is full: flush when they pause.
        "flush_idle_seconds": FLUSH_IDLE_SECONDS if durable else None,
    }


def subject_zones(core: CoreConfig) -> Mapping[str, ZoneInfo]:
    return {s.subject_id: s.timezone for s in core.subjects.values()}


async def maintain(
    pool: Pool,
    settings: Settings,
    core: CoreConfig,
    *,
    timescale: bool,
    now: datetime,
    set_policies: bool = False,
) -> MaintenanceReport:
    return await run_maintenance(
        pool,
        timescale=timescale,
        store=settings.store,
        retention=settings.retention,
        subjects=subject_zones(core),
        now=now,
        set_policies=set_policies,
    )
