"""The on-disk journal: rows the database could not take yet, kept in order, replayed later.

The ping writer appends rows here when PostgreSQL is down (or slower than ingest for
longer than its memory buffer lasts) and replays them, oldest first, once it can write
again. Replay goes through the writer's idempotent write path, so a frame replayed twice
(a crash between "written to the database" and "marked consumed") stores nothing twice.

Layout of the directory (one directory per database and MQTT client id, see
`journal_subdir`):

    LOCK                      flock()ed while a writer owns the journal (pid inside)
    000000000001.jrnl         segments, appended in order, deleted once replayed
    000000000002.jrnl
    000000000001.jrnl.corrupt a segment with a damaged frame, kept for an operator

A segment is a sequence of frames:

    magic "EMJ1" | payload length u32 | CRC-32 of payload u32 | row count u32 | payload

(little-endian), the payload being UTF-8 JSON `{"table", "columns", "rows"}`. Columns are
named, so a journal written by an older emon replays into a newer schema (missing
columns become NULL).

Durability (settings `store.journal.fsync`): with `always`, an append returns only after
fdatasync of the segment (and of the directory when a segment was created), so rows the
writer reports durable survive a power cut; with `never` they survive a crash of the
daemon, not of the machine. A frame torn by a crash during an append is detected by its
length or CRC at the next start: at the tail of the newest segment it was never reported
durable (so its MQTT messages were never acknowledged and the broker redelivers them) and
is cut off; anywhere else the good frames before it are replayed and the segment is kept
as `.corrupt` with an error and a metric, never silently discarded.

All file I/O runs in worker threads (`asyncio.to_thread`) under one lock, so a cancelled
caller never leaves the bookkeeping half-updated: the thread finishes the append and
records it, and at worst the caller appends the same rows again (harmless on replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import struct
import threading
import weakref
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from prometheus_client import Counter, Gauge

from daemon.store.errors import StoreError
from daemon.store.settings import FsyncPolicy

_LOGGER = logging.getLogger(__name__)

MAGIC: Final = b"EMJ1"
_HEADER: Final = struct.Struct("<4sIII")
HEADER_BYTES: Final = _HEADER.size
# A frame larger than this is damage, not data (a batch of 10,000 pings is ~2 MB).
MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
SEGMENT_SUFFIX: Final = ".jrnl"
CORRUPT_SUFFIX: Final = ".corrupt"
LOCK_FILE: Final = "LOCK"
_SEGMENT_RE: Final = re.compile(r"^(\d{12})\.jrnl$")
# Read at most this much per replay chunk (bytes), besides the row limit.
READ_CHUNK_BYTES: Final = 8 * 1024 * 1024

_JOURNAL_ROWS = Gauge(
    "emon_store_journal_rows", "Rows in the on-disk journal waiting to be written to the database"
)
_JOURNAL_BYTES = Gauge("emon_store_journal_bytes", "Bytes of journal segments on disk")
_JOURNAL_APPENDED = Counter("emon_store_journal_rows_appended", "Rows appended to the journal")
_JOURNAL_REPLAYED = Counter(
    "emon_store_journal_rows_replayed", "Journal rows written to the database and released"
)
_JOURNAL_ERRORS = Counter(
    "emon_store_journal_write_errors",
    "Journal appends that failed (disk full, I/O error, size limit); rows kept in memory",
    ["error"],
)
_JOURNAL_CORRUPT = Counter(
    "emon_store_journal_corrupt_segments",
    "Segments with a damaged frame, kept as *.corrupt for an operator",
)
_JOURNAL_TORN_BYTES = Counter(
    "emon_store_journal_torn_bytes",
    "Bytes of an incomplete last append cut off at start-up (never reported durable)",
)

_LIVE: weakref.WeakSet[Journal] = weakref.WeakSet()
_JOURNAL_ROWS.set_function(lambda: sum(j.pending_rows for j in _LIVE))
_JOURNAL_BYTES.set_function(lambda: sum(j.size_bytes for j in _LIVE))


class JournalError(StoreError):
    """Root of the journal's errors."""


class JournalLockedError(JournalError):
    """Another process owns this journal directory."""


class JournalFullError(JournalError):
    """Appending would exceed `max_bytes`; the caller keeps the rows and waits."""


class JournalWriteError(JournalError):
    """The operating system refused the append (ENOSPC, EIO, ...); nothing was kept."""

    def __init__(self, message: str, error_name: str) -> None:
        super().__init__(message)
        self.error_name = error_name


