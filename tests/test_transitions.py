"""Zone transitions from the pure pipeline: presence changes and zone-rule findings."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from daemon.pipeline import Pipeline
from daemon.transitions import TransitionState, ZoneRole, ZoneTransition, presence_changes
from geofence.zones import Presence
from tests.core_helpers import (
    DEVICE,
    HOME,
    HOME_ZONE,
    PERMITTED,
    SCHOOL,
    SCHOOL_XY,
    SUBJECT,
    local,
    lonlat,
    make_config,
)

TOPIC = f"emon/v1/devices/{DEVICE}/location"


def send(pipeline: Pipeline, east_m: float, north_m: float, ts: datetime) -> list[ZoneTransition]:
    lon, lat = lonlat(east_m, north_m)
    payload = json.dumps({"ts": ts.isoformat(), "lat": lat, "lon": lon, "acc": 5.0}).encode()
    outcome = pipeline.handle(TOPIC, payload, ts + timedelta(seconds=2))
    assert outcome.rejection is None
    return outcome.zone_transitions


def summary(transitions: list[ZoneTransition]) -> list[tuple[str, str, str, str, datetime]]:
    return [(t.zone_id, t.kind, t.state.value, t.role.value, t.ts) for t in transitions]


def test_presence_and_rule_transitions_of_an_evening() -> None:
    pipeline = Pipeline(make_config())
    log: list[ZoneTransition] = []
    # 21:00 at home: the first confirmation of each zone (nothing known before).
    log += send(pipeline, *HOME, local(21, 0))
    log += send(pipeline, *HOME, local(21, 1))
    # 21:30 out, inside the permitted area.
    log += send(pipeline, 0.0, 0.0, local(21, 30))
    log += send(pipeline, 0.0, 0.0, local(21, 31))
    # 22:00 the curfew begins while away: the tick decides.
    tick = pipeline.tick_outcome(local(22, 0, 15))
    log += tick.zone_transitions
    # 22:40 home again.
    log += send(pipeline, *HOME, local(22, 40))
    log += send(pipeline, *HOME, local(22, 41))

    assert summary(log) == [
        (HOME_ZONE, "presence", "inside", "home", local(21, 0)),
        (PERMITTED, "presence", "inside", "permitted", local(21, 0)),
        (HOME_ZONE, "presence", "outside", "home", local(21, 30)),
        (HOME_ZONE, "curfew_away", "violated", "home", local(22, 0)),
        (HOME_ZONE, "presence", "inside", "home", local(22, 40)),
        # The rule ends when presence at home was confirmed (the first fix of the run).
        (HOME_ZONE, "curfew_away", "cleared", "home", local(22, 40)),
    ]
    assert [t.previous for t in log if t.kind == "presence"] == [
        None, None, TransitionState.INSIDE, TransitionState.OUTSIDE,
    ]  # fmt: skip
    assert all(t.subject_id == SUBJECT and t.device_id == DEVICE for t in log)
    assert all(t.ts.utcoffset() == timedelta(0) for t in log)


def test_entering_an_exclusion_zone_and_duplicates() -> None:
    pipeline = Pipeline(make_config())
    send(pipeline, 0.0, 0.0, local(14, 0))
    send(pipeline, 0.0, 0.0, local(14, 1))
    entered = send(pipeline, *SCHOOL_XY, local(15, 0)) + send(pipeline, *SCHOOL_XY, local(15, 1))
    assert summary(entered) == [
        (SCHOOL, "presence", "inside", "exclusion", local(15, 0)),
        (SCHOOL, "exclusion_entry", "violated", "exclusion", local(15, 0)),
    ]
    # A QoS 1 redelivery of the last fix changes nothing.
    assert send(pipeline, *SCHOOL_XY, local(15, 1)) == []
    assert entered[0].role is ZoneRole.EXCLUSION


def test_the_same_messages_give_the_same_transitions() -> None:
    def run() -> list[ZoneTransition]:
        pipeline = Pipeline(make_config())
        out: list[ZoneTransition] = []
        for minute, xy in enumerate([HOME, HOME, (0.0, 0.0), (0.0, 0.0), SCHOOL_XY, SCHOOL_XY]):
            out += send(pipeline, *xy, local(20, minute))
        return out

    first, second = run(), run()
    assert first == second
    assert len(first) >= 4


def test_a_forgotten_zone_track_counts_as_left_and_bands_are_not_zones() -> None:
    config = make_config()
    subject = config.subjects[SUBJECT]
    since = local(15, 0)
    before: dict[str, tuple[Presence, datetime | None]] = {
        SCHOOL: (Presence.INSIDE, since),
        SCHOOL + "#approach": (Presence.INSIDE, since),
    }
    # The engine dropped the school's track after confirming the subject far outside it.
    got = presence_changes(
        DEVICE, subject, before, {}, local(15, 31),
        zone_ids=config.zones.keys(), observed_at=local(15, 30),
    )
    assert summary(got) == [(SCHOOL, "presence", "outside", "exclusion", local(15, 30))]
    assert got[0].previous is TransitionState.INSIDE
    # A track that vanishes while outside says nothing new.
    assert presence_changes(
        DEVICE, subject, {SCHOOL: (Presence.OUTSIDE, since)}, {}, local(15, 31),
        zone_ids=config.zones.keys(), observed_at=local(15, 30),
    ) == []
