"""Batched, idempotent writer for location pings and device events.

Producers `put` observations into a bounded in-memory buffer; the writer task
(owned by the `PingWriter` context) takes batches by size or age and writes each
in one transaction (two batches at a time, on two connections): binary COPY into
a TEMP staging table, then `INSERT ... SELECT ... ON CONFLICT DO NOTHING` into
`pings` / `device_events` (with a faster COPY straight into the table tried
first, see `_write_table`).
Because the tables' unique keys are the idempotency keys, any batch can be written
again (retry after an error, replay, QoS 1 redelivery) and stores each row once.
That property is what makes "keep the batch and retry" safe, and it is the
contract a future disk journal relies on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from prometheus_client import Counter, Gauge, Histogram
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import TupleRow

from daemon.store._json import dumps as json_dumps
from daemon.store.errors import InvalidRowError, StoreClosedError
from daemon.store.pool import Pool, open_pool
from geofence.observation import DeviceEvent, LocationFix

_LOGGER = logging.getLogger(__name__)

# Flush when this many rows are buffered...
FLUSH_ROWS = 1_000
# ...or when the oldest buffered row is this old, whichever comes first.
FLUSH_INTERVAL_SECONDS = 0.2
# Rows waiting in memory before `put` waits (backpressure) and `try_put` refuses;
# the batches being written (WRITE_CONCURRENCY x up to MAX_BATCH_ROWS) come on top.
# About 25 MB; at 100 pings/s that rides out over 8 minutes of database outage.
BUFFER_ROWS = 50_000
# One attempt to write one batch, connection checkout included. A server that stops
# answering (network partition) turns into a retried error, not a stuck writer.
BATCH_TIMEOUT_SECONDS = 30.0
# Under a backlog (buffer fuller than FLUSH_ROWS, e.g. after an outage or a burst)
# take up to this many rows in one transaction: the per-commit cost (WAL flush,
# round trips) is paid once per batch, so larger batches catch up much faster.
MAX_BATCH_ROWS = 10_000
# After a batch hit an already stored key, write this many batches through the
# dedup path before trying the fast path again.
DEDUP_PATH_BATCHES = 20
# Retry delays: exponential from the initial value, capped, with jitter so several
# daemons do not hammer a recovering server in lock-step.
RETRY_INITIAL_SECONDS = 0.1
RETRY_MAX_SECONDS = 10.0
# While an outage lasts, remind the log this often (the first failure is logged at
# once; individual retries are only counted).
OUTAGE_REMINDER_SECONDS = 60.0
# Shutdown: time to write what is buffered, then to stop the writer task.
CLOSE_DRAIN_TIMEOUT_SECONDS = 15.0
CLOSE_STOP_TIMEOUT_SECONDS = 5.0
# Batches written at the same time, each on its own connection. Two overlap one
# batch's client-side work (encoding, commit round trips) with the server's work
# on the other; measured +20-35% rows/s over one. Rows of different batches may
# commit out of order, which nothing relies on (the keys make order irrelevant).
WRITE_CONCURRENCY = 2
# Pool of our own when given a DSN: one connection per concurrent batch.
OWN_POOL_MIN_SIZE = 1
OWN_POOL_MAX_SIZE = WRITE_CONCURRENCY

_PINGS: Final = 0
_EVENTS: Final = 1

_ROWS_WRITTEN = Counter("emon_store_rows_written", "Rows inserted (duplicates excluded)", ["table"])
_ROWS_DUPLICATE = Counter(
    "emon_store_rows_duplicate",
    "Rows skipped because the same key was already stored (redelivery, replay)",
    ["table"],
)
_ROWS_REJECTED = Counter(
    "emon_store_rows_rejected",
    "Rows PostgreSQL refused for their content, kept in store_rejects",
    ["table"],
)
_ROWS_ABANDONED = Counter(
    "emon_store_rows_abandoned",
    "Rows still unwritten when the writer had to stop (database down at shutdown)",
)
_BATCHES = Counter("emon_store_batches", "Batches written")
_DEDUP_PATH = Counter(
    "emon_store_dedup_path_writes",
    "Per-table batch writes that went through staging + ON CONFLICT (held a stored key)",
    ["table"],
)
_FLUSH_SECONDS = Histogram(
    "emon_store_flush_seconds",
    "Time to write one batch (successful attempts)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


class _BufferedRows:
    """Rows accepted and not yet written (buffered or in the batch being written) by
    all writers of the process, read by the gauge at scrape time.

    A plain int changed on the event loop instead of Gauge.inc per row, which takes
    a lock: that was a measurable share of `put`.
    """

    count = 0


_BUFFERED_ROWS = Gauge(
    "emon_store_buffered_rows", "Rows accepted by writers and not yet written (incl. in flight)"
)
_BUFFERED_ROWS.set_function(lambda: _BufferedRows.count)
_WRITE_ERRORS = Counter(
    "emon_store_write_errors", "Failed attempts to write a batch (each retry counts)", ["error"]
)
_BUFFER_OVERFLOW = Counter(
    "emon_store_buffer_overflow", "try_put calls refused because the buffer was full"
)
_PUT_WAITS = Counter(
    "emon_store_put_waits", "put calls that had to wait for buffer space (backpressure)"
)

# Errors caused by the content of some row, not by the database being unavailable:
# retrying the same batch would fail forever, so the batch is split to isolate the
# row(s). Class 22 (data exception), 23 (integrity), 54 (limits, e.g. a huge JSON
# value); UnicodeEncodeError is raised client-side for unencodable text.
_ROW_ERRORS: Final = (
    psycopg.DataError,
    psycopg.IntegrityError,
    psycopg.errors.ProgramLimitExceeded,
    UnicodeEncodeError,
)

JSONB_OID: Final = 3802  # fixed in PostgreSQL's catalog (pg_type.dat)

# SQLSTATE class 40: the server aborted the transaction to resolve a conflict with
# a concurrent one (psycopg does not derive these from TransactionRollback).
_CONFLICT_ERRORS: Final = (
    psycopg.errors.TransactionRollback,
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)

_PING_TYPES: Final = [
    "text", "text", "timestamptz", "timestamptz", "float8", "float8", "float4", "text",
    "float4", "jsonb", "text",
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Table:
    """How one table is written: directly (fast path) or through staging (dedup path)."""

    name: str
    columns: str
    types: list[str]
    key: str
    column_defs: str

    @property
    def stage(self) -> str:
        return f"emon_stage_{self.name}"

    @property
    def copy_direct(self) -> str:
        return f"COPY {self.name} ({self.columns}) FROM STDIN (FORMAT BINARY)"

    @property
    def copy_stage(self) -> str:
        return f"COPY {self.stage} ({self.columns}) FROM STDIN (FORMAT BINARY)"

    @property
    def create_stage(self) -> str:
        # Created once per connection; emptied by every commit, so a batch never
        # sees another's rows and nothing needs dropping.
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.stage} ({self.column_defs})"
            " ON COMMIT DELETE ROWS"
        )

    @property
    def insert_from_stage(self) -> str:
        # Sorted by the key: index pages are visited in order, and concurrent writers
        # (two daemons) lock keys in the same order, so they cannot deadlock.
        return (
            f"INSERT INTO {self.name} ({self.columns})"
            f" SELECT {self.columns} FROM {self.stage} ORDER BY {self.key}"
            f" ON CONFLICT ({self.key}) DO NOTHING"
        )


# config_version: the config the core evaluated the row against (migration 0004).
_TABLES: Final = (
    _Table(
        name="pings",
        columns=(
            "device_id, subject_id, ts, received_at, lat, lon, acc_m, src, battery_pct, extra,"
            " config_version"
        ),
        types=_PING_TYPES,
        key="device_id, ts",
        column_defs=(
            'device_id text COLLATE "C", subject_id text COLLATE "C", ts timestamptz,'
            " received_at timestamptz, lat float8, lon float8, acc_m float4, src text,"
            " battery_pct float4, extra jsonb, config_version text"
        ),
    ),
    _Table(
        name="device_events",
        columns="device_id, subject_id, ts, received_at, type, attributes, config_version",
        types=["text", "text", "timestamptz", "timestamptz", "text", "jsonb", "text"],
        key="device_id, ts, type",
        column_defs=(
            'device_id text COLLATE "C", subject_id text COLLATE "C", ts timestamptz,'
            " received_at timestamptz, type text, attributes jsonb, config_version text"
        ),
    ),
)
_INSERT_REJECT: Final = (
    "INSERT INTO store_rejects (table_name, error, row_text) VALUES (%s, %s, %s)"
    " ON CONFLICT (table_name, row_md5) DO NOTHING"
)

# (enqueued at, monotonic seconds; table index; column values in COPY order)
_Row = tuple[float, int, tuple[Any, ...]]


class _JsonTextDumper(Dumper):
    """Binary jsonb from JSON text already serialised by `encode`.

    Rows hold the text (a plain str) rather than a Jsonb wrapper so that a buffered
    row is a tuple of atoms, which CPython's garbage collector stops tracking: with
    tens of thousands of rows buffered, tracked rows made every full collection
    walk them all (measured: ~40% of the cost of `put`).
    """

    format = Format.BINARY
    oid = JSONB_OID

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + str(obj).encode()


def _dump_json(value: dict[str, Any], what: str) -> str:
    # Serialised here, in the caller of put, so an unserialisable value fails there.
    try:
        return json_dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRowError(f"{what} is not storable as JSON: {exc}") from exc


def _naive(obs: LocationFix | DeviceEvent) -> InvalidRowError:
    return InvalidRowError(
        f"timestamps must be timezone-aware, got ts={obs.ts!r} received_at={obs.received_at!r}"
    )


def encode(
    obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
) -> tuple[int, tuple[Any, ...]]:
    """(table index, column values) for one observation; InvalidRowError if unstorable.

    On the hot path (every ping): values are atoms only (str, float, datetime,
    None), see `_JsonTextDumper`; enum values are read as `_value_` (documented, and
    5x cheaper than the `.value` property).
    """
    if obs.ts.tzinfo is None or obs.received_at.tzinfo is None:
        raise _naive(obs)
    if isinstance(obs, LocationFix):
        extra = _dump_json(obs.extra, "extra") if obs.extra else None
        return _PINGS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.lat, obs.lon,
            obs.accuracy_m, obs.source._value_, obs.battery_pct, extra, config_version,
        )  # fmt: skip
    if isinstance(obs, DeviceEvent):
        attributes = _dump_json(obs.attributes, "attributes")
        return _EVENTS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.type._value_, attributes,
            config_version,
        )  # fmt: skip
    raise InvalidRowError(f"cannot store a {type(obs).__name__}")


class PingWriter:
    """Buffered writer of pings and device events; an async context manager.

    `put` waits while the buffer is full; `try_put` never waits and returns False
    (counted in emon_store_buffer_overflow_total) instead. On a database error the
    batch is kept and retried with capped, jittered backoff; rows are never dropped
    while the writer runs. On exit everything buffered is written (bounded by
    `close_drain_timeout_seconds`; what cannot be written by then is logged and
    counted as abandoned).
    """

    def __init__(
        self,
        pool: Pool | str,
        *,
        flush_rows: int = FLUSH_ROWS,
        flush_interval_seconds: float = FLUSH_INTERVAL_SECONDS,
        buffer_rows: int = BUFFER_ROWS,
        max_batch_rows: int = MAX_BATCH_ROWS,
        write_concurrency: int = WRITE_CONCURRENCY,
        batch_timeout_seconds: float = BATCH_TIMEOUT_SECONDS,
        retry_initial_seconds: float = RETRY_INITIAL_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        close_drain_timeout_seconds: float = CLOSE_DRAIN_TIMEOUT_SECONDS,
        close_stop_timeout_seconds: float = CLOSE_STOP_TIMEOUT_SECONDS,
    ) -> None:
        if flush_rows < 1 or buffer_rows < flush_rows or write_concurrency < 1:
            raise ValueError("need 1 <= flush_rows <= buffer_rows and write_concurrency >= 1")
        self._pool_arg = pool
        self._pool: Pool | None = None
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval_seconds
        self._capacity = buffer_rows
        self._max_batch_rows = max(flush_rows, min(max_batch_rows, buffer_rows))
        self._concurrency = write_concurrency
        self._batch_timeout = batch_timeout_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._drain_timeout = close_drain_timeout_seconds
        self._stop_timeout = close_stop_timeout_seconds

        self._rows: deque[_Row] = deque()
        # Batches being written, by the sequence number of their first row.
        self._in_flight: dict[int, list[_Row]] = {}
        # Row sequence numbers: appended so far, taken into batches, and the first
        # row not yet durably written (every row before it is).
        self._seq_in = 0
        self._seq_taken = 0
        self._seq_done = 0
        # `flush()` asks for everything up to this sequence number now, not by age.
        self._flush_target = 0
        self._wake = asyncio.Event()  # writer: rows arrived / batch full / flush / close
        self._space = asyncio.Event()  # producers: the buffer has room again
        self._progress = asyncio.Event()  # flush(): a batch was written
        # True from start until close begins or the writer task ends: put/try_put
        # check this one flag (hot path).
        self._accepting = False
        self._closing = False
        self._overflowing = False
        # An outage lasts while any batch is failing (keys of _in_flight); with two
        # workers it ends when both have written, so a flap logs no second outage.
        self._failing: set[int] = set()
        self._outage_since: float | None = None
        self._outage_reminded = 0.0
        self._outage_failures = 0
        # Connections on which this writer created its staging tables (in a committed
        # transaction). Weak: the pool replaces broken connections with new objects.
        self._staged: weakref.WeakSet[AsyncConnection[TupleRow]] = weakref.WeakSet()
        # Fast-path bookkeeping per table (see _write_table).
        self._batch_no = 0
        self._direct_resumes_at = [0, 0]
        self._task: asyncio.Task[None] | None = None
        self._stack = AsyncExitStack()

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if isinstance(self._pool_arg, str):
            self._pool = await self._stack.enter_async_context(
                open_pool(
                    self._pool_arg,
                    min_size=OWN_POOL_MIN_SIZE,
                    max_size=OWN_POOL_MAX_SIZE,
                    name="emon-writer",
                )
            )
        else:
            self._pool = self._pool_arg
        self._task = asyncio.create_task(self._run(), name="emon-store-writer")
        self._accepting = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._accepting = False
        self._wake.set()
        self._space.set()  # blocked producers wake up and get StoreClosedError
        try:
            await self._stop_task()
        finally:
            await self._stack.aclose()

    async def _stop_task(self) -> None:
        task = self._task
        if task is None:
            return
        try:
            # Stage 1: let the writer drain the buffer (it flushes without waiting
            # for the age limit once closing).
            done, _ = await asyncio.wait({task}, timeout=self._drain_timeout)
            if not done:
                # Stage 2: the database is not taking rows; stop retrying.
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
                if not done:
                    _LOGGER.error("ping writer task did not stop within %.1f s", self._stop_timeout)
        except asyncio.CancelledError:
            # Our own shutdown was cancelled: do not leave the writer running.
            task.cancel()
            await asyncio.wait({task}, timeout=self._stop_timeout)
            raise
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                _LOGGER.error("ping writer task failed", exc_info=task.exception())
            lost = self.buffered
            if lost:
                # Until the disk journal exists these rows are lost (and the MQTT
                # messages carrying them may already be acknowledged): say so loudly.
                _ROWS_ABANDONED.inc(lost)
                _LOGGER.error(
                    "ping writer stopped with %s rows unwritten (database unavailable at shutdown)",
                    lost,
                )
                _BufferedRows.count -= lost
                self._rows.clear()
                self._in_flight.clear()

    # -- producers ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Rows accepted but not yet written (buffer plus the batches being written)."""
        return len(self._rows) + sum(map(len, self._in_flight.values()))

    async def put(
        self, obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
    ) -> None:
        """Buffer one observation, waiting for room if the buffer is full."""
        table, values = encode(obs, subject_id, config_version)
        if not self._accepting:
            raise StoreClosedError("ping writer is not running")
        if len(self._rows) >= self._capacity:
            await self._wait_for_space()
        self._append(table, values)

    async def _wait_for_space(self) -> None:
        _PUT_WAITS.inc()
        while len(self._rows) >= self._capacity:
            self._space.clear()
            await self._space.wait()
            if not self._accepting:
                raise StoreClosedError("ping writer stopped while put was waiting")

    def try_put(
        self, obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
    ) -> bool:
        """Buffer one observation if there is room; False (and counted) if full."""
        table, values = encode(obs, subject_id, config_version)
        if not self._accepting:
            raise StoreClosedError("ping writer is not running")
        if len(self._rows) >= self._capacity:
            _BUFFER_OVERFLOW.inc()
            if not self._overflowing:
                self._overflowing = True
                _LOGGER.warning("ping writer buffer full (%s rows): refusing rows", self._capacity)
            return False
        self._overflowing = False
        self._append(table, values)
        return True

    async def flush(self) -> None:
        """Return once every row put before this call is written (ignores the age limit)."""
        target = self._seq_in
        if self._seq_done >= target:
            return
        self._flush_target = max(self._flush_target, target)
        self._wake.set()
        while self._seq_done < target:
            if self._task is None or self._task.done():
                raise StoreClosedError("ping writer stopped before the flush completed")
            self._progress.clear()
            await self._progress.wait()

    def _append(self, table: int, values: tuple[Any, ...]) -> None:
        self._rows.append((time.monotonic(), table, values))
        self._seq_in += 1
        _BufferedRows.count += 1
        n = len(self._rows)
        if n == 1 or n == self._flush_rows:
            self._wake.set()

    # -- the writer task ---------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as workers:
                for n in range(self._concurrency):
                    workers.create_task(self._work(), name=f"emon-store-writer-{n}")
        finally:
            # Producers blocked on a full buffer must not wait for a writer that is
            # gone; they re-check and raise StoreClosedError.
            self._accepting = False
            self._space.set()
            self._progress.set()

    async def _work(self) -> None:
        while (taken := await self._next_batch()) is not None:
            start, batch = taken
            await self._deliver(start, batch)
            del self._in_flight[start]
            # Batches finish out of order: done up to the oldest still in flight.
            self._seq_done = min(self._in_flight, default=self._seq_taken)
            _BufferedRows.count -= len(batch)
            self._progress.set()

    async def _next_batch(self) -> tuple[int, list[_Row]] | None:
        """Wait until a batch is due (size, age, flush() or close) and take it."""
        while True:
            self._wake.clear()
            if not self._rows:
                if self._closing:
                    return None
                await self._wake.wait()
                continue
            due = (
                len(self._rows) >= self._flush_rows
                or self._closing
                or self._flush_target > self._seq_taken
            )
            if not due:
                remaining = self._rows[0][0] + self._flush_interval - time.monotonic()
                if remaining > 0:
                    try:
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
            n = min(len(self._rows), self._max_batch_rows)
            popleft = self._rows.popleft
            batch = [popleft() for _ in range(n)]
            start = self._seq_taken
            self._in_flight[start] = batch
            self._seq_taken += n
            self._space.set()
            return start, batch

    async def _deliver(self, start: int, batch: list[_Row]) -> None:
        """Write one batch, retrying until it is stored; never gives it up.

        Seam for the disk journal (later issue): when an outage outlasts the memory
        buffer, this is where a batch would be appended to a local journal (and this
        method return) instead of being retried here, with a replay task feeding the
        journal back through `_write_isolating` once the database is back. Replaying
        is safe because every write is idempotent.
        """
        attempt = 0
        while True:
            try:
                await self._write_isolating(batch)
            except _CONFLICT_ERRORS as exc:
                # Deadlock or serialization failure with a concurrent writer (the
                # other worker, another daemon) on the same keys: not an outage, and
                # the server already chose who goes first. Retry soon.
                _WRITE_ERRORS.labels(error=type(exc).__name__).inc()
                _LOGGER.info("batch conflicted with a concurrent write, retrying: %s", exc)
                await asyncio.sleep(random.uniform(0, self._retry_initial))
                continue
            except Exception as exc:  # whatever it is: keep the batch and retry
                self._note_failure(start, exc)
                delay = min(self._retry_max, self._retry_initial * 2**attempt)
                attempt += 1
                # Equal jitter: at least half the delay, so retries stay spaced out.
                await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
                continue
            self._note_success(start)
            return

    def _note_failure(self, start: int, exc: Exception) -> None:
        _WRITE_ERRORS.labels(error=type(exc).__name__).inc()
        self._failing.add(start)
        now = time.monotonic()
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = self._outage_reminded = now
            _LOGGER.error(
                "cannot write to the database, holding %s rows and retrying: %s",
                self.buffered,
                self._describe(exc),
                # A traceback only helps for what is not plainly an outage.
                exc_info=not isinstance(exc, psycopg.OperationalError | TimeoutError),
            )
        elif now - self._outage_reminded >= OUTAGE_REMINDER_SECONDS:
            self._outage_reminded = now
            _LOGGER.error(
                "database still unavailable after %.0f s (%s failed attempts, %s rows held): %s",
                now - self._outage_since,
                self._outage_failures,
                self.buffered,
                self._describe(exc),
            )

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"TimeoutError: no answer within {self._batch_timeout:.1f} s"
        return f"{type(exc).__name__}: {exc}"

    def _note_success(self, start: int) -> None:
        self._failing.discard(start)
        if self._outage_since is not None and not self._failing:
            _LOGGER.warning(
                "database writes recovered after %.1f s and %s failed attempts",
                time.monotonic() - self._outage_since,
                self._outage_failures,
            )
            self._outage_since = None
            self._outage_failures = 0

    async def _write_isolating(self, rows: Sequence[_Row]) -> None:
        """Write rows; if some row's content is refused, split until it is isolated.

        Halves that were written before a later failure are simply written again on
        the retry (idempotent), so there is no bookkeeping of partial success.
        """
        try:
            await self._write(rows)
        except _ROW_ERRORS as exc:
            if len(rows) == 1:
                await self._reject(rows[0], exc)
                return
            mid = len(rows) // 2
            await self._write_isolating(rows[:mid])
            await self._write_isolating(rows[mid:])

    async def _write(self, rows: Sequence[_Row]) -> None:
        """Write rows in one transaction, each table by COPY or through staging."""
        assert self._pool is not None
        self._batch_no += 1
        by_table: tuple[list[tuple[Any, ...]], ...] = ([], [])
        for _, table, values in rows:
            by_table[table].append(values)
        started = time.perf_counter()
        async with (
            asyncio.timeout(self._batch_timeout),
            self._pool.connection(timeout=self._batch_timeout) as conn,
        ):
            try:
                async with conn.transaction():
                    new = [
                        await self._write_table(conn, table, by_table[table])
                        for table in (_PINGS, _EVENTS)
                    ]
            except BaseException:
                # A rolled-back transaction also rolled back a CREATE TEMP TABLE made
                # in it; IF NOT EXISTS makes re-running it next time harmless.
                self._staged.discard(conn)
                raise
        _FLUSH_SECONDS.observe(time.perf_counter() - started)
        _BATCHES.inc()
        for table in (_PINGS, _EVENTS):
            given = len(by_table[table])
            if given:
                _ROWS_WRITTEN.labels(table=_TABLES[table].name).inc(new[table])
                if given > new[table]:
                    _ROWS_DUPLICATE.labels(table=_TABLES[table].name).inc(given - new[table])

    async def _write_table(
        self, conn: AsyncConnection[TupleRow], table: int, rows: list[tuple[Any, ...]]
    ) -> int:
        """Write one table's rows inside the batch transaction; returns rows inserted.

        Fast path: COPY straight into the table, in a savepoint. ON CONFLICT costs
        about twice a plain insert per row (speculative insertion), and nearly every
        batch is free of duplicates, so try without it first. A batch with a key
        already stored (QoS 1 redelivery, replay, retry of a committed batch) fails
        with a unique violation, is undone to the savepoint and goes the dedup path:
        COPY into the TEMP staging table, then INSERT ... SELECT ... ON CONFLICT DO
        NOTHING. Duplicates come in bursts, so the dedup path is then used alone for
        the next few batches.
        """
        if not rows:
            return 0
        spec = _TABLES[table]
        if self._batch_no >= self._direct_resumes_at[table]:
            try:
                async with conn.transaction():
                    await self._copy(conn, spec.copy_direct, spec.types, rows)
            except psycopg.errors.UniqueViolation:
                self._direct_resumes_at[table] = self._batch_no + DEDUP_PATH_BATCHES
            else:
                return len(rows)
        _DEDUP_PATH.labels(table=spec.name).inc()
        if conn not in self._staged:
            await conn.execute(";".join(t.create_stage for t in _TABLES))
            self._staged.add(conn)
        await self._copy(conn, spec.copy_stage, spec.types, rows)
        cur = await conn.execute(spec.insert_from_stage)
        return max(cur.rowcount, 0)

    @staticmethod
    async def _copy(
        conn: AsyncConnection[TupleRow],
        statement: str,
        types: list[str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        async with conn.cursor() as cur:
            cur.adapters.register_dumper(None, _JsonTextDumper)
            async with cur.copy(statement) as copy:
                copy.set_types(types)
                for values in rows:
                    await copy.write_row(values)

    async def _reject(self, row: _Row, exc: BaseException) -> None:
        assert self._pool is not None
        _, table, values = row
        table_name = _TABLES[table].name
        # The row (coordinates) and the server's full message (its CONTEXT quotes the
        # refused value) go to store_rejects, behind the database's access control; the
        # log, read by more people and kept elsewhere, names the device only.
        diag = getattr(exc, "diag", None)
        _LOGGER.error(
            "database refused a %s row of device %s, keeping it in store_rejects: %s: %s",
            table_name,
            values[0],
            type(exc).__name__,
            getattr(diag, "message_primary", None) or "see store_rejects",
        )
        # repr() escapes what made the row unstorable (NULs, lone surrogates).
        row_text = repr(values)
        async with (
            asyncio.timeout(self._batch_timeout),
            self._pool.connection(timeout=self._batch_timeout) as conn,
        ):
            error = f"{type(exc).__name__}: {exc}"
            await conn.execute(_INSERT_REJECT, [table_name, error, row_text])
        _ROWS_REJECTED.labels(table=table_name).inc()
