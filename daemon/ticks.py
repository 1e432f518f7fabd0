"""The tick grid shared by the daemon and `emon replay`.

Ticks fall on multiples of the tick interval since the Unix epoch, in both the live daemon
(APScheduler starts on the grid and each tick is judged at the grid point it belongs to)
and replay (virtual ticks on the same grid). So the interleaving of ticks and messages, and
with it every time-driven decision, is the same live and in replay for the same arrivals.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def grid_floor(at: datetime, interval_seconds: float) -> datetime:
    """The latest grid point at or before `at`."""
    elapsed_s = (at - EPOCH).total_seconds()
    return EPOCH + timedelta(seconds=math.floor(elapsed_s / interval_seconds) * interval_seconds)


def grid_ceil(at: datetime, interval_seconds: float) -> datetime:
    """The earliest grid point at or after `at`."""
    floor = grid_floor(at, interval_seconds)
    return floor if floor >= at else floor + timedelta(seconds=interval_seconds)
