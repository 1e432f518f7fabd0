"""daemon.store.journal on real files: order, segments, torn tails, damage, limits, locking."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from daemon.store.journal import (
    CORRUPT_SUFFIX,
    HEADER_BYTES,
    Journal,
    JournalFullError,
    JournalLockedError,
    JournalWriteError,
    encode_frame,
    journal_subdir,
)
from daemon.store.settings import FsyncPolicy
from tests.storekit import tiny_filesystem

COLUMNS = ["device_id", "n"]


def frame(first: int, count: int, table: str = "pings") -> bytes:
    return encode_frame(table, COLUMNS, [["dev", i] for i in range(first, first + count)])


async def read_all(journal: Journal, max_rows: int = 1_000) -> list[int]:
    """Read and consume everything, returning the n column in order."""
    seen: list[int] = []
    while (chunk := await journal.read(max_rows)) is not None:
        for f in chunk.frames:
            seen.extend(row[1] for row in f.rows)
        await journal.consume(chunk)
    return seen


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "LOCK")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_rows_come_back_in_order_across_segments_and_replayed_ones_are_deleted(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "j"
    async with Journal(directory, max_bytes=10_000_000, segment_bytes=4_096) as journal:
        for start in range(0, 5_000, 100):
            await journal.append([frame(start, 100)], 100)
        assert journal.pending_rows == 5_000
        assert len(segments(directory)) > 2  # rotated
        seen = await read_all(journal, max_rows=700)
        assert seen == list(range(5_000))
        assert journal.empty
        # Only the segment still open for appends is left.
        assert len(segments(directory)) == 1
    # A drained journal leaves no directory behind.
    assert not directory.exists()


async def test_a_journal_survives_a_restart_and_appends_after_the_old_rows(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "j"
    async with Journal(directory) as journal:
        await journal.append([frame(0, 10), frame(10, 5, table="device_events")], 15)
    async with Journal(directory) as journal:
        assert journal.pending_rows == 15
        await journal.append([frame(15, 5)], 5)
        chunk = await journal.read(100)
        assert chunk is not None
        assert [f.table for f in chunk.frames] == ["pings", "device_events"]  # old segment
        await journal.consume(chunk)
        assert await read_all(journal) == [15, 16, 17, 18, 19]


async def test_a_partly_consumed_journal_replays_only_the_rest_after_a_restart(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "j"
    async with Journal(directory, segment_bytes=4_096) as journal:
        for start in range(0, 3_000, 100):
            await journal.append([frame(start, 100)], 100)
        consumed = 0
        while consumed < 1_000:
            chunk = await journal.read(100)
            assert chunk is not None
            await journal.consume(chunk)
            consumed += chunk.rows
    async with Journal(directory) as journal:
        # Rows of the segment that was partly consumed come again (replay is idempotent);
        # wholly consumed segments were deleted and do not.
        seen = await read_all(journal)
        assert seen[-2_000:] == list(range(1_000, 3_000))
        assert len(seen) < 3_000


async def test_a_torn_last_append_is_cut_off_and_appending_continues(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    async with Journal(directory) as journal:
        await journal.append([frame(0, 10)], 10)
        await journal.append([frame(10, 10)], 10)
    (segment,) = [directory / n for n in segments(directory)]
    size = segment.stat().st_size
    with segment.open("r+b") as handle:
        handle.truncate(size - 7)  # a crash in the middle of the second append
    torn_before = metric("emon_store_journal_torn_bytes_total")
    async with Journal(directory) as journal:
        assert journal.pending_rows == 10
        await journal.append([frame(100, 3)], 3)
        assert await read_all(journal) == [*range(10), 100, 101, 102]
    torn = len(frame(10, 10)) - 7
    assert metric("emon_store_journal_torn_bytes_total") - torn_before == torn


async def test_a_damaged_frame_keeps_the_segment_for_an_operator(tmp_path: Path) -> None:
    directory = tmp_path / "j"
    async with Journal(directory) as journal:
        await journal.append([frame(0, 10)], 10)
        await journal.append([frame(10, 10)], 10)
        await journal.append([frame(20, 10)], 10)
    (segment,) = [directory / n for n in segments(directory)]
    data = bytearray(segment.read_bytes())
    one = len(frame(0, 10))
    data[one + HEADER_BYTES + 5] ^= 0xFF  # flip a byte inside the second frame's payload
    segment.write_bytes(bytes(data))
    corrupt_before = metric("emon_store_journal_corrupt_segments_total")
    async with Journal(directory) as journal:
        assert journal.pending_rows == 10
        assert await read_all(journal) == list(range(10))
    assert metric("emon_store_journal_corrupt_segments_total") - corrupt_before == 1
    # Not deleted: renamed, with the unreadable rest, for a person to look at.
    assert [p.name for p in directory.iterdir() if p.name.endswith(CORRUPT_SUFFIX)] == [
        segment.name + CORRUPT_SUFFIX
    ]
    assert (directory / (segment.name + CORRUPT_SUFFIX)).read_bytes() == bytes(data)


async def test_the_size_limit_refuses_appends_without_writing(tmp_path: Path) -> None:
    one = frame(0, 100)
    async with Journal(
        tmp_path / "j", max_bytes=3 * len(one), segment_bytes=3 * len(one)
    ) as journal:
        for _ in range(3):
            await journal.append([one], 100)
        with pytest.raises(JournalFullError):
            await journal.append([one], 100)
        assert journal.pending_rows == 300
        chunk = await journal.read(100)
        assert chunk is not None
        await journal.consume(chunk)
        # Consumed rows stay on disk until their segment is done; a new segment needs
        # the whole journal to be replayed first here (one segment holds it all).
        assert await read_all(journal) == list(range(100)) * 2


async def test_a_second_owner_is_refused(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j"):
        with pytest.raises(JournalLockedError, match="in use"):
            async with Journal(tmp_path / "j"):
                pass


def test_subdirectory_names_are_safe() -> None:
    name = journal_subdir("emon", "7312", "daemon/../x y")
    assert "/" not in name
    assert " " not in name
    assert name.startswith("emon-7312-")


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    with tiny_filesystem(tmp_path) as mount_point:
        yield mount_point


async def test_disk_full_is_a_clear_error_and_leaves_no_partial_frame(
    tiny_fs: Path,
) -> None:
    big = frame(0, 2_000)  # ~30 KB
    errors_before = metric("emon_store_journal_write_errors_total", error="ENOSPC")
    async with Journal(
        tiny_fs / "j", fsync=FsyncPolicy.ALWAYS, max_bytes=10**9, segment_bytes=10**8
    ) as journal:
        appended = 0
        failure: JournalWriteError | None = None
        for _ in range(100):
            try:
                await journal.append([big], 2_000)
            except JournalWriteError as exc:
                failure = exc
                break
            appended += 1
        assert failure is not None
        assert "No space left" in str(failure)
        assert failure.error_name == "ENOSPC"
        assert appended > 0
        assert journal.pending_rows == appended * 2_000
        # The failed append was cut back: what is on disk is exactly the good frames.
        (segment,) = [p for p in (tiny_fs / "j").iterdir() if p.name != "LOCK"]
        assert segment.stat().st_size == appended * len(big)
        # Space comes back (rows replayed): appends work again.
        assert len(await read_all(journal, max_rows=2_000)) == appended * 2_000
        await journal.append([frame(0, 10)], 10)
        assert await read_all(journal) == list(range(10))
    assert metric("emon_store_journal_write_errors_total", error="ENOSPC") - errors_before >= 1
