"""`emon replay`: the pure pipeline fed from a JSONL file, in virtual time.

Each line is `{"topic": ..., "payload": {...} | "<raw text>", "received_at": "<RFC 3339>"}`
in arrival order; `received_at` defaults to the payload's `ts` and drives the virtual clock.
Ticks run at the same interval as in the daemon, so time-driven rules behave as live.
With `escalation` (`emon replay --escalation`), the escalation ladder (policies.yaml) runs in
the same virtual time with the daemon's pure functions, so the output also has the
`notified`/`escalated`/`reminded` lines the live daemon would publish if nobody acknowledged
(silences and leave are not in a recording; inhibitions are). Off by default: the plain
output is the alerts' own lifecycle, which is what tuning a rule is about.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from alerts.escalation import Escalator, Mute
from alerts.model import Alert, AlertTransition
from alerts.suppression import mute_for
from daemon.habitlearning import ReplayPlaceHistory, learn_all, learn_moments
from daemon.pipeline import Pipeline
from daemon.ticks import grid_ceil
from geofence.config import CoreConfig
from geofence.observation import LocationFix

_LOGGER = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ReplayMessage:
    topic: str
    payload: bytes
    received_at: datetime


@dataclass(slots=True)
class ReplayStats:
    lines: int = 0
    bad_lines: int = 0
    transitions: int = 0
    rejections: Counter[str] = field(default_factory=Counter)
    ignored: Counter[str] = field(default_factory=Counter)


class ReplayLineError(ValueError):
    pass


def _shape(value: Any) -> str:
    """What a bad value looks like, without its content: it may come from a device's `ts`
    field and hold anything, a position included, and this text is logged."""
    return f"({type(value).__name__} of {len(str(value))} characters)"


def _arrival_time(value: Any) -> datetime:
    """An arrival time: RFC 3339 with offset, or epoch seconds (as on the wire)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ReplayLineError(f"received_at {_shape(value)} out of range") from None
    if not isinstance(value, str):
        raise ReplayLineError(f"bad received_at {_shape(value)}")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise ReplayLineError(f"bad received_at {_shape(value)}") from None
    if at.tzinfo is None:
        raise ReplayLineError(f"received_at without offset {_shape(value)}")
    try:
        return at.astimezone(UTC)
    except OverflowError:
        raise ReplayLineError(f"received_at {_shape(value)} out of range") from None


def parse_line(line: str) -> ReplayMessage:
    """One replay line; every problem is a `ReplayLineError` (counted, never fatal)."""
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise ReplayLineError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ReplayLineError("nested too deeply") from None
    if not isinstance(record, dict) or not isinstance(record.get("topic"), str):
        raise ReplayLineError("line needs an object with a string 'topic'")
    payload: Any = record.get("payload")
    try:
        raw = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
    except (UnicodeEncodeError, ValueError, RecursionError) as exc:
        raise ReplayLineError(f"payload not encodable: {exc}") from None
    received: Any = record.get("received_at")
    if received is None and isinstance(payload, dict):
        received = payload.get("ts")
    if received is None:
        raise ReplayLineError("no received_at and no payload ts")
    return ReplayMessage(record["topic"], raw, _arrival_time(received))


