"""Versioned SQL migrations, applied in order at start-up under an advisory lock.

Files live in `daemon/store/migrations/` and are named `NNNN_name.sql`. A version
that depends on the storage layout has two files instead, `NNNN_name.plain.sql` and
`NNNN_name.timescale.sql`; the runner applies the one for the layout of this
database. The layout is chosen once, when the first layout-specific migration is
applied, and is recorded in `schema_migrations.name` ("time_series.timescale"), so
a later start never mixes layouts, even if TimescaleDB is installed afterwards.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.store import schema
from daemon.store.errors import StoreError

_LOGGER = logging.getLogger(__name__)

# Arbitrary but fixed: every emon process must use the same key ("emonmigr" in ASCII).
MIGRATION_LOCK_KEY = 0x656D6F6E6D696772
# A second daemon starting at the same time waits this long for the first one to
# finish migrating; DDL also waits at most this long for table locks held by
# running daemons (instead of queueing every writer behind it indefinitely).
MIGRATION_LOCK_TIMEOUT_SECONDS = 60.0

_FILE_RE = re.compile(
    r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+)(?:\.(?P<layout>plain|timescale))?\.sql$"
)
_PLAIN = "plain"
_TIMESCALE = "timescale"


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What `migrate` found: the layout in use and the schema version (e.g. "0002")."""

    timescale: bool
    version: str


@dataclass(frozen=True, slots=True)
class _Migration:
    version: str
    name: str
    # None: applies to every layout; else {"plain": sql, "timescale": sql}.
    sql: bytes | None
    variants: dict[str, bytes] | None


def load_migrations() -> list[_Migration]:
    """Read and validate the migration files shipped with the package."""
    directory = resources.files("daemon.store") / "migrations"
    generic: dict[str, tuple[str, bytes]] = {}
    variants: dict[str, dict[str, tuple[str, bytes]]] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _FILE_RE.match(entry.name)
        if match is None:
            raise StoreError(f"badly named migration file {entry.name!r}")
        version, name, layout = match["version"], match["name"], match["layout"]
        if layout is None:
            if version in generic or version in variants:
                raise StoreError(f"two migration files for version {version}")
            generic[version] = (name, entry.read_bytes())
        else:
            if version in generic:
                raise StoreError(f"version {version} has both generic and layout files")
            by_layout = variants.setdefault(version, {})
            by_layout[layout] = (name, entry.read_bytes())
    migrations: list[_Migration] = []
    for version, (name, sql) in generic.items():
        migrations.append(_Migration(version, name, sql, None))
    for version, by_layout in variants.items():
        if set(by_layout) != {_PLAIN, _TIMESCALE} or len({n for n, _ in by_layout.values()}) != 1:
            raise StoreError(f"version {version} needs a .plain and a .timescale file, same name")
        name = by_layout[_PLAIN][0]
        migrations.append(
            _Migration(version, name, None, {k: sql for k, (_, sql) in by_layout.items()})
        )
    migrations.sort(key=lambda m: m.version)
    # Gaps usually mean a file missing from the package (e.g. package data not
    # shipped): refuse to start rather than run a schema that silently lacks a step.
    expected = [f"{i:04d}" for i in range(1, len(migrations) + 1)]
    if [m.version for m in migrations] != expected:
        found = [m.version for m in migrations]
        raise StoreError(f"migration versions not contiguous from 0001: {found}")
    return migrations


