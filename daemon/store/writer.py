"""Batched, idempotent writer for pings, device events and zone transitions.

Producers `put` rows into a bounded in-memory buffer; worker tasks (owned by the
`PingWriter` context) take batches by size or age and write each in one transaction (two
batches at a time, on two connections): binary COPY straight into the table, or, when a
batch holds a key already stored, COPY into a TEMP staging table and
`INSERT ... SELECT ... ON CONFLICT DO NOTHING` (see `_write_table`). Because the tables'
unique keys are the idempotency keys, any batch can be written again (retry after an
error, journal replay, QoS 1 redelivery) and stores each row once.

With a `Journal` (the daemon always has one), rows the database cannot take are not held
in memory for the length of an outage:

* normal: rows -> memory -> database.
* journalling (entered when a batch fails for a reason other than its content, or when
  the memory buffer is full): the failed batches and every row after them are appended,
  in arrival order, to the on-disk journal by the appender task; the replayer task writes
  the journal back to the database, oldest first, retrying with backoff while the
  database is down. When the journal is drained the writer returns to normal; every row
  of the journal is older than every row still in memory, so rows reach the database in
  the order they arrived (up to the two batches written concurrently).

Each row has a sequence number. Two watermarks say how far rows are safe: `durable`
(committed, or appended to the journal with its fsync policy) and `written` (committed
in PostgreSQL). The daemon acknowledges an MQTT message once `durable` passes its rows
(`wait_durable`), so a daemon killed at any moment loses nothing: unacknowledged
messages are redelivered by the broker and deduplicated by the keys.

Backpressure, never loss: `put` waits when the memory buffer is full and cannot spill
(the journal is full, or the disk refuses writes: an error log and
emon_store_journal_write_errors_total say which). At shutdown, rows the database cannot
take within the drain timeout are appended to the journal and replayed at the next
start; only if that also fails are they counted as abandoned.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from prometheus_client import Counter, Gauge, Histogram
from psycopg import AsyncConnection
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.rows import TupleRow

from daemon.store._json import dumps as json_dumps
from daemon.store.errors import InvalidRowError, StoreClosedError, StoreError
from daemon.store.journal import Journal, JournalError, Position, ReadChunk, encode_frame
from daemon.store.pool import Pool, note_committed, open_pool
from daemon.transitions import ZoneTransition
from geofence.observation import DeviceEvent, LocationFix

_LOGGER = logging.getLogger(__name__)

# Flush when this many rows are buffered...
FLUSH_ROWS = 1_000
# ...or when the oldest buffered row is this old, whichever comes first.
FLUSH_INTERVAL_SECONDS = 0.2
# ...or when no row has come for this long: a producer that waits for its rows to be
# durable (the MQTT reader with a bounded window of unacknowledged messages) has stopped
# sending, so waiting for more rows would only add latency.
FLUSH_IDLE_SECONDS = 0.005
# Rows waiting in memory before they spill to the journal (or, without one, before `put`
# waits and `try_put` refuses); the batches being written come on top. ~25 MB.
BUFFER_ROWS = 50_000
# One attempt to write one batch, connection checkout included. A server that stops
# answering (network partition) turns into an error (and a journal spill), not a stuck
# writer; acknowledgements wait at most this long for a hung server.
BATCH_TIMEOUT_SECONDS = 10.0
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
# Journal appends that fail (disk full, I/O error, size limit) are retried with this
# backoff; rows wait in memory meanwhile (and `put` waits once memory is full).
JOURNAL_RETRY_INITIAL_SECONDS = 0.2
JOURNAL_RETRY_MAX_SECONDS = 5.0
# Rows per journal group append (one fsync); larger groups form by themselves while an
# fsync is in progress.
JOURNAL_GROUP_ROWS = 10_000
# Shutdown: time to write what is buffered, then to stop the writer tasks.
CLOSE_DRAIN_TIMEOUT_SECONDS = 15.0
CLOSE_STOP_TIMEOUT_SECONDS = 5.0
# Batches written at the same time, each on its own connection. Two overlap one
# batch's client-side work (encoding, commit round trips) with the server's work
# on the other; measured +20-35% rows/s over one. Rows of different batches may
# commit out of order, which nothing relies on (the keys make order irrelevant).
WRITE_CONCURRENCY = 2
# Pool of our own when given a DSN: one connection per concurrent batch and one to spare
# for the journal replayer and partition creation.
OWN_POOL_MIN_SIZE = 1
OWN_POOL_MAX_SIZE = WRITE_CONCURRENCY + 1

_PINGS: Final = 0
_EVENTS: Final = 1
_ZONES: Final = 2

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
    "Rows neither written nor journalled when the writer had to stop",
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
_PARTITIONS_CREATED = Counter(
    "emon_store_partitions_created_on_demand",
    "Day partitions the writer had to create for rows outside the prepared range",
)
_WRITE_ERRORS = Counter(
    "emon_store_write_errors", "Failed attempts to write a batch (each retry counts)", ["error"]
)
_BUFFER_OVERFLOW = Counter(
    "emon_store_buffer_overflow", "try_put calls refused because the buffer was full"
)
_PUT_WAITS = Counter(
    "emon_store_put_waits", "put calls that had to wait for buffer space (backpressure)"
)
_JOURNAL_SPILLS = Counter(
    "emon_store_journal_spills",
    "Times the writer started journalling, by reason",
    ["reason"],
)

_LIVE_WRITERS: weakref.WeakSet[PingWriter] = weakref.WeakSet()
_BUFFERED_ROWS = Gauge(
    "emon_store_buffered_rows",
    "Rows in memory not yet written to the database or the journal (incl. in flight)",
)
_BUFFERED_ROWS.set_function(lambda: sum(w.buffered for w in _LIVE_WRITERS))
_JOURNALLING = Gauge(
    "emon_store_journalling", "1 while new rows go to the on-disk journal instead of the database"
)
_JOURNALLING.set_function(lambda: int(any(w.journalling for w in _LIVE_WRITERS)))

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
    "float4", "jsonb", "text", "bool",
]  # fmt: skip

# Plain layout: creates the day partitions of a table for a range of days (migration 0005).
_ENSURE_PARTITIONS: Final = "SELECT emon_ensure_day_partitions(%s::regclass, %s::date, %s::date)"


class _DirectCopyHitStoredKey(StoreError):
    """A fast-path COPY met a key already stored: the batch goes again, that table staged."""

    def __init__(self, table: int) -> None:
        super().__init__(_TABLES[table].name)
        self.table = table


@dataclass(frozen=True, slots=True)
class _Table:
    """How one table is written: directly (fast path) or through staging (dedup path)."""

    name: str
    columns: str
    types: list[str]
    key: str
    column_defs: str
    ts_index: int  # the partitioning column among the values

    @property
    def column_names(self) -> list[str]:
        return [c.strip() for c in self.columns.split(",")]

    @property
    def time_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, t in enumerate(self.types) if t == "timestamptz")

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
            " config_version, outside_authorisation"
        ),
        types=_PING_TYPES,
        key="device_id, ts",
        column_defs=(
            'device_id text COLLATE "C", subject_id text COLLATE "C", ts timestamptz,'
            " received_at timestamptz, lat float8, lon float8, acc_m float4, src text,"
            " battery_pct float4, extra jsonb, config_version text,"
            " outside_authorisation boolean"
        ),
        ts_index=2,
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
        ts_index=2,
    ),
    _Table(
        name="zone_transitions",
        columns=(
            "device_id, subject_id, zone_id, kind, state, ts, received_at, role, previous,"
            " config_version"
        ),
        types=[
            "text", "text", "text", "text", "text", "timestamptz", "timestamptz", "text", "text",
            "text",
        ],
        key="device_id, zone_id, kind, ts",
        column_defs=(
            'device_id text COLLATE "C", subject_id text COLLATE "C", zone_id text COLLATE "C",'
            " kind text, state text, ts timestamptz, received_at timestamptz, role text,"
            " previous text, config_version text"
        ),
        ts_index=5,
    ),
)
_TABLE_INDEX: Final = {spec.name: i for i, spec in enumerate(_TABLES)}
# Per table: positions of timestamptz values, and column names (journal codec, per row).
_TIME_INDEXES: Final = tuple(spec.time_indexes for spec in _TABLES)
_COLUMN_NAMES: Final = tuple(spec.column_names for spec in _TABLES)
_INSERT_REJECT: Final = (
    "INSERT INTO store_rejects (table_name, error, row_text) VALUES (%s, %s, %s)"
    " ON CONFLICT (table_name, row_md5) DO NOTHING"
)

# (enqueued at, monotonic seconds; table index; column values in COPY order)
_Row = tuple[float, int, tuple[Any, ...]]

Storable = LocationFix | DeviceEvent | ZoneTransition


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


def _naive(obs: Storable) -> InvalidRowError:
    return InvalidRowError(
        f"timestamps must be timezone-aware, got ts={obs.ts!r} received_at={obs.received_at!r}"
    )


def encode(
    obs: Storable,
    subject_id: str,
    config_version: str | None = None,
    outside_authorisation: bool = False,
) -> tuple[int, tuple[Any, ...]]:
    """(table index, column values) for one row; InvalidRowError if unstorable.
    `outside_authorisation` flags a ping taken outside its subject's authorised monitoring
    (Art. 29, migration 0008); stored as NULL when False.

    On the hot path (every ping): values are atoms only (str, float, datetime,
    None), see `_JsonTextDumper`; enum values are read as `_value_` (documented, and
    5x cheaper than the `.value` property). A zone transition names its own subject.
    """
    if obs.ts.tzinfo is None or obs.received_at.tzinfo is None:
        raise _naive(obs)
    if isinstance(obs, LocationFix):
        extra = _dump_json(obs.extra, "extra") if obs.extra else None
        return _PINGS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.lat, obs.lon,
            obs.accuracy_m, obs.source._value_, obs.battery_pct, extra, config_version,
            True if outside_authorisation else None,
        )  # fmt: skip
    if isinstance(obs, DeviceEvent):
        attributes = _dump_json(obs.attributes, "attributes")
        return _EVENTS, (
            obs.device_id, subject_id, obs.ts, obs.received_at, obs.type._value_, attributes,
            config_version,
        )  # fmt: skip
    if isinstance(obs, ZoneTransition):
        previous = obs.previous._value_ if obs.previous is not None else None
        return _ZONES, (
            obs.device_id, obs.subject_id, obs.zone_id, obs.kind, obs.state._value_, obs.ts,
            obs.received_at, obs.role._value_, previous, config_version,
        )  # fmt: skip
    raise InvalidRowError(f"cannot store a {type(obs).__name__}")


# -- journal codec: rows <-> JSON frames (datetimes as RFC 3339 text) -------------------


def _journal_frames(rows: Iterable[_Row]) -> tuple[list[bytes], int]:
    """Frames (one per table present) for rows; returns (frames, row count)."""
    by_table: dict[int, list[list[Any]]] = {}
    count = 0
    for _, table, values in rows:
        row = list(values)
        for i in _TIME_INDEXES[table]:
            row[i] = row[i].isoformat()
        by_table.setdefault(table, []).append(row)
        count += 1
    frames = [
        encode_frame(_TABLES[t].name, _COLUMN_NAMES[t], table_rows)
        for t, table_rows in sorted(by_table.items())
    ]
    return frames, count


def _rows_from_chunk(chunk: ReadChunk) -> list[_Row]:
    """Rows of journal frames, mapped by column name onto today's tables."""
    now = time.monotonic()
    out: list[_Row] = []
    for frame in chunk.frames:
        table = _TABLE_INDEX.get(frame.table)
        if table is None:
            # Written by a newer emon with a table this one does not know: keep it
            # visible instead of dropping it.
            _ROWS_REJECTED.labels(table=frame.table).inc(len(frame.rows))
            _LOGGER.error(
                "journal frame for unknown table %r (%s rows) skipped; the segment file is "
                "deleted after replay, so a newer emon should replay this journal",
                frame.table,
                len(frame.rows),
            )
            continue
        spec = _TABLES[table]
        where = {name: i for i, name in enumerate(frame.columns)}
        picks = [where.get(name) for name in spec.column_names]
        times = set(spec.time_indexes)
        for raw in frame.rows:
            values = tuple(
                None if j is None else
                (datetime.fromisoformat(raw[j]) if i in times and raw[j] is not None else raw[j])
                for i, j in enumerate(picks)
            )  # fmt: skip
            out.append((now, table, values))
    return out


