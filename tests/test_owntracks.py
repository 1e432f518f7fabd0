"""OwnTracks phones as devices: topic mapping, location decoding, ignored types, hostile input."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.configfiles import load_config
from daemon.owntracks import decode_owntracks, device_id_of_owntracks_topic
from daemon.pipeline import Pipeline
from daemon.wire import (
    DEVICE_SUBSCRIPTIONS,
    IgnoredMessage,
    RejectReason,
    WireError,
    channel_of_topic,
    deadletter_payload,
    decode_any,
    device_id_of_topic,
)
from geofence.observation import FixSource, LocationFix

ARRIVAL = datetime(2026, 11, 20, 4, 0, tzinfo=UTC)
TST = int(ARRIVAL.timestamp()) - 5
SCENARIO_CONFIG = Path(__file__).resolve().parent.parent / "simulators" / "scenarios" / "config"


def _location(**fields: Any) -> bytes:
    body: dict[str, Any] = {
        "_type": "location", "lat": 22.5401, "lon": 114.0601, "tst": TST, "acc": 12,
        "batt": 77, "conn": "m", "tid": "s1", "topic": "owntracks/s001/phone",
    }
    body.update(fields)
    return json.dumps({k: v for k, v in body.items() if v is not None}).encode()


def test_subscription_covers_owntracks_base_topic() -> None:
    assert "owntracks/+/+" in DEVICE_SUBSCRIPTIONS


def test_location_maps_to_a_fix_of_device_user_dot_device() -> None:
    fix = decode_any("owntracks/s001/phone", _location(), ARRIVAL)
    assert isinstance(fix, LocationFix)
    assert fix.device_id == "s001.phone"
    assert fix.ts == datetime.fromtimestamp(TST, UTC)
    assert (fix.lat, fix.lon, fix.accuracy_m, fix.battery_pct) == (22.5401, 114.0601, 12.0, 77.0)
    assert fix.source is FixSource.GNSS
    # Other OwnTracks fields are kept as attributes; the redundant topic is dropped.
    assert fix.extra == {"conn": "m", "tid": "s1", "protocol": "owntracks"}


def test_device_id_mapping_is_one_to_one() -> None:
    # With a '-' separator these two would collide; the user part may not hold the '.'.
    assert device_id_of_owntracks_topic("owntracks/a/b-c") == "a.b-c"
    assert device_id_of_owntracks_topic("owntracks/a-b/c") == "a-b.c"
    with pytest.raises(WireError) as info:
        decode_any("owntracks/a.b/c", _location(), ARRIVAL)
    assert info.value.reason is RejectReason.BAD_TOPIC


@pytest.mark.parametrize(
    "kind", ["lwt", "transition", "card", "waypoint", "waypoints", "status", "cmd", "steps"]
)
def test_non_location_types_are_ignored_not_refused(kind: str) -> None:
    outcome = decode_any("owntracks/s001/phone", json.dumps({"_type": kind, "tst": TST}).encode(),
                     ARRIVAL)
    assert outcome == IgnoredMessage(f"owntracks_{kind}")


def test_unknown_future_type_is_ignored_under_one_bounded_label() -> None:
    outcome = decode_any("owntracks/s001/phone", b'{"_type": "hologram"}', ARRIVAL)
    assert outcome == IgnoredMessage("owntracks_other_type")


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("owntracks/s001/phone", b'{"_type": "encrypted", "data": "AAAA"}',
         RejectReason.UNSUPPORTED_PAYLOAD),
        ("owntracks/s001/phone", _location(acc=None), RejectReason.MISSING_FIELD),
        ("owntracks/s001/phone", _location(tst=None), RejectReason.MISSING_FIELD),
        ("owntracks/s001/phone", _location(lat=None), RejectReason.MISSING_FIELD),
        ("owntracks/s001/phone", b'{"lat": 1}', RejectReason.MISSING_FIELD),
        ("owntracks/s001/phone", b'{"_type": 7}', RejectReason.BAD_TYPE),
        ("owntracks/s001/phone", _location(lat=91), RejectReason.OUT_OF_RANGE),
        ("owntracks/s001/phone", _location(acc=-1), RejectReason.OUT_OF_RANGE),
        ("owntracks/s001/phone", _location(batt=101), RejectReason.OUT_OF_RANGE),
        ("owntracks/s001/phone", _location(lon="114"), RejectReason.BAD_TYPE),
        ("owntracks/s001/phone", _location(lat=True), RejectReason.BAD_TYPE),
        ("owntracks/s001/phone", _location(tst="2026-11-20T04:00:00Z"),
         RejectReason.BAD_TIMESTAMP),
        ("owntracks/s001/phone", _location(tst=TST + 3600), RejectReason.TS_IN_FUTURE),
        ("owntracks/s001/phone", _location(tst=TST - 40 * 86400), RejectReason.TS_TOO_OLD),
        ("owntracks/s001/phone", b'{"_type": "location", "lat": NaN}', RejectReason.NOT_JSON),
        ("owntracks/s001/phone", b"[1, 2]", RejectReason.NOT_OBJECT),
        ("owntracks/s001/phone", b"x" * 5000, RejectReason.PAYLOAD_TOO_LARGE),
        ("owntracks/s001", _location(), RejectReason.BAD_TOPIC),
        ("owntracks/s001/phone/event", _location(), RejectReason.BAD_TOPIC),
        ("owntracks//phone", _location(), RejectReason.BAD_TOPIC),
        ("owntracks/s001/" + "p" * 40, _location(), RejectReason.BAD_TOPIC),
    ],
)
def test_hostile_or_broken_input_is_refused_with_a_reason(
    topic: str, payload: bytes, reason: RejectReason
) -> None:
    with pytest.raises(WireError) as info:
        decode_any(topic, payload, ARRIVAL)
    assert info.value.reason is reason
    # The dead letter names the device when the topic allows it.
    letter = deadletter_payload(topic, payload, ARRIVAL, info.value)
    assert letter["reason"] == reason.value


def test_deadletter_routing_and_metric_label() -> None:
    assert device_id_of_topic("owntracks/s001/phone") == "s001.phone"
    assert device_id_of_topic("owntracks/bad.user/phone") == "_unknown"
    assert channel_of_topic("owntracks/s001/phone") == "owntracks"
    assert channel_of_topic("emon/v1/devices/tag-s001/location") == "location"
    assert channel_of_topic("emon/v1/devices/tag-s001/x") == "other"


def test_extra_fields_stay_bounded() -> None:
    body = json.loads(_location())
    body.update({f"k{i}": i for i in range(40)})
    fix = decode_any("owntracks/s001/phone", json.dumps(body).encode(), ARRIVAL)
    assert isinstance(fix, LocationFix)
    assert len(fix.extra) == 16
    assert fix.extra["protocol"] == "owntracks"


_JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=6),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(
    user=st.text(max_size=12),
    device=st.text(max_size=12),
    fields=st.dictionaries(
        st.sampled_from(["_type", "lat", "lon", "tst", "acc", "batt", "conn", "x"]),
        _JSON | st.sampled_from(["location", "lwt", "encrypted"]) | st.integers(TST - 10, TST),
        max_size=8,
    ),
)
def test_any_input_gives_a_fix_an_ignore_or_a_wire_error(
    user: str, device: str, fields: dict[str, Any]
) -> None:
    try:
        payload = json.dumps(fields).encode()
    except ValueError:
        payload = b"{}"
    try:
        outcome = decode_owntracks(f"owntracks/{user}/{device}", payload, ARRIVAL)
    except WireError as error:
        reason: RejectReason | None = error.reason
    else:
        reason = None
    if reason is not None:
        assert reason in set(RejectReason)
        return
    if isinstance(outcome, LocationFix):
        assert -90 <= outcome.lat <= 90
        assert -180 <= outcome.lon <= 180
        assert outcome.ts.tzinfo is not None
        assert abs(outcome.ts - ARRIVAL) <= timedelta(days=31)
    else:
        assert outcome.reason.startswith("owntracks_")


def test_pipeline_counts_ignored_and_evaluates_owntracks_fixes() -> None:
    pipeline = Pipeline(load_config(SCENARIO_CONFIG).core)
    ignored = pipeline.handle("owntracks/s001/phone", b'{"_type": "lwt", "tst": 1}', ARRIVAL)
    assert ignored.ignored == "owntracks_lwt"
    assert ignored.rejection is None
    assert ignored.observation is None
    assert pipeline.ignored["owntracks_lwt"] == 1
    # A phone outside Futian twice: boundary_exit for its subject, like any device.
    transitions = []
    for offset_s in (120, 60):
        outcome = pipeline.handle(
            "owntracks/s001/phone",
            _location(lat=22.53, lon=113.93, tst=TST - offset_s, topic=None, tid=None),
            ARRIVAL,
        )
        assert outcome.rejection is None
        assert outcome.subject_id == "s001"
        transitions += outcome.transitions
    assert [(t.kind.value, t.alert.rule.value, t.alert.device_id) for t in transitions] == [
        ("opened", "boundary_exit", "s001.phone")
    ]
    unknown = pipeline.handle("owntracks/nobody/phone", _location(), ARRIVAL)
    assert unknown.rejection is not None
    assert unknown.rejection.reason is RejectReason.UNKNOWN_DEVICE