class Replayer:
    """Runs messages through a pipeline with ticks on a virtual clock."""

    def __init__(
        self, config: CoreConfig, tick_interval_seconds: float, escalation: bool = False
    ) -> None:
        self.pipeline = Pipeline(config)
        self._tick = timedelta(seconds=tick_interval_seconds)
        self._next_tick: datetime | None = None
        self.stats = ReplayStats()
        # Issue 5: frequent places learnt from the replayed fixes, at the daemon's moments.
        self._place_history = ReplayPlaceHistory()
        self._learnt_until: datetime | None = None
        self.escalator: Escalator | None = (
            Escalator(config.alerting, self.pipeline.book.get, self._mute) if escalation else None
        )

    def _mute(self, alert: Alert, now: datetime) -> Mute | None:
        return mute_for(
            alert, now, config=self.pipeline.config.alerting,
            unresolved=self.pipeline.book.unresolved(), silences=(),
        )

    def _escalate(self, transitions: list[AlertTransition], now: datetime) -> list[AlertTransition]:
        if self.escalator is None:
            return transitions
        self.escalator.observe(transitions, now)
        return transitions + self.escalator.tick(now)

    def _ticks_until(self, now: datetime) -> Iterator[AlertTransition]:
        if self._next_tick is None:
            # On the daemon's grid, so ticks interleave with messages as they did live.
            self._next_tick = grid_ceil(now, self._tick.total_seconds())
        while self._next_tick <= now:
            self._learn_places(self._next_tick)
            yield from self._escalate(self.pipeline.tick(self._next_tick), self._next_tick)
            self._next_tick += self._tick

    def _learn_places(self, now: datetime) -> None:
        habits = self.pipeline.config.behaviour.habits
        if not habits.enabled:
            return
        for moment in learn_moments(self._learnt_until, now, habits.learn_hour_utc):
            history = self._place_history.history(habits, moment)
            for learned in learn_all(self.pipeline.config, history, moment):
                self.pipeline.engine.set_frequent_places(learned)
        self._learnt_until = now

    def feed(self, message: ReplayMessage) -> list[AlertTransition]:
        transitions = list(self._ticks_until(message.received_at))
        outcome = self.pipeline.handle(message.topic, message.payload, message.received_at)
        habits = self.pipeline.config.behaviour.habits
        if (habits.enabled and isinstance(outcome.observation, LocationFix)
                and outcome.subject_id is not None):
            self._place_history.record(habits, outcome.subject_id, outcome.observation)
        if outcome.rejection is not None:
            self.stats.rejections[outcome.rejection.reason.value] += 1
        if outcome.ignored is not None:
            self.stats.ignored[outcome.ignored] += 1
        # The daemon sweeps as soon as an alert opens: the first step is not a tick late.
        transitions += self._escalate(outcome.transitions, message.received_at)
        self.stats.transitions += len(transitions)
        return transitions

    def finish(self, until: datetime | None) -> list[AlertTransition]:
        if until is None:
            return []
        transitions = list(self._ticks_until(until))
        self.stats.transitions += len(transitions)
        return transitions


def replay_lines(
    lines: Iterable[str],
    config: CoreConfig,
    tick_interval_seconds: float,
    out: IO[str],
    progress: IO[str] | None = sys.stderr,
    escalation: bool = False,
) -> ReplayStats:
    replayer = Replayer(config, tick_interval_seconds, escalation)
    last_at: datetime | None = None
    last_progress = time.monotonic()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        replayer.stats.lines += 1
        try:
            message = parse_line(line)
        except ReplayLineError as exc:
            replayer.stats.bad_lines += 1
            _LOGGER.warning("replay line %d skipped: %s", number, exc)
            continue
        last_at = message.received_at if last_at is None else max(last_at, message.received_at)
        for transition in replayer.feed(message):
            out.write(json.dumps(transition.to_wire(), ensure_ascii=False) + "\n")
        if progress is not None and time.monotonic() - last_progress >= PROGRESS_INTERVAL_SECONDS:
            last_progress = time.monotonic()
            progress.write(f"replay: {number} lines, virtual time {message.received_at}\n")
    for transition in replayer.finish(last_at):
        out.write(json.dumps(transition.to_wire(), ensure_ascii=False) + "\n")
    stats = replayer.stats
    if progress is not None:
        progress.write(
            f"replay: done, {stats.lines} lines ({stats.bad_lines} unreadable), "
            f"{stats.transitions} alert transitions, rejected: {dict(stats.rejections)}, "
            f"ignored: {dict(stats.ignored)}\n"
        )
    return stats
