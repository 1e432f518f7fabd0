"""The daemon learns frequent places from the ping store (real PostgreSQL) with the same
sample `emon replay` takes from the replayed messages, so both learn the same places."""

from __future__ import annotations

import random
from datetime import timedelta

from psycopg import AsyncConnection

from daemon.habitlearning import (
    ReplayPlaceHistory,
    learn_all,
    learn_from_store,
    subject_histories,
)
from daemon.store.migrations import migrate
from daemon.store.pool import open_pool
from geofence.behaviour_config import BehaviourParams, HabitParams
from geofence.observation import LocationFix
from tests.behaviour_helpers import at_xy, behaviour_config, tag
from tests.core_helpers import DAY, local
from tests.test_store_queries import prepare_days

PARAMS = HabitParams(enabled=True, min_history_days=2)
CONFIG = behaviour_config(["a", "b"], BehaviourParams(habits=PARAMS))
MOMENT = local(4, day=DAY)


def pings() -> list[tuple[str, LocationFix]]:
    rng = random.Random(3)
    out: list[tuple[str, LocationFix]] = []
    for subject, home in (("a", (0.0, 0.0)), ("b", (5000.0, 0.0))):
        ts = MOMENT - timedelta(days=3)
        while ts < MOMENT + timedelta(hours=2):  # some after the moment: not learnt
            hour = (ts + timedelta(hours=8)).hour
            xy = (home[0] + 3000.0, home[1]) if 9 <= hour < 17 else home
            fix = at_xy(subject, (xy[0] + rng.uniform(-30, 30), xy[1] + rng.uniform(-30, 30)),
                        ts, rng.choice([8.0, 15.0, 400.0]))
            out.append((subject, fix))
            ts += timedelta(seconds=rng.choice([40, 60, 90]))  # several per 5-minute bucket
    return out


async def test_store_sample_and_places_equal_replays(pg_dsn: str) -> None:
    await migrate(pg_dsn)
    rows = pings()
    await prepare_days(pg_dsn, (MOMENT - timedelta(days=4)).date(), MOMENT.date())
    async with (
        await AsyncConnection.connect(pg_dsn, autocommit=True) as conn,
        conn.cursor() as cur,
    ):
        await cur.executemany(
            "INSERT INTO pings (device_id, subject_id, ts, received_at, lat, lon, acc_m, src)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, 'gnss')",
            [(f.device_id, s, f.ts, f.received_at, f.lat, f.lon, f.accuracy_m) for s, f in rows],
        )
    replayed = ReplayPlaceHistory()
    for subject, fix in rows:
        if fix.received_at < MOMENT:  # what replay has seen at the learning moment
            replayed.record(PARAMS, subject, fix)
    expected = replayed.history(PARAMS, MOMENT)
    async with open_pool(pg_dsn, min_size=1, max_size=2) as pool:
        stored = {s: f async for s, f in subject_histories(pool, PARAMS, MOMENT)}
        learned = await learn_from_store(pool, CONFIG, MOMENT)
    usable = {s: [f for f in fixes if f.accuracy_m <= PARAMS.max_accuracy_m and f.ts < MOMENT]
              for s, fixes in expected.items()}
    assert set(stored) == {"a", "b"}
    for subject in ("a", "b"):
        assert [(f.ts, f.device_id) for f in stored[subject]] == [
            (f.ts, f.device_id) for f in usable[subject]]
        assert all(f.device_id == tag(subject) for f in stored[subject])
    assert learned == learn_all(CONFIG, expected, MOMENT)
    assert {p.label for p in learned[0].places} == {"residence", "workplace"}
