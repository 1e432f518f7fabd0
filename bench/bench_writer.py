"""Benchmark: PingWriter throughput vs raw binary COPY of the same rows.

    .venv/bin/python bench/bench_writer.py --dsn "host=... dbname=scratch" [--rows 200000]

Everything happens in a scratch schema (`emon_bench_<pid>`, dropped at the end), so
the DSN may point at any database the user can create schemas in; the real tables
are not touched. Each round, on empty tables:

* writer:    `PingWriter.put` for every ping, then `flush()`, with the writer's
             defaults, into `pings` (unique key + BRIN index). The producer yields
             to the event loop every YIELD_EVERY_PINGS pings, as the MQTT ingest
             loop does while awaiting messages.
* raw COPY:  one binary COPY of the same rows into `raw_pings`, a plain table with
             the same columns and no indexes: the most PostgreSQL can take in.
* raw COPY + key: the same into `raw_pings_keyed`, which has the same unique key as
             `pings` (what idempotency itself costs, without the writer).

Pings (LocationFix objects) are generated before timing; both sides start from
them, and timing runs from the first ping handed over to the last row committed.
The best of `--rounds` is reported (least disturbed by other load on the machine;
the load average is printed because on a small shared box it moves results a lot).

No writer that keeps the (device_id, ts) idempotency key can beat "raw COPY + key";
the gap between the two raw figures is what the key costs PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from psycopg import AsyncConnection
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.store import PingWriter, migrate, open_pool
from daemon.store.writer import FLUSH_ROWS, MAX_BATCH_ROWS
from geofence.observation import FixSource, LocationFix

DEFAULT_ROWS = 200_000
DEFAULT_DEVICES = 2_000
DEFAULT_ROUNDS = 3
PING_INTERVAL_SECONDS = 30
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


def make_pings(n: int, devices: int, seed: int = 7) -> list[tuple[LocationFix, str]]:
    rng = random.Random(seed)
    start = datetime(2025, 3, 1, tzinfo=UTC)
    out: list[tuple[LocationFix, str]] = []
    for i in range(n):
        device = i % devices
        ts = start + timedelta(seconds=(i // devices) * PING_INTERVAL_SECONDS, milliseconds=device)
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
    async with open_pool(dsn, min_size=1, max_size=2) as pool, PingWriter(pool) as writer:
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


async def count_rows(dsn: str, table: str) -> int:
    async with await AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(f"SELECT count(*) FROM {table}")
        row = await cur.fetchone()
        assert row is not None
        return int(row[0])


async def reset(dsn: str) -> None:
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("TRUNCATE pings, raw_pings, raw_pings_keyed")
        await conn.execute("VACUUM ANALYZE pings, raw_pings, raw_pings_keyed")
        await conn.execute("CHECKPOINT")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--dsn", required=True, help="libpq DSN of a scratch database")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    args = parser.parse_args()

    schema = f"emon_bench_{os.getpid()}"
    # public stays on the path for extension functions (TimescaleDB, if installed).
    dsn = make_conninfo(args.dsn, options=f"-c search_path={schema},public")
    async with await AsyncConnection.connect(args.dsn, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        info = await migrate(dsn)
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("CREATE TABLE raw_pings (LIKE pings)")
            await conn.execute("CREATE TABLE raw_pings_keyed (LIKE pings INCLUDING INDEXES)")
        pings = make_pings(args.rows, args.devices)

        print(
            f"{args.rows} pings, {args.devices} devices, flush at {FLUSH_ROWS} rows "
            f"(up to {MAX_BATCH_ROWS} under backlog); "
            f"layout: {'TimescaleDB' if info.timescale else 'plain PostgreSQL'}; "
            f"load average {os.getloadavg()[0]:.2f}"
        )
        results: dict[str, list[float]] = {"writer": [], "raw": [], "raw_keyed": []}
        runs: dict[str, Callable[[], Awaitable[float]]] = {
            "writer": lambda: run_writer(dsn, pings),
            "raw": lambda: run_raw(dsn, pings, "raw_pings"),
            "raw_keyed": lambda: run_raw(dsn, pings, "raw_pings_keyed"),
        }
        tables = {"writer": "pings", "raw": "raw_pings", "raw_keyed": "raw_pings_keyed"}
        for round_no in range(1, args.rounds + 1):
            # Alternate the order so neither side always runs on a warmer server.
            order = list(runs) if round_no % 2 else list(reversed(runs))
            for name in order:
                await reset(dsn)
                elapsed = await runs[name]()
                stored = await count_rows(dsn, tables[name])
                assert stored == args.rows, f"{name}: {stored} rows stored"
                results[name].append(elapsed)
                print(f"  round {round_no} {name:>9}: {args.rows / elapsed:>10,.0f} rows/s")

        best = {name: args.rows / min(times) for name, times in results.items()}
        print(f"writer          {best['writer']:>10,.0f} rows/s")
        print(f"raw COPY        {best['raw']:>10,.0f} rows/s")
        print(f"raw COPY + key  {best['raw_keyed']:>10,.0f} rows/s")
        # Ratios of the same round as well: they share the load of that moment.
        for base, label in (("raw", "raw COPY      "), ("raw_keyed", "raw COPY + key")):
            paired = statistics.median(
                b / w for w, b in zip(results["writer"], results[base], strict=True)
            )
            print(
                f"writer / {label} = {best['writer'] / best[base]:.2f} (best of each), "
                f"{paired:.2f} (median of same-round ratios)"
            )
        print(f"load average {os.getloadavg()[0]:.2f}")
    finally:
        async with await AsyncConnection.connect(args.dsn, autocommit=True) as admin:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
