"""The daemon's engine clock: wall-clock time that never steps.

The pure core judges liveness on arrival times and time-driven rules at tick times, both
handed in by the shell (daemon/app.py). Taken straight from the wall clock, a step of the
system clock (an operator's `date -s`, a hypervisor resuming a VM, NTP stepping at boot)
would reach the core as a gap: a step forwards of an hour makes every device look silent
for an hour at the next tick; a step backwards sends time backwards (arrivals out of
order, ticks judging the past, and APScheduler waits the whole step for its next run).

`GuardedClock` advances with `time.monotonic()` from a wall-clock anchor and follows the
wall clock only by slewing (docs/architecture.md, "Clock steps"):

* within CLOCK_STEP_THRESHOLD_SECONDS of the wall clock (NTP's own slewing, read jitter),
  engine time is the wall clock, held rather than moved backwards;
* after a step it runs at most CLOCK_SLEW_FAST_FRACTION faster (wall clock ahead) or
  CLOCK_SLEW_SLOW_FRACTION slower (wall clock behind) than real time until it meets the
  wall clock again. It never jumps and never goes backwards;
* each step is logged once at WARNING with its size, counted in
  `emon_clock_steps_total{direction}`, and `emon_clock_offset_seconds` shows how far the
  wall clock is from engine time until the step is absorbed.

Why slewing and not adopting at once: a gap the daemon did not live through must not fire
silence deadlines (a device reporting every p seconds looks, while a forward step is being
absorbed, as if it reported every p * (1 + FAST) seconds: below the 15-minute wearable
threshold for any device reporting at least every 7.5 minutes), and time must not run
backwards. While a forward step is absorbed the wire decoder judges "future-dated" against
the wall clock (`wall_now`), so correctly timed devices are not refused. The price, stated
in the docs: a backward step delays time-driven alerts by at most the slow fraction's
factor while it is absorbed.

Shell only: the core never reads a clock; `emon replay` passes its file's times.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from prometheus_client import Counter, Gauge

_LOGGER = logging.getLogger(__name__)

CLOCK_STEP_THRESHOLD_SECONDS: Final = 2.0
"""A change of the wall clock against the monotonic clock beyond this between two reads is
a step (NTP slews at most 0.5 ms/s; reads are at most a second apart, see the watch)."""
CLOCK_SLEW_FAST_FRACTION: Final = 1.0
"""While behind the wall clock, engine time runs up to this much faster than real time
(1.0: twice as fast, so a forward step of D seconds is absorbed in D seconds)."""
CLOCK_SLEW_SLOW_FRACTION: Final = 0.5
"""While ahead of the wall clock, engine time runs this much slower than real time (0.5:
half speed, so a backward step of D seconds is absorbed in 2 D seconds; never stopped, so
time-driven rules keep being judged)."""
CLOCK_WATCH_INTERVAL_SECONDS: Final = 1.0
"""How often the daemon reads the clock when no message or tick does (step detection)."""

CLOCK_STEPS = Counter(
    "emon_clock_steps_total", "Steps of the system wall clock detected (absorbed by slewing)",
    ["direction"],
)
CLOCK_OFFSET = Gauge(
    "emon_clock_offset_seconds",
    "Wall clock minus the daemon's engine clock (non-zero while a step is being absorbed)",
)


class GuardedClock:
    """Engine time for the daemon shell: monotonic, following the wall clock by slewing.

    `wall` and `monotonic` are the time sources in seconds (injectable for tests);
    `on_step` is called with the step's size in seconds (positive: forwards) after it has
    been logged."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_step: Callable[[float], None] | None = None,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self.on_step = on_step
        now_wall, now_mono = wall(), monotonic()
        self._engine_s = now_wall
        self._mono_s = now_mono
        # The wall clock's offset against the monotonic clock at the last read: a change of
        # it beyond the threshold is a step.
        self._skew_s = now_wall - now_mono
        self._absorbing = False

    @property
    def absorbing(self) -> bool:
        """True while engine time differs from the wall clock after a step."""
        return self._absorbing

    @property
    def last_read_s(self) -> float:
        """Engine time of the latest read (seconds since the epoch): a caller that reuses a
        reading sees from this whether anyone has read a later time since."""
        return self._engine_s

    def now(self) -> datetime:
        """Engine time as an aware UTC datetime (never earlier than the previous read)."""
        return datetime.fromtimestamp(self.read(), UTC)

    def wall_now(self) -> datetime:
        """The system wall clock as it reads now, which may be ahead of engine time while a
        forward step is absorbed: the wire decoder's future-dated check uses the later of
        the two, so correctly timed devices are not refused meanwhile."""
        return datetime.fromtimestamp(self._wall(), UTC)

    def read(self) -> float:
        """Engine time in seconds since the epoch."""
        wall, mono = self._wall(), self._monotonic()
        elapsed = max(0.0, mono - self._mono_s)
        self._mono_s = max(self._mono_s, mono)
        skew = wall - mono
        was_absorbing = self._absorbing
        step = skew - self._skew_s
        self._skew_s = skew
        if abs(step) > CLOCK_STEP_THRESHOLD_SECONDS:
            self._note_step(step)
        free_running = self._engine_s + elapsed
        gap = wall - free_running
        if gap > CLOCK_STEP_THRESHOLD_SECONDS:
            engine = min(wall, self._engine_s + elapsed * (1.0 + CLOCK_SLEW_FAST_FRACTION))
            self._absorbing = True
        elif gap < -CLOCK_STEP_THRESHOLD_SECONDS or (gap < 0 and self._absorbing):
            # Slower, never stopped: time-driven rules keep being judged.
            engine = max(wall, self._engine_s + elapsed * (1.0 - CLOCK_SLEW_SLOW_FRACTION))
            self._absorbing = engine > wall
        else:
            engine = max(self._engine_s, wall)  # in step: the wall clock, never backwards
            self._absorbing = False
        if was_absorbing and not self._absorbing:
            _LOGGER.warning("engine clock back in step with the wall clock")
        self._engine_s = max(self._engine_s, engine)
        CLOCK_OFFSET.set(wall - self._engine_s)
        return self._engine_s

    def _note_step(self, step_s: float) -> None:
        direction = "forward" if step_s > 0 else "backward"
        CLOCK_STEPS.labels(direction).inc()
        gap_s = abs(step_s)
        fraction = CLOCK_SLEW_FAST_FRACTION if step_s > 0 else CLOCK_SLEW_SLOW_FRACTION
        _LOGGER.warning(
            "wall clock stepped %s by %.1f s; engine time slews to it (absorbed in about "
            "%.0f s), silence and schedules are not judged on the step",
            direction, gap_s, gap_s / fraction,
        )
        if self.on_step is not None:
            self.on_step(step_s)
