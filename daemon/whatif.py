"""`emon config diff OLD NEW --from T --to T`: what a config change would have changed.

The stored pings and device events of the period are read from PostgreSQL in arrival
order and replayed, through `daemon.replay`'s machinery (the same pure pipeline as the
live daemon, ticks on a virtual clock), once through each config. The alerts each would
have opened are then matched per subject, rule and zone:

    +  appears: only the new config opens it
    -  disappears: only the old config opens it
    ~  shifted: both open it, at a different time (within --match-minutes) or tier

Zone state needs history (a dwell, being inside before curfew starts), so replay starts
`--warmup-minutes` before `--from`; alerts opened during the warm-up are not reported.
Alerts that were already open before the warm-up are unknown to the replay, which is why
the counts can differ from what the live daemon raised; the *difference* between the two
configs is what this command is for.

Exit status, as `diff`: 0 no difference, 1 differences, 2 trouble (bad config, database).
Progress goes to stderr every few seconds on long periods.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from alerts.model import AlertTransition, RuleId, Tier, TransitionKind
from daemon.configfiles import ENV_DATABASE_URL, ConfigError, LoadedConfig, load_config
from daemon.replay import Replayer, ReplayMessage
from daemon.store._json import dumps as json_dumps
from daemon.wire import DEVICE_TOPIC_PREFIX

EXIT_SAME = 0
EXIT_DIFFERENT = 1
EXIT_TROUBLE = 2

DEFAULT_WARMUP_MINUTES = 60.0
DEFAULT_MATCH_MINUTES = 15.0
PROGRESS_INTERVAL_SECONDS = 2.0
# Rows fetched per round trip from the server-side cursor: memory stays flat for any period.
FETCH_ROWS = 5_000
CONNECT_TIMEOUT_SECONDS = 10

_OPENING_KINDS = frozenset({TransitionKind.OPENED, TransitionKind.REOPENED})

# Pings and events of the period, in the order the daemon received them. `ts` bounds the
# scan (the tables are indexed and chunked on ts); received_at orders it like live.
_SELECT_ROWS = """
SELECT 'location' AS channel, device_id, ts, received_at, lat, lon, acc_m, src, battery_pct,
       extra, NULL::text AS type, NULL::jsonb AS attributes
  FROM pings WHERE ts >= %(start)s AND ts < %(end)s
UNION ALL
SELECT 'event', device_id, ts, received_at, NULL, NULL, NULL, NULL, NULL,
       NULL, type, attributes
  FROM device_events WHERE ts >= %(start)s AND ts < %(end)s
