"""Per-subject hourly and daily figures: pings, largest gap, time away from home during
curfew, time in exclusion zones.

One SQL query computes them for any set of buckets (subject, start, end), on both
layouts: the maintenance job stores them in `subject_hourly` (UTC hours) and
`subject_daily` (the subject's local days), and `emon report compliance` reads those
tables, computing a bucket with the same query when it is missing (plain SQL fallback).

Definitions (docs/storage.md repeats them):

* pings: location pings of the subject (all its devices) with ts in the bucket.
* largest gap: the longest interval in [bucket start, min(bucket end, now)) without a
  ping; a bucket with no ping at all has the whole elapsed bucket as its gap; NULL for a
  bucket that has not begun. A three-hour silence is 60 min in each hourly bucket and
  180 min in the daily one.
* away in curfew: time during which the core's `curfew_away` rule was violated (from
  `violated` to the next transition of that rule, or now), clipped to the bucket. It is
  what the rule decided, with its dwell and accuracy discipline, not a raw ping count.
* in exclusion: time confirmed inside an exclusion zone of the subject (presence
  transitions of role `exclusion`), clipped to the bucket; two zones (or two devices) at
  once count twice.

State at the start of a window is taken from transitions up to STATE_LOOKBACK before it;
a state older than that (a subject inside an exclusion zone for more than two days with
no transition) is not seen. A daemon restart forgets the rules' state (issue 10), so a
violation open at a restart ends at the next transition of that rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from psycopg import AsyncConnection
from psycopg.rows import dict_row

HOUR: Final = timedelta(hours=1)
DAY: Final = timedelta(days=1)
STATE_LOOKBACK: Final = timedelta(days=2)
# Subjects per rollup statement (see `refresh`): small enough that building one statement's
# buckets and arrays holds the event loop ~15 ms, large enough that a 50,000-subject
# refresh is 200 statements. The arrays go in binary (`%(name)b`): psycopg's text array
# dumper escapes every element with a regular expression, ~0.2 s of CPU per 1,000-subject
# statement (7,000 hourly buckets), binary ~0.03 s (measured on the shared 2-core machine);
# building the buckets is another ~0.03 s per 1,000 subjects.
REFRESH_CHUNK_SUBJECTS: Final = 250
CURFEW_RULE: Final = "curfew_away"

_FIGURES: Final = """
WITH b AS (
    SELECT * FROM unnest(%(subjects)b::text[], %(starts)b::timestamptz[],
                         %(ends)b::timestamptz[], %(days)b::date[], %(zones)b::text[])
        AS b(subject_id, b0, b1, day, timezone)
),
w AS (SELECT min(b0) AS w0, max(b1) AS w1 FROM b),
p AS (
    SELECT b.subject_id, b.b0, p.ts
      FROM b
      JOIN pings p ON p.subject_id = b.subject_id AND p.ts >= b.b0 AND p.ts < b.b1
     WHERE p.ts >= (SELECT w0 FROM w) AND p.ts < (SELECT w1 FROM w)
       AND p.subject_id = ANY(%(subject_set)b::text[])
),
counts AS (SELECT subject_id, b0, count(*) AS pings FROM p GROUP BY subject_id, b0),
points AS (
    SELECT subject_id, b0, ts AS x FROM p
    UNION ALL SELECT subject_id, b0, b0 FROM b WHERE b0 < %(now)s
    UNION ALL SELECT subject_id, b0, least(b1, %(now)s) FROM b WHERE b0 < %(now)s
),
gaps AS (
    SELECT subject_id, b0, max(gap) AS largest_gap_s
      FROM (SELECT subject_id, b0,
                   extract(epoch FROM lead(x) OVER (PARTITION BY subject_id, b0 ORDER BY x) - x)
                       AS gap
              FROM points) g
     GROUP BY subject_id, b0
),
zt AS (
    SELECT subject_id, kind, state, ts,
           lead(ts) OVER (PARTITION BY device_id, zone_id, kind ORDER BY ts) AS next_ts
      FROM zone_transitions
     WHERE subject_id = ANY(%(subject_set)b::text[])
       AND ts < (SELECT w1 FROM w)
       AND ts >= (SELECT w0 FROM w) - %(state_lookback)s::interval
       AND (kind = %(curfew_rule)s OR (kind = 'presence' AND role = 'exclusion'))
),
iv AS (
    SELECT subject_id, kind, ts AS a, coalesce(next_ts, %(now)s) AS z
      FROM zt
     WHERE (kind = %(curfew_rule)s AND state = 'violated')
        OR (kind = 'presence' AND state = 'inside')
),
dur AS (
    SELECT b.subject_id, b.b0,
           sum(extract(epoch FROM least(iv.z, b.b1, %(now)s) - greatest(iv.a, b.b0)))
               FILTER (WHERE iv.kind = %(curfew_rule)s) AS away_s,
           sum(extract(epoch FROM least(iv.z, b.b1, %(now)s) - greatest(iv.a, b.b0)))
               FILTER (WHERE iv.kind = 'presence') AS excl_s
      FROM b
      JOIN iv ON iv.subject_id = b.subject_id
             AND iv.a < least(b.b1, %(now)s) AND iv.z > b.b0
     GROUP BY b.subject_id, b.b0
)
SELECT b.subject_id, b.b0 AS bucket, b.b1 AS bucket_end, b.day, b.timezone,
       coalesce(c.pings, 0)::integer AS pings,
       g.largest_gap_s::double precision AS largest_gap_s,
       coalesce(d.away_s, 0)::double precision AS away_in_curfew_s,
       coalesce(d.excl_s, 0)::double precision AS in_exclusion_s
  FROM b
  LEFT JOIN counts c ON c.subject_id = b.subject_id AND c.b0 = b.b0
  LEFT JOIN gaps g ON g.subject_id = b.subject_id AND g.b0 = b.b0
  LEFT JOIN dur d ON d.subject_id = b.subject_id AND d.b0 = b.b0
 ORDER BY b.subject_id, b.b0
