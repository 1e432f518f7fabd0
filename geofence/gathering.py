"""Gatherings (同案犯聚集): two subjects within R m of each other for T minutes. Pure.

Positions are judged on an epoch-aligned grid of instants `STEP` apart, each once every
fix taken by then has had `SETTLE` to arrive: at instant g every subject stands at their
newest fix taken at or before g (if it is at most `stale_seconds` old). So whether and
when a pair is together depends only on the fixes, not on the order in which the two
subjects' fixes arrived (the property tests check it), and `emon replay`, whose ticks fall
on the daemon's grid, decides as live.

Cost: a uniform grid hash over the current positions in local metres (`GridIndex`, cells
as wide as the largest distance at which two fixes can still count as together). A moved
subject is re-filed in O(1) and looks only at the 3x3 cells around it, so a step costs the
subjects that moved and the pairs already together, never the square of the subjects.

A pair is together when the distance between the fixes, less both accuracies, is at most
R (accuracy-aware: the circles could touch within R), and both fixes are precise enough
(`max_accuracy_m`). The condition is dated at the first instant they were together; it is
raised once they have stayed together for `min_seconds`, for each subject of the pair (each
officer is told about their own subject), keyed by the partner: zone id `with:<other id>`.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from alerts.model import Finding, FindingKind, RuleId, Tier
from geofence.behaviour_config import BehaviourParams

# Instants at which pairs are judged; one fix a minute is the usual rate.
STEP = timedelta(seconds=60)
# An instant is judged once fixes taken by then have had this long to arrive (uploads come
# every 1-5 minutes, DOMAIN.md §3).
SETTLE = timedelta(minutes=5)
# Data arriving within this long of being taken is live: instants are judged on the arrival
# clock. A fleet whose newest data is older (a backlog, or a recorded day fed to a running
# daemon) is judged on the arrival clock minus that lag, as the engine's schedules are.
LIVE_LAG_TOLERANCE = timedelta(minutes=5)
# Fixes kept per subject that are newer than the last judged instant (bounded: a device
# replaying a long backlog keeps its newest).
MAX_PENDING_FIXES = 64
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Position:
    subject_id: str
    device_id: str
    ts: datetime
    xy: tuple[float, float]
    accuracy_m: float


class GridIndex:
    """Latest positions in square cells of `cell_m`. `within(xy, r)` returns exactly the
    keys whose point is at most `r` from `xy` (the brute-force answer)."""

    def __init__(self, cell_m: float) -> None:
        if cell_m <= 0:
            raise ValueError("cell_m must be positive")
        self._cell_m = cell_m
        self._cells: dict[tuple[int, int], dict[str, tuple[float, float]]] = {}
        self._where: dict[str, tuple[int, int]] = {}

    def __len__(self) -> int:
        return len(self._where)

    def _cell(self, xy: tuple[float, float]) -> tuple[int, int]:
        return math.floor(xy[0] / self._cell_m), math.floor(xy[1] / self._cell_m)

    def put(self, key: str, xy: tuple[float, float]) -> None:
        cell = self._cell(xy)
        old = self._where.get(key)
        if old is not None and old != cell:
            self._drop(key, old)
        self._cells.setdefault(cell, {})[key] = xy
        self._where[key] = cell

    def remove(self, key: str) -> None:
        old = self._where.pop(key, None)
        if old is not None:
            self._drop(key, old)

    def _drop(self, key: str, cell: tuple[int, int]) -> None:
        members = self._cells[cell]
        del members[key]
        if not members:
            del self._cells[cell]

    def within(self, xy: tuple[float, float], radius_m: float) -> Iterator[tuple[str, float]]:
        """(key, distance) for every point at most `radius_m` from `xy`."""
        reach = math.ceil(radius_m / self._cell_m)
        cx, cy = self._cell(xy)
        for dx in range(-reach, reach + 1):
            for dy in range(-reach, reach + 1):
                members = self._cells.get((cx + dx, cy + dy))
                if not members:
                    continue
                for key, point in members.items():
                    distance = math.dist(xy, point)
                    if distance <= radius_m:
                        yield key, distance


@dataclass(slots=True)
class _Pair:
    rule: RuleId
    groups: tuple[str, ...]
    since: datetime
    distance_m: float
    raised: bool = False


def pair_rule(params: BehaviourParams, a: str, b: str) -> tuple[RuleId, tuple[str, ...]] | None:
    """Which rule judges two subjects together: co-offenders first, else any pair if on."""
    shared = params.shared_groups(a, b)
    if shared:
        return RuleId.CO_OFFENDER_GATHERING, tuple(sorted(shared))
    if params.gathering.any_subjects:
        return RuleId.GATHERING, ()
    return None


def grid_instant_ceil(at: datetime) -> datetime:
    step_us = STEP // timedelta(microseconds=1)
    offset = (at - _EPOCH) // timedelta(microseconds=1)
    return _EPOCH + timedelta(microseconds=-(-offset // step_us) * step_us)


class GatheringRule:
    def __init__(self, stats: Counter[str] | None = None) -> None:
        # Drops are counted in the engine's statistics (exported as metrics by the daemon).
        self._stats: Counter[str] = stats if stats is not None else Counter()
        self._pending: dict[str, list[Position]] = {}
        self._due: list[tuple[datetime, str]] = []  # (ts of a pending fix, subject)
        self._current: dict[str, Position] = {}
        self._expiry: list[tuple[datetime, str]] = []
        self._index: GridIndex | None = None
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._device_of: dict[str, str] = {}  # the device of each subject's newest placed fix
        self._judged_until: datetime | None = None
        # The newest fix's ts and when it arrived: the fleet's own clock.
        self._newest_ts: datetime | None = None
        self._newest_arrival: datetime | None = None

    def add(self, position: Position, arrival: datetime) -> None:
        """A subject's fix, in any order; older than the last judged instant: dropped."""
        if self._newest_ts is None or position.ts > self._newest_ts:
            self._newest_ts, self._newest_arrival = position.ts, arrival
        if self._judged_until is not None and position.ts <= self._judged_until:
            self._stats["gathering_fix_late"] += 1
            return
        pending = self._pending.setdefault(position.subject_id, [])
        keys = [(p.ts, p.device_id) for p in pending]
        index = bisect.bisect_left(keys, (position.ts, position.device_id))
        if index < len(pending) and keys[index] == (position.ts, position.device_id):
            return  # the same fix again
        pending.insert(index, position)
        if len(pending) > MAX_PENDING_FIXES:
            del pending[0]
            self._stats["gathering_pending_overflow"] += 1
        heapq.heappush(self._due, (position.ts, position.subject_id))

    def judge_until(
        self, params: BehaviourParams, now: datetime, tier_of: Callable[[RuleId], Tier]
    ) -> list[Finding]:
        """Judge every instant up to `now - SETTLE` not judged yet."""
        if not params.gathering_enabled:
            return []
        limit = now - SETTLE - self._lag()
        findings: list[Finding] = []
        if self._judged_until is None:
            if not self._due:
                return []
            instant = grid_instant_ceil(self._due[0][0])
        else:
            instant = self._judged_until + STEP
        while instant <= limit:
            if not self._current and not self._pairs:
                # Nobody placed: skip the empty instants up to the next pending fix.
                if not self._due:
                    break
                instant = max(instant, grid_instant_ceil(self._due[0][0]))
                if instant > limit:
                    break
            findings += self._judge(params, instant, tier_of)
            self._judged_until = instant
            instant += STEP
        return findings

    def _lag(self) -> timedelta:
        if self._newest_ts is None or self._newest_arrival is None:
            return timedelta(0)
        lag = self._newest_arrival - self._newest_ts
        return lag if lag > LIVE_LAG_TOLERANCE else timedelta(0)

    def _judge(
        self, params: BehaviourParams, instant: datetime, tier_of: Callable[[RuleId], Tier]
    ) -> list[Finding]:
        settings = params.gathering
        reach = settings.radius_m + 2.0 * settings.max_accuracy_m
        if self._index is None:
            self._index = GridIndex(reach)
        index = self._index
        moved: set[str] = set()
        while self._due and self._due[0][0] <= instant:
            _, subject_id = heapq.heappop(self._due)
            pending = self._pending.get(subject_id)
            if not pending:
                continue
            newest: Position | None = None
            while pending and pending[0].ts <= instant:
                newest = pending.pop(0)
            if not pending:
                del self._pending[subject_id]
            if newest is None or newest.accuracy_m > settings.max_accuracy_m:
                continue  # too vague to place anyone next to anyone: the old fix stands
            self._current[subject_id] = newest
            self._device_of[subject_id] = newest.device_id
            index.put(subject_id, newest.xy)
            heapq.heappush(
                self._expiry,
                (newest.ts + timedelta(seconds=settings.stale_seconds), subject_id),
            )
            moved.add(subject_id)
        gone: set[str] = set()
        while self._expiry and self._expiry[0][0] < instant:
            _, subject_id = heapq.heappop(self._expiry)
            position = self._current.get(subject_id)
            if position is None:
                continue
            if position.ts + timedelta(seconds=settings.stale_seconds) < instant:
                del self._current[subject_id]
                index.remove(subject_id)
                gone.add(subject_id)
        together: dict[tuple[str, str], float] = {}
        for subject_id in sorted(moved - gone):
            mine = self._current[subject_id]
            for other, distance in index.within(mine.xy, reach):
                if other == subject_id:
                    continue
                theirs = self._current[other]
                if distance - mine.accuracy_m - theirs.accuracy_m <= settings.radius_m:
                    together[(min(subject_id, other), max(subject_id, other))] = distance
        findings: list[Finding] = []
        # Pairs already together: still together unless one of them moved away or is gone.
        for key in sorted(self._pairs):
            a, b = key
            if key in together:
                self._pairs[key].distance_m = together.pop(key)
            elif a in gone or b in gone or a in moved or b in moved:
                findings += self._end(key, instant, tier_of)
        for key in sorted(together):
            judged = pair_rule(params, *key)
            if judged is None:
                continue
            rule, groups = judged
            self._pairs[key] = _Pair(rule, groups, instant, together[key])
        minimum = timedelta(seconds=settings.min_seconds)
        for key in sorted(self._pairs):
            pair = self._pairs[key]
            if not pair.raised and instant - pair.since >= minimum:
                pair.raised = True
                findings += self._findings(key, pair, FindingKind.RAISED, pair.since,
                                           instant, settings.radius_m, tier_of)
        return findings

    def _end(
        self, key: tuple[str, str], instant: datetime, tier_of: Callable[[RuleId], Tier]
    ) -> list[Finding]:
        pair = self._pairs.pop(key)
        if not pair.raised:
            return []
        return self._findings(key, pair, FindingKind.CLEARED, instant, instant, 0.0, tier_of)

    def _findings(
        self,
        key: tuple[str, str],
        pair: _Pair,
        kind: FindingKind,
        at: datetime,
        instant: datetime,
        radius_m: float,
        tier_of: Callable[[RuleId], Tier],
    ) -> list[Finding]:
        minutes = round((instant - pair.since).total_seconds() / 60.0)
        out: list[Finding] = []
        for subject_id, other in (key, key[::-1]):
            device_id = self._device_of.get(subject_id, "")
            evidence = {
                "with_subject": other,
                "groups": list(pair.groups),
                "since": pair.since.isoformat(),
                "minutes": minutes,
                "distance_m": round(pair.distance_m, -1),
            }
            partner = "co-offender " if pair.rule is RuleId.CO_OFFENDER_GATHERING else "subject "
            group = f" (case group {', '.join(pair.groups)})" if pair.groups else ""
            if kind is FindingKind.RAISED:
                reason = (
                    f"Has been within {radius_m:g} m of {partner}{other}{group} "
                    f"for {minutes} min."
                )
            else:
                reason = f"Apart from {partner}{other} again after {minutes} min together."
            out.append(Finding(
                subject_id=subject_id, device_id=device_id, rule=pair.rule,
                zone_id=f"with:{other}", tier=tier_of(pair.rule), kind=kind,
                at=at.astimezone(UTC), evidence=evidence, reason=reason,
            ))
        return out

    def positions(self) -> int:
        return len(self._current)