def journal_subdir(database: str, system_identifier: str, client_id: str) -> str:
    """Directory name for one database (name + cluster id) and one MQTT client id.

    Rows journalled for one database are never replayed into another (a daemon pointed
    at a new database, or tests sharing a working directory), and two daemons on one
    database (different client ids, as MQTT requires) never share a journal.
    """
    raw = f"{database}-{system_identifier}-{client_id}"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", raw)[:200]


@dataclass(frozen=True, slots=True)
class Frame:
    table: str
    columns: list[str]
    rows: list[list[Any]]


def encode_frame(table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """One frame; row values must be JSON values (the writer converts datetimes)."""
    payload = json.dumps(
        {"table": table, "columns": list(columns), "rows": rows},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    return _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload), len(rows)) + payload


def decode_payload(payload: bytes) -> Frame:
    body = json.loads(payload)
    return Frame(table=body["table"], columns=body["columns"], rows=body["rows"])


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """A place in the journal: segment number, byte offset in it."""

    segment: int
    offset: int


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int  # bytes known good (appended by us, or validated at start-up)
    rows: int  # rows in frames not yet consumed
    corrupt: bool = False  # a damaged frame follows `size`: keep the file after replay
    frame_rows: list[tuple[int, int]] = field(default_factory=list)  # (end offset, rows)


@dataclass(frozen=True, slots=True)
class ReadChunk:
    frames: list[Frame]
    end: Position  # consume up to here once the frames are written
    rows: int


