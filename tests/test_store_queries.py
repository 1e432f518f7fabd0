"""Rollups, compliance report, track with stops, and maintenance (partitions, retention)
against a real PostgreSQL server, with figures worked out by hand."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection

from daemon.configfiles import load_config
from daemon.reports import compliance, format_compliance, track_geojson
from daemon.storage import maintain
from daemon.store import migrate, open_pool, rollup
from daemon.store.maintenance import MAINTENANCE_LOCK_KEY, run_maintenance
from daemon.store.settings import RetentionSettings, StoreSettings
from daemon.track import TrackPoint, detect_stops, distance_m
from tests.storekit import execute, rows, scalar

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parent.parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 20)  # local day: 2026-11-19T16:00Z .. 2026-11-20T16:00Z
NOW = datetime(2026, 11, 21, tzinfo=UTC)
SUBJECT = "s001"  # of config/subjects.yaml
DEVICE = "tag-s001"


def utc(hour: int, minute: int = 0, day: int = 20) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


async def prepare_days(dsn: str, first: date, last: date) -> bool:
    """Day partitions for test data (plain layout); True if the layout is plain."""
    plain = bool(await scalar(dsn, "SELECT to_regproc('emon_ensure_day_partitions') IS NOT NULL"))
    if plain:
        for table in ("pings", "device_events", "zone_transitions"):
            await execute(
                dsn, "SELECT emon_ensure_day_partitions(%s::regclass, %s, %s)", [table, first, last]
            )
    return plain


async def insert_pings(
    dsn: str, points: list[tuple[datetime, float, float]], subject: str = SUBJECT,
    device: str = DEVICE, accuracy_m: float = 8.0,
) -> None:  # fmt: skip
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO pings (device_id, subject_id, ts, received_at, lat, lon, acc_m, src)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, 'gnss')",
            [(device, subject, ts, ts, lat, lon, accuracy_m) for ts, lat, lon in points],
        )


async def insert_transitions(dsn: str, items: list[tuple[Any, ...]]) -> None:
    """(subject, zone, kind, state, role, ts) rows."""
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO zone_transitions (device_id, subject_id, zone_id, kind, state, ts,"
            " received_at, role) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [(f"tag-{s}", s, z, k, st_, ts, ts, r) for s, z, k, st_, r, ts in items],
        )


@pytest.fixture
async def migrated(pg_dsn: str) -> str:
    await migrate(pg_dsn)
    await prepare_days(pg_dsn, date(2026, 11, 18), date(2026, 11, 22))
    return pg_dsn


@pytest.fixture
async def evening(migrated: str) -> str:
    """Pings, curfew and exclusion transitions of s001 (figures in the tests)."""
    dsn = migrated
    await insert_pings(
        dsn,
        [(utc(1, 5), 22.548, 114.04), (utc(1, 10), 22.548, 114.04), (utc(1, 50), 22.55, 114.05),
         (utc(3, 0), 22.55, 114.05), (utc(3, 30), 22.548, 114.04)],
    )  # fmt: skip
    await insert_pings(dsn, [(utc(2, 30), 22.5, 114.0)], subject="s002", device="tag-s002")
    await insert_transitions(
        dsn,
        [
            (SUBJECT, "home-s001", "presence", "inside", "home", utc(0, 0)),
            (SUBJECT, "home-s001", "curfew_away", "violated", "home", utc(1, 20)),
            (SUBJECT, "school-futian-1", "presence", "inside", "exclusion", utc(1, 30)),
            (SUBJECT, "school-futian-1", "presence", "outside", "exclusion", utc(1, 45)),
            (SUBJECT, "home-s001", "curfew_away", "cleared", "home", utc(2, 15)),
            (SUBJECT, "home-s001", "curfew_away", "violated", "home", utc(3, 50)),
            # Another subject's transitions never count for s001.
            ("s002", "home-s002", "curfew_away", "violated", "home", utc(1, 0)),
        ],
    )
    return dsn


async def test_hourly_figures(evening: str) -> None:
    dsn = evening
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        buckets = rollup.hourly_buckets([SUBJECT], utc(1), utc(5))
        await rollup.store_hourly(conn, buckets, NOW)
        stored = await rollup.read_hourly(conn, [SUBJECT], utc(1), utc(5))
    figures = [
        (r["bucket"], r["pings"], r["largest_gap_s"], r["away_in_curfew_s"], r["in_exclusion_s"])
        for r in stored
    ]
    assert figures == [
        # 01:05 01:10 01:50: gaps 5, 5, 40 and 10 min to the hour's end; away from 01:20.
        (utc(1), 3, 40 * 60, 40 * 60, 15 * 60),
        # No ping: the whole hour is the gap; away until 02:15.
        (utc(2), 0, 60 * 60, 15 * 60, 0),
        # 03:00 (at the bucket start) and 03:30; away again from 03:50.
        (utc(3), 2, 30 * 60, 10 * 60, 0),
        # Silent, and still away (no transition since): up to now, the whole hour.
        (utc(4), 0, 60 * 60, 60 * 60, 0),
    ]
    # The current bucket counts up to now; one that has not begun has no gap.
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        now = utc(3, 40)
        got = await rollup.compute(conn, rollup.hourly_buckets([SUBJECT], utc(3), utc(5)), now)
    assert [(r["pings"], r["largest_gap_s"], r["away_in_curfew_s"]) for r in got] == [
        (2, 30 * 60, 0),  # 03:00, 03:30, now 03:40; the violation at 03:50 is in the future
        (0, None, 0),  # 04:00 has not begun
    ]


async def test_refresh_in_chunks_stores_the_same_figures(
    evening: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The maintenance refresh goes subject by subject in chunks (so a big fleet does not
    # hold the event loop); one subject per chunk must store what one statement stores.
    dsn = evening
    subjects = {SUBJECT: SHANGHAI, "s002": SHANGHAI, "s003": SHANGHAI}
    stored: list[list[tuple[Any, ...]]] = []
    for chunk in (1000, 1):
        monkeypatch.setattr(rollup, "REFRESH_CHUNK_SUBJECTS", chunk)
        async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("DELETE FROM subject_hourly")
            await conn.execute("DELETE FROM subject_daily")
            counts = await rollup.refresh(conn, subjects, utc(1), utc(5), NOW)
            cur = await conn.execute(
                "SELECT subject_id, bucket, pings, largest_gap_s, away_in_curfew_s,"
                " in_exclusion_s FROM subject_hourly ORDER BY subject_id, bucket"
            )
            hourly = await cur.fetchall()
            cur = await conn.execute(
                "SELECT subject_id, day, pings, largest_gap_s FROM subject_daily"
                " ORDER BY subject_id, day"
            )
            stored.append([counts, *hourly, *await cur.fetchall()])
    assert stored[0] == stored[1]
    assert stored[0][0] == (3 * 4, 3)  # 3 subjects x 4 hours; one local day each
    assert (SUBJECT, utc(1), 3, 40 * 60, 40 * 60, 15 * 60) in stored[0]


async def test_compliance_report_reads_rollups_and_computes_what_is_missing(
    evening: str,
) -> None:
    dsn = evening
    loaded = load_config(REPO / "config", env={"EMON_DATABASE_URL": dsn})
    computed = await compliance(dsn, loaded, DAY, now=NOW)
    by_subject = {r["subject_id"]: r for r in computed}
    s1 = by_subject[SUBJECT]
    # Local day = 2026-11-19T16:00Z .. 2026-11-20T16:00Z.
    assert s1["from"] == "2026-11-19T16:00:00+00:00"
    assert s1["pings"] == 5
    # Last ping 03:30Z, day ends 16:00Z: 12 h 30 min without a ping.
    assert s1["largest_gap_min"] == 750.0
    # 01:20-02:15 (55 min) and 03:50-16:00 (730 min).
    assert s1["away_in_curfew_min"] == 785.0
    assert s1["in_exclusion_min"] == 15.0
    assert s1["source"] == "computed"
    assert s1["complete"]
    assert by_subject["s002"]["pings"] == 1
    assert by_subject["s003"]["pings"] == 0
    assert by_subject["s003"]["largest_gap_min"] == 24 * 60.0

    # Stored by the maintenance-side refresh, the same figures come from the rollup.
    async with await AsyncConnection.connect(dsn, autocommit=True) as conn:
        subjects = dict.fromkeys(("s001", "s002", "s003"), SHANGHAI)
        await rollup.store_daily(conn, rollup.daily_buckets(subjects, [DAY]), NOW)
    again = await compliance(dsn, loaded, DAY, now=NOW)
    assert [r["source"] for r in again] == ["rollup"] * 3
    strip = ("source",)
    assert [{k: v for k, v in r.items() if k not in strip} for r in again] == [
        {k: v for k, v in r.items() if k not in strip} for r in computed
    ]
    text = format_compliance(again)
    assert "s001" in text
    assert "785.0 min" in text

    # Alerts opened in each subject's local day.
    for subject, opened in (("s001", utc(15, 59)), ("s001", utc(16, 0)), ("s002", utc(2))):
        await execute(
            dsn,
            "INSERT INTO alerts (alert_id, subject_id, device_id, rule, tier, state, opened_at,"
            " updated_at, count, condition_active, trigger, last_evidence) VALUES"
            " (%s, %s, 'tag', 'curfew_away', 'high', 'open', %s, %s, 1, true, '{}', '{}')",
            [uuid.uuid4(), subject, opened, opened],
        )
    got = {r["subject_id"]: r["alerts_opened"] for r in await compliance(dsn, loaded, DAY, now=NOW)}
    # 16:00Z is already the next local day.
    assert got == {"s001": {"high": 1}, "s002": {"high": 1}, "s003": {}}


def walk() -> list[tuple[datetime, float, float]]:
    """Ten minutes at A (jitter under 10 m), a 1 km walk, seven minutes at B."""
    a, b = (22.5480, 114.0400), (22.5480, 114.0497)
    out = [(utc(10, m), a[0] + (m % 3) * 2e-5, a[1] + (m % 2) * 2e-5) for m in range(11)]
    out += [(utc(10, 11 + i), a[0], a[1] + (i + 1) * 0.0016) for i in range(5)]
    out += [(utc(10, 17 + m), b[0] + (m % 2) * 3e-5, b[1]) for m in range(8)]
    return out


async def test_track_is_geojson_with_its_stops(migrated: str) -> None:
    dsn = migrated
    await insert_pings(dsn, walk())
    await insert_pings(dsn, [(utc(9, 0), 22.5, 114.0)])  # before the range
    loaded = load_config(REPO / "config", env={"EMON_DATABASE_URL": dsn})
    result = await track_geojson(
        dsn, loaded, SUBJECT, "2026-11-20T18:00:00+08:00", "2026-11-20T19:00:00+08:00"
    )
    assert result["type"] == "FeatureCollection"
    track, *stops = result["features"]
    assert track["geometry"]["type"] == "LineString"
    assert len(track["geometry"]["coordinates"]) == len(walk())
    assert track["geometry"]["coordinates"][0] == [walk()[0][2], walk()[0][1]]  # lon, lat
    assert track["properties"]["times"][0] == utc(10).isoformat()
    assert [s["properties"]["kind"] for s in stops] == ["stop", "stop"]
    first, second = (s["properties"] for s in stops)
    assert (first["start"], first["end"], first["points"]) == (
        utc(10).isoformat(), utc(10, 10).isoformat(), 11
    )
    assert (second["start"], second["end"], second["points"]) == (
        utc(10, 17).isoformat(), utc(10, 24).isoformat(), 8
    )
    assert first["radius_m"] < 10
    assert result["emon"]["stop_parameters"]["radius_m"] == 50.0


async def test_emon_track_and_report_commands(migrated: str, tmp_path: Path) -> None:
    dsn = migrated
    await insert_pings(dsn, walk())
    env = dict(os.environ, EMON_DATABASE_URL=dsn)

    def emon(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", "--log-level", "WARNING", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    track = emon("track", SUBJECT, "--from", "2026-11-20", "--to", "2026-11-21")
    assert track.returncode == 0, track.stderr
    collection = json.loads(track.stdout)
    assert sum(f["properties"]["kind"] == "stop" for f in collection["features"]) == 2
    report = emon("report", "compliance", "--day", "2026-11-20", "--json")
    assert report.returncode == 0, report.stderr
    lines = [json.loads(line) for line in report.stdout.splitlines()]
    assert [r["subject_id"] for r in lines] == ["s001", "s002", "s003"]
    assert lines[0]["pings"] == len(walk())
    bad = emon("track", SUBJECT, "--from", "2026-11-20T10:00:00", "--to", "2026-11-21")
    assert bad.returncode == 2
    assert "without a UTC offset" in bad.stderr


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=600),  # minutes
            st.floats(min_value=-0.002, max_value=0.002),
            st.floats(min_value=-0.002, max_value=0.002),
        ),
        min_size=0,
        max_size=60,
    )
)
def test_stops_are_ordered_disjoint_and_compact(raw: list[tuple[int, float, float]]) -> None:
    points = [
        TrackPoint("d", utc(0) + timedelta(minutes=m), 22.5 + dy, 114.0 + dx, 5.0, "gnss")
        for m, dy, dx in {m: (m, dy, dx) for m, dy, dx in raw}.values()
    ]
    stops = detect_stops(points)
    for stop in stops:
        assert stop.end - stop.start >= timedelta(minutes=5)
        # Every fix joined within 50 m of the centre of its time; the centre drifts, so
        # the final bound is loose but finite.
        assert stop.radius_m <= 100.0
    for a, b in itertools.pairwise(stops):
        assert a.end < b.start


def test_vague_fixes_do_not_make_stops() -> None:
    points = [
        TrackPoint("d", utc(0, m), 22.5, 114.0, 800.0, "cell") for m in range(30)
    ]
    assert detect_stops(points) == []
    assert distance_m(22.5, 114.0, 22.5, 114.0) == 0.0


# ------------------------------------------------------------------------- maintenance


async def test_maintenance_prepares_days_and_applies_retention(migrated: str) -> None:
    dsn = migrated
    today = date(2026, 11, 20)
    now = datetime(2026, 11, 20, 12, tzinfo=UTC)
    plain = await prepare_days(dsn, today - timedelta(days=200), today - timedelta(days=178))
    old = datetime.combine(today - timedelta(days=181), datetime.min.time(), tzinfo=UTC)
    kept = datetime.combine(today - timedelta(days=179), datetime.min.time(), tzinfo=UTC)
    await insert_pings(dsn, [(old, 22.5, 114.0), (kept, 22.5, 114.0)])
    resolved = [("resolved", now - timedelta(days=731)), ("resolved", now - timedelta(days=1)),
                ("open", None)]  # fmt: skip
    for state, resolved_at in resolved:
        alert_id = uuid.uuid4()
        await execute(
            dsn,
            "INSERT INTO alerts (alert_id, subject_id, device_id, rule, tier, state, opened_at,"
            " updated_at, count, condition_active, trigger, last_evidence, resolved_at) VALUES"
            " (%s, 's001', 'tag', 'curfew_away', 'high', %s, %s, %s, 1, false, '{}', '{}', %s)",
            [alert_id, state, now - timedelta(days=900), now, resolved_at],
        )
        await execute(
            dsn,
            "INSERT INTO alert_history (alert_id, at, kind, payload)"
            " VALUES (%s, %s, 'opened', '{}')",
            [alert_id, now - timedelta(days=900)],
        )
    loaded = load_config(REPO / "config", env={"EMON_DATABASE_URL": dsn})
    async with open_pool(dsn, min_size=1, max_size=2) as pool:
        report = await maintain(pool, loaded.settings, loaded.core, timescale=not plain, now=now)
    assert report.failed_steps == []
    assert report.alerts_deleted == 1
    # A second run while another process holds the maintenance lock skips.
    async with await AsyncConnection.connect(dsn, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", [MAINTENANCE_LOCK_KEY])
        async with open_pool(dsn, min_size=1, max_size=1) as pool:
            skipped = await run_maintenance(
                pool, timescale=not plain, store=StoreSettings(), retention=RetentionSettings(),
                subjects={}, now=now,
            )  # fmt: skip
        assert skipped.skipped
    assert await scalar(dsn, "SELECT count(*) FROM alerts") == 2
    assert await scalar(dsn, "SELECT count(*) FROM alert_history") == 2
    if not plain:
        return
    # 180 days of pings: the day 181 days ago is gone, 179 days ago is kept.
    assert await scalar(dsn, "SELECT count(*) FROM pings") == 1
    assert f"pings_p{(today - timedelta(days=181)):%Y%m%d}" in report.partitions_dropped
    assert f"pings_p{(today - timedelta(days=180)):%Y%m%d}" not in report.partitions_dropped
    names = {
        r[0]
        for r in await rows(
            dsn,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'zone_transitions'::regclass",
        )
    }
    # Yesterday through a week ahead exist for every table.
    for offset in range(-1, 8):
        assert f"zone_transitions_p{(today + timedelta(days=offset)):%Y%m%d}" in names


def test_retention_settings_refuse_dropping_before_compressing() -> None:
    with pytest.raises(ValueError, match="compress_after_days"):
        RetentionSettings(pings_days=7, compress_after_days=7)
    with pytest.raises(ValueError, match="segment_bytes"):
        StoreSettings.model_validate({"journal": {"max_bytes": 2**20, "segment_bytes": 2**21}})


@pytest.mark.timescale
async def test_timescale_policies_and_continuous_aggregates(pg_dsn: str) -> None:
    async with await AsyncConnection.connect(pg_dsn) as conn:
        from daemon.store.schema import timescale_available

        if not await timescale_available(conn):
            pytest.skip("TimescaleDB is not installed on this PostgreSQL server")
    info = await migrate(pg_dsn)
    assert info.timescale
    loaded = load_config(REPO / "config", env={"EMON_DATABASE_URL": pg_dsn})
    async with open_pool(pg_dsn, min_size=1, max_size=2) as pool:
        report = await maintain(
            pool, loaded.settings, loaded.core, timescale=True, now=NOW, set_policies=True
        )
    assert report.failed_steps == []
    jobs = await rows(
        pg_dsn,
        "SELECT hypertable_name, proc_name, config->>'drop_after', config->>'compress_after'"
        " FROM timescaledb_information.jobs WHERE hypertable_name IS NOT NULL"
        " ORDER BY 1, 2",
    )
    by_table = {(t, p): (d, c) for t, p, d, c in jobs}
    assert by_table[("pings", "policy_retention")][0] == "180 days"
    assert by_table[("pings", "policy_compression")][1] == "7 days"
    assert ("zone_transitions", "policy_retention") in by_table
    await insert_pings(pg_dsn, [(utc(1, 5), 22.5, 114.0), (utc(1, 10), 22.5, 114.0)])
    await execute(
        pg_dsn, "CALL refresh_continuous_aggregate('pings_per_subject_hourly', NULL, NULL)"
    )
    assert await rows(pg_dsn, "SELECT subject_id, bucket, pings FROM pings_per_subject_hourly") == [
        (SUBJECT, utc(1), 2)
    ]
