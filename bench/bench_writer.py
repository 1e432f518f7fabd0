"""Benchmark: PingWriter throughput vs raw binary COPY of the same rows, same run.

    .venv/bin/python bench/bench_writer.py --dsn "host=... dbname=scratch" [--rows 200000]

Everything happens in a scratch schema (`emon_bench_<pid>`, dropped at the end), so
the DSN may point at any database the user can create schemas in; the real tables
are not touched. Each round, on empty tables:

* writer:        `PingWriter.put` for every ping, then `flush()`, with the writer's
                 defaults, into `pings` (unique key + BRIN; on plain PostgreSQL day
                 partitions). The producer yields to the event loop every
                 YIELD_EVERY_PINGS pings, as the MQTT ingest loop does.
* raw same-layout: one binary COPY of the same rows into `raw_pings_layout`, a table
                 built exactly like `pings` (same partitions, unique key and BRIN):
                 the issue's "raw binary COPY of the same rows", the ceiling for any
                 writer that keeps the idempotency key.
* raw keyed:     the same into an unpartitioned table with the unique key only.
* raw unindexed: the same into a plain table with no index: the most PostgreSQL
                 can take; the gap to "raw keyed" is what idempotency costs.

With --journal, two more figures: rows/s appended to the on-disk journal by the
writer's encoder (group appends with fdatasync, as during an outage), and rows/s of
replaying that journal into `pings` (what catching up after an outage runs at).

Pings are generated before timing; timing runs from the first ping handed over to the
last row committed. The best of `--rounds` is reported and, next to it, the median of
same-round ratios (each round's runs share the machine's load of that moment; on a
small shared box the load average, printed, moves results a lot).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.store import PingWriter, migrate, open_pool
from daemon.store.journal import Journal
from daemon.store.settings import FsyncPolicy
from daemon.store.writer import (
    FLUSH_ROWS,
    JOURNAL_GROUP_ROWS,
    MAX_BATCH_ROWS,
    _journal_frames,
    encode,
)
from geofence.observation import FixSource, LocationFix

DEFAULT_ROWS = 200_000
DEFAULT_DEVICES = 2_000
DEFAULT_ROUNDS = 3
PING_INTERVAL_SECONDS = 30
START = datetime(2025, 3, 1, tzinfo=UTC)
# A real producer awaits each MQTT message; without yielding, the bench loop would
# hold the event loop until the buffer is full.
YIELD_EVERY_PINGS = 100
# Share of pings that carry device extras (stored as jsonb).
EXTRA_SHARE = 0.1

_RAW_COLUMNS = "device_id, subject_id, ts, received_at, lat, lon, acc_m, src, battery_pct, extra"
_RAW_TYPES = [
    "text", "text", "timestamptz", "timestamptz", "float8", "float8", "float4", "text",
    "float4", "jsonb",
]  # fmt: skip
TABLES = {
    "writer": "pings",
    "raw_layout": "raw_pings_layout",
    "raw_keyed": "raw_pings_keyed",
    "raw": "raw_pings",
}
LABELS = {
    "writer": "writer",
    "raw_layout": "raw COPY, same layout",
    "raw_keyed": "raw COPY + key",
    "raw": "raw COPY, no index",
}


def make_pings(n: int, devices: int, seed: int = 7) -> list[tuple[LocationFix, str]]:
    rng = random.Random(seed)
    out: list[tuple[LocationFix, str]] = []
    for i in range(n):
        device = i % devices
        ts = START + timedelta(seconds=(i // devices) * PING_INTERVAL_SECONDS, milliseconds=device)
        extra = {"sats": rng.randint(4, 14), "hdop": round(rng.uniform(0.6, 3), 1)}
        fix = LocationFix(
            device_id=f"dev-{device:05d}",
            ts=ts,
            lat=31.0 + rng.uniform(0, 0.5),
            lon=121.2 + rng.uniform(0, 0.5),
            accuracy_m=rng.uniform(3, 60),
            source=FixSource.GNSS,
            received_at=ts + timedelta(milliseconds=rng.randint(50, 900)),
            battery_pct=rng.uniform(5, 100),
            extra=extra if rng.random() < EXTRA_SHARE else {},
        )
        out.append((fix, f"subj-{device:05d}"))
    return out


async def run_writer(dsn: str, pings: list[tuple[LocationFix, str]]) -> float:
    async with open_pool(dsn, min_size=1, max_size=3) as pool, PingWriter(pool) as writer:
        started = time.perf_counter()
        for i, (fix, subject) in enumerate(pings):
            await writer.put(fix, subject)
            if i % YIELD_EVERY_PINGS == 0:
                await asyncio.sleep(0)
        await writer.flush()
        elapsed = time.perf_counter() - started
    return elapsed


async def run_raw(dsn: str, pings: list[tuple[LocationFix, str]], table: str) -> float:
    """One COPY of all pings, turned into rows with no checks at all."""
    async with await AsyncConnection.connect(dsn) as conn:
        started = time.perf_counter()
        async with (
            conn.cursor() as cur,
            cur.copy(f"COPY {table} ({_RAW_COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(_RAW_TYPES)
            for f, subject in pings:
                extra = Jsonb(f.extra) if f.extra else None
                row = (f.device_id, subject, f.ts, f.received_at, f.lat, f.lon)
                await copy.write_row((*row, f.accuracy_m, f.source, f.battery_pct, extra))
        await conn.commit()
        return time.perf_counter() - started


async def run_journal(
    dsn: str, pings: list[tuple[LocationFix, str]], directory: Path
) -> tuple[float, float]:
    """(append seconds, replay seconds) for all pings through the on-disk journal."""
    rows = [(0.0, *encode(fix, subject)) for fix, subject in pings]
    async with Journal(directory, fsync=FsyncPolicy.ALWAYS, max_bytes=2**40) as journal:
        started = time.perf_counter()
        for i in range(0, len(rows), JOURNAL_GROUP_ROWS):
            frames, count = _journal_frames(rows[i : i + JOURNAL_GROUP_ROWS])
            await journal.append(frames, count)
        appended = time.perf_counter() - started
    async with (
        open_pool(dsn, min_size=1, max_size=3) as pool,
        Journal(directory) as journal,
    ):
        started = time.perf_counter()
        async with PingWriter(pool, journal=journal) as writer:
            await writer.wait_journal_replayed()
        replayed = time.perf_counter() - started
    return appended, replayed


async def count_rows(dsn: str, table: str) -> int:
    async with await AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def reset(dsn: str) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        names = ", ".join(TABLES.values())
        await conn.execute(f"TRUNCATE {names}")
        await conn.execute(f"VACUUM ANALYZE {names}")
        await conn.execute("CHECKPOINT")


async def prepare(dsn: str, timescale: bool, days: int) -> None:
    """The raw tables; on the plain layout, the data's day partitions (not timed)."""
    last = (START + timedelta(days=days)).date()
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("CREATE TABLE raw_pings (LIKE pings)")
        await conn.execute(
            "CREATE TABLE raw_pings_keyed (LIKE pings, UNIQUE (device_id, ts))"
        )
        if timescale:
            await conn.execute("CREATE TABLE raw_pings_layout (LIKE pings, UNIQUE (device_id, ts))")
            await conn.execute(
                "SELECT create_hypertable('raw_pings_layout', 'ts',"
                " chunk_time_interval => INTERVAL '1 day')"
            )
            return
        await conn.execute(
            "CREATE TABLE raw_pings_layout (LIKE pings) PARTITION BY RANGE (ts)"
        )
        await conn.execute("ALTER TABLE raw_pings_layout ADD UNIQUE (device_id, ts)")
        await conn.execute("CREATE INDEX ON raw_pings_layout USING brin (ts)")
        for table in ("pings", "raw_pings_layout"):
            await conn.execute(
                "SELECT emon_ensure_day_partitions(%s::regclass, %s, %s)",
                [table, START.date(), last],
            )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dsn", required=True, help="libpq DSN of a scratch database")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--journal", action="store_true", help="also time the journal")
    args = parser.parse_args()

    schema = f"emon_bench_{os.getpid()}"
    # public stays on the path for extension functions (TimescaleDB, if installed).
    dsn = make_conninfo(args.dsn, options=f"-c search_path={schema},public")
    async with await AsyncConnection.connect(args.dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        info = await migrate(dsn)
        pings = make_pings(args.rows, args.devices)
        span_days = (pings[-1][0].ts - START).days + 1
        await prepare(dsn, info.timescale, span_days)

        print(
            f"{args.rows} pings, {args.devices} devices, flush at {FLUSH_ROWS} rows "
            f"(up to {MAX_BATCH_ROWS} under backlog); "
            f"layout: {'TimescaleDB' if info.timescale else 'plain PostgreSQL, day partitions'}; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
        )
        results: dict[str, list[float]] = {name: [] for name in TABLES}
        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "writer": lambda: run_writer(dsn, pings),
            "raw_layout": lambda: run_raw(dsn, pings, "raw_pings_layout"),
            "raw_keyed": lambda: run_raw(dsn, pings, "raw_pings_keyed"),
            "raw": lambda: run_raw(dsn, pings, "raw_pings"),
        }
        for round_no in range(1, args.rounds + 1):
            # Alternate the order so neither side always runs on a warmer server.
            order = list(runs) if round_no % 2 else list(reversed(runs))
            for name in order:
                await reset(dsn)
                elapsed = await runs[name]()
                stored = await count_rows(dsn, TABLES[name])
                assert stored == args.rows, f"{name}: {stored} rows stored"
                results[name].append(elapsed)
                rate = args.rows / elapsed
                print(f"  round {round_no} {LABELS[name]:>22}: {rate:>10,.0f} rows/s")

        best = {name: args.rows / min(times) for name, times in results.items()}
        for name in TABLES:
            print(f"{LABELS[name]:<22} {best[name]:>10,.0f} rows/s (best of {args.rounds})")
        for base in ("raw_layout", "raw_keyed", "raw"):
            paired = statistics.median(
                b / w for w, b in zip(results["writer"], results[base], strict=True)
            )
            print(
                f"writer / {LABELS[base]:<22} = {best['writer'] / best[base]:.2f} (best of each), "
                f"{paired:.2f} (median of same-round ratios)"
            )
        if args.journal:
            appends, replays = [], []
            for _ in range(args.rounds):
                await reset(dsn)
                with tempfile.TemporaryDirectory(prefix="emon-bench-journal-") as tmp:
                    appended, replayed = await run_journal(dsn, pings, Path(tmp) / "j")
                assert await count_rows(dsn, "pings") == args.rows
                appends.append(appended)
                replays.append(replayed)
            print(
                f"journal append (fdatasync per {JOURNAL_GROUP_ROWS} rows) "
                f"{args.rows / min(appends):>10,.0f} rows/s; "
                f"journal replay into pings {args.rows / min(replays):>10,.0f} rows/s "
                f"({args.rows / min(replays) / best['raw_layout']:.2f} of raw COPY, same layout)"
            )
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        async with await AsyncConnection.connect(args.dsn, autocommit=True) as admin:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
