"""`emon track`, `emon report compliance` and `emon db maintain`: read queries for officers
and operators, and store maintenance on demand.

A track is read in the same transaction as its `track.read` row in the audit log (who:
`--as` officer or the OS account, from where: `cli:<user>@<host>`; daemon.access_cli), so
no location leaves the database unrecorded. Reads are also logged at INFO with the subject
id and the time range, never with coordinates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

import psycopg
from psycopg import AsyncConnection

from daemon.access import in_caseload
from daemon.access_cli import CliAccessError, CliCaller, add_as_argument, cli_caller
from daemon.configfiles import ConfigError, LoadedConfig, load_config
from daemon.store import rollup
from daemon.store.access_repo import insert_audit
from daemon.store.errors import StoreError
from daemon.track import (
    STOP_MAX_ACCURACY_M,
    STOP_MIN_DURATION,
    STOP_RADIUS_M,
    TrackPoint,
    feature_collection,
)

_LOGGER = logging.getLogger(__name__)

DEFAULT_CONFIG_DIR: Final = Path("config")
# A track longer than this is refused (a year of one fix a minute is ~525,000): ask for a
# shorter range rather than exhaust memory.
MAX_TRACK_POINTS: Final = 1_000_000
CONNECT_TIMEOUT_SECONDS: Final = 10

_TRACK_QUERY: Final = (
    "SELECT device_id, ts, lat, lon, acc_m, src FROM pings"
    " WHERE subject_id = %s AND device_id = ANY(%s::text[]) AND ts >= %s AND ts < %s"
    " ORDER BY device_id, ts LIMIT %s"
)
_ALERTS_PER_DAY: Final = (
    "SELECT b.subject_id, a.tier, count(*)"
    " FROM unnest(%s::text[], %s::timestamptz[], %s::timestamptz[]) AS b(subject_id, b0, b1)"
    " JOIN alerts a ON a.subject_id = b.subject_id AND a.opened_at >= b.b0 AND a.opened_at < b.b1"
    " GROUP BY b.subject_id, a.tier"
)


class ReportError(Exception):
    """A query the user asked for cannot be answered (bad argument, no database)."""


def _load(directory: Path) -> LoadedConfig:
    try:
        return load_config(directory)
    except ConfigError as exc:
        raise ReportError(f"config {directory} invalid: {len(exc.problems)} problem(s)") from exc


def _dsn(loaded: LoadedConfig) -> str:
    dsn = loaded.settings.database.dsn
    if not dsn:
        raise ReportError("no database: set EMON_DATABASE_URL or database.dsn")
    return dsn


def parse_time(value: str, zone: ZoneInfo) -> datetime:
    """RFC 3339 with an offset, or a date (midnight of that day in the subject's zone)."""
    if len(value) == len("2026-11-20"):
        try:
            day = date.fromisoformat(value)
        except ValueError:
            raise ReportError(f"not a date: {value!r}") from None
        return rollup.local_day_bounds(day, zone)[0]
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ReportError(f"not an RFC 3339 time: {value!r}") from None
    if at.tzinfo is None:
        raise ReportError(f"time without a UTC offset: {value!r}")
    return at.astimezone(UTC)


# ------------------------------------------------------------------------- track


async def fetch_track(
    conn: AsyncConnection[Any],
    subject_id: str,
    device_ids: Sequence[str],
    start: datetime,
    end: datetime,
) -> list[TrackPoint]:
    cur = await conn.execute(
        _TRACK_QUERY, [subject_id, list(device_ids), start, end, MAX_TRACK_POINTS + 1]
    )
    rows = await cur.fetchall()
    if len(rows) > MAX_TRACK_POINTS:
        raise ReportError(f"more than {MAX_TRACK_POINTS} points: ask for a shorter range")
    return [
        TrackPoint(str(d), ts, float(lat), float(lon), float(acc), str(src))
        for d, ts, lat, lon, acc, src in rows
    ]


async def track_geojson(
    dsn: str,
    loaded: LoadedConfig,
    subject_id: str,
    start_text: str,
    end_text: str,
    *,
    devices: Sequence[str] = (),
    radius_m: float = STOP_RADIUS_M,
    min_duration: timedelta = STOP_MIN_DURATION,
    max_accuracy_m: float = STOP_MAX_ACCURACY_M,
    as_officer: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    subject = loaded.core.subjects.get(subject_id)
    try:
        caller = cli_caller(as_officer, loaded)
    except CliAccessError as exc:
        raise ReportError(str(exc)) from exc
    if as_officer is not None:
        directory = loaded.core.alerting.directory
        owner = subject.officer_id if subject is not None else None
        if not in_caseload(directory, directory.officers[as_officer], owner):
            # Like the API's 404: the CLI does not say whether the subject exists.
            raise ReportError(f"no subject {subject_id} in {as_officer}'s caseload")
    if subject is None and not devices:
        raise ReportError(f"unknown subject {subject_id!r} (give --device to read anyway)")
    zone = subject.timezone if subject is not None else ZoneInfo("UTC")
    start, end = parse_time(start_text, zone), parse_time(end_text, zone)
    if end <= start:
        raise ReportError("--to must be after --from")
    device_ids = list(devices)
    if not device_ids and subject is not None:
        device_ids = [d.device_id for d in subject.devices]
    try:
        async with await AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as conn, conn.transaction():
            points = await fetch_track(conn, subject_id, device_ids, start, end)
            await insert_audit(conn, caller.actor, "track.read", subject_id, caller.source, {
                "from": start.isoformat(), "to": end.isoformat(), "points": len(points),
                "devices": device_ids, "reason": reason,
            })
    except psycopg.Error as exc:
        raise ReportError(f"track query failed: {exc}") from exc
    _LOGGER.info(
        "track of subject %s read: %s to %s, %s points", subject_id, start, end, len(points)
    )
    return feature_collection(
        subject_id,
        start,
        end,
        points,
        radius_m=radius_m,
        min_duration=min_duration,
        max_accuracy_m=max_accuracy_m,
    )


# ------------------------------------------------------------------------- compliance


async def compliance(
    dsn: str,
    loaded: LoadedConfig,
    day: date,
    *,
    refresh: bool = False,
    now: datetime | None = None,
    caller: CliCaller | None = None,
) -> list[dict[str, Any]]:
    """Per-subject figures of one local day: stored rollups, computed where missing.

    `refresh` recomputes every subject from the raw tables and stores the result.
    """
    now = now or datetime.now(UTC)
    subjects = {s.subject_id: s for s in loaded.core.subjects.values()}
    zones = {sid: s.timezone for sid, s in subjects.items()}
    ids = sorted(subjects)
    try:
        async with await AsyncConnection.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        ) as conn:
            stored = {} if refresh else await rollup.read_daily(conn, day, ids)
            missing = {sid: zones[sid] for sid in ids if sid not in stored}
            buckets = rollup.daily_buckets(missing, [day])
            computed = {r["subject_id"]: r for r in await rollup.compute(conn, buckets, now)}
            if refresh:
                await rollup.store_daily(conn, buckets, now)
            every = rollup.daily_buckets(zones, [day])
            cur = await conn.execute(
                _ALERTS_PER_DAY,
                [[b.subject_id for b in every], [b.start for b in every], [b.end for b in every]],
            )
            alerts: dict[str, Counter[str]] = {}
            for subject_id, tier, count in await cur.fetchall():
                alerts.setdefault(subject_id, Counter())[tier] = int(count)
            if caller is not None:
                # Per-subject figures (curfew away, time in exclusion zones), no positions;
                # still about people, so on record like any read.
                await insert_audit(conn, caller.actor, "report.compliance", day.isoformat(),
                                   caller.source, {"subjects": len(ids), "refresh": refresh})
    except psycopg.Error as exc:
        raise ReportError(f"compliance query failed: {exc}") from exc
    out: list[dict[str, Any]] = []
    for sid in ids:
        row = stored.get(sid) or computed.get(sid)
        if row is None:
            continue
        bucket_end: datetime = row["bucket_end"]
        out.append(
            {
                "subject_id": sid,
                "officer_id": subjects[sid].officer_id,
                "day": day.isoformat(),
                "timezone": zones[sid].key,
                "from": row["bucket"].isoformat(),
                "to": bucket_end.isoformat(),
                "complete": bucket_end <= (row.get("computed_at") or now),
                "source": "rollup" if sid in stored else "computed",
                "pings": row["pings"],
                "largest_gap_min": _minutes(row["largest_gap_s"]),
                "away_in_curfew_min": _minutes(row["away_in_curfew_s"]),
                "in_exclusion_min": _minutes(row["in_exclusion_s"]),
                "alerts_opened": dict(sorted(alerts.get(sid, Counter()).items())),
            }
        )
    _LOGGER.info("compliance report read for %s (%s subjects)", day, len(out))
    return out


def _minutes(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 60.0, 1)


def format_compliance(rows: Sequence[Mapping[str, Any]]) -> str:
    header = (
        f"{'subject':<12} {'officer':<12} {'pings':>6} {'gap max':>8} {'curfew away':>11} "
        f"{'exclusion':>9} {'alerts':<24} source"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        gap = "-" if r["largest_gap_min"] is None else f"{r['largest_gap_min']:.0f} min"
        alerts = ", ".join(f"{n} {tier}" for tier, n in r["alerts_opened"].items()) or "none"
        source = r["source"] + ("" if r["complete"] else " (day not over)")
        lines.append(
            f"{r['subject_id']:<12} {(r['officer_id'] or '-'):<12} {r['pings']:>6} {gap:>8} "
            f"{r['away_in_curfew_min']:>7.1f} min {r['in_exclusion_min']:>5.1f} min "
            f"{alerts:<24} {source}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------- commands


def _cmd_track(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.config)
        result = asyncio.run(
            track_geojson(
                _dsn(loaded),
                loaded,
                args.subject,
                args.start,
                args.end,
                devices=args.device or (),
                radius_m=args.stop_radius_m,
                min_duration=timedelta(minutes=args.stop_minutes),
                max_accuracy_m=args.stop_max_accuracy_m,
                as_officer=args.as_officer,
                reason=args.reason,
            )
        )
    except ReportError as exc:
        print(f"emon track: {exc}", file=sys.stderr)
        return 2
    json.dump(result, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


def _cmd_compliance(args: argparse.Namespace) -> int:
    try:
        loaded = _load(args.config)
        try:
            day = date.fromisoformat(args.day)
        except ValueError:
            raise ReportError(f"not a date: {args.day!r}") from None
        try:
            caller = cli_caller(args.as_officer, loaded)
        except CliAccessError as exc:
            raise ReportError(str(exc)) from exc
        rows = asyncio.run(
            compliance(_dsn(loaded), loaded, day, refresh=args.refresh, caller=caller)
        )
    except ReportError as exc:
        print(f"emon report compliance: {exc}", file=sys.stderr)
        return 2
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    else:
        print(f"compliance {args.day} (subjects' local day)")
        print(format_compliance(rows))
    return 0


def _cmd_maintain(args: argparse.Namespace) -> int:
    from daemon.storage import maintain
    from daemon.store.migrations import migrate
    from daemon.store.pool import open_pool

    async def run() -> None:
        loaded = _load(args.config)
        dsn = _dsn(loaded)
        info = await migrate(dsn)
        async with open_pool(dsn, min_size=1, max_size=1, name="emon-maintain") as pool:
            report = await maintain(
                pool, loaded.settings, loaded.core, timescale=info.timescale,
                now=datetime.now(UTC), set_policies=True,
            )
        print(
            f"{'TimescaleDB' if info.timescale else 'plain PostgreSQL'}: "
            f"{report.partitions_created} partitions created, "
            f"{len(report.partitions_dropped)} dropped, {report.alerts_deleted} resolved alerts "
            f"deleted, other rows deleted: "
            f"{', '.join(f'{t} {n}' for t, n in sorted(report.rows_deleted.items())) or 'none'}, "
            f"{report.rollup_rows} rollup rows; failed steps: "
            f"{', '.join(report.failed_steps) or 'none'}"
        )
        if report.failed_steps:
            raise ReportError("some maintenance steps failed")

    try:
        asyncio.run(run())
    except (ReportError, StoreError) as exc:
        print(f"emon db maintain: {exc}", file=sys.stderr)
        return 1
    return 0


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    db_sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    track = sub.add_parser(
        "track", help="a subject's track and stops as GeoJSON (FeatureCollection on stdout)"
    )
    track.add_argument("subject", help="subject id")
    track.add_argument("--from", dest="start", required=True,
                       help="RFC 3339 time with offset, or a date (local midnight)")
    track.add_argument("--to", dest="end", required=True, help="end (exclusive), same forms")
    track.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    track.add_argument("--device", action="append",
                       help="device id (repeatable); default: the subject's devices")
    track.add_argument("--stop-radius-m", type=float, default=STOP_RADIUS_M)
    track.add_argument("--stop-minutes", type=float,
                       default=STOP_MIN_DURATION.total_seconds() / 60)
    track.add_argument("--stop-max-accuracy-m", type=float, default=STOP_MAX_ACCURACY_M)
    add_as_argument(track, "read it (the subject must be in their caseload)")
    track.add_argument("--reason", default=None,
                       help="why you read it (kept in the audit log: the data is for "
                       "community corrections only)")
    track.set_defaults(func=_cmd_track)

    report = sub.add_parser("report", help="reports from the store")
    report_sub = report.add_subparsers(dest="report_command", required=True)
    comp = report_sub.add_parser("compliance", help="per-subject figures for one local day")
    comp.add_argument("--day", required=True, help="YYYY-MM-DD, the subjects' local day")
    comp.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    comp.add_argument("--json", action="store_true", help="one JSON object per subject")
    comp.add_argument("--refresh", action="store_true",
                      help="recompute from the raw tables and store the result")
    add_as_argument(comp, "read the report")
    comp.set_defaults(func=_cmd_compliance)

    maintain = db_sub.add_parser(
        "maintain", help="partitions ahead, retention, TimescaleDB policies, rollups (once)"
    )
    maintain.add_argument("--config", type=Path, default=DEFAULT_CONFIG_DIR)
    maintain.set_defaults(func=_cmd_maintain)
