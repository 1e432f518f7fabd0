"""The compact per-device windows (geofence.history) against the Python objects they
replace: a deque of PlacedFix for the late-fix history, deques of datetimes and tuples for
the redelivery windows. Exactness is the point: every time, position and accuracy read
back must compare equal (bit for bit for the floats) to what was appended."""

from __future__ import annotations

import bisect
import functools
import math
import operator
from collections import deque
from collections.abc import MutableSet
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.history import (
    FixHistory,
    LazySet,
    RecentItems,
    RecentTimes,
    TimeColumn,
    from_us,
    to_us,
)
from geofence.observation import FixSource, LocationFix
from geofence.state import PlacedFix

# hypothesis takes naive bounds and attaches the zones itself.
AWARE_TIMES = st.datetimes(
    min_value=datetime(1900, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-3, minutes=-30))]
    ),
)
# Wire times are whole seconds or milliseconds (the compact column's int32 case), anything
# else widens it; spans of more than 24.8 days re-base or widen it too.
NEAR_TIMES = st.builds(
    lambda ms, us: datetime(2026, 11, 20, tzinfo=UTC) + timedelta(milliseconds=ms, microseconds=us),
    st.integers(-40 * 86_400_000, 40 * 86_400_000),
    st.one_of(st.just(0), st.just(0), st.integers(0, 999)),
)
GAPS_US = st.one_of(
    st.integers(1, 10**9),
    st.integers(1, 10**6).map(lambda ms: ms * 1_000),
    st.integers(1, 3 * 10**6).map(lambda seconds: seconds * 1_000_000),
)
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e7, max_value=1e7)
ACCURACY = st.one_of(
    st.floats(min_value=0.0, max_value=5_000.0, allow_nan=False),
    st.sampled_from([0.0, 5.0, 7.5, 8.0, 12.3, 150.0]),
)


def _placed(ts: datetime, x: float, y: float, accuracy_m: float) -> PlacedFix:
    fix = LocationFix("tag-1", ts, 22.5, 114.0, accuracy_m, FixSource.GNSS, ts)
    return PlacedFix(fix, (x, y))


@given(AWARE_TIMES)
def test_microseconds_round_trip_exactly(ts: datetime) -> None:
    back = from_us(to_us(ts))
    assert back == ts
    assert back.utcoffset() == timedelta(0)
    assert (back - ts) == timedelta(0)


@settings(max_examples=60)
@given(
    st.lists(st.tuples(GAPS_US, FINITE, FINITE, ACCURACY), max_size=60),
    st.integers(1, 20),
    st.lists(AWARE_TIMES, max_size=10),
)
def test_fix_history_reads_back_what_a_deque_of_objects_held(
    steps: list[tuple[int, float, float, float]], capacity: int, probes: list[datetime]
) -> None:
    history = FixHistory(capacity)
    reference: deque[PlacedFix] = deque(maxlen=capacity)
    ts = datetime(2026, 11, 20, tzinfo=UTC)
    for gap_us, x, y, accuracy in steps:
        ts += timedelta(microseconds=gap_us)  # strictly increasing, as the engine appends
        placed = _placed(ts, x, y, accuracy)
        history.append(placed)
        reference.append(placed)
        assert history.newest is placed
    assert len(history) == len(reference)
    assert bool(history) == bool(reference)
    keys = [p.fix.ts for p in reference]
    for index, placed in enumerate(reference):
        kept = history.kept(index)
        assert kept.ts == placed.fix.ts == history.ts(index)
        # Bit for bit: the same float objects' values, including the sign of zero.
        assert kept.xy == placed.xy
        assert math.copysign(1.0, kept.xy[0]) == math.copysign(1.0, placed.xy[0])
        assert kept.accuracy_m == placed.fix.accuracy_m
        assert history.index_of(placed.fix.ts) == index
    for probe in [*probes, *keys]:
        assert history.bisect_left(probe) == bisect.bisect_left(keys, probe)
        expected = keys.index(probe) if probe in keys else None
        assert history.index_of(probe) == expected


