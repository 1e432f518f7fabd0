"""Weekly schedules in a subject's own time zone.

A window is local wall-clock time `start`..`end` on the given weekdays. If `end <= start`
the window crosses midnight and belongs to the day it starts on: the curfew of Friday
22:00-06:00 runs into Saturday morning, and an exception date of Friday cancels all of it.
DST is handled by `zoneinfo`: local times are resolved per day, so a window keeps its wall
clock times across a DST change (Asia/Shanghai has none, but other districts do).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

ALL_WEEKDAYS: frozenset[int] = frozenset(range(7))  # Monday = 0, as datetime.weekday()
# A weekly schedule repeats within 7 days; one more covers a window crossing midnight.
BOUNDARY_LOOKAHEAD_DAYS = 8
# Day intervals kept per process: schedules x days in use (a few per subject).
INTERVAL_CACHE_ENTRIES = 65536


@dataclass(frozen=True, slots=True)
class Window:
    start: time
    end: time
    weekdays: frozenset[int] = ALL_WEEKDAYS

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def interval_on(self, day: date, tz: ZoneInfo) -> tuple[datetime, datetime]:
        """The UTC-comparable aware interval of this window if it starts on `day`."""
        begin = datetime.combine(day, self.start, tzinfo=tz)
        end_day = day + timedelta(days=1) if self.crosses_midnight else day
        finish = datetime.combine(end_day, self.end, tzinfo=tz)
        return begin, finish


@functools.lru_cache(maxsize=INTERVAL_CACHE_ENTRIES)
def _intervals_of_day(
    schedule: Schedule, day: date, tz: ZoneInfo
) -> tuple[tuple[datetime, datetime], ...]:
    """The aware intervals of the windows starting on `day` (cached: every fix asks)."""
    if day in schedule.exception_dates:
        return ()
    weekday = day.weekday()
    return tuple(window.interval_on(day, tz) for window in schedule.windows
                 if weekday in window.weekdays)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A set of weekly windows with exception dates (holidays) in one time zone."""

    schedule_id: str
    windows: tuple[Window, ...]
    exception_dates: frozenset[date] = frozenset()

    def _intervals_near(self, at: datetime, tz: ZoneInfo) -> Iterator[tuple[datetime, datetime]]:
        local_day = at.astimezone(tz).date()
        # A window that started yesterday may still be running today.
        for day in (local_day - timedelta(days=1), local_day, local_day + timedelta(days=1)):
            yield from _intervals_of_day(self, day, tz)

    def active_interval(self, at: datetime, tz: ZoneInfo) -> tuple[datetime, datetime] | None:
        """The window containing `at` (aware), as (start, end), or None."""
        for begin, finish in self._intervals_near(at, tz):
            if begin <= at < finish:
                return begin, finish
        return None

    def is_active(self, at: datetime, tz: ZoneInfo) -> bool:
        return self.active_interval(at, tz) is not None

    def starts_between(self, after: datetime, until: datetime, tz: ZoneInfo) -> list[datetime]:
        """Window starts in (after, until], oldest first; used by the scheduler tick."""
        starts: set[datetime] = set()
        day = after.astimezone(tz).date() - timedelta(days=1)
        last_day = until.astimezone(tz).date()
        while day <= last_day:
            if day not in self.exception_dates:
                for window in self.windows:
                    if day.weekday() in window.weekdays:
                        begin, _ = window.interval_on(day, tz)
                        if after < begin <= until:
                            starts.add(begin)
            day += timedelta(days=1)
        return sorted(starts)

    def next_boundary_after(
        self, after: datetime, tz: ZoneInfo, start_offset: timedelta = timedelta(0)
    ) -> datetime | None:
        """The first window start (shifted by `start_offset`, a grace) or window end strictly
        after `after`, looking a little over a week ahead; None if there is none (no window
        on any weekday, or every day in that span is an exception date).

        The engine's clock uses it to wake up exactly when a scheduled rule may change."""
        best: datetime | None = None
        first_day = after.astimezone(tz).date() - timedelta(days=1)
        for offset_days in range(BOUNDARY_LOOKAHEAD_DAYS + 2):
            day = first_day + timedelta(days=offset_days)
            if day in self.exception_dates:
                continue
            for window in self.windows:
                if day.weekday() not in window.weekdays:
                    continue
                begin, finish = window.interval_on(day, tz)
                for moment in (min(begin + start_offset, finish), finish):
                    if moment > after and (best is None or moment < best):
                        best = moment
            if best is not None and day > best.astimezone(tz).date():
                break
        return best
