"""Learning frequent places for the trajectory-anomaly rule (issue 5), in replay and live.

Both learn at the same moments (daily at `learn_hour_utc`, on the hour, which is on the
tick grid) from the same sample of fixes: the first fix (by ts, then device id) of each
5-minute bucket among the fixes *received* before the moment and taken in the
`history_days` before it. `emon replay` gathers them from the replayed messages
(`ReplayPlaceHistory`); the daemon reads them from the ping store (`fetch_history`, a
read-only query) and learns in a worker thread. The places are handed to the core as data
(`Engine.set_frequent_places`) and kept in memory only: they are derived from the pings,
relearnt at start-up and daily, and a second copy of location-derived data in the database
would need its own retention and access rules for no gain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any

from geofence.behaviour_config import HabitParams
from geofence.config import CoreConfig
from geofence.habits import HistoryFix, LearnedPlaces, learn_frequent_places, sample_bucket
from geofence.observation import LocationFix

_LOGGER = logging.getLogger(__name__)

ONE_DAY = timedelta(days=1)


def learn_moments(after: datetime | None, until: datetime, hour_utc: int) -> Iterator[datetime]:
    """The daily learning moments in (`after`, `until`]; none before the first `after`."""
    if after is None or until <= after:
        return
    moment = datetime.combine(after.date(), time(hour_utc), tzinfo=UTC)
    while moment <= after:
        moment += ONE_DAY
    while moment <= until:
        yield moment
        moment += ONE_DAY


def latest_learn_moment(now: datetime, hour_utc: int) -> datetime:
    """The newest daily learning moment at or before `now`."""
    moment = datetime.combine(now.astimezone(UTC).date(), time(hour_utc), tzinfo=UTC)
    return moment if moment <= now else moment - ONE_DAY


def learn_all(
    config: CoreConfig, history: Mapping[str, Sequence[HistoryFix]], moment: datetime
) -> list[LearnedPlaces]:
    params = config.behaviour.habits
    out: list[LearnedPlaces] = []
    for subject_id in sorted(history):
        subject = config.subjects.get(subject_id)
        if subject is None:
            continue
        out.append(learn_frequent_places(
            subject_id, history[subject_id], subject.timezone, params, moment
        ))
    return out


class ReplayPlaceHistory:
    """What the store would hold for learning, gathered from replayed fixes: per subject
    the first fix of each sample bucket (bounded by the history window)."""

    def __init__(self) -> None:
        self._buckets: dict[str, dict[int, HistoryFix]] = {}

    def record(self, params: HabitParams, subject_id: str, fix: LocationFix) -> None:
        if fix.accuracy_m > params.max_accuracy_m:
            return  # as the store's query: imprecise fixes never take a bucket
        bucket = sample_bucket(fix.ts, params.sample_seconds)
        buckets = self._buckets.setdefault(subject_id, {})
        held = buckets.get(bucket)
        if held is None or (fix.ts, fix.device_id) < (held.ts, held.device_id):
            buckets[bucket] = HistoryFix(fix.ts, fix.lat, fix.lon, fix.accuracy_m, fix.device_id)

    def history(self, params: HabitParams, moment: datetime) -> dict[str, list[HistoryFix]]:
        oldest = sample_bucket(moment - timedelta(days=params.history_days), params.sample_seconds)
        out: dict[str, list[HistoryFix]] = {}
        for subject_id, buckets in self._buckets.items():
            for bucket in [b for b in buckets if b < oldest]:
                del buckets[bucket]
            out[subject_id] = [buckets[b] for b in sorted(buckets)]
        return out


# ---------------------------------------------------------------------- live (the store)

HISTORY_QUERY = """
SELECT DISTINCT ON (subject_id, floor(extract(epoch FROM ts) / %(sample)s))
       subject_id, ts, lat, lon, acc_m, device_id
FROM pings
WHERE ts >= %(since)s AND ts < %(until)s AND received_at < %(until)s AND acc_m <= %(max_acc)s
ORDER BY subject_id, floor(extract(epoch FROM ts) / %(sample)s), ts, device_id
"""


# Rows fetched from the server-side cursor per round trip.
FETCH_ROWS = 5000


async def subject_histories(
    pool: Any, params: HabitParams, moment: datetime
) -> AsyncIterator[tuple[str, list[HistoryFix]]]:
    """The learning sample from the ping store (read-only), one subject at a time, through
    a server-side cursor: memory holds one subject's weeks, not the fleet's."""
    async with pool.connection() as conn, conn.transaction():
        cur = conn.cursor(name="emon_learn_places")
        try:
            await cur.execute(HISTORY_QUERY, {
                "sample": params.sample_seconds,
                "since": moment - timedelta(days=params.history_days),
                "until": moment,
                "max_acc": params.max_accuracy_m,
            })
            current: str | None = None
            fixes: list[HistoryFix] = []
            while rows := await cur.fetchmany(FETCH_ROWS):
                for subject_id, ts, lat, lon, acc, device_id in rows:
                    if subject_id != current:
                        if current is not None:
                            yield current, sorted(fixes, key=lambda f: f.ts)
                        current, fixes = subject_id, []
                    fixes.append(HistoryFix(ts.astimezone(UTC), lat, lon, float(acc), device_id))
            if current is not None:
                yield current, sorted(fixes, key=lambda f: f.ts)
        finally:
            await cur.close()


async def learn_from_store(
    pool: Any, config: CoreConfig, moment: datetime
) -> list[LearnedPlaces]:
    """Every subject's places from the store: fetched one subject at a time and learnt in
    a worker thread (CPU-bound), so neither memory nor the event loop carry the fleet."""
    params = config.behaviour.habits
    learned: list[LearnedPlaces] = []
    async for subject_id, fixes in subject_histories(pool, params, moment):
        subject = config.subjects.get(subject_id)
        if subject is None:
            continue  # stored pings of a subject no longer in the roster
        learned.append(await asyncio.to_thread(
            learn_frequent_places, subject_id, fixes, subject.timezone, params, moment
        ))
    return learned