class Journal:
    """An append-only, segmented, checksummed journal; an async context manager."""

    def __init__(
        self,
        directory: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        max_bytes: int = 2 * 1024**3,
        segment_bytes: int = 64 * 1024**2,
    ) -> None:
        if segment_bytes > max_bytes:
            raise ValueError("segment_bytes must not exceed max_bytes")
        self._dir = directory
        self._fsync = fsync
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._head = Position(0, 0)  # next frame to read/consume
        self._active_fd: int | None = None
        self._lock_fd: int | None = None
        self._next_number = 1

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._open_sync)
        _LIVE.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _LIVE.discard(self)
        await asyncio.to_thread(self._close_sync)

    def _open_sync(self) -> None:
        try:
            self._dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self._dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open journal directory {self._dir}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(lock_fd)
            raise JournalLockedError(
                f"journal {self._dir} is in use by another process (pid {owner}); give each "
                "daemon its own store.journal.dir or MQTT client id"
            ) from None
        os.ftruncate(lock_fd, 0)
        os.pwrite(lock_fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = lock_fd
        with self._lock:
            self._scan()

    def _close_sync(self) -> None:
        with self._lock:
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None
            # Replayed segments leave nothing behind (damaged ones are kept as .corrupt).
            self._delete_consumed(keep_active=False)
            empty = not self._segments and not any(
                p.name.endswith(CORRUPT_SUFFIX) for p in self._dir.iterdir()
            )
        if self._lock_fd is not None:
            if empty:
                # Nothing left to replay: leave no directory behind (one exists per
                # database and client id). Unlinked while still locked, so no other
                # process can be inside it.
                with contextlib.suppress(OSError):
                    (self._dir / LOCK_FILE).unlink()
                with contextlib.suppress(OSError):
                    self._dir.rmdir()
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _scan(self) -> None:
        numbers = sorted(
            int(m[1]) for p in self._dir.iterdir() if (m := _SEGMENT_RE.match(p.name)) is not None
        )
        for i, number in enumerate(numbers):
            path = self._dir / f"{number:012d}{SEGMENT_SUFFIX}"
            segment = self._validate(path, number, last=i == len(numbers) - 1)
            self._segments.append(segment)
            self._next_number = number + 1
        if self._segments:
            self._head = Position(self._segments[0].number, 0)
            rows = sum(s.rows for s in self._segments)
            _LOGGER.warning(
                "journal %s holds %s rows in %s segment(s) from an earlier run; replaying them",
                self._dir,
                rows,
                len(self._segments),
            )

    def _validate(self, path: Path, number: int, *, last: bool) -> _Segment:
        """Walk a segment's frames; cut a torn tail, mark damage in the middle."""
        data = path.read_bytes()
        offset, rows = 0, 0
        frame_rows: list[tuple[int, int]] = []
        damage: str | None = None
        while offset < len(data):
            if len(data) - offset < HEADER_BYTES:
                damage = "truncated header"
                break
            magic, length, crc, count = _HEADER.unpack_from(data, offset)
            end = offset + HEADER_BYTES + length
            if magic != MAGIC or length > MAX_FRAME_BYTES:
                damage = "bad frame header"
                break
            if end > len(data):
                damage = "truncated frame"
                break
            if zlib.crc32(data[offset + HEADER_BYTES : end]) != crc:
                damage = "checksum mismatch"
                break
            offset = end
            rows += count
            frame_rows.append((end, count))
        segment = _Segment(number, path, offset, rows, frame_rows=frame_rows)
        if damage is None:
            return segment
        lost = len(data) - offset
        if last and damage in ("truncated header", "truncated frame"):
            # The last append was cut short by a crash: it was never reported durable.
            _JOURNAL_TORN_BYTES.inc(lost)
            _LOGGER.warning(
                "journal segment %s ends in an incomplete append (%s bytes, %s); cut off: "
                "it was never acknowledged, the broker redelivers it",
                path.name,
                lost,
                damage,
            )
            with open(path, "r+b") as handle:
                handle.truncate(offset)
            return segment
        _JOURNAL_CORRUPT.inc()
        _LOGGER.error(
            "journal segment %s is damaged at byte %s (%s); replaying the %s rows before it "
            "and keeping the file as %s%s for an operator (%s bytes not readable)",
            path.name,
            offset,
            damage,
            rows,
            path.name,
            CORRUPT_SUFFIX,
            lost,
        )
        segment.corrupt = True
        return segment

    # -- state -----------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def pending_rows(self) -> int:
        """Rows appended and not yet consumed."""
        return sum(s.rows for s in self._segments)

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    @property
    def empty(self) -> bool:
        return self.pending_rows == 0

    # -- appending ---------------------------------------------------------------------

    async def append(self, frames: Sequence[bytes], rows: int) -> Position:
        """Append frames (one group, one fsync); return the position after them.

        JournalFullError if the journal would exceed max_bytes; JournalWriteError if the
        operating system refuses (the segment is cut back, nothing half-written stays).
        """
        return await asyncio.to_thread(self._append_sync, frames, rows)

    def _append_sync(self, frames: Sequence[bytes], rows: int) -> Position:
        data = b"".join(frames)
        with self._lock:
            self._release_replayed_active()
            if self.size_bytes + len(data) > self._max_bytes:
                _JOURNAL_ERRORS.labels(error="full").inc()
                raise JournalFullError(
                    f"journal {self._dir} would exceed its limit of {self._max_bytes} bytes"
                )
            segment = self._active_segment(len(data))
            assert self._active_fd is not None
            try:
                view = memoryview(data)
                while view:
                    written = os.write(self._active_fd, view)
                    view = view[written:]
                if self._fsync is FsyncPolicy.ALWAYS:
                    os.fdatasync(self._active_fd)
            except OSError as exc:
                name = errno.errorcode.get(exc.errno or 0, "EIO")
                _JOURNAL_ERRORS.labels(error=name).inc()
                # Cut back to the last complete frame, so that a later append never
                # follows garbage (ftruncate frees space, so it works on a full disk).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._active_fd, segment.size)
                raise JournalWriteError(
                    f"cannot append to journal {segment.path}: {exc.strerror or exc}", name
                ) from exc
            offset = segment.size
            for frame in frames:
                offset += len(frame)
                segment.frame_rows.append((offset, _HEADER.unpack_from(frame)[3]))
            segment.size = offset
            segment.rows += rows
        _JOURNAL_APPENDED.inc(rows)
        return Position(segment.number, segment.size)

    def _release_replayed_active(self) -> None:
        """A segment still open for appends whose every frame was replayed is deleted, so
        its space counts no more (on a full disk or journal, that lets appends resume)."""
        active = self._segments[-1] if self._segments else None
        if (
            active is not None
            and active.size > 0
            and self._head >= Position(active.number, active.size)
        ):
            self._delete_consumed(keep_active=False)

    def _active_segment(self, incoming: int) -> _Segment:
        """The segment to append to, starting a new one when the current one is full."""
        active = self._segments[-1] if self._segments else None
        if (
            active is not None
            and self._active_fd is not None
            and (active.size == 0 or active.size + incoming <= self._segment_bytes)
        ):
            return active
        if self._active_fd is not None:
            os.close(self._active_fd)
            self._active_fd = None
        number = self._next_number
        path = self._dir / f"{number:012d}{SEGMENT_SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            if self._fsync is FsyncPolicy.ALWAYS:
                # The new file's directory entry must survive a power cut too.
                dir_fd = os.open(self._dir, os.O_RDONLY)
                try:
                    os.fsync(dir_fd)
                finally:
                    os.close(dir_fd)
        except OSError as exc:
            name = errno.errorcode.get(exc.errno or 0, "EIO")
            _JOURNAL_ERRORS.labels(error=name).inc()
            raise JournalWriteError(
                f"cannot create journal segment {path}: {exc.strerror or exc}", name
            ) from exc
        self._next_number = number + 1
        self._active_fd = fd
        segment = _Segment(number, path, os.fstat(fd).st_size, 0)
        self._segments.append(segment)
        if len(self._segments) == 1:
            self._head = Position(number, segment.size)
        return segment

    # -- reading and consuming ------------------------------------------------------------

    async def read(self, max_rows: int) -> ReadChunk | None:
        """The oldest unconsumed frames (at least one, up to max_rows), or None."""
        return await asyncio.to_thread(self._read_sync, max_rows)

    def _read_sync(self, max_rows: int) -> ReadChunk | None:
        with self._lock:
            # Skip past fully read segments (their rows were consumed).
            for segment in self._segments:
                if segment.number < self._head.segment:
                    continue
                start = self._head.offset if segment.number == self._head.segment else 0
                if start >= segment.size:
                    continue
                ends = [(end, n) for end, n in segment.frame_rows if end > start]
                total, stop = 0, start
                for end, n in ends:
                    if total and (total + n > max_rows or end - start > READ_CHUNK_BYTES):
                        break
                    total += n
                    stop = end
                path = segment.path
                number = segment.number
                break
            else:
                return None
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read(stop - start)
        frames: list[Frame] = []
        offset = 0
        while offset < len(data):
            _, length, _, _ = _HEADER.unpack_from(data, offset)
            payload = data[offset + HEADER_BYTES : offset + HEADER_BYTES + length]
            frames.append(decode_payload(payload))
            offset += HEADER_BYTES + length
        return ReadChunk(frames, Position(number, stop), total)

    async def consume(self, chunk: ReadChunk) -> None:
        """Release a chunk once its rows are in the database; deletes replayed segments."""
        await asyncio.to_thread(self._consume_sync, chunk)

    def _consume_sync(self, chunk: ReadChunk) -> None:
        with self._lock:
            for segment in self._segments:
                if segment.number != chunk.end.segment:
                    continue
                start = self._head.offset if segment.number == self._head.segment else 0
                done = chunk.end.offset
                segment.rows -= sum(n for end, n in segment.frame_rows if start < end <= done)
                segment.frame_rows = [(end, n) for end, n in segment.frame_rows if end > done]
                break
            self._head = chunk.end
            self._delete_consumed(keep_active=True)
        _JOURNAL_REPLAYED.inc(chunk.rows)

    def _delete_consumed(self, *, keep_active: bool) -> None:
        """Remove segments whose every frame is consumed (and the head moves past them)."""
        keep: list[_Segment] = []
        for i, segment in enumerate(self._segments):
            is_active = i == len(self._segments) - 1 and self._active_fd is not None
            consumed = segment.number < self._head.segment or (
                segment.number == self._head.segment and self._head.offset >= segment.size
            )
            if not consumed or (is_active and keep_active):
                keep.append(segment)
                continue
            if is_active and self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None
            try:
                if segment.corrupt:
                    segment.path.rename(segment.path.with_name(segment.path.name + CORRUPT_SUFFIX))
                else:
                    segment.path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                _LOGGER.error("cannot remove replayed journal segment %s: %s", segment.path, exc)
                keep.append(segment)
        self._segments = keep
        if keep:
            first = keep[0]
            if self._head.segment < first.number:
                self._head = Position(first.number, 0)

    async def reset_if_drained(self) -> bool:
        """Delete every segment if all were replayed; True if the journal is now empty."""
        return await asyncio.to_thread(self._reset_sync)

    def _reset_sync(self) -> bool:
        with self._lock:
            if any(s.rows for s in self._segments) or any(
                self._head < Position(s.number, s.size) for s in self._segments
            ):
                return False
            if self._active_fd is not None:
                os.close(self._active_fd)
                self._active_fd = None
            self._delete_consumed(keep_active=False)
            return not self._segments
