"""The rule engine: observations and a clock in, findings out. Pure: no I/O, no clock reads.

`Engine.observe(observation, now)` judges one message (`now` is its arrival time);
`Engine.tick(now)` wakes the rules that change with time alone (a curfew starting, a
device falling silent). Findings are emitted only when a rule's condition changes, so a
violation that goes on produces one `raised` finding, not one per ping.

Every finding's `at` is a data time, never the moment a tick happened to run: a fix's or
event's `ts`, a schedule window's or leave's start or end, or for liveness an arrival time
plus the configured silence. So the live daemon and `emon replay` decide identically.

The noise discipline lives here (duplicates, late fixes, implausible jumps); the rules live
in `geofence.zonerules` (zones, schedules, leave, crossing) and `geofence.devicerules`
(tamper, power, battery, silence, GNSS lost); their state in `geofence.state`.

Time-driven work is a heap of per-device deadlines, so a tick costs what is due, not the
number of devices. Schedules are judged on the device's own clock: for a device whose data
arrives within `LIVE_LAG_TOLERANCE` of being taken that is the arrival clock; for one that
is replaying the past (a backlog, or a recorded day fed to a live daemon) it is the arrival
clock minus that lag, so a curfew is never judged on data from before it began.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter
from datetime import datetime, timedelta

from alerts.model import Finding
from geofence.behaviour import BehaviourRules
from geofence.compliance import ComplianceRules
from geofence.config import CoreConfig
from geofence.devicerules import DeviceRules
from geofence.habits import LearnedPlaces
from geofence.history import KeptFix
from geofence.observation import DeviceEvent, LocationFix, Observation
from geofence.state import DeviceState, EvalContext, Membership, PlacedFix, RuleStates
from geofence.victims import ProtectedPosition
from geofence.windows import FAR_FUTURE, next_boundary
from geofence.zonerules import ZoneRules, insert_late

__all__ = ["LIVE_LAG_TOLERANCE", "DeviceState", "Engine", "Membership"]

# Data that arrives within this long of being taken is live: time-driven rules follow the
# arrival clock. Uploads every 1-5 minutes (DOMAIN.md §3) are live.
LIVE_LAG_TOLERANCE = timedelta(minutes=5)
# A wake-up that would not move forward is pushed this far ahead (guards the tick loop).
MIN_WAKE_STEP = timedelta(microseconds=1)
# A backlog of late fixes is judged at the next in-order fix, or after the device has sent
# nothing for this long (the burst is over).
LATE_SETTLE = timedelta(minutes=2)


class Engine:
    """Applies a `CoreConfig` to observations. One instance per daemon (or replay run)."""

    def __init__(self, config: CoreConfig, presence_skip: bool = True) -> None:
        """`presence_skip=False` measures every fix against every zone (the reference the
        skip of `ZoneRules` is checked against; no decision differs)."""
        self._config = config
        self.stats: Counter[str] = Counter()
        self._devices: dict[str, DeviceState] = {}
        self._rules = RuleStates(self.stats)
        self._zone_rules = ZoneRules(skip_unmoved=presence_skip)
        self._device_rules = DeviceRules()
        self._wakeups: list[tuple[datetime, str]] = []
        # Issue 5 part A: subject-level rules (separation, check-ins, authorisation).
        self._compliance = ComplianceRules(self.stats)
        # Issue 5 part B: habits, gatherings, protected persons (geofence.behaviour).
        self.behaviour = BehaviourRules(self.stats)

    @property
    def config(self) -> CoreConfig:
        return self._config

    def swap_config(self, config: CoreConfig) -> None:
        """Adopt a new config between two observations; per-device state is kept and every
        device's next wake-up is worked out again under the new schedules."""
        self._config = config
        self._wakeups = []
        for device_id, state in self._devices.items():
            state.next_boundary = None
            state.scheduled_at = None
            state.judge_all = True
            ctx = self._context(device_id, state)
            if ctx is not None:
                self._reschedule(ctx, after=None)
        self._compliance.swap_config(config)

    def authorised(self, device_id: str, ts: datetime) -> bool:
        """Whether monitoring of the device's subject was authorised at `ts` (Art. 29)."""
        return self._compliance.authorised(self._config, device_id, ts)

    def device_state(self, device_id: str) -> DeviceState | None:
        return self._devices.get(device_id)

    def _context(self, device_id: str, state: DeviceState) -> EvalContext | None:
        spec = self._config.devices.get(device_id)
        if spec is None:
            return None
        subject = self._config.subjects[spec.subject_id]
        return EvalContext(
            self._config, subject, device_id, spec.kind, state, self._rules, self.stats
        )

    # ------------------------------------------------------------------ observations

    def observe(self, observation: Observation, now: datetime) -> list[Finding]:
        """Judge one observation that arrived at `now`."""
        if observation.device_id not in self._config.devices:
            self.stats["unknown_device"] += 1
            return []
        # Every deadline due by this arrival is judged before it, as a tick at `now` would:
        # otherwise a deadline between the last tick and this arrival would be judged after
        # it on a coarse tick grid and before it on a fine one, and where two devices hold
        # one subject condition (a silent tag while the phone comes back) the findings
        # would depend on the shell's tick interval (found by the tick-grid property test).
        caught_up = self.tick(now) if self._due_by(now) else []
        return caught_up + self._observe_in_time(observation, now)

    def _due_by(self, now: datetime) -> bool:
        wakeups = self._wakeups
        return bool(wakeups and wakeups[0][0] <= now) or self._compliance.due_by(now)

    def _observe_in_time(self, observation: Observation, now: datetime) -> list[Finding]:
        state = self._devices.get(observation.device_id)
        if state is None:  # not setdefault: a DeviceState is costly to build per message
            state = self._devices[observation.device_id] = DeviceState()
        ctx = self._context(observation.device_id, state)
        assert ctx is not None
        if isinstance(observation, DeviceEvent):
            self.stats["events"] += 1
        if self._is_duplicate(state, observation):
            # A QoS 1 redelivery (possibly by the broker after a restart): stored once by the
            # shell, judged once here, and no sign of life from the device either.
            self.stats["fix_duplicate" if isinstance(observation, LocationFix)
                       else "event_duplicate"] += 1
            return []
        findings, was_silent = self._device_rules.on_arrival(ctx, observation, now)
        findings += self._device_rules.power_implied_on(ctx, observation)
        if state.last_seen is None or observation.ts > state.last_seen:
            state.last_seen, state.anchor_arrival = observation.ts, now
        if isinstance(observation, LocationFix):
            if observation.battery_pct is not None:
                findings += self._device_rules.on_battery(
                    ctx, observation.ts, observation.battery_pct, observation, from_event=False
                )
            findings += self._observe_fix(ctx, observation, now)
            # Issue 5 part B: behaviour rules see evaluated in-order fixes only.
            if state.last_fix is observation and state.last_xy is not None:
                findings += self.behaviour.on_fix(
                    self._config, ctx.subject, observation, state.last_xy, now
                )
        else:
            findings += self._observe_event(ctx, observation)
        findings += self._device_rules.after_arrival(ctx, observation, now, was_silent)
        self._reschedule(ctx, after=None)
        # ---- issue 5 part A: separation, check-ins, authorisation (geofence.compliance)
        return self._compliance.after_observe(
            self._config, ctx.subject, observation, now, state.last_fix is observation, findings
        )

    def _observe_event(self, ctx: EvalContext, event: DeviceEvent) -> list[Finding]:
        ctx.state.recent_events.append((event.ts, event.type))
        return self._device_rules.on_event(ctx, event)

    @staticmethod
    def _is_duplicate(state: DeviceState, observation: Observation) -> bool:
        if isinstance(observation, DeviceEvent):
            return (observation.ts, observation.type) in state.recent_events
        newest = state.newest_fix_ts
        if newest is None or observation.ts > newest:
            return False  # the common case: newer than any fix seen
        return observation.ts in state.recent_fix_ts

    def _observe_fix(self, ctx: EvalContext, fix: LocationFix, now: datetime) -> list[Finding]:
        state = ctx.state
        state.recent_fix_ts.append(fix.ts)
        if state.newest_fix_ts is None or fix.ts > state.newest_fix_ts:
            state.newest_fix_ts = fix.ts
        last = state.last_fix
        if last is not None and fix.ts <= last.ts:
            return self._observe_late(ctx, fix, now)
        placed = PlacedFix(fix, self._config.projection.forward(fix.lon, fix.lat))
        if last is not None and self._implausible(ctx, placed, last):
            return []
        findings = self._settle_late(ctx, now)
        previous = state.history.newest
        if previous is not None and not self._plausible(previous.fix, previous.xy, placed):
            previous = None  # followed again after a jump: no straight path from the outlier
        state.last_fix, state.last_xy = fix, placed.xy
        state.history.append(placed)
        self.stats["fix_evaluated"] += 1
        # Has a schedule window or leave opened or closed since the rules were last judged?
        boundary_passed = state.clock is None or fix.ts >= self._next_boundary(ctx)
        findings += self._zone_rules.on_fix(ctx, placed, previous, boundary_passed)
        placed.drop_point()
        return findings

    def _settle_late(self, ctx: EvalContext, now: datetime) -> list[Finding]:
        """A new in-order fix: the backlogs before it are complete; report the violations
        they showed that had not ended within them."""
        state = ctx.state
        if not state.late_open:
            return []
        findings: list[Finding] = []
        history = state.history
        for gap_start_ts in sorted(state.late_open):
            index = history.index_of(gap_start_ts)
            if index is None:
                continue  # fell out of the history
            gap_end_ts = history.ts(index + 1) if index + 1 < len(history) else None
            findings += self._zone_rules.on_late_fix(
                ctx, history.ts(index), gap_end_ts, now, final=True
            )
        state.late_open.clear()
        return findings

    def _plausible(self, a: LocationFix | KeptFix, a_xy: tuple[float, float], b: PlacedFix) -> bool:
        elapsed_s = abs((b.fix.ts - a.ts).total_seconds())
        distance_m = math.dist(a_xy, b.xy)
        slack_m = a.accuracy_m + b.fix.accuracy_m
        return distance_m - slack_m <= self._config.rules.max_speed_mps * elapsed_s

    def _implausible(self, ctx: EvalContext, placed: PlacedFix, last: LocationFix) -> bool:
        """A jump faster than `max_speed_mps` from the last accepted fix is an outlier,
        unless `max_consecutive_jump_rejections` rejected fixes in a row agree with each
        other: then the last accepted fix was the outlier and the device is followed again."""
        state = ctx.state
        assert state.last_xy is not None
        if self._plausible(last, state.last_xy, placed):
            state.jump_rejections_in_row, state.last_rejected = 0, None
            return False
        prior = state.last_rejected
        if prior is not None and self._plausible(prior.fix, prior.xy, placed):
            state.jump_rejections_in_row += 1
        else:
            state.jump_rejections_in_row = 1  # scattered outliers never add up
        state.last_rejected = placed
        if state.jump_rejections_in_row > self._config.rules.max_consecutive_jump_rejections:
            self.stats["fix_jump_accepted_after_rejections"] += 1
            state.jump_rejections_in_row, state.last_rejected = 0, None
            return False
        self.stats["fix_implausible_jump"] += 1
        return True

    def _observe_late(self, ctx: EvalContext, fix: LocationFix, now: datetime) -> list[Finding]:
        """A fix older than the newest evaluated one (stored and forwarded, or reordered in
        transit). It never moves zone state backwards; it is placed in the gap between the
        evaluated fixes around it and audited for a violation the live stream missed."""
        state = ctx.state
        last = state.last_fix
        assert last is not None
        history = state.history
        index = history.bisect_left(fix.ts)
        self.stats["fix_late"] += 1
        horizon = timedelta(seconds=self._config.rules.late_horizon_seconds)
        if index == 0 or last.ts - fix.ts > horizon or index >= len(history):
            self.stats["fix_late_not_audited"] += 1
            return []
        gap_start, gap_end = history.kept(index - 1), history.kept(index)
        late = state.late.setdefault(gap_start.ts, [])
        placed = PlacedFix(fix, self._config.projection.forward(fix.lon, fix.lat))
        if not any(self._plausible(p, p.xy, placed) for p in (gap_start, gap_end)) and not any(
            self._plausible(p.fix, p.xy, placed) for p in late
        ):
            self.stats["fix_late_implausible"] += 1
            return []
        insert_late(late, placed)
        oldest_kept = last.ts - horizon
        for key in [k for k in state.late if k < oldest_kept]:
            del state.late[key]
        state.audited.retain(lambda audited: audited[1] >= oldest_kept)
        return self._zone_rules.on_late_fix(ctx, gap_start.ts, gap_end.ts, now)

    # ------------------------------------------------------------------ clock

    def tick(self, now: datetime) -> list[Finding]:
        """Wake the time-driven rules that are due by `now` (silence, GNSS lost, schedule
        windows and leave opening or closing).

        The due moments of all woken devices are judged in one order, by time and then
        device id, so the outcome is the same whether they fall due in one tick or in
        several (a subject's condition is held by whichever device raised it first)."""
        due: list[EvalContext] = []
        wakeups = self._wakeups
        while wakeups and wakeups[0][0] <= now:
            at, device_id = heapq.heappop(wakeups)
            state = self._devices.get(device_id)
            if state is None or state.scheduled_at != at:
                continue  # superseded by an earlier wake-up
            state.scheduled_at = None
            ctx = self._context(device_id, state)
            if ctx is not None:
                due.append(ctx)
        work: list[tuple[datetime, str, int]] = []
        for index, ctx in enumerate(due):
            moment = self._next_moment(ctx, now)
            if moment is not None:
                heapq.heappush(work, (moment, ctx.device_id, index))
        findings: list[Finding] = []
        while work:
            moment, _, index = heapq.heappop(work)
            ctx = due[index]
            findings += self._device_rules.on_tick(ctx, moment)
            settle = self._late_settle_at(ctx.state)
            if settle is not None and settle <= moment:
                findings += self._settle_late(ctx, moment)
            if ctx.state.last_fix is not None and self._next_boundary(ctx) <= moment:
                findings += self._zone_rules.on_time(ctx, self._next_boundary(ctx))
            following = self._next_moment(ctx, now)
            if following is not None and following > moment:
                heapq.heappush(work, (following, ctx.device_id, index))
        for ctx in due:
            self._reschedule(ctx, after=now)
        # Issue 5 part B: gatherings are judged on their own grid of instants.
        findings += self.behaviour.on_tick(self._config, now)
        # ---- issue 5 part A: check-in deadlines, authorisation moments, and the Art. 29
        # policy over every finding of the tick (geofence.compliance)
        return self._compliance.after_tick(self._config, now, findings)

    # ------------------------------------------------------------------ issue 5 part B

    def observe_protected(self, position: ProtectedPosition, now: datetime) -> list[Finding]:
        """A protected person's phone position (never stored; `geofence.victims`)."""
        findings = self.behaviour.on_protected(self._config, position)
        # Issue 5 part A: the Art. 29 policy applies to these findings too.
        return self._compliance.filter(self._config, findings)

    def set_frequent_places(self, learned: LearnedPlaces) -> None:
        """Frequent places learnt from stored pings (daemon) or replayed ones (replay)."""
        self.behaviour.set_frequent_places(learned)

    def frequent_places(self, subject_id: str) -> LearnedPlaces | None:
        return self.behaviour.habits.places(subject_id)

    def _next_moment(self, ctx: EvalContext, now: datetime) -> datetime | None:
        """The earliest moment at or before `now` (on the device's own clock for schedules)
        at which one of this device's time-driven rules is due, if any."""
        candidates: list[datetime] = []
        liveness = self._device_rules.deadline(ctx)
        if liveness is not None and liveness <= now:
            candidates.append(liveness)
        settle = self._late_settle_at(ctx.state)
        if settle is not None and settle <= now:
            candidates.append(settle)
        if ctx.state.last_fix is not None and ctx.subject.has_time_rules:
            boundary = self._next_boundary(ctx)
            if boundary <= self._device_now(ctx.state, now):
                candidates.append(boundary)
        return min(candidates, default=None)

    @staticmethod
    def _late_settle_at(state: DeviceState) -> datetime | None:
        if not state.late_open or state.last_arrival is None:
            return None
        return state.last_arrival + LATE_SETTLE

    @staticmethod
    def _lag(state: DeviceState) -> timedelta:
        """How far behind the arrival clock this device's data runs (0 when live)."""
        if state.last_seen is None or state.anchor_arrival is None:
            return timedelta(0)
        lag = state.anchor_arrival - state.last_seen
        return lag if lag > LIVE_LAG_TOLERANCE else timedelta(0)

    def _device_now(self, state: DeviceState, now: datetime) -> datetime:
        return now - self._lag(state)

    def _next_boundary(self, ctx: EvalContext) -> datetime:
        state = ctx.state
        if state.clock is None:
            return FAR_FUTURE
        if state.next_boundary is None or state.next_boundary <= state.clock:
            state.next_boundary = next_boundary(
                ctx.subject, state.clock, self._config.rules.curfew_grace_seconds
            )
        return state.next_boundary

    def _reschedule(self, ctx: EvalContext, after: datetime | None) -> None:
        state = ctx.state
        candidates: list[datetime] = []
        liveness = self._device_rules.deadline(ctx)
        if liveness is not None:
            candidates.append(liveness)
        settle = self._late_settle_at(state)
        if settle is not None:
            candidates.append(settle)
        if state.last_fix is not None and ctx.subject.has_time_rules:
            boundary = self._next_boundary(ctx)
            if boundary < FAR_FUTURE:
                candidates.append(boundary + self._lag(state))
        if not candidates:
            return
        due = min(candidates)
        if after is not None and due <= after:
            self.stats["wakeup_pushed_forward"] += 1
            due = after + MIN_WAKE_STEP
        if state.scheduled_at is None or due < state.scheduled_at:
            heapq.heappush(self._wakeups, (due, ctx.device_id))
            state.scheduled_at = due
