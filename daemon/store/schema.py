"""Schema detection: is TimescaleDB usable here, and which layout does the database have."""

from __future__ import annotations

import logging
from typing import Any

from psycopg import AsyncConnection

_LOGGER = logging.getLogger(__name__)

TIMESCALE_EXTENSION = "timescaledb"


async def timescale_available(conn: AsyncConnection[Any]) -> bool:
    """True if the extension is installed on the server *and* can be created here.

    Being listed in pg_available_extensions is not enough: TimescaleDB refuses to
    load unless it is in shared_preload_libraries, and a package installed for some
    other cluster is common. Treat that case as "not available" (plain tables) and
    say so, rather than failing start-up on CREATE EXTENSION.
    """
    cur = await conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = %s",
        [TIMESCALE_EXTENSION],
    )
    row = await cur.fetchone()
    if row is None:
        return False
    cur = await conn.execute("SELECT current_setting('shared_preload_libraries')")
    preload_row = await cur.fetchone()
    preload = str(preload_row[0]) if preload_row is not None else ""
    libraries = {part.strip().strip('"') for part in preload.split(",")}
    if not any(lib.startswith(TIMESCALE_EXTENSION) for lib in libraries):
        _LOGGER.warning(
            "timescaledb %s is installed but not in shared_preload_libraries (%r); "
            "using plain PostgreSQL tables",
            row[0],
            preload,
        )
        return False
    return True


async def timescale_installed(conn: AsyncConnection[Any]) -> bool:
    """True if CREATE EXTENSION timescaledb has been run in this database."""
    cur = await conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = %s", [TIMESCALE_EXTENSION]
    )
    return await cur.fetchone() is not None


async def is_hypertable(conn: AsyncConnection[Any], table: str) -> bool:
    """True if `table` (in the current schema search path) is a TimescaleDB hypertable."""
    if not await timescale_installed(conn):
        return False
    cur = await conn.execute(
        "SELECT 1 FROM timescaledb_information.hypertables"
        " WHERE hypertable_name = %s AND hypertable_schema = current_schema()",
        [table],
    )
    return await cur.fetchone() is not None
