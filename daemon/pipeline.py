"""Decode, decide, track alerts: the one path a message takes, live and in replay.

Pure (no I/O, time passed in), so `emon replay` and the daemon cannot disagree: the daemon
calls exactly this with the wall clock, replay with a virtual one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from alerts.lifecycle import AlertBook
from alerts.model import AlertTransition, Finding
from daemon.protectedwire import decode_protected, is_protected_topic
from daemon.transitions import ZoneTransition, presence_changes, rule_changes, snapshot
from daemon.wire import IgnoredMessage, RejectReason, WireError, decode_any
from geofence.config import CoreConfig
from geofence.engine import Engine
from geofence.observation import Observation


@dataclass(slots=True)
class Outcome:
    observation: Observation | None = None
    subject_id: str | None = None
    findings: list[Finding] = field(default_factory=list)
    transitions: list[AlertTransition] = field(default_factory=list)
    rejection: WireError | None = None
    ignored: str | None = None  # reason: a well-formed message with nothing to evaluate
    # The config this message was decided against (CoreConfig.version): stored with the
    # row, so every decision names exactly one whole config, also across a hot reload.
    config_version: str = ""
    # Confirmed zone presence changes and zone-rule findings, as rows for zone_transitions.
    zone_transitions: list[ZoneTransition] = field(default_factory=list)
    # Issue 5: a protected person's position. Nothing of it may be stored, logged or
    # dead-lettered; only the subjects' alerts it caused (in `transitions`) go on.
    protected: bool = False


class Pipeline:
    def __init__(self, config: CoreConfig) -> None:
        self._config = config
        self.engine = Engine(config)
        self.book = AlertBook(self._officer_of, config.alerting.tier_policies())
        self.rejections: Counter[RejectReason] = Counter()
        self.ignored: Counter[str] = Counter()

    @property
    def config(self) -> CoreConfig:
        return self._config

    def _officer_of(self, subject_id: str) -> str | None:
        subject = self._config.subjects.get(subject_id)
        return subject.officer_id if subject is not None else None

    def swap_config(self, config: CoreConfig) -> None:
        """Adopt a new, wholly validated config. Call it between two `handle`/`tick` calls
        (on the thread that makes them): each call then runs against one config only."""
        self._config = config
        self.engine.swap_config(config)
        self.book.swap_policies(config.alerting.tier_policies())

    def handle(
        self,
        topic: str,
        payload: bytes,
        received_at: datetime,
        future_reference: datetime | None = None,
    ) -> Outcome:
        """`received_at` is the engine's time of arrival; `future_reference` (the daemon's
        wall clock, when it is ahead of engine time) only widens the future-dated check."""
        version = self._config.version
        if is_protected_topic(topic):
            return self._handle_protected(topic, payload, received_at, future_reference)
        try:
            decoded = decode_any(topic, payload, received_at, future_reference)
            if isinstance(decoded, IgnoredMessage):
                self.ignored[decoded.reason] += 1
                return Outcome(ignored=decoded.reason, config_version=version)
            observation = decoded
            spec = self._config.devices.get(observation.device_id)
            if spec is None:
                # A device not in the roster is refused, never evaluated or stored.
                raise WireError(RejectReason.UNKNOWN_DEVICE, observation.device_id)
        except WireError as error:
            self.rejections[error.reason] += 1
            return Outcome(rejection=error, config_version=version)
        state = self.engine.device_state(observation.device_id)
        before = snapshot(state.memberships if state is not None else None)
        findings = self.engine.observe(observation, received_at)
        transitions = [t for f in findings for t in self.book.apply(f)]
        state = self.engine.device_state(observation.device_id)
        subject = self._config.subjects.get(spec.subject_id)
        zone_transitions = presence_changes(
            observation.device_id, subject, before,
            snapshot(state.memberships if state is not None else None), received_at,
            zone_ids=self._config.zones.keys(), observed_at=observation.ts,
        ) + rule_changes(findings, self._config.subjects, received_at)
        return Outcome(
            observation, spec.subject_id, findings, transitions, config_version=version,
            zone_transitions=zone_transitions,
        )

    def _handle_protected(
        self,
        topic: str,
        payload: bytes,
        received_at: datetime,
        future_reference: datetime | None = None,
    ) -> Outcome:
        version = self._config.version
        try:
            position = decode_protected(topic, payload, received_at, future_reference)
        except WireError as error:
            self.rejections[error.reason] += 1
            return Outcome(rejection=error, config_version=version, protected=True)
        findings = self.engine.observe_protected(position, received_at)
        transitions = [t for f in findings for t in self.book.apply(f)]
        return Outcome(
            findings=findings, transitions=transitions, config_version=version,
            zone_transitions=rule_changes(findings, self._config.subjects, received_at),
            protected=True,
        )

    def tick(self, now: datetime) -> list[AlertTransition]:
        return self.tick_outcome(now).transitions

    def tick_outcome(self, now: datetime) -> Outcome:
        """`tick` with its findings and zone transitions (what the daemon stores)."""
        findings = self.engine.tick(now)
        transitions = [t for f in findings for t in self.book.apply(f)]
        return Outcome(
            findings=findings, transitions=transitions, config_version=self._config.version,
            zone_transitions=rule_changes(findings, self._config.subjects, now),
        )