"""

_UPSERT_HOURLY: Final = (
    "INSERT INTO subject_hourly (subject_id, bucket, pings, largest_gap_s, away_in_curfew_s,"
    " in_exclusion_s, computed_at)"
    " SELECT subject_id, bucket, pings, largest_gap_s, away_in_curfew_s, in_exclusion_s, now()"
    " FROM (" + _FIGURES + ") f"
    " ON CONFLICT (subject_id, bucket) DO UPDATE SET pings = EXCLUDED.pings,"
    " largest_gap_s = EXCLUDED.largest_gap_s, away_in_curfew_s = EXCLUDED.away_in_curfew_s,"
    " in_exclusion_s = EXCLUDED.in_exclusion_s, computed_at = EXCLUDED.computed_at"
)
_UPSERT_DAILY: Final = (
    "INSERT INTO subject_daily (subject_id, day, timezone, day_start, day_end, pings,"
    " largest_gap_s, away_in_curfew_s, in_exclusion_s, computed_at)"
    " SELECT subject_id, day, timezone, bucket, bucket_end, pings, largest_gap_s,"
    " away_in_curfew_s, in_exclusion_s, now()"
    " FROM (" + _FIGURES + ") f"
    " ON CONFLICT (subject_id, day) DO UPDATE SET timezone = EXCLUDED.timezone,"
    " day_start = EXCLUDED.day_start, day_end = EXCLUDED.day_end, pings = EXCLUDED.pings,"
    " largest_gap_s = EXCLUDED.largest_gap_s, away_in_curfew_s = EXCLUDED.away_in_curfew_s,"
    " in_exclusion_s = EXCLUDED.in_exclusion_s, computed_at = EXCLUDED.computed_at"
)
_SELECT_DAILY: Final = (
    "SELECT subject_id, day, timezone, day_start AS bucket, day_end AS bucket_end, pings,"
    " largest_gap_s, away_in_curfew_s, in_exclusion_s, computed_at"
    " FROM subject_daily WHERE day = %s AND subject_id = ANY(%s::text[])"
)
_SELECT_HOURLY: Final = (
    "SELECT subject_id, bucket, pings, largest_gap_s, away_in_curfew_s, in_exclusion_s,"
    " computed_at FROM subject_hourly"
    " WHERE subject_id = ANY(%s::text[]) AND bucket >= %s AND bucket < %s"
    " ORDER BY subject_id, bucket"
)


@dataclass(frozen=True, slots=True)
class Bucket:
    subject_id: str
    start: datetime
    end: datetime
    day: date | None = None
    timezone: str | None = None


def floor_hour(at: datetime) -> datetime:
    at = at.astimezone(UTC)
    return at.replace(minute=0, second=0, microsecond=0)


def hourly_buckets(subject_ids: Iterable[str], start: datetime, end: datetime) -> list[Bucket]:
    """UTC hour buckets covering [start, end) for each subject."""
    hours: list[datetime] = []
    at = floor_hour(start)
    while at < end:
        hours.append(at)
        at += HOUR
    return [Bucket(s, h, h + HOUR) for s in sorted(subject_ids) for h in hours]


def local_day_bounds(day: date, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day, in UTC (23 or 25 hours on DST days)."""
    start = datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)
    end = datetime.combine(day + DAY, time(0), tzinfo=zone).astimezone(UTC)
    return start, end


