"""Helpers for store tests: database outages on a shared server, a tiny filesystem."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict, make_conninfo


async def execute(dsn: str, query: str, params: list[Any] | None = None) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(query, params)


async def scalar(dsn: str, query: str, params: list[Any] | None = None) -> Any:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        row = await cur.fetchone()
        assert row is not None
        return row[0]


async def rows(dsn: str, query: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


@asynccontextmanager
async def database_down(dsn: str) -> AsyncIterator[None]:
    """The test's database refuses connections and loses its sessions: an outage of one
    database on the shared server, which other tests do not notice.

    Only sessions of other applications than psql/tests are cut (application_name
    'emon*', the store's default)."""
    name = conninfo_to_dict(dsn)["dbname"]
    admin = make_conninfo(dsn, dbname="postgres")
    await execute(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    try:
        await execute(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND application_name LIKE 'emon%%' AND pid <> pg_backend_pid()",
            [name],
        )
        yield
    finally:
        await execute(admin, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


@contextmanager
def tiny_filesystem(where: Path, size: str = "256k") -> Iterator[Path]:
    """A small tmpfs: a real ENOSPC from the kernel (needs root and mount rights)."""
    mount_point = where / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here to fill a disk: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
