"""Connection pool helper shared by the writer, the alert repository and the API."""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeAlias

from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from daemon.store.errors import StoreError

_LOGGER = logging.getLogger(__name__)

Pool: TypeAlias = AsyncConnectionPool[AsyncConnection[TupleRow]]

# The daemon needs one connection for the ping writer, one for alerts and a few for
# the API; more than that only adds idle backends on the server.
POOL_MIN_SIZE = 2
POOL_MAX_SIZE = 8
# Start-up fails (rather than limps) if the database is not reachable by then.
POOL_OPEN_TIMEOUT_SECONDS = 30.0
# Shutdown must not hang on a dead server.
POOL_CLOSE_TIMEOUT_SECONDS = 5.0
# Callers that wait longer than this for a connection get PoolTimeout (an error they
# handle), not an unbounded stall.
POOL_ACQUIRE_TIMEOUT_SECONDS = 10.0
# How long the pool keeps retrying one lost connection (with exponential backoff)
# before giving that slot up; the next checkout then starts a fresh attempt. The
# default (5 min) lets the backoff grow to minutes, so writes would resume up to
# minutes after the database is back; this caps that at well under a minute.
POOL_RECONNECT_TIMEOUT_SECONDS = 30.0

# A connection that committed work this recently is handed out without the check's round
# trip (the ping writer marks its connections after every batch: at ingest rates that is
# every few milliseconds, and the check was a round trip per batch). Short, so a server
# restart or a killed backend is still caught by the check on nearly every checkout; a
# batch that meets one anyway fails, is retried or journalled, and loses nothing.
CHECK_SKIP_AFTER_COMMIT_SECONDS = 1.0

# When each live connection last committed (`note_committed`).
_COMMITTED_AT: weakref.WeakKeyDictionary[AsyncConnection[TupleRow], float] = (
    weakref.WeakKeyDictionary()
)


def note_committed(conn: AsyncConnection[TupleRow]) -> None:
    """Record that `conn` just committed: its next checkout may skip the check."""
    _COMMITTED_AT[conn] = time.monotonic()


async def _check_unless_just_committed(conn: AsyncConnection[TupleRow]) -> None:
    committed_at = _COMMITTED_AT.get(conn)
    if (
        committed_at is not None
        and time.monotonic() - committed_at < CHECK_SKIP_AFTER_COMMIT_SECONDS
        and not conn.closed
    ):
        return
    await AsyncConnectionPool.check_connection(conn)


# Applied only where the DSN does not say otherwise. Keepalives make a silently
# vanished server (network partition, failover) show up as an error within ~1 min
# instead of a query hanging until the kernel gives up after hours.
_CONNECTION_DEFAULTS: dict[str, Any] = {
    "application_name": "emon",
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _connection_kwargs(conninfo: str) -> dict[str, Any]:
    given = conninfo_to_dict(conninfo)
    return {k: v for k, v in _CONNECTION_DEFAULTS.items() if k not in given}


@asynccontextmanager
async def open_pool(
    conninfo: str,
    *,
    min_size: int = POOL_MIN_SIZE,
    max_size: int = POOL_MAX_SIZE,
    open_timeout_seconds: float = POOL_OPEN_TIMEOUT_SECONDS,
    acquire_timeout_seconds: float = POOL_ACQUIRE_TIMEOUT_SECONDS,
    close_timeout_seconds: float = POOL_CLOSE_TIMEOUT_SECONDS,
    reconnect_timeout_seconds: float = POOL_RECONNECT_TIMEOUT_SECONDS,
    name: str = "emon",
) -> AsyncIterator[Pool]:
    """Open a pool, wait until `min_size` connections work, close it on exit.

    Created with `open=False` and opened with `wait=True` so a wrong DSN or a down
    server fails here, at start-up, as a `StoreError`, not on the first ping.
    Every checkout is checked (`check_connection`, one empty round trip) so that a
    connection killed while idle in the pool (server restart, failover,
    pg_terminate_backend) is replaced instead of failing the next batch; except one that
    committed less than CHECK_SKIP_AFTER_COMMIT_SECONDS ago (`note_committed`).
    """
    pool: Pool = AsyncConnectionPool(
        conninfo,
        kwargs=_connection_kwargs(conninfo),
        min_size=min_size,
        max_size=max_size,
        open=False,
        name=name,
        timeout=acquire_timeout_seconds,
        reconnect_timeout=reconnect_timeout_seconds,
        check=_check_unless_just_committed,
    )
    try:
        await pool.open(wait=True, timeout=open_timeout_seconds)
    except PoolTimeout as exc:
        await pool.close(timeout=close_timeout_seconds)
        raise StoreError(
            f"could not open {min_size} database connection(s) within "
            f"{open_timeout_seconds:.0f} s: {exc}"
        ) from exc
    _LOGGER.info("database pool %s open (min %s, max %s)", name, min_size, max_size)
    try:
        yield pool
    finally:
        await pool.close(timeout=close_timeout_seconds)
        _LOGGER.info("database pool %s closed", name)
