"""Compact per-device windows of recent fixes: the late-fix history and the redelivery window.

A device keeps HISTORY_FIXES evaluated fixes (to place a late fix between its neighbours)
and the event times of its last RECENT_FIXES fixes (to recognise a QoS 1 redelivery). As
Python objects (a `LocationFix`, its floats, its `extra` dict, a projected (x, y) tuple and
a `PlacedFix` per fix) that cost ~440 bytes a fix, 56 KB a device with a full history; here
a fix costs 8 bytes of time, 16 of position and 4 or 8 of accuracy in typed arrays.

Exactness (decisions must be identical to keeping the objects):
- event times are kept as int64 microseconds since the Unix epoch: `datetime` has
  microsecond resolution, so the conversion is exact both ways and compares (and bisects)
  exactly as the datetimes did;
- projected x and y stay float64 (the values the rules computed, bit for bit): float32 in
  the local metric frame would round them by up to ~4 mm at 50 km from the projection's
  origin, enough to flip a plausibility check that sits on its limit;
- accuracy is kept as float32 while every value kept is exactly a float32 (wire accuracies
  are whole or one-decimal metres: 8.0 is, 7.5 is, 7.3 is not), and the column is widened
  to float64 the first time one is not.

Only the newest evaluated fix is kept as an object (`FixHistory.newest`): it is the
previous fix of the next one (crossing evidence quotes it). Older entries are read back as
`KeptFix` (event time, position, accuracy): what placing and vetting a late fix needs.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator, MutableSet
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

if TYPE_CHECKING:
    from geofence.state import PlacedFix

__all__ = [
    "EPOCH",
    "FixHistory",
    "KeptFix",
    "LazySet",
    "RecentItems",
    "RecentTimes",
    "from_us",
    "to_us",
]

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MICROSECOND = timedelta(microseconds=1)


def to_us(ts: datetime) -> int:
    """Microseconds since the Unix epoch; exact for any aware datetime."""
    return (ts - EPOCH) // ONE_MICROSECOND


def from_us(us: int) -> datetime:
    """The UTC datetime `us` microseconds after the epoch; `from_us(to_us(t)) == t`."""
    return EPOCH + timedelta(microseconds=us)


class KeptFix(NamedTuple):
    """An older evaluated fix as the history keeps it."""

    ts: datetime
    xy: tuple[float, float]
    accuracy_m: float


def _fits_float32(value: float) -> bool:
    return array("f", (value,))[0] == value


# A time column holds whole milliseconds as int32 offsets (±24.8 days around its base).
US_PER_MS = 1_000
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class TimeColumn:
    """Event times (int microseconds since the epoch) as offsets from a base: int32
    milliseconds while every time kept is a whole millisecond within ±24.8 days of the
    base (wire times are whole seconds or milliseconds: 4 bytes a time), else int64
    microseconds (8 bytes, any datetime). Exact either way; a time that does not fit
    re-encodes the column (around its oldest time first, widening only if it must)."""

    __slots__ = ("_base_us", "_unit_us", "_values")

    def __init__(self) -> None:
        self._base_us = 0
        self._unit_us = US_PER_MS
        self._values = array("i")

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, index: int) -> int:
        return self._base_us + self._values[index] * self._unit_us

    def append(self, us: int) -> None:
        values = self._values
        if not values and values.typecode == "i":
            self._base_us = us
        offset, remainder = divmod(us - self._base_us, self._unit_us)
        if remainder or (values.typecode == "i" and not INT32_MIN <= offset <= INT32_MAX):
            self._encode([*(self[i] for i in range(len(values))), us])
        else:
            values.append(offset)

    def _encode(self, times_us: list[int]) -> None:
        base = min(times_us)
        if all((t - base) % US_PER_MS == 0 and t - base <= INT32_MAX * US_PER_MS
               for t in times_us):
            self._unit_us, typecode = US_PER_MS, "i"
        else:
            self._unit_us, typecode = 1, "q"
        self._base_us = base
        self._values = array(typecode, [(t - base) // self._unit_us for t in times_us])

    def drop_oldest(self) -> None:
        del self._values[0]

    def bisect_left(self, us: int) -> int:
        """bisect.bisect_left over the times (kept in increasing order by the caller)."""
        ceiling = -((self._base_us - us) // self._unit_us)  # first offset at or after `us`
        return bisect.bisect_left(self._values, ceiling)

    def code(self, us: int) -> int | None:
        """`us` as the column stores it, or None if no stored time can equal it."""
        offset, remainder = divmod(us - self._base_us, self._unit_us)
        return None if remainder else offset

    def __contains__(self, us: object) -> bool:
        if not isinstance(us, int):
            return False
        code = self.code(us)
        return code is not None and code in self._values


class FixHistory:
    """The last `capacity` evaluated fixes of one device, oldest first, strictly increasing
    in event time (the engine appends in-order fixes only)."""

    __slots__ = ("_accuracy", "_capacity", "_ts", "_x", "_y", "newest")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ts = TimeColumn()
        self._x = array("d")
        self._y = array("d")
        self._accuracy = array("f")  # widened to "d" when a value is not a float32
        self.newest: PlacedFix | None = None

    def __len__(self) -> int:
        return len(self._ts)

    def __bool__(self) -> bool:
        return bool(self._ts)

    def append(self, placed: PlacedFix) -> None:
        """Keep an evaluated fix (newer than every kept one); forget the oldest when full."""
        fix = placed.fix
        accuracy = self._accuracy
        if accuracy.typecode == "f" and not _fits_float32(fix.accuracy_m):
            accuracy = self._accuracy = array("d", accuracy)
        if len(self._ts) >= self._capacity:
            # A shift of at most `capacity` machine words: cheaper than ring arithmetic on
            # every read, and the arrays stay sorted for bisect.
            self._ts.drop_oldest()
            del self._x[0], self._y[0], accuracy[0]
        self._ts.append(to_us(fix.ts))
        x, y = placed.xy
        self._x.append(x)
        self._y.append(y)
        accuracy.append(fix.accuracy_m)
        self.newest = placed

    def bisect_left(self, ts: datetime) -> int:
        """Where a fix taken at `ts` would go (bisect.bisect_left on the event times)."""
        return self._ts.bisect_left(to_us(ts))

    def index_of(self, ts: datetime) -> int | None:
        """The position of the kept fix taken at exactly `ts`, if it is still kept."""
        us = to_us(ts)
        index = self._ts.bisect_left(us)
        if index < len(self._ts) and self._ts[index] == us:
            return index
        return None

    def ts(self, index: int) -> datetime:
        return from_us(self._ts[index])

    def kept(self, index: int) -> KeptFix:
        return KeptFix(
            from_us(self._ts[index]), (self._x[index], self._y[index]), self._accuracy[index]
        )


class RecentTimes:
    """The event times of the last `capacity` items, for a membership test (redelivery).
    Order of arrival, not of time (see TimeColumn for how they are kept)."""

    __slots__ = ("_capacity", "_times")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._times = TimeColumn()

    def __len__(self) -> int:
        return len(self._times)

    def append(self, ts: datetime) -> None:
        if len(self._times) >= self._capacity:
            self._times.drop_oldest()
        self._times.append(to_us(ts))

    def __contains__(self, ts: object) -> bool:
        return isinstance(ts, datetime) and to_us(ts) in self._times


class RecentItems(Generic[T]):
    """The last `capacity` items, oldest first: a drop-in for `deque(maxlen=capacity)` for
    the few places that append, iterate and test membership. A deque allocates a block of
    64 slots (~760 bytes) at its first item; this list grows with what is kept, and most
    devices never send an event nor subjects a check-in."""

    __slots__ = ("_capacity", "_items")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: list[T] = []

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __getitem__(self, index: int) -> T:
        return self._items[index]

    def append(self, item: T) -> None:
        if len(self._items) >= self._capacity:
            del self._items[0]
        self._items.append(item)


class LazySet(MutableSet[T]):
    """A set that costs nothing until its first item: an empty `set()` is 216 bytes, and
    the late-fix sets of a device (gaps still open, gaps already audited) stay empty unless
    it sends a backlog. Iteration order is not defined (callers sort or test membership);
    it compares equal to a `set` with the same items (collections.abc.MutableSet)."""

    __slots__ = ("_items",)

    def __init__(self) -> None:
        self._items: set[T] | None = None

    def __len__(self) -> int:
        return 0 if self._items is None else len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(()) if self._items is None else iter(self._items)

    def __contains__(self, item: object) -> bool:
        return self._items is not None and item in self._items

    def add(self, item: T) -> None:
        if self._items is None:
            self._items = {item}
        else:
            self._items.add(item)

    def discard(self, item: T) -> None:
        if self._items is not None:
            self._items.discard(item)
            if not self._items:
                self._items = None

    def clear(self) -> None:
        self._items = None

    def retain(self, keep: Callable[[T], bool]) -> None:
        """Keep only the items for which `keep` is true."""
        if self._items is not None:
            kept = {item for item in self._items if keep(item)}
            self._items = kept or None
