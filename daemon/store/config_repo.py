"""The config versions the daemon has run (table `config_versions`, migration 0004).

Each row keeps the files a version was built from, so the fence or schedule that decided
about a stored ping (`pings.config_version`) can be shown later, after the files on disk
have moved on. Written once per version applied (start-up and each hot reload); an upsert,
so recording the same version again only moves `last_applied_at`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from daemon.store._json import dumps as json_dumps
from daemon.store.access_repo import insert_audit
from daemon.store.errors import StoreError
from daemon.store.pool import Pool

_UPSERT_VERSION: Final = (
    "INSERT INTO config_versions (version, first_applied_at, last_applied_at, directory, files)"
    " VALUES (%s, %s, %s, %s, %s::jsonb)"
    " ON CONFLICT (version) DO UPDATE SET last_applied_at ="
    " GREATEST(config_versions.last_applied_at, EXCLUDED.last_applied_at)"
)
_TOUCH_VERSION: Final = (
    "UPDATE config_versions SET last_applied_at = GREATEST(last_applied_at, %s)"
    " WHERE version = %s"
)
_SELECT_VERSION: Final = (
    "SELECT version, first_applied_at, last_applied_at, directory, files"
    " FROM config_versions WHERE version = %s"
)


class ConfigVersionRepository:
    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def record(
        self, version: str, directory: Path, files: Mapping[str, str], applied_at: datetime
    ) -> None:
        """Store a version's files (idempotent) and, in the same transaction, a
        `config.apply` row in the audit log; StoreError if the database refuses."""
        try:
            async with self._pool.connection() as conn, conn.transaction():
                # A version seen before (every restart on unchanged files) only moves its
                # time; a new one's files are encoded in a worker thread: a config with
                # 100,000 zones is tens of MB of JSON, which on the event loop held up
                # ingest for minutes (docs/benchmarks.md).
                touched = await conn.execute(_TOUCH_VERSION, [applied_at, version])
                if touched.rowcount == 0:
                    encoded = await asyncio.to_thread(json_dumps, dict(files))
                    await conn.execute(
                        _UPSERT_VERSION,
                        [version, applied_at, applied_at, str(directory), encoded],
                    )
                # Who edited the files is the host's to say (its accounts, its version
                # control); the log says when each version took effect, and where.
                await insert_audit(
                    conn, "daemon", "config.apply", version, f"daemon:{socket.gethostname()}",
                    {"directory": str(directory), "applied_at": applied_at.isoformat()},
                )
        except psycopg.Error as exc:
            raise StoreError(f"cannot record config version {version}: {exc}") from exc

    async def get(self, version: str) -> dict[str, Any] | None:
        async with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(_SELECT_VERSION, [version])
            return await cur.fetchone()