async def migrate(
    conninfo: str,
    *,
    timescale: bool | None = None,
    lock_timeout_seconds: float = MIGRATION_LOCK_TIMEOUT_SECONDS,
) -> StoreInfo:
    """Bring the database schema up to date; safe to run from several daemons at once.

    `timescale=None` (default) uses TimescaleDB when the server can load it and plain
    tables otherwise; True requires it (StoreError if unusable); False forces plain
    tables. The choice only matters for a database whose layout is not decided yet.
    Each migration runs in its own transaction, recorded in `schema_migrations`.
    """
    migrations = load_migrations()
    try:
        conn = await AsyncConnection.connect(
            conninfo, autocommit=True, application_name="emon-migrate"
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to run migrations: {exc}") from exc
    try:
        async with conn:
            return await _migrate_locked(conn, migrations, timescale, lock_timeout_seconds)
    except psycopg.Error as exc:
        raise StoreError(f"migration failed: {exc}") from exc


async def _migrate_locked(
    conn: AsyncConnection[TupleRow],
    migrations: list[_Migration],
    want_timescale: bool | None,
    lock_timeout_seconds: float,
) -> StoreInfo:
    await conn.execute(
        "SELECT set_config('lock_timeout', %s, false)", [f"{int(lock_timeout_seconds * 1000)}ms"]
    )
    try:
        # Session-level lock: held across the per-migration transactions and released
        # below (or by the server when this connection dies).
        await conn.execute("SELECT pg_advisory_lock(%s)", [MIGRATION_LOCK_KEY])
    except psycopg.errors.LockNotAvailable as exc:
        raise StoreError(
            f"another process held the migration lock for more than {lock_timeout_seconds:.0f} s"
        ) from exc
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cur = await conn.execute("SELECT version, name FROM schema_migrations")
        applied = {str(v): str(n) for v, n in await cur.fetchall()}
        layout = await _layout(conn, migrations, applied, want_timescale)
        for migration in migrations:
            if migration.version in applied:
                continue
            if migration.sql is not None:
                name, sql = migration.name, migration.sql
            else:
                assert migration.variants is not None
                name, sql = f"{migration.name}.{layout}", migration.variants[layout]
            _LOGGER.info("applying migration %s_%s", migration.version, name)
            async with conn.transaction():
                # Bytes: the file may hold several statements (no parameters, so
                # psycopg sends it as one simple query).
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    [migration.version, name],
                )
            applied[migration.version] = name
        known = {m.version for m in migrations}
        newer = sorted(v for v in applied if v not in known)
        if newer:
            # A newer emon migrated this database (rolling upgrade, or a rollback of
            # the binary). Running is usually fine: migrations only add.
            _LOGGER.warning("database has migrations this emon does not know: %s", newer)
        info = StoreInfo(timescale=await schema.is_hypertable(conn, "pings"), version=max(applied))
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", [MIGRATION_LOCK_KEY])
    _LOGGER.info(
        "database schema at version %s using %s",
        info.version,
        "TimescaleDB hypertables" if info.timescale else "plain PostgreSQL tables",
    )
    return info


async def _layout(
    conn: AsyncConnection[TupleRow],
    migrations: list[_Migration],
    applied: dict[str, str],
    want_timescale: bool | None,
) -> str:
    """The layout for pending layout-specific migrations: recorded, else decided now."""
    for name in applied.values():
        if name.endswith(f".{_TIMESCALE}"):
            return _TIMESCALE
        if name.endswith(f".{_PLAIN}"):
            return _PLAIN
    pending_variant = any(m.variants is not None and m.version not in applied for m in migrations)
    if not pending_variant or want_timescale is False:
        return _PLAIN
    if not await schema.timescale_available(conn):
        if want_timescale:
            raise StoreError("TimescaleDB was required but is not available on this server")
        _LOGGER.info("TimescaleDB not available; using plain PostgreSQL tables")
        return _PLAIN
    # Available and preloaded, so a failure here (typically: not allowed to create
    # extensions) is a configuration error; falling back would make the plain layout
    # permanent for this database behind the operator's back.
    try:
        await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {schema.TIMESCALE_EXTENSION}")
    except psycopg.Error as exc:
        raise StoreError(
            f"TimescaleDB is available but CREATE EXTENSION failed ({exc}); grant the "
            "privilege, create it as a superuser, or start with timescale disabled"
        ) from exc
    return _TIMESCALE
