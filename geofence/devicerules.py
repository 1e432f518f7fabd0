"""Device rules: tamper (strap, case), power, battery with charger, and liveness (silence
脱管 and GNSS lost). Pure: observations, their arrival times and a clock in, findings out.

Tamper, power and battery are judged in event time (the device's `ts`), so events that
arrive out of order are put back in order: a strap opened and closed again is an alert
whatever order the two events arrive in, and closing never removes the alert (the lifecycle
keeps it open for a person).

Liveness is judged on the arrival clock (`received_at`, the `now` the shell passes in, which
`emon replay` reads from the file): silence means nothing *arrived*. It is raised by the
scheduler's tick at the deadline (last arrival + N), not by the next message; the next
message clears it and is the recovery evidence. If a message arrives after the deadline
before any tick ran, the silence is reported then (raised at the deadline, cleared at once),
so the outcome does not depend on when ticks happen to run.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from alerts.model import Finding, RuleId
from geofence.observation import (
    DeviceEvent,
    DeviceEventType,
    FixSource,
    LocationFix,
    Observation,
)
from geofence.state import EvalContext, Latch, LevelRun
from geofence.zones import Presence

_LATCH_EVENTS: dict[DeviceEventType, tuple[str, RuleId, bool]] = {
    DeviceEventType.STRAP_OPEN: ("strap", RuleId.STRAP_OPEN, True),
    DeviceEventType.STRAP_CLOSED: ("strap", RuleId.STRAP_OPEN, False),
    DeviceEventType.CASE_OPEN: ("case", RuleId.CASE_OPEN, True),
    DeviceEventType.CASE_CLOSED: ("case", RuleId.CASE_OPEN, False),
    DeviceEventType.POWER_OFF: ("power", RuleId.POWER_OFF, True),
    DeviceEventType.POWER_ON: ("power", RuleId.POWER_OFF, False),
}
_LATCH_TEXT: dict[RuleId, tuple[str, str]] = {
    RuleId.STRAP_OPEN: ("Strap opened on device {}", "Strap closed again on device {}"),
    RuleId.CASE_OPEN: ("Case opened on device {}", "Case closed again on device {}"),
    RuleId.POWER_OFF: ("Device {} reported power off", "Device {} powered on again"),
}
BATTERY_LEVEL_ATTRIBUTE = "level"  # on battery_low events (wire contract: "level": 12)
MAX_BATTERY_PCT = 100.0


def _wire(observation: Observation) -> dict[str, Any]:
    if isinstance(observation, LocationFix):
        return {"ping": observation.to_wire()}
    return {"event": observation.to_wire()}


def _event_level(event: DeviceEvent) -> float | None:
    """The battery level a battery_low event carries, if it is a usable number."""
    value = event.attributes.get(BATTERY_LEVEL_ATTRIBUTE)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    level = float(value)
    if not math.isfinite(level) or not 0.0 <= level <= MAX_BATTERY_PCT:
        return None
    return level


class DeviceRules:
    # ------------------------------------------------------------------ events

    def on_event(self, ctx: EvalContext, event: DeviceEvent) -> list[Finding]:
        latch_spec = _LATCH_EVENTS.get(event.type)
        if latch_spec is not None:
            name, rule, opened = latch_spec
            latch: Latch = getattr(ctx.state, name)
            return self._latch(ctx, latch, rule, opened, event)
        if event.type is DeviceEventType.BATTERY_LOW:
            level = _event_level(event)
            if level is None and BATTERY_LEVEL_ATTRIBUTE in event.attributes:
                ctx.stats["battery_level_unusable"] += 1
            return self.on_battery(ctx, event.ts, level, event, from_event=True)
        if event.type in (DeviceEventType.CHARGER_CONNECTED, DeviceEventType.CHARGER_DISCONNECTED):
            return self._charger(ctx, event)
        return []  # check-ins are for the reporting rules (issue 5)

    @staticmethod
    def _latch(
        ctx: EvalContext, latch: Latch, rule: RuleId, opened: bool, event: DeviceEvent
    ) -> list[Finding]:
        ts = event.ts
        evidence = _wire(event)
        open_text, close_text = (t.format(ctx.device_id) for t in _LATCH_TEXT[rule])
        if opened:
            if latch.last_open is not None and ts <= latch.last_open:
                return []  # a redelivery, or an older open already superseded
            latch.last_open = ts
            if latch.last_close is not None and latch.last_close > ts:
                # Closed again later, but that event arrived first: still an alert.
                return ctx.pulse(rule, None, ts, latch.last_close, evidence, open_text,
                                 evidence, close_text)
            return ctx.set(rule, None, True, ts, evidence, open_text)
        if latch.last_close is not None and ts <= latch.last_close:
            return []
        latch.last_close = ts
        instance = ctx.rules.get(ctx.device_id, rule, None)
        if (
            instance is not None
            and instance.active
            and instance.since is not None
            and instance.since <= ts
        ):
            return ctx.set(rule, None, False, ts, evidence, close_text)
        return []

    def power_implied_on(self, ctx: EvalContext, observation: Observation) -> list[Finding]:
        """Any message taken after a power-off says the device is on again."""
        if isinstance(observation, DeviceEvent) and observation.type is DeviceEventType.POWER_OFF:
            return []
        instance = ctx.rules.get(ctx.device_id, RuleId.POWER_OFF, None)
        if instance is None or not instance.active or instance.since is None:
            return []
        if observation.ts <= instance.since:
            return []
        ctx.state.power.last_close = observation.ts
        return ctx.set(
            RuleId.POWER_OFF, None, False, observation.ts, _wire(observation),
            f"Device {ctx.device_id} reporting again after power off",
        )

    # ------------------------------------------------------------------ battery

    def on_battery(
        self,
        ctx: EvalContext,
        ts: datetime,
        level: float | None,
        source: Observation,
        *,
        from_event: bool,
    ) -> list[Finding]:
        """One battery reading (from a fix's `batt` or a battery_low event) in event time.

        A reading from fixes must be confirmed by the next one (levels jitter); a
        battery_low event is the device's own judgement and counts at once. Alerts clear
        `battery_hysteresis_pct` above their threshold, or when the charger is connected."""
        thresholds = ctx.thresholds
        battery = ctx.state.battery
        if battery.last_ts is not None and ts <= battery.last_ts:
            return []
        battery.last_ts = ts
        if level is not None:
            battery.level = level
        params = ctx.config.rules
        findings: list[Finding] = []
        critical_now = False
        for rule, threshold in (
            (RuleId.BATTERY_CRITICAL, thresholds.battery_critical_pct),
            (RuleId.BATTERY_LOW, thresholds.battery_low_pct),
        ):
            if threshold is None:
                continue
            run = battery.runs.setdefault(rule, LevelRun())
            active = ctx.active(rule)
            # A battery_low event without a usable level counts as "low", not "critical".
            low = (
                from_event and rule is RuleId.BATTERY_LOW if level is None else level <= threshold
            )
            if low:
                if run.count == 0:
                    run.since = ts
                run.count += 1
                confirmed = from_event or run.count >= params.battery_dwell_readings
                if active or not confirmed or battery.charging or run.since is None:
                    continue
                if rule is RuleId.BATTERY_LOW and (
                    critical_now or ctx.active(RuleId.BATTERY_CRITICAL)
                ):
                    continue  # the critical alert already says it
                shown = f"{level:.0f} %" if level is not None else "low (device event)"
                findings += ctx.set(
                    rule, None, True, run.since, _wire(source),
                    f"Battery of device {ctx.device_id} at {shown} "
                    f"(threshold {threshold:.0f} %)",
                )
                critical_now = critical_now or rule is RuleId.BATTERY_CRITICAL
            else:
                run.count, run.since = 0, None
                if (
                    active
                    and level is not None
                    and level >= threshold + params.battery_hysteresis_pct
                ):
                    findings += ctx.set(
                        rule, None, False, ts, _wire(source),
                        f"Battery of device {ctx.device_id} back to {level:.0f} %",
                    )
        return findings

    def _charger(self, ctx: EvalContext, event: DeviceEvent) -> list[Finding]:
        battery = ctx.state.battery
        if battery.charging_ts is not None and event.ts <= battery.charging_ts:
            return []
        battery.charging_ts = event.ts
        battery.charging = event.type is DeviceEventType.CHARGER_CONNECTED
        if not battery.charging:
            # Readings must confirm a low level again before a new alert.
            for run in battery.runs.values():
                run.count, run.since = 0, None
            return []
        shown = f" at {battery.level:.0f} %" if battery.level is not None else ""
        findings: list[Finding] = []
        for rule in (RuleId.BATTERY_CRITICAL, RuleId.BATTERY_LOW):
            if ctx.active(rule):
                findings += ctx.set(
                    rule, None, False, event.ts, _wire(event),
                    f"Charger connected to device {ctx.device_id}{shown}",
                )
        return findings

    # ------------------------------------------------------------------ liveness

    @staticmethod
    def _gnss_usable(ctx: EvalContext, observation: Observation) -> bool:
        return (
            isinstance(observation, LocationFix)
            and observation.source is FixSource.GNSS
            and observation.accuracy_m <= ctx.config.rules.zone.max_accuracy_m
        )

    @staticmethod
    def _gnss_loss_explained(ctx: EvalContext) -> bool:
        """Reasons not to raise GNSS lost: the device is silent, off or tampered with (those
        alerts say more), or its last fixes place it at home or at a scheduled place, where
        buildings block GNSS every day."""
        for rule in (RuleId.DEVICE_SILENT, RuleId.POWER_OFF, RuleId.STRAP_OPEN, RuleId.CASE_OPEN):
            if ctx.active(rule):
                return True
        places = [ctx.subject.home_zone_id, *(i.zone_id for i in ctx.subject.inclusions)]
        for zone_id in places:
            if zone_id is None:
                continue
            membership = ctx.state.memberships.get(zone_id)
            if membership is not None and membership.confirmed is Presence.INSIDE:
                return True
        return False

    def on_arrival(
        self, ctx: EvalContext, observation: Observation, now: datetime
    ) -> tuple[list[Finding], bool]:
        """Liveness bookkeeping for one message, before the rules look at its content.
        Returns the findings and whether the device had been silent until this message."""
        state = ctx.state
        thresholds = ctx.thresholds
        findings: list[Finding] = []
        silence_instance = ctx.rules.get(ctx.device_id, RuleId.DEVICE_SILENT, None)
        was_silent = silence_instance is not None and silence_instance.active
        previous_arrival = state.last_arrival

        def evidence() -> dict[str, Any]:  # built only when a finding is emitted
            return {**_wire(observation), "received_at": now.isoformat()}

        def recovered() -> str:
            text = f"Device {ctx.device_id} heard from again"
            if previous_arrival is not None:
                quiet_min = (now - previous_arrival).total_seconds() / 60.0
                text += f" after {quiet_min:.0f} min without a message"
            return text

        if was_silent and silence_instance is not None and silence_instance.since is not None:
            findings += ctx.set(
                RuleId.DEVICE_SILENT, None, False, max(now, silence_instance.since), evidence(),
                recovered(),
            )
        elif (
            thresholds.silence_seconds is not None
            and state.last_arrival is not None
            and not ctx.active(RuleId.POWER_OFF)
        ):
            deadline = state.last_arrival + timedelta(seconds=thresholds.silence_seconds)
            if now >= deadline:
                # No tick ran between the deadline and this message: the silence happened.
                was_silent = True
                findings += ctx.pulse(
                    RuleId.DEVICE_SILENT, None, deadline, now,
                    self._silence_evidence(ctx), self._silence_reason(ctx), evidence(),
                    recovered(),
                )

        if self._gnss_usable(ctx, observation):
            if ctx.active(RuleId.GNSS_LOST):
                instance = ctx.rules.get(ctx.device_id, RuleId.GNSS_LOST, None)
                since = instance.since if instance is not None and instance.since else now
                findings += ctx.set(
                    RuleId.GNSS_LOST, None, False, max(now, since), evidence(),
                    f"GNSS fix from device {ctx.device_id} again",
                )
            elif (
                thresholds.gnss_lost_seconds is not None
                and state.gnss_ref_arrival is not None
                and state.talked_since_gnss
                and not state.gnss_checked
            ):
                deadline = state.gnss_ref_arrival + timedelta(seconds=thresholds.gnss_lost_seconds)
                if now >= deadline and not was_silent and not self._gnss_loss_explained(ctx):
                    findings += ctx.pulse(
                        RuleId.GNSS_LOST, None, deadline, now,
                        self._gnss_evidence(ctx), self._gnss_reason(ctx), evidence(),
                        f"GNSS fix from device {ctx.device_id} again",
                    )
            state.gnss_ref_arrival = now
            state.talked_since_gnss = False
            state.gnss_checked = False
        elif state.gnss_ref_arrival is None:
            state.gnss_ref_arrival = now  # GNSS is judged from the first message on
        else:
            state.talked_since_gnss = True
        state.last_arrival = now if state.last_arrival is None else max(state.last_arrival, now)
        return findings, was_silent

    def after_arrival(
        self, ctx: EvalContext, observation: Observation, now: datetime, was_silent: bool
    ) -> list[Finding]:
        """A message without a usable GNSS fix after the GNSS deadline, once nothing explains
        the loss any more (e.g. the person left home with only cell fixes): GNSS lost."""
        thresholds = ctx.thresholds
        state = ctx.state
        if (
            thresholds.gnss_lost_seconds is None
            or self._gnss_usable(ctx, observation)
            or state.gnss_ref_arrival is None
            or not state.talked_since_gnss
            or ctx.active(RuleId.GNSS_LOST)
        ):
            return []
        deadline = state.gnss_ref_arrival + timedelta(seconds=thresholds.gnss_lost_seconds)
        if now < deadline or self._gnss_loss_explained(ctx):
            return []
        at = now if state.gnss_checked or was_silent else deadline
        state.gnss_checked = True
        return ctx.set(
            RuleId.GNSS_LOST, None, True, at, self._gnss_evidence(ctx), self._gnss_reason(ctx)
        )

    def on_tick(self, ctx: EvalContext, now: datetime) -> list[Finding]:
        """Time-driven liveness: silence at its deadline, GNSS lost at its deadline."""
        thresholds = ctx.thresholds
        state = ctx.state
        findings: list[Finding] = []
        if (
            thresholds.silence_seconds is not None
            and state.last_arrival is not None
            and not ctx.active(RuleId.DEVICE_SILENT)
            and not ctx.active(RuleId.POWER_OFF)
        ):
            deadline = state.last_arrival + timedelta(seconds=thresholds.silence_seconds)
            if now >= deadline:
                findings += ctx.set(
                    RuleId.DEVICE_SILENT, None, True, deadline, self._silence_evidence(ctx),
                    self._silence_reason(ctx),
                )
        if (
            thresholds.gnss_lost_seconds is not None
            and state.gnss_ref_arrival is not None
            and state.talked_since_gnss
            and not state.gnss_checked
            and not ctx.active(RuleId.GNSS_LOST)
        ):
            deadline = state.gnss_ref_arrival + timedelta(seconds=thresholds.gnss_lost_seconds)
            if now >= deadline:
                state.gnss_checked = True
                if not self._gnss_loss_explained(ctx):
                    findings += ctx.set(
                        RuleId.GNSS_LOST, None, True, deadline, self._gnss_evidence(ctx),
                        self._gnss_reason(ctx),
                    )
        return findings

    @staticmethod
    def deadline(ctx: EvalContext) -> datetime | None:
        """The next arrival-clock moment a liveness rule may fire for this device."""
        thresholds = ctx.thresholds
        state = ctx.state
        candidates: list[datetime] = []
        if (
            thresholds.silence_seconds is not None
            and state.last_arrival is not None
            and not ctx.active(RuleId.DEVICE_SILENT)
            and not ctx.active(RuleId.POWER_OFF)
        ):
            candidates.append(state.last_arrival + timedelta(seconds=thresholds.silence_seconds))
        if (
            thresholds.gnss_lost_seconds is not None
            and state.gnss_ref_arrival is not None
            and state.talked_since_gnss
            and not state.gnss_checked
            and not ctx.active(RuleId.GNSS_LOST)
        ):
            candidates.append(
                state.gnss_ref_arrival + timedelta(seconds=thresholds.gnss_lost_seconds)
            )
        return min(candidates, default=None)

    # ------------------------------------------------------------------ texts

    @staticmethod
    def _silence_reason(ctx: EvalContext) -> str:
        minutes = (ctx.thresholds.silence_seconds or 0.0) / 60.0
        return f"Nothing received from device {ctx.device_id} for {minutes:.0f} min (脱管)"

    @staticmethod
    def _silence_evidence(ctx: EvalContext) -> dict[str, Any]:
        state = ctx.state
        return {
            "last_heard": {
                "ts": state.last_seen.isoformat() if state.last_seen else None,
                "received_at": state.last_arrival.isoformat() if state.last_arrival else None,
            },
            "silence_threshold_s": ctx.thresholds.silence_seconds,
        }

    @staticmethod
    def _gnss_reason(ctx: EvalContext) -> str:
        minutes = (ctx.thresholds.gnss_lost_seconds or 0.0) / 60.0
        return (
            f"No usable GNSS fix from device {ctx.device_id} for {minutes:.0f} min while it "
            "keeps reporting (cell/Wi-Fi fixes or events only)"
        )

    @staticmethod
    def _gnss_evidence(ctx: EvalContext) -> dict[str, Any]:
        state = ctx.state
        last = state.last_fix.to_wire() if state.last_fix is not None else None
        return {
            "gnss_since": state.gnss_ref_arrival.isoformat() if state.gnss_ref_arrival else None,
            "last_evaluated_fix": last,
            "gnss_lost_threshold_s": ctx.thresholds.gnss_lost_seconds,
        }
