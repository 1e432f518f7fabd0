"""Weekly schedules: overnight windows, exception dates, weekday filters, DST, tick starts."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from geofence.schedule import Schedule, Window

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
FRI = date(2026, 11, 20)
SAT = date(2026, 11, 21)
MON, TUE, WED, THU, FRI_WD, SAT_WD, SUN = range(7)

NIGHT = Window(time(22), time(6))
CURFEW = Schedule("curfew", (NIGHT,))


def at(day: date, hour: int, minute: int = 0, tz: ZoneInfo = SHANGHAI) -> datetime:
    """A local wall-clock time, returned as a UTC instant (what the engine passes in)."""
    return datetime.combine(day, time(hour, minute), tzinfo=tz).astimezone(UTC)


def test_window_crossing_midnight_belongs_to_its_start_day() -> None:
    assert NIGHT.crosses_midnight
    begin, end = NIGHT.interval_on(FRI, SHANGHAI)
    assert begin == at(FRI, 22)
    assert end == at(SAT, 6)
    # Saturday 03:00 is inside Friday's window, not the start of a Saturday one.
    assert CURFEW.active_interval(at(SAT, 3), SHANGHAI) == (begin, end)


def test_window_bounds_are_half_open() -> None:
    assert not CURFEW.is_active(at(FRI, 21, 59), SHANGHAI)
    assert CURFEW.is_active(at(FRI, 22), SHANGHAI)
    assert CURFEW.is_active(at(SAT, 5, 59), SHANGHAI)
    assert not CURFEW.is_active(at(SAT, 6), SHANGHAI)
    assert not CURFEW.is_active(at(SAT, 12), SHANGHAI)


def test_daytime_window_does_not_cross_midnight() -> None:
    day_window = Window(time(7), time(18))
    assert not day_window.crosses_midnight
    assert day_window.interval_on(FRI, SHANGHAI) == (at(FRI, 7), at(FRI, 18))


def test_exception_date_cancels_the_whole_overnight_window() -> None:
    schedule = Schedule("curfew", (NIGHT,), frozenset({FRI}))
    assert not schedule.is_active(at(FRI, 23), SHANGHAI)
    # The Friday window would run into Saturday morning: that part is cancelled too.
    assert not schedule.is_active(at(SAT, 1), SHANGHAI)
    assert not schedule.is_active(at(SAT, 5, 59), SHANGHAI)
    # Thursday's window (ending Friday 06:00) and Saturday's window still apply.
    assert schedule.is_active(at(FRI, 5), SHANGHAI)
    assert schedule.is_active(at(SAT, 22, 30), SHANGHAI)


def test_exception_date_on_the_end_day_does_not_cancel_the_window() -> None:
    # An exception on Saturday cancels Saturday's window, not Friday's that ends Saturday.
    schedule = Schedule("curfew", (NIGHT,), frozenset({SAT}))
    assert schedule.is_active(at(SAT, 3), SHANGHAI)
    assert not schedule.is_active(at(SAT, 23), SHANGHAI)


def test_weekday_filter_applies_to_the_start_day() -> None:
    friday_nights = Schedule("fri", (Window(time(22), time(6), frozenset({FRI_WD})),))
    assert friday_nights.is_active(at(FRI, 23), SHANGHAI)
    assert friday_nights.is_active(at(SAT, 2), SHANGHAI)  # Friday's window, on Saturday
    assert not friday_nights.is_active(at(SAT, 23), SHANGHAI)
    assert not friday_nights.is_active(at(FRI - timedelta(days=1), 23), SHANGHAI)


def test_weekday_filter_for_school_hours() -> None:
    weekdays = frozenset({MON, TUE, WED, THU, FRI_WD})
    school = Schedule("school", (Window(time(7), time(18), weekdays),))
    assert school.is_active(at(FRI, 10), SHANGHAI)
    assert not school.is_active(at(SAT, 10), SHANGHAI)
    assert not school.is_active(at(SAT + timedelta(days=1), 10), SHANGHAI)
    assert school.is_active(at(SAT + timedelta(days=2), 10), SHANGHAI)  # Monday


def test_several_windows_are_each_honoured() -> None:
    schedule = Schedule("split", (Window(time(8), time(9)), Window(time(20), time(21))))
    assert schedule.active_interval(at(FRI, 8, 30), SHANGHAI) == (at(FRI, 8), at(FRI, 9))
    assert schedule.active_interval(at(FRI, 20, 30), SHANGHAI) == (at(FRI, 20), at(FRI, 21))
    assert schedule.active_interval(at(FRI, 12), SHANGHAI) is None


def test_starts_between_is_open_closed_and_sorted() -> None:
    starts = CURFEW.starts_between(at(FRI, 22), at(FRI + timedelta(days=3), 22), SHANGHAI)
    # (Fri 22:00, Mon 22:00]: Saturday, Sunday and Monday, not Friday.
    assert starts == [at(SAT, 22), at(SAT + timedelta(days=1), 22), at(SAT + timedelta(days=2), 22)]
    assert CURFEW.starts_between(at(FRI, 21, 59), at(FRI, 22), SHANGHAI) == [at(FRI, 22)]
    assert CURFEW.starts_between(at(FRI, 22, 1), at(SAT, 21, 59), SHANGHAI) == []


def test_starts_between_skips_exception_dates_and_weekdays() -> None:
    weekdays = Window(time(22), time(6), frozenset({MON, TUE, WED, THU, FRI_WD}))
    schedule = Schedule("curfew", (weekdays,), frozenset({date(2026, 11, 24)}))  # a Tuesday
    monday = date(2026, 11, 23)
    starts = schedule.starts_between(at(FRI, 12), at(monday + timedelta(days=3), 23), SHANGHAI)
    assert starts == [
        at(FRI, 22),
        at(monday, 22),
        at(monday + timedelta(days=2), 22),
        at(monday + timedelta(days=3), 22),
    ]


@settings(max_examples=60, deadline=None)
@given(
    start_minute=st.integers(0, 60 * 24 - 1),
    offset_minutes=st.integers(0, 60 * 24 * 3),
    span_minutes=st.integers(1, 60 * 24 * 3),
)
def test_starts_between_agrees_with_is_active(
    start_minute: int, offset_minutes: int, span_minutes: int
) -> None:
    """Every reported start is active at that instant and was not active a moment before
    (windows here are shorter than a day, so they cannot touch)."""
    window = Window(
        time(start_minute // 60, start_minute % 60),
        time((start_minute // 60 + 3) % 24, start_minute % 60),
    )
    schedule = Schedule("s", (window,))
    after = at(FRI, 0) + timedelta(minutes=offset_minutes)
    until = after + timedelta(minutes=span_minutes)
    starts = schedule.starts_between(after, until, SHANGHAI)
    assert starts == sorted(starts)
    for start in starts:
        assert after < start <= until
        assert schedule.is_active(start, SHANGHAI)
        assert not schedule.is_active(start - timedelta(seconds=1), SHANGHAI)
    # One start per local day in the span, give or take the ends.
    assert abs(len(starts) - span_minutes / (24 * 60)) <= 1


def test_dst_spring_forward_keeps_wall_clock_times() -> None:
    # Europe/Berlin springs forward on Sunday 2026-03-29 at 02:00 (CET +1 -> CEST +2).
    saturday = date(2026, 3, 28)
    begin, end = NIGHT.interval_on(saturday, BERLIN)
    assert begin.astimezone(UTC) == datetime(2026, 3, 28, 21, 0, tzinfo=UTC)  # 22:00 CET
    assert end.astimezone(UTC) == datetime(2026, 3, 29, 4, 0, tzinfo=UTC)  # 06:00 CEST
    assert CURFEW.is_active(datetime(2026, 3, 29, 3, 59, tzinfo=UTC), BERLIN)
    assert not CURFEW.is_active(datetime(2026, 3, 29, 4, 0, tzinfo=UTC), BERLIN)
    starts = CURFEW.starts_between(
        datetime(2026, 3, 27, 12, tzinfo=UTC), datetime(2026, 3, 30, 12, tzinfo=UTC), BERLIN
    )
    # 22:00 local every night: 21:00 UTC before the change, 20:00 UTC after it.
    assert [s.astimezone(UTC).hour for s in starts] == [21, 21, 20]
    assert all(s.astimezone(BERLIN).time() == time(22) for s in starts)


def test_dst_fall_back_keeps_wall_clock_times() -> None:
    # Europe/Berlin falls back on Sunday 2026-10-25 at 03:00 (CEST +2 -> CET +1).
    saturday = date(2026, 10, 24)
    begin, end = NIGHT.interval_on(saturday, BERLIN)
    assert begin.astimezone(UTC) == datetime(2026, 10, 24, 20, 0, tzinfo=UTC)  # 22:00 CEST
    assert end.astimezone(UTC) == datetime(2026, 10, 25, 5, 0, tzinfo=UTC)  # 06:00 CET
    assert CURFEW.is_active(datetime(2026, 10, 25, 4, 59, tzinfo=UTC), BERLIN)
    assert not CURFEW.is_active(datetime(2026, 10, 25, 5, 0, tzinfo=UTC), BERLIN)
    # The following evening starts at 22:00 CET = 21:00 UTC.
    assert CURFEW.active_interval(datetime(2026, 10, 25, 21, 0, tzinfo=UTC), BERLIN) is not None
    assert not CURFEW.is_active(datetime(2026, 10, 25, 20, 59, tzinfo=UTC), BERLIN)


def test_same_instant_in_another_zone_is_judged_in_the_subjects_zone() -> None:
    # 23:00 in Shanghai is 16:00 in Berlin: curfew for one, not for the other.
    instant = at(FRI, 23)
    assert CURFEW.is_active(instant, SHANGHAI)
    assert not CURFEW.is_active(instant, BERLIN)
