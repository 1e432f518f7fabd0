"""Wire contract v1 decoding: valid messages, every reject reason, fuzzing; the pipeline's
refusal of unknown devices."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.pipeline import Pipeline
from daemon.wire import (
    MAX_PAYLOAD_BYTES,
    RejectReason,
    WireError,
    deadletter_payload,
    decode,
    device_id_of_topic,
    parse_device_topic,
)
from geofence.observation import DeviceEvent, DeviceEventType, FixSource, LocationFix
from tests.core_helpers import DEVICE, SUBJECT, lonlat, make_config

NOW = datetime(2026, 11, 20, 2, 0, 0, tzinfo=UTC)
LOC = "emon/v1/devices/tag-1/location"
EVT = "emon/v1/devices/tag-1/event"
GOOD: dict[str, Any] = {"ts": "2026-11-20T09:59:30+08:00", "lat": 22.54, "lon": 114.05, "acc": 8}


def payload(**changes: Any) -> bytes:
    data = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key)
        else:
            data[key] = value
    return json.dumps(data).encode()


_DROP = object()


def reason_of(topic: str, raw: bytes) -> RejectReason:
    with pytest.raises(WireError) as info:
        decode(topic, raw, NOW)
    return info.value.reason


# ---------------------------------------------------------------------- valid messages


def test_location_with_rfc3339_offset_decodes_to_utc() -> None:
    raw = payload(src="wifi", batt=57, conn="w", tid="ab")
    fix = decode(LOC, raw, NOW)
    assert isinstance(fix, LocationFix)
    assert fix.device_id == "tag-1"
    assert fix.ts == datetime(2026, 11, 20, 1, 59, 30, tzinfo=UTC)
    assert fix.ts.utcoffset() == timedelta(0)
    assert (fix.lat, fix.lon, fix.accuracy_m) == (22.54, 114.05, 8.0)
    assert fix.source is FixSource.WIFI
    assert fix.battery_pct == 57.0
    assert fix.received_at == NOW
    assert fix.extra == {"conn": "w", "tid": "ab"}


def test_location_with_epoch_seconds_and_default_source() -> None:
    epoch = NOW.timestamp() - 12.5
    fix = decode(LOC, payload(ts=epoch), NOW)
    assert isinstance(fix, LocationFix)
    assert fix.ts == NOW - timedelta(seconds=12.5)
    assert fix.source is FixSource.GNSS
    assert fix.battery_pct is None
    assert fix.extra == {}


def test_location_with_z_suffix_and_integer_coordinates() -> None:
    fix = decode(LOC, payload(ts="2026-11-20T01:59:00Z", lat=22, lon=114, acc=0), NOW)
    assert isinstance(fix, LocationFix)
    assert fix.ts == datetime(2026, 11, 20, 1, 59, tzinfo=UTC)
    assert (fix.lat, fix.lon, fix.accuracy_m) == (22.0, 114.0, 0.0)


def test_event_decodes_with_attributes() -> None:
    raw = json.dumps({"ts": int(NOW.timestamp()) - 60, "type": "strap_open", "rssi": -70}).encode()
    evt = decode(EVT, raw, NOW)
    assert isinstance(evt, DeviceEvent)
    assert evt.type is DeviceEventType.STRAP_OPEN
    assert evt.ts == NOW - timedelta(seconds=60)
    assert evt.attributes == {"rssi": -70}
    assert evt.to_wire()["attributes"] == {"rssi": -70}


def test_extra_fields_are_capped() -> None:
    extras = {f"x{i}": i for i in range(40)}
    fix = decode(LOC, json.dumps({**GOOD, **extras}).encode(), NOW)
    assert isinstance(fix, LocationFix)
    assert len(fix.extra) == 16


def test_timestamp_limits_are_inclusive_of_allowed_skew() -> None:
    ok_future = NOW + timedelta(minutes=15)
    ok_past = NOW - timedelta(days=30)
    assert decode(LOC, payload(ts=ok_future.isoformat()), NOW).ts == ok_future
    assert decode(LOC, payload(ts=ok_past.isoformat()), NOW).ts == ok_past


# ---------------------------------------------------------------------- every reject reason

REJECTS: list[tuple[str, str, bytes, RejectReason]] = [
    ("too large", LOC, payload(pad="x" * MAX_PAYLOAD_BYTES), RejectReason.PAYLOAD_TOO_LARGE),
    (
        "NaN literal",
        LOC,
        b'{"ts": 1795000000, "lat": NaN, "lon": 1, "acc": 1}',
        RejectReason.NOT_JSON,
    ),
    (
        "Infinity literal",
        LOC,
        b'{"ts": 1795000000, "lat": 1, "lon": Infinity, "acc": 1}',
        RejectReason.NOT_JSON,
    ),
    (
        "-Infinity literal",
        LOC,
        b'{"ts": -Infinity, "lat": 1, "lon": 1, "acc": 1}',
        RejectReason.NOT_JSON,
    ),
    ("truncated", LOC, b'{"ts": "2026-11-20T02:00:00Z", "lat": 1', RejectReason.NOT_JSON),
    ("not utf-8", LOC, b'{"ts": "\xff\xfe"}', RejectReason.NOT_JSON),
    ("empty", LOC, b"", RejectReason.NOT_JSON),
    ("deep nesting", LOC, b"[" * 2000 + b"]" * 2000, RejectReason.NOT_JSON),
    ("deep objects and arrays", LOC, b'{"":[' * 550 + b"1" + b"]}" * 550, RejectReason.NOT_JSON),
    ("array", LOC, b"[1, 2]", RejectReason.NOT_OBJECT),
    ("string", LOC, b'"hello"', RejectReason.NOT_OBJECT),
    ("null", LOC, b"null", RejectReason.NOT_OBJECT),
    ("number", EVT, b"42", RejectReason.NOT_OBJECT),
    ("foreign topic", "owntracks/u/tag-1", payload(), RejectReason.BAD_TOPIC),
    ("unknown channel", "emon/v1/devices/tag-1/status", payload(), RejectReason.BAD_TOPIC),
    ("extra level", "emon/v1/devices/tag-1/location/x", payload(), RejectReason.BAD_TOPIC),
    ("bad device id", "emon/v1/devices/tag 1/location", payload(), RejectReason.BAD_TOPIC),
    ("device id with +", "emon/v1/devices/+/location", payload(), RejectReason.BAD_TOPIC),
    ("empty device id", "emon/v1/devices//location", payload(), RejectReason.BAD_TOPIC),
    (
        "device id too long",
        f"emon/v1/devices/{'a' * 65}/location",
        payload(),
        RejectReason.BAD_TOPIC,
    ),
    ("missing ts", LOC, payload(ts=_DROP), RejectReason.MISSING_FIELD),
    ("missing lat", LOC, payload(lat=_DROP), RejectReason.MISSING_FIELD),
    ("missing lon", LOC, payload(lon=_DROP), RejectReason.MISSING_FIELD),
    ("missing acc", LOC, payload(acc=_DROP), RejectReason.MISSING_FIELD),
    ("event missing type", EVT, b'{"ts": "2026-11-20T02:00:00Z"}', RejectReason.MISSING_FIELD),
    ("event missing ts", EVT, b'{"type": "strap_open"}', RejectReason.MISSING_FIELD),
    ("lat as string", LOC, payload(lat="22.54"), RejectReason.BAD_TYPE),
    ("lat/lon swapped types", LOC, payload(lat=[22.5], lon={"v": 114}), RejectReason.BAD_TYPE),
    ("bool as number", LOC, payload(acc=True), RejectReason.BAD_TYPE),
    ("null as number", LOC, payload(lon=None), RejectReason.BAD_TYPE),
    ("batt as string", LOC, payload(batt="80%"), RejectReason.BAD_TYPE),
    (
        "overflowing float",
        LOC,
        b'{"ts": 1795000000, "lat": 1e400, "lon": 1, "acc": 1}',
        RejectReason.NON_FINITE,
    ),
    (
        "overflowing float ts",
        LOC,
        b'{"ts": 1e400, "lat": 1, "lon": 1, "acc": 1}',
        RejectReason.NON_FINITE,
    ),
    ("lat above 90", LOC, payload(lat=90.000001), RejectReason.OUT_OF_RANGE),
    ("lat below -90", LOC, payload(lat=-91), RejectReason.OUT_OF_RANGE),
    ("lon above 180", LOC, payload(lon=180.5), RejectReason.OUT_OF_RANGE),
    ("negative accuracy", LOC, payload(acc=-1), RejectReason.OUT_OF_RANGE),
    ("absurd accuracy", LOC, payload(acc=100_001), RejectReason.OUT_OF_RANGE),
    ("battery over 100", LOC, payload(batt=101), RejectReason.OUT_OF_RANGE),
    ("unknown source", LOC, payload(src="psychic"), RejectReason.OUT_OF_RANGE),
    ("source of wrong type", LOC, payload(src=["gnss"]), RejectReason.OUT_OF_RANGE),
    ("naive ts", LOC, payload(ts="2026-11-20T02:00:00"), RejectReason.BAD_TIMESTAMP),
    ("date only", LOC, payload(ts="2026-11-20"), RejectReason.BAD_TIMESTAMP),
    ("garbage ts", LOC, payload(ts="yesterday"), RejectReason.BAD_TIMESTAMP),
    ("bool ts", LOC, payload(ts=True), RejectReason.BAD_TIMESTAMP),
    ("null ts", LOC, payload(ts=None), RejectReason.BAD_TIMESTAMP),
    (
        "overlong ts string",
        LOC,
        payload(ts="2026-11-20T02:00:00" + "0" * 60 + "Z"),
        RejectReason.BAD_TIMESTAMP,
    ),
    ("epoch out of range", LOC, payload(ts=-1e20), RejectReason.BAD_TIMESTAMP),
    (
        "ts 16 min ahead",
        LOC,
        payload(ts=(NOW + timedelta(minutes=16)).isoformat()),
        RejectReason.TS_IN_FUTURE,
    ),
    ("epoch far future", LOC, payload(ts=NOW.timestamp() + 86400 * 365), RejectReason.TS_IN_FUTURE),
    (
        "ts 31 days old",
        LOC,
        payload(ts=(NOW - timedelta(days=31)).isoformat()),
        RejectReason.TS_TOO_OLD,
    ),
    ("epoch zero", LOC, payload(ts=0), RejectReason.TS_TOO_OLD),
    (
        "unknown event type",
        EVT,
        b'{"ts": "2026-11-20T02:00:00Z", "type": "alien"}',
        RejectReason.UNKNOWN_EVENT_TYPE,
    ),
    (
        "event type not a string",
        EVT,
        b'{"ts": "2026-11-20T02:00:00Z", "type": ["strap_open"]}',
        RejectReason.UNKNOWN_EVENT_TYPE,
    ),
]


@pytest.mark.parametrize(
    ("topic", "raw", "expected"), [r[1:] for r in REJECTS], ids=[r[0] for r in REJECTS]
)
def test_reject_reason(topic: str, raw: bytes, expected: RejectReason) -> None:
    assert reason_of(topic, raw) is expected


def test_every_reject_reason_is_produced_by_some_input() -> None:
    # UNKNOWN_DEVICE: see the pipeline test; UNSUPPORTED_PAYLOAD: tests/test_owntracks.py;
    # INTERNAL_ERROR: the daemon's reader, tests/test_faults_reader.py.
    produced = {r[3] for r in REJECTS} | {
        RejectReason.UNKNOWN_DEVICE, RejectReason.UNSUPPORTED_PAYLOAD,
        RejectReason.INTERNAL_ERROR,
    }
    assert produced == set(RejectReason)


def test_topic_is_checked_before_the_payload() -> None:
    assert reason_of("emon/v1/devices/x/status", b"not json") is RejectReason.BAD_TOPIC


def test_device_topic_helpers() -> None:
    assert parse_device_topic("emon/v1/devices/tag-1.a:b_c/event") == ("tag-1.a:b_c", "event")
    assert device_id_of_topic(LOC) == "tag-1"
    assert device_id_of_topic("emon/v1/devices/tag 1/location") == "_unknown"
    assert device_id_of_topic("other/topic") == "_unknown"


def test_deadletter_payload_is_bounded_and_readable() -> None:
    raw = b"\xff" + b"a" * 5000
    with pytest.raises(WireError) as info:
        decode(LOC, raw, NOW)
    dead = deadletter_payload(LOC, raw, NOW, info.value)
    assert dead["reason"] == "payload_too_large"
    assert dead["topic"] == LOC
    assert dead["received_at"] == NOW.isoformat()
    assert len(dead["payload"]) == 1024
    assert dead["payload"][0] == "\ufffd"
    json.dumps(dead)  # serialisable as is


@pytest.mark.parametrize("field", ["lat", "lon", "acc", "batt", "ts"])
def test_huge_integer_is_a_wire_error(field: str) -> None:
    raw = payload(**{field: 10**400})
    assert reason_of(LOC, raw) in (
        RejectReason.OUT_OF_RANGE,
        RejectReason.BAD_TIMESTAMP,
        RejectReason.NON_FINITE,
    )


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_timestamp_beyond_datetime_range_is_a_wire_error(ts: str) -> None:
    assert reason_of(LOC, payload(ts=ts)) in (
        RejectReason.BAD_TIMESTAMP,
        RejectReason.TS_TOO_OLD,
        RejectReason.TS_IN_FUTURE,
    )


# ---------------------------------------------------------------------- fuzzing

topic_st = st.sampled_from([LOC, EVT])
# Integers stay within float range here: huge integers have their own test above.
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**300), 10**300),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=20,
)
timestamp_like = st.one_of(
    json_value,
    st.floats(NOW.timestamp() - 40 * 86400, NOW.timestamp() + 3600),
    st.datetimes(
        min_value=datetime(2000, 1, 1),  # noqa: DTZ001 - bounds for a tz-aware strategy
        max_value=datetime(2100, 1, 1),  # noqa: DTZ001
        timezones=st.sampled_from([UTC, None]),
    ).map(lambda d: d.isoformat()),
)
location_like = st.fixed_dictionaries(
    {},
    optional={
        "ts": timestamp_like,
        "lat": st.one_of(json_value, st.floats(-100, 100)),
        "lon": st.one_of(json_value, st.floats(-200, 200)),
        "acc": st.one_of(json_value, st.floats(-10, 200_000)),
        "src": st.one_of(json_value, st.sampled_from(["gnss", "cell", "wifi", "GNSS"])),
        "batt": st.one_of(json_value, st.floats(-10, 110)),
        "type": st.one_of(json_value, st.sampled_from([e.value for e in DeviceEventType])),
    },
)


def assert_decodes_or_wire_error(topic: str, raw: bytes) -> None:
    try:
        decoded = decode(topic, raw, NOW)
    except WireError:
        return
    # Whatever gets through satisfies the contract the core relies on.
    assert decoded.ts.utcoffset() == timedelta(0)
    assert NOW - timedelta(days=30) <= decoded.ts <= NOW + timedelta(minutes=15)
    if isinstance(decoded, LocationFix):
        assert -90 <= decoded.lat <= 90
        assert -180 <= decoded.lon <= 180
        assert 0 <= decoded.accuracy_m <= 100_000


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=st.one_of(topic_st, st.text(max_size=60)), raw=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_raise_wire_error(topic: str, raw: bytes) -> None:
    assert_decodes_or_wire_error(topic, raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topic_st, value=json_value)
def test_fuzz_arbitrary_json_only_raises_wire_error(topic: str, value: Any) -> None:
    assert_decodes_or_wire_error(topic, json.dumps(value).encode())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(topic=topic_st, value=location_like)
def test_fuzz_near_valid_messages_only_raise_wire_error(topic: str, value: Any) -> None:
    assert_decodes_or_wire_error(topic, json.dumps(value).encode())


# ---------------------------------------------------------------------- pipeline


def test_pipeline_rejects_unknown_device_and_counts_it() -> None:
    pipeline = Pipeline(make_config())
    lon, lat = lonlat(0.0, 0.0)
    body = json.dumps({"ts": NOW.isoformat(), "lat": lat, "lon": lon, "acc": 5}).encode()
    outcome = pipeline.handle("emon/v1/devices/stranger/location", body, NOW)
    assert outcome.rejection is not None
    assert outcome.rejection.reason is RejectReason.UNKNOWN_DEVICE
    assert outcome.observation is None
    assert outcome.findings == []
    assert outcome.transitions == []
    assert pipeline.rejections[RejectReason.UNKNOWN_DEVICE] == 1
    # Never evaluated: the engine did not even see it.
    assert pipeline.engine.device_state("stranger") is None
    assert pipeline.engine.stats["unknown_device"] == 0
    # A known device on the same path goes through.
    known = pipeline.handle(f"emon/v1/devices/{DEVICE}/location", body, NOW)
    assert known.rejection is None
    assert known.subject_id == SUBJECT
    assert pipeline.engine.stats["fix_evaluated"] == 1


def test_pipeline_counts_wire_rejections_by_reason() -> None:
    pipeline = Pipeline(make_config())
    pipeline.handle(f"emon/v1/devices/{DEVICE}/location", b"{", NOW)
    pipeline.handle(f"emon/v1/devices/{DEVICE}/location", b"[]", NOW)
    pipeline.handle(f"emon/v1/devices/{DEVICE}/location", b"{", NOW)
    assert pipeline.rejections == {RejectReason.NOT_JSON: 2, RejectReason.NOT_OBJECT: 1}


def test_pipeline_turns_a_strap_event_into_an_opened_alert() -> None:
    pipeline = Pipeline(make_config())
    body = json.dumps({"ts": NOW.isoformat(), "type": "strap_open"}).encode()
    outcome = pipeline.handle(f"emon/v1/devices/{DEVICE}/event", body, NOW)
    assert [
        (t.kind.value, t.alert.rule.value, t.alert.officer_id) for t in outcome.transitions
    ] == [("opened", "strap_open", "off1")]