ORDER BY received_at, ts, device_id, channel
"""


class WhatIfError(Exception):
    """The comparison cannot run (database unreachable, bad period)."""


class Change(StrEnum):
    APPEARS = "+"
    DISAPPEARS = "-"
    SHIFTED = "~"


@dataclass(frozen=True, slots=True)
class Opening:
    """One alert opening (or reopening) in one replay."""

    subject_id: str
    rule: RuleId
    zone_id: str | None
    tier: Tier
    at: datetime
    alert_id: str
    reason: str

    @classmethod
    def of(cls, transition: AlertTransition) -> Opening:
        alert = transition.alert
        return cls(alert.subject_id, alert.rule, alert.zone_id, alert.tier, transition.at,
                   alert.alert_id, alert.reason)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.subject_id, self.rule.value, self.zone_id or "")

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "tier": self.tier.value, "alert_id": self.alert_id,
                "reason": self.reason}


@dataclass(frozen=True, slots=True)
class AlertChange:
    change: Change
    subject_id: str
    rule: RuleId
    zone_id: str | None
    old: Opening | None
    new: Opening | None

    @property
    def at(self) -> datetime:
        opening = self.new or self.old
        assert opening is not None
        return opening.at

    def to_json(self) -> dict[str, Any]:
        return {
            "change": {"+": "appears", "-": "disappears", "~": "shifted"}[self.change.value],
            "subject_id": self.subject_id, "rule": self.rule.value, "zone_id": self.zone_id,
            "old": self.old.to_json() if self.old else None,
            "new": self.new.to_json() if self.new else None,
        }


@dataclass(slots=True)
class DiffResult:
    changes: list[AlertChange]
    old_alerts: list[Opening]
    new_alerts: list[Opening]
    unchanged: int
    pings: int = 0
    events: int = 0
    old_rejections: Counter[str] = field(default_factory=Counter)
    new_rejections: Counter[str] = field(default_factory=Counter)

    @property
    def old_openings(self) -> int:
        return len(self.old_alerts)

    @property
    def new_openings(self) -> int:
        return len(self.new_alerts)


class WhatIf:
    """Feeds the same messages to two replayers and keeps the alerts each opens.

    Pure like the pipeline it drives: messages and their arrival times in, no I/O."""

    def __init__(self, old: LoadedConfig, new: LoadedConfig, report_from: datetime) -> None:
        self._old = Replayer(old.core, old.settings.tick_interval_seconds)
        self._new = Replayer(new.core, new.settings.tick_interval_seconds)
        self._report_from = report_from
        self.old_openings: list[Opening] = []
        self.new_openings: list[Opening] = []
        self.messages = 0

    def _keep(self, transitions: Iterable[AlertTransition], into: list[Opening]) -> None:
        into.extend(
            Opening.of(t) for t in transitions
            if t.kind in _OPENING_KINDS and t.at >= self._report_from
        )

    def feed(self, message: ReplayMessage) -> None:
        self.messages += 1
        self._keep(self._old.feed(message), self.old_openings)
        self._keep(self._new.feed(message), self.new_openings)

    def finish(self, until: datetime) -> None:
        """Run the clocks to the end of the period (a curfew that starts after the last ping)."""
        self._keep(self._old.finish(until), self.old_openings)
        self._keep(self._new.finish(until), self.new_openings)

    def result(self, match_window: timedelta, until: datetime) -> DiffResult:
        in_period = [o for o in self.old_openings if o.at < until]
        new_in_period = [o for o in self.new_openings if o.at < until]
        changes, unchanged = match_openings(in_period, new_in_period, match_window)
        return DiffResult(
            changes, in_period, new_in_period, unchanged,
            old_rejections=Counter(self._old.stats.rejections),
            new_rejections=Counter(self._new.stats.rejections),
        )


def match_openings(
    old: Sequence[Opening], new: Sequence[Opening], window: timedelta
) -> tuple[list[AlertChange], int]:
    """Pair openings of the same (subject, rule, zone) nearest in time within `window`."""
    by_key_old: dict[tuple[str, str, str], list[Opening]] = defaultdict(list)
    by_key_new: dict[tuple[str, str, str], list[Opening]] = defaultdict(list)
    for opening in old:
        by_key_old[opening.key].append(opening)
    for opening in new:
        by_key_new[opening.key].append(opening)
    changes: list[AlertChange] = []
    unchanged = 0
    for key in sorted(by_key_old.keys() | by_key_new.keys()):
        olds = sorted(by_key_old.get(key, []), key=lambda o: o.at)
        news = sorted(by_key_new.get(key, []), key=lambda o: o.at)
        candidates = sorted(
            (abs(o.at - n.at), i, j)
            for i, o in enumerate(olds) for j, n in enumerate(news)
            if abs(o.at - n.at) <= window
        )
        paired_old: set[int] = set()
        paired_new: set[int] = set()
        for _, i, j in candidates:
            if i in paired_old or j in paired_new:
                continue
            paired_old.add(i)
            paired_new.add(j)
            o, n = olds[i], news[j]
            if o.at == n.at and o.tier is n.tier:
                unchanged += 1
            else:
                changes.append(AlertChange(Change.SHIFTED, o.subject_id, o.rule, o.zone_id, o, n))
        for i, o in enumerate(olds):
            if i not in paired_old:
                changes.append(AlertChange(Change.DISAPPEARS, o.subject_id, o.rule, o.zone_id,
                                           o, None))
        for j, n in enumerate(news):
            if j not in paired_new:
                changes.append(AlertChange(Change.APPEARS, n.subject_id, n.rule, n.zone_id,
                                           None, n))
    changes.sort(key=lambda c: (c.subject_id, c.rule.value, c.at))
    return changes, unchanged


# ---------------------------------------------------------------------- stored rows


def row_to_message(row: Sequence[Any]) -> ReplayMessage:
    """A stored ping or event as the wire message the daemon decoded it from."""
    channel, device_id, ts, received_at = row[0], row[1], row[2], row[3]
    payload: dict[str, Any]
    if channel == "location":
        lat, lon, acc_m, src, battery_pct, extra = row[4:10]
        payload = {**(extra or {}), "ts": ts.isoformat(), "lat": lat, "lon": lon,
                   "acc": acc_m, "src": src}
        if battery_pct is not None:
            payload["batt"] = battery_pct
    else:
        payload = {**(row[11] or {}), "ts": ts.isoformat(), "type": row[10]}
    return ReplayMessage(
        f"{DEVICE_TOPIC_PREFIX}{device_id}/{channel}", json_dumps(payload).encode(), received_at
    )


async def stored_messages(
    dsn: str, start: datetime, end: datetime, audit: tuple[str, str] | None = None
) -> AsyncIterator[ReplayMessage]:
    """The period's stored rows as messages, in arrival order, streamed (a named cursor).

    `audit` (actor, source): a `pings.read` row is committed to the audit log before the
    first row is read, so the replay of everyone's positions is on record even if it is
    interrupted (docs/access.md)."""
    import psycopg

    from daemon.store.access_repo import insert_audit

    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS, application_name="emon-config-diff"
        )
    except psycopg.Error as exc:
        raise WhatIfError(f"cannot connect to the database: {exc}") from exc
    async with conn:
        try:
            if audit is not None:
                await insert_audit(conn, audit[0], "pings.read", "*", audit[1], {
                    "purpose": "config diff", "from": start.isoformat(), "to": end.isoformat(),
                })
                await conn.commit()
            async with conn.cursor(name="emon_config_diff") as cursor:
                cursor.itersize = FETCH_ROWS
                await cursor.execute(_SELECT_ROWS, {"start": start, "end": end})
                async for row in cursor:
                    yield row_to_message(row)
        except psycopg.Error as exc:
            raise WhatIfError(f"reading stored pings failed: {exc}") from exc


async def compare(
    old: LoadedConfig,
    new: LoadedConfig,
    dsn: str,
    start: datetime,
    end: datetime,
    *,
    warmup: timedelta = timedelta(minutes=DEFAULT_WARMUP_MINUTES),
    match_window: timedelta = timedelta(minutes=DEFAULT_MATCH_MINUTES),
    progress: IO[str] | None = None,
    audit: tuple[str, str] | None = None,
) -> DiffResult:
    if end <= start:
        raise WhatIfError("--to must be after --from")
    whatif = WhatIf(old, new, start)
    replay_start = start - warmup
    pings = events = 0
    last_report = time.monotonic()
    async for message in stored_messages(dsn, replay_start, end, audit):
        whatif.feed(message)
        if message.topic.endswith("/location"):
            pings += 1
        else:
            events += 1
        if progress is not None and time.monotonic() - last_report >= PROGRESS_INTERVAL_SECONDS:
            last_report = time.monotonic()
            done = (message.received_at - replay_start) / (end - replay_start)
            progress.write(
                f"config diff: {pings + events:,} rows replayed, at "
                f"{message.received_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC "
                f"({min(max(done, 0.0), 1.0):.0%})\n"
            )
            progress.flush()
    whatif.finish(end)
    result = whatif.result(match_window, end)
    result.pings, result.events = pings, events
    if progress is not None:
        progress.write(f"config diff: done, {pings:,} pings and {events:,} events replayed\n")
    return result


# ---------------------------------------------------------------------- output


def _local(at: datetime, tz_of: dict[str, Any], subject_id: str) -> str:
    zone = tz_of.get(subject_id)
    local = at.astimezone(zone) if zone is not None else at.astimezone(UTC)
    return local.isoformat(sep=" ", timespec="seconds")


def format_text(
    result: DiffResult, old: LoadedConfig, new: LoadedConfig, start: datetime, end: datetime,
    warmup: timedelta,
) -> str:
    tz_of: dict[str, Any] = {s: spec.timezone for s, spec in old.core.subjects.items()}
    tz_of.update({s: spec.timezone for s, spec in new.core.subjects.items()})
    appear = sum(c.change is Change.APPEARS for c in result.changes)
    disappear = sum(c.change is Change.DISAPPEARS for c in result.changes)
    shifted = sum(c.change is Change.SHIFTED for c in result.changes)
    lines = [
        f"config diff: {old.directory} (version {old.core.version}) -> {new.directory} "
        f"(version {new.core.version})",
        f"period {start.isoformat()} .. {end.isoformat()} (warm-up {warmup.total_seconds() / 60:g}"
        f" min): {result.pings:,} pings and {result.events:,} events replayed",
        f"alerts opened: old {result.old_openings}, new {result.new_openings}; "
        f"{appear} appear (+), {disappear} disappear (-), {shifted} shifted (~), "
        f"{result.unchanged} unchanged",
    ]
    for label, rejections in (("old", result.old_rejections), ("new", result.new_rejections)):
        if rejections:
            counts = ", ".join(f"{reason} {n:,}" for reason, n in sorted(rejections.items()))
            lines.append(f"messages the {label} config refuses: {counts}")
    subject: str | None = None
    for change in result.changes:
        if change.subject_id != subject:
            subject = change.subject_id
            lines.append(f"subject {subject}")
        shown = change.new or change.old
        assert shown is not None
        when = _local(shown.at, tz_of, change.subject_id)
        tier = shown.tier.value
        if change.change is Change.SHIFTED and change.old is not None and change.new is not None:
            when = f"{_local(change.old.at, tz_of, change.subject_id)} -> {when}"
            if change.old.tier is not change.new.tier:
                tier = f"{change.old.tier.value}->{change.new.tier.value}"
        lines.append(
            f"  {change.change.value} {change.rule.value:<16} {when}  {tier:<8} "
            f"{change.zone_id or '-'}  {shown.reason}"
        )
    return "\n".join(lines) + "\n"


def format_json(result: DiffResult, old: LoadedConfig, new: LoadedConfig, start: datetime,
                end: datetime) -> str:
    body = {
        "old": {"directory": str(old.directory), "version": old.core.version,
                "alerts_opened": result.old_openings, "rejections": dict(result.old_rejections)},
        "new": {"directory": str(new.directory), "version": new.core.version,
                "alerts_opened": result.new_openings, "rejections": dict(result.new_rejections)},
        "from": start.isoformat(), "to": end.isoformat(),
        "pings": result.pings, "events": result.events, "unchanged": result.unchanged,
        "changes": [c.to_json() for c in result.changes],
    }
    return json.dumps(body, ensure_ascii=False, indent=2) + "\n"


# ---------------------------------------------------------------------- command line


def parse_instant(value: str) -> datetime:
    """An RFC 3339 instant with an offset (an instant without one would be ambiguous)."""
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {value!r}") from None
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{value!r} has no UTC offset: write e.g. 2026-11-20T00:00+08:00"
        )
    return at


def add_diff_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("old", type=Path, help="the config directory running now")
    parser.add_argument("new", type=Path, help="the config directory to try")
    parser.add_argument("--from", dest="start", type=parse_instant, required=True,
                        help="start of the period, RFC 3339 with offset")
    parser.add_argument("--to", dest="end", type=parse_instant, required=True,
                        help="end of the period (exclusive), RFC 3339 with offset")
    parser.add_argument("--warmup-minutes", type=float, default=DEFAULT_WARMUP_MINUTES,
                        help="history replayed before --from to settle zone state (not reported)")
    parser.add_argument("--match-minutes", type=float, default=DEFAULT_MATCH_MINUTES,
                        help="an alert opened this close in both is the same alert, shifted")
    parser.add_argument("--database-url", default=None,
                        help=f"default: ${ENV_DATABASE_URL}, else database.dsn of NEW")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    from daemon.access_cli import add_as_argument

    add_as_argument(parser, "replay everyone's stored pings")


def _load(directory: Path, label: str, err: IO[str]) -> LoadedConfig | None:
    try:
        return load_config(directory)
    except ConfigError as exc:
        for problem in exc.problems:
            err.write(f"{directory}/{problem}\n")
        err.write(f"{label} config {directory} is invalid: {len(exc.errors)} error(s)\n")
        return None


def run_diff(
    args: argparse.Namespace, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr
) -> int:
    old = _load(args.old, "old", err)
    new = _load(args.new, "new", err)
    if old is None or new is None:
        return EXIT_TROUBLE
    dsn = args.database_url or os.environ.get(ENV_DATABASE_URL) or new.settings.database.dsn
    if not dsn:
        err.write(f"no database: give --database-url or set {ENV_DATABASE_URL}\n")
        return EXIT_TROUBLE
    if args.warmup_minutes < 0 or args.match_minutes < 0:
        err.write("--warmup-minutes and --match-minutes must not be negative\n")
        return EXIT_TROUBLE
    warmup = timedelta(minutes=args.warmup_minutes)
    from daemon.access_cli import CliAccessError, cli_caller

    try:
        caller = cli_caller(getattr(args, "as_officer", None), new)
    except CliAccessError as exc:
        err.write(f"config diff: {exc}\n")
        return EXIT_TROUBLE
    try:
        result = asyncio.run(
            compare(
                old, new, dsn, args.start, args.end, warmup=warmup,
                match_window=timedelta(minutes=args.match_minutes),
                progress=None if args.quiet else err,
                audit=(caller.actor, caller.source),
            )
        )
    except WhatIfError as exc:
        err.write(f"config diff: {exc}\n")
        return EXIT_TROUBLE
    if args.json:
        out.write(format_json(result, old, new, args.start, args.end))
    else:
        out.write(format_text(result, old, new, args.start, args.end, warmup))
    return EXIT_DIFFERENT if result.changes else EXIT_SAME