def daily_buckets(subjects: Mapping[str, ZoneInfo], days: Iterable[date]) -> list[Bucket]:
    out: list[Bucket] = []
    for subject_id in sorted(subjects):
        zone = subjects[subject_id]
        for day in sorted(set(days)):
            start, end = local_day_bounds(day, zone)
            out.append(Bucket(subject_id, start, end, day, zone.key))
    return out


def local_days_overlapping(zone: ZoneInfo, start: datetime, end: datetime) -> list[date]:
    """Local days of `zone` that overlap [start, end)."""
    first = start.astimezone(zone).date()
    last = (end - timedelta(microseconds=1)).astimezone(zone).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _params(buckets: Sequence[Bucket], now: datetime) -> dict[str, Any]:
    return {
        "subjects": [b.subject_id for b in buckets],
        "starts": [b.start for b in buckets],
        "ends": [b.end for b in buckets],
        "days": [b.day for b in buckets],
        "zones": [b.timezone for b in buckets],
        "subject_set": sorted({b.subject_id for b in buckets}),
        "now": now,
        "state_lookback": STATE_LOOKBACK,
        "curfew_rule": CURFEW_RULE,
    }


async def compute(
    conn: AsyncConnection[Any], buckets: Sequence[Bucket], now: datetime
) -> list[dict[str, Any]]:
    """Figures for the buckets, computed from the raw tables (nothing stored)."""
    if not buckets:
        return []
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_FIGURES, _params(buckets, now))
        return await cur.fetchall()


async def store_hourly(conn: AsyncConnection[Any], buckets: Sequence[Bucket], now: datetime) -> int:
    if not buckets:
        return 0
    cur = await conn.execute(_UPSERT_HOURLY, _params(buckets, now))
    return max(cur.rowcount, 0)


async def store_daily(conn: AsyncConnection[Any], buckets: Sequence[Bucket], now: datetime) -> int:
    if not buckets:
        return 0
    if any(b.day is None or b.timezone is None for b in buckets):
        raise ValueError("daily buckets need a day and a time zone")
    cur = await conn.execute(_UPSERT_DAILY, _params(buckets, now))
    return max(cur.rowcount, 0)


async def refresh(
    conn: AsyncConnection[Any],
    subjects: Mapping[str, ZoneInfo],
    start: datetime,
    end: datetime,
    now: datetime,
) -> tuple[int, int]:
    """Recompute the hourly buckets of [start, end) and the local days overlapping it.

    In chunks of REFRESH_CHUNK_SUBJECTS subjects: psycopg builds the bucket arrays in Python
    on the event loop, and for 50,000 subjects in one statement that held the loop (and so
    ingest and alerting) for seconds every hour (docs/benchmarks.md). Buckets are
    independent, so the figures are the same."""
    stored_hourly = stored_daily = 0
    subject_ids = sorted(subjects)
    for first in range(0, len(subject_ids), REFRESH_CHUNK_SUBJECTS):
        chunk = {s: subjects[s] for s in subject_ids[first:first + REFRESH_CHUNK_SUBJECTS]}
        hourly = hourly_buckets(chunk, start, end)
        daily: list[Bucket] = []
        for subject_id, zone in chunk.items():
            daily += daily_buckets({subject_id: zone}, local_days_overlapping(zone, start, end))
        stored_hourly += await store_hourly(conn, hourly, now)
        stored_daily += await store_daily(conn, daily, now)
    return stored_hourly, stored_daily


async def read_daily(
    conn: AsyncConnection[Any], day: date, subject_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT_DAILY, [day, list(subject_ids)])
        return {row["subject_id"]: row for row in await cur.fetchall()}


async def read_hourly(
    conn: AsyncConnection[Any], subject_ids: Sequence[str], start: datetime, end: datetime
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_SELECT_HOURLY, [list(subject_ids), start, end])
        return await cur.fetchall()
