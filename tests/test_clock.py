"""The daemon's guarded engine clock (daemon/clock.py) against a fake wall and monotonic
clock: steps detected once, slewed, never backwards, silence never judged on a step.

The daemon under a real wall-clock step (libfaketime) is tests/test_faults_clock.py."""

from __future__ import annotations

import itertools
import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from daemon.clock import (
    CLOCK_SLEW_FAST_FRACTION,
    CLOCK_SLEW_SLOW_FRACTION,
    GuardedClock,
)
from daemon.wire import RejectReason, WireError, decode
from geofence.observation import LocationFix

pytestmark = pytest.mark.fault

START_S = datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp()
HOUR_S = 3600.0


class FakeTime:
    """A wall clock that can be stepped and a monotonic clock that cannot."""

    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = START_S

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


def steps(direction: str) -> float:
    return REGISTRY.get_sample_value("emon_clock_steps_total", {"direction": direction}) or 0.0


def test_without_steps_engine_time_is_the_wall_clock() -> None:
    fake = FakeTime()
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono)
    for _ in range(100):
        fake.advance(0.7)
        assert clock.read() == fake.wall
    assert not clock.absorbing


def test_small_slew_backwards_is_held_not_reversed() -> None:
    fake = FakeTime()
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono)
    before = clock.read()
    fake.step_wall(-0.5)  # within the threshold: NTP-sized
    fake.advance(0.1)
    assert clock.read() == before  # held, never backwards
    fake.advance(1.0)
    assert clock.read() == fake.wall


def test_forward_step_is_logged_once_counted_and_slewed(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeTime()
    seen: list[float] = []
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono, on_step=seen.append)
    forward_before = steps("forward")
    caplog.set_level(logging.WARNING, logger="daemon.clock")
    clock.read()
    fake.step_wall(HOUR_S)
    engine = [clock.read()]
    # Read every second for the time the step takes to absorb.
    absorb_s = HOUR_S / CLOCK_SLEW_FAST_FRACTION
    for _ in range(int(absorb_s) + 10):
        fake.advance(1.0)
        engine.append(clock.read())
    assert seen == [HOUR_S]
    assert steps("forward") - forward_before == 1
    stepped = [r for r in caplog.records if "stepped forward by 3600.0 s" in r.getMessage()]
    assert len(stepped) == 1
    # Right after the step engine time has not jumped; it never advances more than
    # (1 + FAST) seconds per real second, and never goes backwards.
    assert engine[0] == pytest.approx(START_S, abs=1e-6)
    increments = [b - a for a, b in itertools.pairwise(engine)]
    assert min(increments) >= 0.0
    assert max(increments) <= 1.0 + CLOCK_SLEW_FAST_FRACTION + 2.0  # + the final snap
    assert engine[-1] == fake.wall
    assert not clock.absorbing
    assert any("back in step" in r.getMessage() for r in caplog.records)


def test_backward_step_never_sends_time_backwards() -> None:
    fake = FakeTime()
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono)
    backward_before = steps("backward")
    clock.read()
    fake.step_wall(-HOUR_S)
    engine = [clock.read()]
    absorb_s = HOUR_S / CLOCK_SLEW_SLOW_FRACTION
    for _ in range(int(absorb_s) + 10):
        fake.advance(1.0)
        engine.append(clock.read())
    assert steps("backward") - backward_before == 1
    increments = [b - a for a, b in itertools.pairwise(engine)]
    assert min(increments) >= 1.0 - CLOCK_SLEW_SLOW_FRACTION - 1e-9  # keeps moving
    assert engine[-1] == fake.wall
    assert not clock.absorbing


def test_a_device_reporting_every_five_minutes_never_looks_quiet_for_fifteen() -> None:
    """The silence rule's view: arrival gaps in engine time stay under the wearable
    threshold (15 min) for a device reporting every 5 minutes across a forward step of a
    day (the gap the daemon did not live through never shows)."""
    fake = FakeTime()
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono)
    arrivals = [clock.read()]
    for minute in range(1, 24 * 60 * 2):
        fake.advance(60.0)
        if minute == 30:
            fake.step_wall(24 * HOUR_S)
        now = clock.read()
        if minute % 5 == 0:
            arrivals.append(now)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert max(gaps) <= 5 * 60.0 * (1.0 + CLOCK_SLEW_FAST_FRACTION) + 2.0
    assert max(gaps) < 15 * 60.0


def test_after_a_forward_step_correctly_timed_fixes_are_not_future_dated() -> None:
    # The host clock was an hour slow and is corrected: devices (GNSS time) were right all
    # along. Engine time catches up slowly, but their fixes are accepted meanwhile, with
    # arrival times on the engine time line.
    fake = FakeTime()
    clock = GuardedClock(lambda: fake.wall, lambda: fake.mono)
    clock.read()
    fake.step_wall(HOUR_S)
    fake.advance(1.0)
    received_at = clock.now()
    device_ts = clock.wall_now()
    payload = json.dumps(
        {"ts": device_ts.isoformat(), "lat": 22.54, "lon": 114.05, "acc": 8}
    ).encode()
    topic = "emon/v1/devices/tag-1/location"
    with pytest.raises(WireError) as refused:  # what judging on engine time alone would do
        decode(topic, payload, received_at)
    assert refused.value.reason is RejectReason.TS_IN_FUTURE
    fix = decode(topic, payload, received_at, future_reference=device_ts)
    assert isinstance(fix, LocationFix)
    assert (fix.ts, fix.received_at) == (device_ts, received_at)
    too_far = device_ts + timedelta(minutes=16)
    with pytest.raises(WireError) as still_refused:  # the wall clock still bounds the future
        decode(topic, payload.replace(device_ts.isoformat().encode(),
                                      too_far.isoformat().encode()), received_at, device_ts)
    assert still_refused.value.reason is RejectReason.TS_IN_FUTURE