def test_accuracy_column_widens_when_a_value_is_not_a_float32() -> None:
    history = FixHistory(4)
    ts = datetime(2026, 11, 20, tzinfo=UTC)
    history.append(_placed(ts, 1.0, 2.0, 8.0))
    history.append(_placed(ts + timedelta(seconds=1), 1.0, 2.0, 7.3))  # not a float32
    history.append(_placed(ts + timedelta(seconds=2), 1.0, 2.0, 7.5))
    assert [history.kept(i).accuracy_m for i in range(3)] == [8.0, 7.3, 7.5]


@given(
    st.lists(st.tuples(st.one_of(NEAR_TIMES, AWARE_TIMES), st.booleans()), max_size=80),
    st.integers(1, 30),
)
def test_recent_times_answer_membership_like_a_bounded_deque(
    operations: list[tuple[datetime, bool]], capacity: int
) -> None:
    window = RecentTimes(capacity)
    reference: deque[datetime] = deque(maxlen=capacity)
    for ts, append in operations:
        assert (ts in window) == (ts in reference)
        # The same instant in another zone is the same event time.
        assert (ts.astimezone(UTC) in window) == (ts in reference)
        if append:
            window.append(ts)
            reference.append(ts)
        assert len(window) == len(reference)
    assert "not a datetime" not in window


@given(st.lists(st.integers(0, 20), max_size=60), st.integers(1, 10))
def test_recent_items_behave_like_a_bounded_deque(items: list[int], capacity: int) -> None:
    recent: RecentItems[int] = RecentItems(capacity)
    reference: deque[int] = deque(maxlen=capacity)
    for item in items:
        recent.append(item)
        reference.append(item)
        assert list(recent) == list(reference)
        assert recent[-1] == reference[-1]
        assert len(recent) == len(reference)
        assert all((probe in recent) == (probe in reference) for probe in range(21))


SET_OPERATIONS = st.sampled_from(["add", "discard", "clear", "retain"])


@given(st.lists(st.tuples(SET_OPERATIONS, st.integers(0, 9))))
def test_lazy_set_behaves_like_a_set(operations: list[tuple[str, int]]) -> None:
    lazy: LazySet[int] = LazySet()
    reference: set[int] = set()
    as_set: MutableSet[int] = lazy  # how DeviceState types it, so it compares with sets
    for operation, value in operations:
        if operation == "add":
            lazy.add(value)
            reference.add(value)
        elif operation == "discard":
            lazy.discard(value)
            reference.discard(value)
        elif operation == "clear":
            lazy.clear()
            reference.clear()
        else:
            lazy.retain(functools.partial(operator.le, value))  # keeps item >= value
            reference = {item for item in reference if item >= value}
        assert sorted(lazy) == sorted(reference)
        assert as_set == reference
        assert len(lazy) == len(reference)
        assert bool(lazy) == bool(reference)
        assert all((probe in lazy) == (probe in reference) for probe in range(10))


def test_time_column_keeps_whole_milliseconds_in_four_bytes_until_it_cannot() -> None:
    start = to_us(datetime(2026, 11, 20, tzinfo=UTC))
    column = TimeColumn()
    seconds = [start + k * 60_000_000 for k in range(128)]  # a fix a minute
    for us in seconds:
        column.append(us)
    assert column._values.itemsize == 4
    # Past the int32 range of the first base: re-based around the oldest kept time.
    for _ in range(127):
        column.drop_oldest()
    later = start + 24 * 86_400_000_000 + 21 * 3_600_000_000  # 24.875 days
    column.append(later)
    assert [column[i] for i in range(len(column))] == [seconds[127], later]
    assert column._values.itemsize == 4
    # A span past the int32 range widens the column (exact).
    farther = start + 30 * 86_400_000_000
    column.append(farther)
    assert [column[i] for i in range(len(column))] == [seconds[127], later, farther]
    assert column._values.itemsize == 8
    column = TimeColumn()
    for us in seconds:
        column.append(us)
    # A time that is not a whole millisecond widens the column, exactly.
    odd = seconds[-1] + 1_234_567
    column.append(odd)
    assert column._values.itemsize == 8
    assert [column[i] for i in range(len(column))] == [*seconds, odd]
    assert odd in column
    assert odd + 1 not in column
    assert column.bisect_left(odd) == len(column) - 1