class _Watermark:
    """The first sequence number not yet resolved; ranges may resolve out of order."""

    __slots__ = ("_done", "value")

    def __init__(self) -> None:
        self.value = 0
        self._done: dict[int, int] = {}

    def resolve(self, start: int, end: int) -> None:
        if end <= start or start < self.value:
            return
        if start > self.value:
            self._done[start] = end
            return
        self.value = end
        while self.value in self._done:
            self.value = self._done.pop(self.value)


def _day_runs(rows: Sequence[_Row], table: int) -> list[tuple[date, date]]:
    """The UTC days of a table's rows, as runs of consecutive days (first, last): only
    the days that hold rows, never the years between a very late ping and today."""
    index = _TABLES[table].ts_index
    days = sorted({v[index].astimezone(UTC).date() for _, t, v in rows if t == table})
    runs: list[tuple[date, date]] = []
    for day in days:
        if runs and (day - runs[-1][1]).days == 1:
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


class PingWriter:
    """Buffered writer of pings, device events and zone transitions; an async context manager.

    `put` returns the row's durability target for `wait_durable` and waits while the
    buffer is full (backpressure); `try_put` never waits and returns False (counted in
    emon_store_buffer_overflow_total) instead. Without a journal a failed batch is kept
    and retried in memory with capped, jittered backoff; with one, it spills to the
    journal (see the module docstring). Rows are never dropped while the writer runs.
    """

    def __init__(
        self,
        pool: Pool | str,
        *,
        journal: Journal | None = None,
        flush_rows: int = FLUSH_ROWS,
        flush_interval_seconds: float = FLUSH_INTERVAL_SECONDS,
        flush_idle_seconds: float | None = None,
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
        self._journal = journal
        self._flush_rows = flush_rows
        self._flush_interval = flush_interval_seconds
        # Idle flushing serves producers that wait for durability; without it, batches
        # form by size and age only (the benchmark, bulk loads).
        self._flush_idle = flush_idle_seconds
        self._capacity = buffer_rows
        self._max_batch_rows = max(flush_rows, min(max_batch_rows, buffer_rows))
        self._concurrency = write_concurrency
        self._batch_timeout = batch_timeout_seconds
        self._retry_initial = retry_initial_seconds
        self._retry_max = retry_max_seconds
        self._drain_timeout = close_drain_timeout_seconds
        self._stop_timeout = close_stop_timeout_seconds

        self._rows: deque[_Row] = deque()
        # Sequence numbers: rows appended so far, and rows taken out of `_rows` (into a
        # database batch or a journal chunk). `_rows` holds [_seq_taken, _seq_in).
        self._seq_in = 0
        self._seq_taken = 0
        self._last_put = 0.0
        # Database batches being written, and chunks waiting to be appended to the
        # journal, by the sequence number of their first row.
        self._in_flight: dict[int, list[_Row]] = {}
        self._to_journal: dict[int, list[_Row]] = {}
        # Journal groups appended by this run, oldest first: (end position, seq range).
        self._appended: deque[tuple[Position, int, int]] = deque()
        self._durable = _Watermark()
        self._written = _Watermark()
        # `flush()` asks for everything up to this sequence number now, not by age.
        self._flush_target = 0
        self._wake = asyncio.Event()  # workers: rows arrived / batch full / flush / close
        self._append_wake = asyncio.Event()  # appender: rows or chunks to journal
        self._replay_wake = asyncio.Event()  # replayer: the journal grew
        self._space = asyncio.Event()  # producers: the buffer has room again
        self._progress = asyncio.Event()  # a watermark moved
        # True from start until close begins or the writer task ends: put/try_put
        # check this one flag (hot path).
        self._accepting = False
        self._closing = False
        self._overflowing = False
        self._journalling = False
        self._journal_failing = False
        # An outage lasts while any batch is failing (keys of _in_flight, -1 for the
        # replayer); with two workers it ends when both have written, so a flap logs
        # no second outage.
        self._failing: set[int] = set()
        self._outage_since: float | None = None
        self._outage_reminded = 0.0
        self._outage_failures = 0
        # Connections on which this writer created its staging tables (in a committed
        # transaction). Weak: the pool replaces broken connections with new objects.
        self._staged: weakref.WeakSet[AsyncConnection[TupleRow]] = weakref.WeakSet()
        # Fast-path bookkeeping per table (see _write_table).
        self._batch_no = 0
        self._direct_resumes_at = [0] * len(_TABLES)
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
        if self._journal is not None and not self._journal.empty:
            # Rows of an earlier run come first: new rows queue behind them.
            self._journalling = True
            _JOURNAL_SPILLS.labels(reason="journal_at_start").inc()
        self._task = asyncio.create_task(self._run(), name="emon-store-writer")
        self._accepting = True
        _LIVE_WRITERS.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        self._accepting = False
        self._wake_all()
        self._space.set()  # blocked producers wake up and get StoreClosedError
        try:
            try:
                await self._drain()
            finally:
                await self._stop_task()
                await self._keep_leftovers()
        finally:
            _LIVE_WRITERS.discard(self)
            await self._stack.aclose()

    def _wake_all(self) -> None:
        self._wake.set()
        self._append_wake.set()
        self._replay_wake.set()

    async def _drain(self) -> None:
        """Stage 1: let the tasks write what is buffered, within the drain timeout.

        Done when everything is in the database, or, while the database is failing,
        when everything is in the journal (replayed at the next start).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._drain_timeout
        while True:
            target = self._seq_in
            if self._written.value >= target:
                return
            if self._outage_since is not None and self._durable.value >= target:
                return
            remaining = deadline - loop.time()
            if remaining <= 0 or self._task is None or self._task.done():
                return
            self._progress.clear()
            try:
                async with asyncio.timeout(min(remaining, 0.5)):
                    await self._progress.wait()
            except TimeoutError:
                pass

    async def _stop_task(self) -> None:
        """Stage 2: stop the writer's tasks (they may be retrying forever)."""
        task = self._task
        if task is None:
            return
        try:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=self._stop_timeout)
            if not done:
                _LOGGER.error("ping writer task did not stop within %.1f s", self._stop_timeout)
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task}, timeout=self._stop_timeout)
            raise
        finally:
            if task.done() and not task.cancelled() and task.exception() is not None:
                _LOGGER.error("ping writer task failed", exc_info=task.exception())

    async def _keep_leftovers(self) -> None:
        """Stage 3: rows neither written nor journalled go to the journal, or are lost."""
        pending = sorted(
            [*self._in_flight.items(), *self._to_journal.items()], key=lambda item: item[0]
        )
        rows = [row for _, batch in pending for row in batch]
        rows.extend(self._rows)
        # Batches cancelled mid-write may have committed: journalling them again is
        # harmless (replay is idempotent), losing them is not.
        self._in_flight.clear()
        self._to_journal.clear()
        self._rows.clear()
        if not rows:
            return
        if self._journal is not None:
            frames, count = _journal_frames(rows)
            try:
                await self._journal.append(frames, count)
            except JournalError as exc:
                _LOGGER.error("could not journal %s rows at shutdown: %s", count, exc)
            else:
                _LOGGER.warning(
                    "database unavailable at shutdown: %s rows kept in the journal %s for "
                    "the next start",
                    count,
                    self._journal.directory,
                )
                return
        _ROWS_ABANDONED.inc(len(rows))
        _LOGGER.error(
            "ping writer stopped with %s rows unwritten (database unavailable at shutdown)",
            len(rows),
        )

    # -- state ---------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Rows in memory, not yet written or journalled (buffer, batches, chunks)."""
        return (
            len(self._rows)
            + sum(map(len, self._in_flight.values()))
            + sum(map(len, self._to_journal.values()))
        )

    @property
    def journalling(self) -> bool:
        return self._journalling

    @property
    def durable_seq(self) -> int:
        """Rows with a sequence number below this are committed or journalled."""
        return self._durable.value

    @property
    def written_seq(self) -> int:
        """Rows with a sequence number below this are committed in PostgreSQL."""
        return self._written.value

    @property
    def seq(self) -> int:
        """The durability target of everything put so far."""
        return self._seq_in

    # -- producers ---------------------------------------------------------------

    async def put(
        self,
        obs: Storable,
        subject_id: str,
        config_version: str | None = None,
        *,
        outside_authorisation: bool = False,
    ) -> int:
        """Buffer one row, waiting for room if the buffer is full; returns its target
        for `wait_durable`. `config_version`: the config the core decided it against."""
        table, values = encode(obs, subject_id, config_version, outside_authorisation)
        if not self._accepting:
            raise StoreClosedError("ping writer is not running")
        if self._full():
            self._spill("buffer_full")
            await self._wait_for_space()
        self._append(table, values)
        return self._seq_in

    def _full(self) -> bool:
        """The memory bound: rows in the buffer, and while the journal refuses appends,
        the chunk waiting for it too (it cannot leave memory either). Without the latter,
        a failing journal let memory hold a whole chunk more than `buffer_rows`, by how
        fast rows had come when the chunk was taken."""
        held = len(self._rows)
        if self._journal_failing:
            held += sum(map(len, self._to_journal.values()))
        return held >= self._capacity

    async def _wait_for_space(self) -> None:
        _PUT_WAITS.inc()
        while self._full():
            self._space.clear()
            await self._space.wait()
            if not self._accepting:
                raise StoreClosedError("ping writer stopped while put was waiting")

    def try_put(
        self, obs: Storable, subject_id: str, config_version: str | None = None
    ) -> bool:
        """Buffer one row if there is room; False (and counted) if full."""
        table, values = encode(obs, subject_id, config_version)
        if not self._accepting:
            raise StoreClosedError("ping writer is not running")
        if self._full():
            self._spill("buffer_full")
            _BUFFER_OVERFLOW.inc()
            if not self._overflowing:
                self._overflowing = True
                _LOGGER.warning("ping writer buffer full (%s rows): refusing rows", self._capacity)
            return False
        self._overflowing = False
        self._append(table, values)
        return True

    def _append(self, table: int, values: tuple[Any, ...]) -> None:
        now = time.monotonic()
        self._rows.append((now, table, values))
        self._seq_in += 1
        self._last_put = now
        if self._journalling:
            self._append_wake.set()
            return
        n = len(self._rows)
        if n == 1 or n == self._flush_rows:
            self._wake.set()

    def request_flush(self) -> None:
        """Write every row put so far now rather than by size, age or idleness, without
        waiting for it: for a producer whose sender stops at a window of unacknowledged
        messages (the MQTT reader), so acknowledgements flow before the window fills."""
        if self._flush_target < self._seq_in:
            self._flush_target = self._seq_in
            self._wake.set()

    async def flush(self) -> None:
        """Return once every row put before this call is in the database (ignores age)."""
        target = self._seq_in
        if self._written.value >= target:
            return
        self._flush_target = max(self._flush_target, target)
        self._wake_all()
        await self._wait(self._written, target, "flush")

    async def wait_durable(self, target: int) -> None:
        """Return once every row below `target` is committed or in the journal."""
        if self._durable.value >= target:
            return
        await self._wait(self._durable, target, "durability wait")

    async def wait_journal_replayed(self) -> None:
        """Return once the journal (including rows of an earlier run) is written back."""
        while self._journal is not None and not self._journal.empty:
            if self._task is None or self._task.done():
                raise StoreClosedError("ping writer stopped before the journal was replayed")
            self._progress.clear()
            await self._progress.wait()

    async def _wait(self, mark: _Watermark, target: int, what: str) -> None:
        while mark.value < target:
            if self._task is None or self._task.done():
                raise StoreClosedError(f"ping writer stopped before the {what} completed")
            self._progress.clear()
            await self._progress.wait()

    # -- the writer tasks ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                for n in range(self._concurrency):
                    tasks.create_task(self._work(), name=f"emon-store-writer-{n}")
                if self._journal is not None:
                    tasks.create_task(self._append_loop(self._journal), name="emon-store-journal")
                    tasks.create_task(self._replay_loop(self._journal), name="emon-store-replay")
        finally:
            # Producers blocked on a full buffer must not wait for a writer that is
            # gone; they re-check and raise StoreClosedError.
            self._accepting = False
            self._space.set()
            self._progress.set()

    def _spill(self, reason: str) -> None:
        """Start journalling (no-op without a journal or when already journalling)."""
        if self._journal is None or self._journalling:
            return
        self._journalling = True
        _JOURNAL_SPILLS.labels(reason=reason).inc()
        _LOGGER.warning("ping writer: %s; new rows go to the journal until it is replayed", reason)
        self._append_wake.set()

    async def _work(self) -> None:
        while True:
            start, batch = await self._next_batch()
            written = await self._deliver(start, batch)
            del self._in_flight[start]
            end = start + len(batch)
            if written:
                self._durable.resolve(start, end)
                self._written.resolve(start, end)
            else:
                self._to_journal[start] = batch
                self._append_wake.set()
            self._progress.set()

    def _due(self) -> bool:
        return (
            len(self._rows) >= self._flush_rows
            or self._closing
            or self._flush_target > self._seq_taken
        )

    async def _next_batch(self) -> tuple[int, list[_Row]]:
        """Wait until a batch is due (size, age, idle, flush() or close) and take it."""
        while True:
            self._wake.clear()
            if not self._rows or self._journalling:
                await self._wake.wait()
                continue
            if not self._due():
                now = time.monotonic()
                remaining = self._rows[0][0] + self._flush_interval - now
                if self._flush_idle is not None:
                    remaining = min(remaining, self._last_put + self._flush_idle - now)
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

    async def _deliver(self, start: int, batch: list[_Row]) -> bool:
        """Write one batch: True once stored; False if it was handed to the journal.

        Without a journal the batch is retried here until it is stored; never given up.
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
            except Exception as exc:  # whatever it is: keep the batch
                self._note_failure(start, exc)
                if self._journal is not None:
                    self._failing.discard(start)
                    self._spill("database unavailable")
                    return False
                await asyncio.sleep(self._backoff(attempt))
                attempt += 1
                continue
            self._note_success(start)
            return True

    def _backoff(self, attempt: int) -> float:
        delay = min(self._retry_max, self._retry_initial * 2.0**attempt)
        # Equal jitter: at least half the delay, so retries stay spaced out.
        return delay / 2 + random.uniform(0, delay / 2)

    # -- journal: appender and replayer ---------------------------------------------

    def _can_leave_journal(self, journal: Journal) -> bool:
        return (
            self._journalling
            and journal.empty
            and not self._to_journal
            and not self._in_flight
            and self._outage_since is None
            and self._written.value == self._seq_taken
        )

    async def _append_loop(self, journal: Journal) -> None:
        """Append spilled batches and new rows to the journal, strictly in sequence order."""
        attempt = 0
        while True:
            self._append_wake.clear()
            if self._can_leave_journal(journal):
                await self._leave_journal(journal)
                continue
            if self._journalling and self._rows and not self._to_journal:
                # Only when everything before is appended: a chunk that waits behind a
                # batch still being written would hold memory outside the buffer bound.
                n = min(len(self._rows), JOURNAL_GROUP_ROWS)
                popleft = self._rows.popleft
                self._to_journal[self._seq_taken] = [popleft() for _ in range(n)]
                self._seq_taken += n
                self._space.set()
            group = self._appendable()
            if not group:
                await self._append_wake.wait()
                continue
            rows = [row for _, batch in group for row in batch]
            frames, count = _journal_frames(rows)
            try:
                position = await journal.append(frames, count)
            except JournalError as exc:
                self._note_journal_failure(exc)
                if journal.empty and await self._write_directly(group):
                    continue
                await asyncio.sleep(
                    min(JOURNAL_RETRY_MAX_SECONDS, JOURNAL_RETRY_INITIAL_SECONDS * 2.0**attempt)
                )
                attempt += 1
                continue
            attempt = 0
            if self._journal_failing:
                self._journal_failing = False
                _LOGGER.warning("journal appends work again")
            for start, batch in group:
                del self._to_journal[start]
                self._durable.resolve(start, start + len(batch))
            self._space.set()  # the chunk counted against the bound while appends failed
            self._appended.append((position, group[0][0], group[-1][0] + len(group[-1][1])))
            self._replay_wake.set()
            self._progress.set()

    def _appendable(self) -> list[tuple[int, list[_Row]]]:
        """Chunks that continue the durable watermark without a gap, in order."""
        group: list[tuple[int, list[_Row]]] = []
        at = self._durable.value
        while at in self._to_journal:
            batch = self._to_journal[at]
            group.append((at, batch))
            at += len(batch)
        return group

    def _note_journal_failure(self, exc: JournalError) -> None:
        if not self._journal_failing:
            self._journal_failing = True
            _LOGGER.error(
                "cannot append to the journal, keeping %s rows in memory (ingest waits when "
                "the buffer is full): %s",
                self.buffered,
                exc,
            )

    async def _write_directly(self, group: list[tuple[int, list[_Row]]]) -> bool:
        """With nothing older on disk, a chunk the journal refused may go straight to the
        database (order is kept); True if all of it did."""
        for start, batch in group:
            try:
                await self._write_isolating(batch)
            except Exception as exc:
                self._note_failure(start, exc)
                self._failing.discard(start)
                return False
            self._note_success(start)
            del self._to_journal[start]
            self._durable.resolve(start, start + len(batch))
            self._written.resolve(start, start + len(batch))
            self._space.set()
            self._progress.set()
        return True

    async def _leave_journal(self, journal: Journal) -> None:
        if not await journal.reset_if_drained():
            return
        if not self._can_leave_journal(journal):  # rows arrived during the reset
            return
        self._journalling = False
        self._appended.clear()
        _LOGGER.warning("journal replayed; rows go to the database directly again")
        self._wake.set()

    async def _replay_loop(self, journal: Journal) -> None:
        """Write the journal back to the database, oldest first, until stopped."""
        attempt = 0
        while True:
            self._replay_wake.clear()
            chunk = await journal.read(self._max_batch_rows) if not journal.empty else None
            if chunk is None:
                self._append_wake.set()  # perhaps time to leave journalling
                await self._replay_wake.wait()
                continue
            rows = _rows_from_chunk(chunk)
            while True:
                try:
                    if rows:
                        await self._write_isolating(rows)
                except _CONFLICT_ERRORS as exc:
                    _WRITE_ERRORS.labels(error=type(exc).__name__).inc()
                    await asyncio.sleep(random.uniform(0, self._retry_initial))
                    continue
                except Exception as exc:
                    self._note_failure(-1, exc)
                    await asyncio.sleep(self._backoff(attempt))
                    attempt += 1
                    continue
                break
            attempt = 0
            await journal.consume(chunk)
            self._note_success(-1)
            while self._appended and self._appended[0][0] <= chunk.end:
                _, start, end = self._appended.popleft()
                self._written.resolve(start, end)
            self._progress.set()
            self._append_wake.set()

    # -- outage bookkeeping -----------------------------------------------------------

    def _note_failure(self, key: int, exc: Exception) -> None:
        _WRITE_ERRORS.labels(error=type(exc).__name__).inc()
        self._failing.add(key)
        now = time.monotonic()
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = self._outage_reminded = now
            _LOGGER.error(
                "cannot write to the database, %s %s rows: %s",
                "journalling" if self._journal is not None else "holding and retrying",
                self.buffered,
                self._describe(exc),
                # A traceback only helps for what is not plainly an outage.
                exc_info=not isinstance(exc, psycopg.OperationalError | TimeoutError),
            )
        elif now - self._outage_reminded >= OUTAGE_REMINDER_SECONDS:
            self._outage_reminded = now
            _LOGGER.error(
                "database still unavailable after %.0f s (%s failed attempts, %s rows in "
                "memory, %s in the journal): %s",
                now - self._outage_since,
                self._outage_failures,
                self.buffered,
                self._journal.pending_rows if self._journal is not None else 0,
                self._describe(exc),
            )

    def _describe(self, exc: Exception) -> str:
        if isinstance(exc, TimeoutError) and not str(exc):
            return f"TimeoutError: no answer within {self._batch_timeout:.1f} s"
        return f"{type(exc).__name__}: {exc}"

    def _note_success(self, key: int) -> None:
        self._failing.discard(key)
        if self._outage_since is not None and not self._failing:
            _LOGGER.warning(
                "database writes recovered after %.1f s and %s failed attempts",
                time.monotonic() - self._outage_since,
                self._outage_failures,
            )
            self._outage_since = None
            self._outage_failures = 0
            self._append_wake.set()

    # -- writing ---------------------------------------------------------------------

    async def _write_isolating(self, rows: Sequence[_Row]) -> None:
        """Write rows; if some row's content is refused, split until it is isolated.

        Halves that were written before a later failure are simply written again on
        the retry (idempotent), so there is no bookkeeping of partial success.
        """
        try:
            await self._write_creating_partitions(rows)
        except _ROW_ERRORS as exc:
            if len(rows) == 1:
                await self._reject(rows[0], exc)
                return
            mid = len(rows) // 2
            await self._write_isolating(rows[:mid])
            await self._write_isolating(rows[mid:])

    async def _write_creating_partitions(self, rows: Sequence[_Row]) -> None:
        """Write; on the plain layout, a row for a day without a partition (refused with a
        check violation) makes the partitions of the batch's days, and the write is retried.
        Days normally exist already (created ahead by the maintenance job)."""
        try:
            await self._write(rows)
        except psycopg.errors.CheckViolation:
            if not await self._create_partitions(rows):
                raise
            await self._write(rows)

    async def _create_partitions(self, rows: Sequence[_Row]) -> bool:
        assert self._pool is not None
        created = 0
        try:
            async with (
                asyncio.timeout(self._batch_timeout),
                self._pool.connection(timeout=self._batch_timeout) as conn,
            ):
                for table, spec in enumerate(_TABLES):
                    for first, last in _day_runs(rows, table):
                        cur = await conn.execute(_ENSURE_PARTITIONS, [spec.name, first, last])
                        row = await cur.fetchone()
                        created += int(row[0]) if row is not None and row[0] is not None else 0
        except psycopg.errors.UndefinedFunction:
            return False  # TimescaleDB layout: a real check violation
        if created:
            _PARTITIONS_CREATED.inc(created)
            _LOGGER.info("created %s day partition(s) on demand for late or early rows", created)
        return True

    async def _write(self, rows: Sequence[_Row]) -> None:
        """Write rows in one transaction, each table by COPY or through staging."""
        assert self._pool is not None
        self._batch_no += 1
        by_table: list[list[tuple[Any, ...]]] = [[] for _ in _TABLES]
        for _, table, values in rows:
            by_table[table].append(values)
        started = time.perf_counter()
        async with (
            asyncio.timeout(self._batch_timeout),
            self._pool.connection(timeout=self._batch_timeout) as conn,
        ):
            # At most one retry per table: each failed fast path leaves it for the dedup
            # path (see _write_table).
            while True:
                direct = [self._batch_no >= at for at in self._direct_resumes_at]
                try:
                    async with conn.transaction():
                        new = [
                            await self._write_table(conn, table, by_table[table], direct[table])
                            for table in range(len(_TABLES))
                        ]
                except _DirectCopyHitStoredKey as hit:
                    self._staged.discard(conn)
                    self._direct_resumes_at[hit.table] = self._batch_no + DEDUP_PATH_BATCHES
                    continue
                except BaseException:
                    # A rolled-back transaction also rolled back a CREATE TEMP TABLE made
                    # in it; IF NOT EXISTS makes re-running it next time harmless.
                    self._staged.discard(conn)
                    raise
                break
            note_committed(conn)
        _FLUSH_SECONDS.observe(time.perf_counter() - started)
        _BATCHES.inc()
        for table, spec in enumerate(_TABLES):
            given = len(by_table[table])
            if given:
                _ROWS_WRITTEN.labels(table=spec.name).inc(new[table])
                if given > new[table]:
                    _ROWS_DUPLICATE.labels(table=spec.name).inc(given - new[table])

    async def _write_table(
        self,
        conn: AsyncConnection[TupleRow],
        table: int,
        rows: list[tuple[Any, ...]],
        direct: bool,
    ) -> int:
        """Write one table's rows inside the batch transaction; returns rows inserted.

        Fast path (`direct`): COPY straight into the table. ON CONFLICT costs about twice
        a plain insert per row (speculative insertion), and nearly every batch is free of
        duplicates, so try without it first, and without a savepoint (two round trips per
        batch): a batch with a key already stored (QoS 1 redelivery, replay, retry of a
        committed batch) fails with a unique violation, which rolls the whole transaction
        back, and `_write` writes the batch again with this table on the dedup path: COPY
        into the TEMP staging table, then INSERT ... SELECT ... ON CONFLICT DO NOTHING.
        Duplicates come in bursts, so the dedup path is then used alone for the next few
        batches.
        """
        if not rows:
            return 0
        spec = _TABLES[table]
        if direct:
            try:
                await self._copy(conn, spec.copy_direct, spec.types, rows)
            except psycopg.errors.UniqueViolation as exc:
                raise _DirectCopyHitStoredKey(table) from exc
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
