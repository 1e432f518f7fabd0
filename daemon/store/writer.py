"""Batched, idempotent writer for location pings and device events.

Producers `put` observations into a bounded in-memory buffer; one writer task
(owned by the `PingWriter` context) takes batches by size or age and writes each
in one transaction: binary COPY into a TEMP staging table, then
`INSERT ... SELECT ... ON CONFLICT DO NOTHING` into `pings` / `device_events`.
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
from datetime import datetime
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from prometheus_client import Counter, Gauge, Histogram
from psycopg import AsyncConnection
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
# Rows held in memory before `put` waits (backpressure) and `try_put` refuses. About
# 15 MB; at 100 pings/s that is over 8 minutes of database outage.
BUFFER_ROWS = 50_000
# One attempt to write one batch, connection checkout included. A server that stops
# answering (network partition) turns into a retried error, not a stuck writer.
BATCH_TIMEOUT_SECONDS = 30.0
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
# Pool of our own when given a DSN: the writer uses one connection at a time.
OWN_POOL_MIN_SIZE = 1
OWN_POOL_MAX_SIZE = 2

_PINGS: Final = 0
_EVENTS: Final = 1
_TABLE_NAMES: Final = ("pings", "device_events")

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
_FLUSH_SECONDS = Histogram(
    "emon_store_flush_seconds",
    "Time to write one batch (successful attempts)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
_BUFFERED_ROWS = Gauge("emon_store_buffered_rows", "Rows waiting in writer buffers")
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

# config_version: the config the core evaluated the row against (migration 0003).
_PING_COLUMNS: Final = (
    "device_id, subject_id, ts, received_at, lat, lon, acc_m, src, battery_pct, extra,"
    " config_version"
)
_EVENT_COLUMNS: Final = (
    "device_id, subject_id, ts, received_at, type, attributes, config_version"
)
# JSON is staged as text and cast in the INSERT: the server parses it exactly once
# either way, and text lets `put` serialise (and validate) it in the caller.
_CREATE_STAGING: Final = (
    "CREATE TEMP TABLE IF NOT EXISTS emon_stage_pings ("
    " device_id text, subject_id text, ts timestamptz, received_at timestamptz,"
    " lat float8, lon float8, acc_m float4, src text, battery_pct float4, extra text,"
    " config_version text"
    ") ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS emon_stage_device_events ("
    " device_id text, subject_id text, ts timestamptz, received_at timestamptz,"
    " type text, attributes text, config_version text"
    ") ON COMMIT DELETE ROWS"
)
_COPY_PINGS: Final = f"COPY emon_stage_pings ({_PING_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_COPY_EVENTS: Final = f"COPY emon_stage_device_events ({_EVENT_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_PING_TYPES: Final = [
    "text", "text", "timestamptz", "timestamptz", "float8", "float8", "float4", "text",
    "float4", "text", "text",
]  # fmt: skip
_EVENT_TYPES: Final = ["text", "text", "timestamptz", "timestamptz", "text", "text", "text"]
_INSERT_PINGS: Final = (
    f"INSERT INTO pings ({_PING_COLUMNS})"
    " SELECT device_id, subject_id, ts, received_at, lat, lon, acc_m, src, battery_pct,"
    " extra::jsonb, config_version FROM emon_stage_pings"
    " ON CONFLICT (device_id, ts) DO NOTHING"
)
_INSERT_EVENTS: Final = (
    f"INSERT INTO device_events ({_EVENT_COLUMNS})"
    " SELECT device_id, subject_id, ts, received_at, type, attributes::jsonb, config_version"
    " FROM emon_stage_device_events"
    " ON CONFLICT (device_id, ts, type) DO NOTHING"
)
_INSERT_REJECT: Final = (
    "INSERT INTO store_rejects (table_name, error, row_text) VALUES (%s, %s, %s)"
    " ON CONFLICT (table_name, row_md5) DO NOTHING"
)

# (enqueued at, monotonic seconds; table index; column values in COPY order)
_Row = tuple[float, int, tuple[Any, ...]]


def _dump_json(value: dict[str, Any], what: str) -> str:
    try:
        return json_dumps(value)
    except (TypeError, ValueError) as exc:
        raise InvalidRowError(f"{what} is not storable as JSON: {exc}") from exc


def _require_aware(value: datetime, what: str) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidRowError(f"{what} must be timezone-aware, got {value!r}")


def encode(
    obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
) -> tuple[int, tuple[Any, ...]]:
    """(table index, column values) for one observation; InvalidRowError if unstorable."""
    _require_aware(obs.ts, "ts")
    _require_aware(obs.received_at, "received_at")
    if isinstance(obs, LocationFix):
        extra = _dump_json(obs.extra, "extra") if obs.extra else None
        return _PINGS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.lat, obs.lon,
            obs.accuracy_m, obs.source.value, obs.battery_pct, extra, config_version,
        )  # fmt: skip
    if isinstance(obs, DeviceEvent):
        attributes = _dump_json(obs.attributes, "attributes")
        return _EVENTS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.type.value, attributes,
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
        batch_timeout_seconds: float = BATCH_TIMEOUT_SECONDS,
        retry_initial_seconds: float = RETRY_INITIAL_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        close_drain_timeout_seconds: float = CLOSE_DRAIN_TIMEOUT_SECONDS,
        close_stop_timeout_seconds: float = CLOSE_STOP_TIMEOUT_SECONDS,
    ) -> None:
        if flush_rows < 1 or buffer_rows < flush_rows:
            raise ValueError("need 1 <= flush_rows <= buffer_rows")
        self._pool_arg = pool
        self._pool: Pool | None = None
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval_seconds
        self._capacity = buffer_rows
        self._batch_timeout = batch_timeout_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._drain_timeout = close_drain_timeout_seconds
        self._stop_timeout = close_stop_timeout_seconds

        self._rows: deque[_Row] = deque()
        self._in_flight: list[_Row] = []
        # Row counters: appended so far, taken into batches, durably written.
        self._seq_in = 0
        self._seq_taken = 0
        self._seq_done = 0
        # `flush()` asks for everything up to this sequence number now, not by age.
        self._flush_target = 0
        self._wake = asyncio.Event()  # writer: rows arrived / batch full / flush / close
        self._space = asyncio.Event()  # producers: the buffer has room again
        self._progress = asyncio.Event()  # flush(): a batch was written
        self._open = False
        self._closing = False
        self._overflowing = False
        self._outage_since: float | None = None
        self._outage_reminded = 0.0
        self._outage_failures = 0
        # Connections on which this writer created its staging tables (in a committed
        # transaction). Weak: the pool replaces broken connections with new objects.
        self._staged: weakref.WeakSet[AsyncConnection[TupleRow]] = weakref.WeakSet()
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
        self._open = True
        self._task = asyncio.create_task(self._run(), name="emon-store-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
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
            lost = len(self._rows) + len(self._in_flight)
            if lost:
                # Until the disk journal exists these rows are lost (and the MQTT
                # messages carrying them may already be acknowledged): say so loudly.
                _ROWS_ABANDONED.inc(lost)
                _LOGGER.error(
                    "ping writer stopped with %s rows unwritten (database unavailable at shutdown)",
                    lost,
                )
                _BUFFERED_ROWS.dec(len(self._rows))
                self._rows.clear()
                self._in_flight = []

    # -- producers ---------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Rows accepted but not yet written (buffer plus the batch being written)."""
        return len(self._rows) + len(self._in_flight)

    async def put(
        self, obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
    ) -> None:
        """Buffer one observation, waiting for room if the buffer is full."""
        table, values = encode(obs, subject_id, config_version)
        self._check_open()
        if len(self._rows) >= self._capacity:
            _PUT_WAITS.inc()
            while len(self._rows) >= self._capacity:
                self._space.clear()
                await self._space.wait()
                self._check_open()
        self._append(table, values)

    def try_put(
        self, obs: LocationFix | DeviceEvent, subject_id: str, config_version: str | None = None
    ) -> bool:
        """Buffer one observation if there is room; False (and counted) if full."""
        table, values = encode(obs, subject_id, config_version)
        self._check_open()
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

    def _check_open(self) -> None:
        if not self._open or self._closing or self._task is None or self._task.done():
            raise StoreClosedError("ping writer is not running")

    def _append(self, table: int, values: tuple[Any, ...]) -> None:
        self._rows.append((time.monotonic(), table, values))
        self._seq_in += 1
        _BUFFERED_ROWS.inc()
        n = len(self._rows)
        if n == 1 or n == self._flush_rows:
            self._wake.set()

    # -- the writer task ---------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                batch = await self._next_batch()
                if batch is None:
                    return
                await self._deliver(batch)
                self._in_flight = []
                self._seq_done += len(batch)
                self._progress.set()
        finally:
            # Producers blocked on a full buffer must not wait for a writer that is
            # gone; they re-check and raise StoreClosedError.
            self._space.set()
            self._progress.set()

    async def _next_batch(self) -> list[_Row] | None:
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
            n = min(len(self._rows), self._flush_rows)
            popleft = self._rows.popleft
            batch = [popleft() for _ in range(n)]
            self._in_flight = batch
            self._seq_taken += n
            _BUFFERED_ROWS.dec(n)
            self._space.set()
            return batch

    async def _deliver(self, batch: list[_Row]) -> None:
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
            except Exception as exc:  # whatever it is: keep the batch and retry
                self._note_failure(exc, len(batch))
                delay = min(self._retry_max, self._retry_initial * 2**attempt)
                attempt += 1
                # Equal jitter: at least half the delay, so retries stay spaced out.
                await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
                continue
            self._note_recovery()
            return

    def _note_failure(self, exc: Exception, rows: int) -> None:
        _WRITE_ERRORS.labels(error=type(exc).__name__).inc()
        now = time.monotonic()
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = self._outage_reminded = now
            _LOGGER.error(
                "cannot write to the database, holding %s rows and retrying: %s",
                rows + len(self._rows),
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
                rows + len(self._rows),
                self._describe(exc),
            )

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"TimeoutError: no answer within {self._batch_timeout:.1f} s"
        return f"{type(exc).__name__}: {exc}"

    def _note_recovery(self) -> None:
        if self._outage_since is not None:
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
        assert self._pool is not None
        pings = [values for _, table, values in rows if table == _PINGS]
        events = [values for _, table, values in rows if table == _EVENTS]
        started = time.perf_counter()
        async with (
            asyncio.timeout(self._batch_timeout),
            self._pool.connection(timeout=self._batch_timeout) as conn,
        ):
            try:
                async with conn.transaction():
                    if conn not in self._staged:
                        await conn.execute(_CREATE_STAGING)
                    new_pings = await self._copy_insert(
                        conn, pings, _COPY_PINGS, _PING_TYPES, _INSERT_PINGS
                    )
                    new_events = await self._copy_insert(
                        conn, events, _COPY_EVENTS, _EVENT_TYPES, _INSERT_EVENTS
                    )
            except BaseException:
                # A rolled-back transaction also rolled back the CREATE TEMP TABLE;
                # IF NOT EXISTS makes re-running it on the next attempt harmless.
                self._staged.discard(conn)
                raise
            self._staged.add(conn)
        _FLUSH_SECONDS.observe(time.perf_counter() - started)
        _BATCHES.inc()
        for table, staged, new in ((_PINGS, pings, new_pings), (_EVENTS, events, new_events)):
            if staged:
                _ROWS_WRITTEN.labels(table=_TABLE_NAMES[table]).inc(new)
                if len(staged) > new:
                    _ROWS_DUPLICATE.labels(table=_TABLE_NAMES[table]).inc(len(staged) - new)

    @staticmethod
    async def _copy_insert(
        conn: AsyncConnection[TupleRow],
        rows: list[tuple[Any, ...]],
        copy_sql: str,
        types: list[str],
        insert_sql: str,
    ) -> int:
        if not rows:
            return 0
        async with conn.cursor() as cur:
            async with cur.copy(copy_sql) as copy:
                copy.set_types(types)
                for values in rows:
                    await copy.write_row(values)
            await cur.execute(insert_sql)
            return max(cur.rowcount, 0)

    async def _reject(self, row: _Row, exc: BaseException) -> None:
        assert self._pool is not None
        _, table, values = row
        table_name = _TABLE_NAMES[table]
        _LOGGER.error(
            "database refused a %s row, keeping it in store_rejects: %s: %s; row=%r",
            table_name,
            type(exc).__name__,
            exc,
            values,
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
