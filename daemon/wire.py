"""Wire contract v1 decoding: the only place that trusts nothing (docs/wire.md).

Pure: bytes, a topic and the arrival time in; a typed observation or a `WireError` with a
short, stable reason code (a Prometheus label) out. Limits are explicit so that hostile or
broken devices cost bounded work.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import orjson

from geofence.observation import DeviceEvent, DeviceEventType, FixSource, LocationFix, Observation

TOPIC_ROOT = "emon/v1"
DEVICE_TOPIC_PREFIX = f"{TOPIC_ROOT}/devices/"
ALERTS_TOPIC_PREFIX = f"{TOPIC_ROOT}/alerts/"
DEADLETTER_TOPIC_PREFIX = f"{TOPIC_ROOT}/deadletter/"
# OwnTracks phones publish locations on `owntracks/<user>/<device>` (daemon/owntracks.py).
OWNTRACKS_TOPIC_PREFIX = "owntracks/"
DEVICE_SUBSCRIPTIONS = (
    f"{DEVICE_TOPIC_PREFIX}+/location",
    f"{DEVICE_TOPIC_PREFIX}+/event",
    f"{OWNTRACKS_TOPIC_PREFIX}+/+",
)

MAX_PAYLOAD_BYTES = 4096  # a fix is ~150 bytes; anything this large is not a device talking
MAX_EXTRA_FIELDS = 16
# Devices store and forward while out of coverage, so old pings are normal; a month is the
# longest any vendor buffers. A clock ahead by more than 15 minutes is a broken clock.
MAX_PAST_AGE = timedelta(days=30)
MAX_FUTURE_SKEW = timedelta(minutes=15)
MAX_ACCURACY_M = 100_000.0
# Devices send flat objects (OwnTracks nests one list). Anything deeper is hostile, and
# nesting near Python's recursion limit would make re-encoding the kept fields for the
# store or an alert fail with RecursionError far from here.
MAX_JSON_DEPTH = 16
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")


class RejectReason(StrEnum):
    PAYLOAD_TOO_LARGE = "payload_too_large"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    BAD_TOPIC = "bad_topic"
    UNKNOWN_DEVICE = "unknown_device"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    NON_FINITE = "non_finite"
    OUT_OF_RANGE = "out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"
    TS_IN_FUTURE = "ts_in_future"
    TS_TOO_OLD = "ts_too_old"
    UNKNOWN_EVENT_TYPE = "unknown_event_type"
    UNSUPPORTED_PAYLOAD = "unsupported_payload"  # e.g. an encrypted OwnTracks payload
    # Never from the decoder: the daemon's reader uses it for a message whose handling
    # raised unexpectedly (a bug), so it is dead-lettered like a refusal.
    INTERNAL_ERROR = "internal_error"
    # Issue 5: taken outside the subject's authorised monitoring (Art. 29), policy deadletter.
    OUTSIDE_AUTHORISATION = "outside_authorisation"


class WireError(Exception):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_device_topic(topic: str) -> tuple[str, str]:
    """`emon/v1/devices/<id>/<location|event>` -> (device_id, channel)."""
    if not topic.startswith(DEVICE_TOPIC_PREFIX):
        raise WireError(RejectReason.BAD_TOPIC, f"not a device topic: {topic[:120]!r}")
    rest = topic[len(DEVICE_TOPIC_PREFIX) :].split("/")
    if len(rest) != 2 or rest[1] not in ("location", "event"):
        raise WireError(RejectReason.BAD_TOPIC, f"unknown device channel: {topic[:120]!r}")
    if not DEVICE_ID_PATTERN.match(rest[0]):
        raise WireError(RejectReason.BAD_TOPIC, f"invalid device id: {rest[0][:70]!r}")
    # Interned: the engine keeps a device's recent fixes (docs/benchmarks.md, memory), and
    # each would otherwise hold its own copy of the id. Interned strings are freed with
    # their last reference, so ids of refused devices do not pile up.
    return sys.intern(rest[0]), rest[1]


@dataclass(frozen=True, slots=True)
class IgnoredMessage:
    """A well-formed message that carries nothing to evaluate or store (an OwnTracks `lwt`,
    `transition`, `card`, ...): counted under `reason`, acknowledged, never dead-lettered."""

    reason: str


def device_id_of_topic(topic: str) -> str:
    """Best-effort device id for dead-letter routing, even from a bad topic."""
    if topic.startswith(DEVICE_TOPIC_PREFIX):
        candidate = topic[len(DEVICE_TOPIC_PREFIX) :].split("/", 1)[0]
        if DEVICE_ID_PATTERN.match(candidate):
            return candidate
    if topic.startswith(OWNTRACKS_TOPIC_PREFIX):
        from daemon.owntracks import device_id_of_owntracks_topic

        return device_id_of_owntracks_topic(topic) or "_unknown"
    return "_unknown"


def channel_of_topic(topic: str) -> str:
    """A bounded metric label for a device topic: location, event, owntracks or other."""
    if topic.startswith(OWNTRACKS_TOPIC_PREFIX):
        return "owntracks"
    channel = topic.rsplit("/", 1)[-1]
    return channel if channel in ("location", "event") else "other"


def _reject_constant(value: str) -> Any:
    raise ValueError(f"{value} is not a number")


# A run of this many digits may be an integer outside 64 bits, which orjson turns into a
# float where Python's json keeps the integer: such payloads take the json path.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


def load_json_object(payload: bytes) -> dict[str, Any]:
    """The payload's top-level JSON object, or the `WireError` that refuses it.

    orjson parses the common payload (~3x Python's json); whatever it refuses or could
    read differently from json (integers beyond 64 bits) goes to `_load_json_object_slow`,
    so every payload gets the same object or the same refusal as with json alone.
    orjson itself refuses NaN, infinities, lone surrogates and invalid UTF-8, so of
    `_check_carriable` only U+0000 (written `\\u0000`) and the depth can remain, and
    each needs a byte in the payload that a plain fix does not have."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(RejectReason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes")
    if _LONG_DIGITS.search(payload) is not None:
        return _load_json_object_slow(payload)
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return _load_json_object_slow(payload)
    if type(data) is not dict:
        raise WireError(RejectReason.NOT_OBJECT, f"top level is {type(data).__name__}")
    if (
        b"\\u0000" in payload
        or payload.count(b"{") + payload.count(b"[") > MAX_JSON_DEPTH
    ):
        _check_carriable(data)
    return data


def _load_json_object_slow(payload: bytes) -> dict[str, Any]:
    try:
        # parse_constant refuses NaN and Infinity, which Python's json accepts by default.
        data = json.loads(payload, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise WireError(RejectReason.NOT_JSON, str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise WireError(RejectReason.NOT_OBJECT, f"top level is {type(data).__name__}")
    _check_carriable(data)
    return data


def _check_text(text: str) -> None:
    if "\x00" in text:
        # PostgreSQL's jsonb and text cannot hold U+0000; the row would be refused.
        raise WireError(RejectReason.NOT_JSON, "a string holds U+0000")
    if not text.isascii():  # isascii() is O(1) in CPython: ASCII text costs nothing more
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # A lone surrogate ("\\ud800", or its UTF-8 bytes, which json.loads(bytes)
            # lets through) is not Unicode text: neither publishable as UTF-8 nor storable.
            raise WireError(
                RejectReason.NOT_JSON, "a string holds an unpaired surrogate"
            ) from None


def _check_carriable(data: dict[str, Any]) -> None:
    """Refuse what parses but cannot be carried on: every field the decoder accepts (the
    extra ones included) is stored as jsonb and may be published inside an alert.

    Python's json turns 1e400 into infinity, keeps U+0000 and lone surrogates, and nests
    as deep as its recursion limit allows; none of these can be written back as JSON
    that PostgreSQL or a UTF-8 consumer accepts. Iterative, so hostile depth costs no
    stack; bench/bench_wire.py measures its cost.
    """
    pending: list[tuple[dict[str, Any] | list[Any], int]] = [(data, 1)]
    while pending:
        container, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise WireError(RejectReason.NOT_JSON, f"nested deeper than {MAX_JSON_DEPTH}")
        values: Any = container
        if type(container) is dict:
            for key in container:
                _check_text(key)
            values = container.values()
        for value in values:
            kind = type(value)
            if kind is str:
                _check_text(value)
            elif kind is float:
                if not math.isfinite(value):
                    raise WireError(
                        RejectReason.NON_FINITE, "a number overflows a double (1e400)"
                    )
            elif kind is dict or kind is list:
                pending.append((value, depth + 1))


def _number(data: dict[str, Any], key: str, low: float, high: float) -> float:
    if key not in data:
        raise WireError(RejectReason.MISSING_FIELD, key)
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(RejectReason.BAD_TYPE, f"{key} must be a number")
    try:
        number = float(value)
    except OverflowError:  # a JSON integer with hundreds of digits
        raise WireError(RejectReason.OUT_OF_RANGE, f"{key} is out of range") from None
    if not math.isfinite(number):
        raise WireError(RejectReason.NON_FINITE, key)
    if not low <= number <= high:
        raise WireError(RejectReason.OUT_OF_RANGE, f"{key}={number} not in [{low}, {high}]")
    return number


def parse_timestamp(
    value: Any, received_at: datetime, future_reference: datetime | None = None
) -> datetime:
    """`future_reference`: the latest time the receiver knows to be real, when later than
    `received_at` (the daemon's engine clock lags the wall clock while it absorbs a forward
    step of the system clock; a correctly timed device must not look future-dated then)."""
    if isinstance(value, bool):
        raise WireError(RejectReason.BAD_TIMESTAMP, "ts must be RFC 3339 or epoch seconds")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
            if not math.isfinite(seconds):
                raise WireError(RejectReason.NON_FINITE, "ts")
            ts = datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise WireError(RejectReason.BAD_TIMESTAMP, "epoch ts out of range") from None
    elif isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise WireError(RejectReason.BAD_TIMESTAMP, f"not RFC 3339: {value!r}") from None
        if parsed.tzinfo is None:
            raise WireError(RejectReason.BAD_TIMESTAMP, f"no UTC offset: {value!r}")
        try:
            ts = parsed.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00
            raise WireError(RejectReason.BAD_TIMESTAMP, f"out of range: {value!r}") from None
    else:
        raise WireError(RejectReason.BAD_TIMESTAMP, "ts must be RFC 3339 or epoch seconds")
    if ts - max(received_at, future_reference or received_at) > MAX_FUTURE_SKEW:
        raise WireError(RejectReason.TS_IN_FUTURE, f"{ts.isoformat()} is ahead of arrival")
    if received_at - ts > MAX_PAST_AGE:
        raise WireError(RejectReason.TS_TOO_OLD, f"{ts.isoformat()} is older than 30 days")
    return ts


def _extra(data: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    extra = {k: v for k, v in data.items() if k not in known}
    if len(extra) > MAX_EXTRA_FIELDS:
        extra = dict(list(extra.items())[:MAX_EXTRA_FIELDS])
    return extra


_LOCATION_KEYS = frozenset({"ts", "lat", "lon", "acc", "src", "batt"})
_EVENT_KEYS = frozenset({"ts", "type"})


def decode_location(
    device_id: str,
    data: dict[str, Any],
    received_at: datetime,
    future_reference: datetime | None = None,
) -> LocationFix:
    if "ts" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "ts")
    ts = parse_timestamp(data["ts"], received_at, future_reference)
    lat = _number(data, "lat", -90.0, 90.0)
    lon = _number(data, "lon", -180.0, 180.0)
    accuracy = _number(data, "acc", 0.0, MAX_ACCURACY_M)
    src_value = data.get("src", FixSource.GNSS.value)
    try:
        source = FixSource(src_value)
    except ValueError:
        raise WireError(RejectReason.OUT_OF_RANGE, f"src={str(src_value)[:20]!r}") from None
    battery = _number(data, "batt", 0.0, 100.0) if "batt" in data else None
    return LocationFix(
        device_id=device_id,
        ts=ts,
        lat=lat,
        lon=lon,
        accuracy_m=accuracy,
        source=source,
        received_at=received_at,
        battery_pct=battery,
        extra=_extra(data, _LOCATION_KEYS),
    )


def decode_event(
    device_id: str,
    data: dict[str, Any],
    received_at: datetime,
    future_reference: datetime | None = None,
) -> DeviceEvent:
    if "ts" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "ts")
    if "type" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "type")
    ts = parse_timestamp(data["ts"], received_at, future_reference)
    try:
        event_type = DeviceEventType(data["type"])
    except (ValueError, TypeError):
        raise WireError(
            RejectReason.UNKNOWN_EVENT_TYPE, f"type={str(data['type'])[:40]!r}"
        ) from None
    return DeviceEvent(
        device_id=device_id,
        ts=ts,
        type=event_type,
        received_at=received_at,
        attributes=_extra(data, _EVENT_KEYS),
    )


def decode_any(
    topic: str, payload: bytes, received_at: datetime, future_reference: datetime | None = None
) -> Observation | IgnoredMessage:
    """Any subscribed device topic: wire v1 (`decode`) or an OwnTracks phone."""
    if topic.startswith(OWNTRACKS_TOPIC_PREFIX):
        # Imported here because daemon.owntracks builds on this module's helpers.
        from daemon.owntracks import decode_owntracks

        return decode_owntracks(topic, payload, received_at, future_reference)
    return decode(topic, payload, received_at, future_reference)


def decode(
    topic: str, payload: bytes, received_at: datetime, future_reference: datetime | None = None
) -> Observation:
    """A wire v1 device topic (`emon/v1/devices/<id>/location|event`)."""
    device_id, channel = parse_device_topic(topic)
    data = load_json_object(payload)
    if channel == "location":
        return decode_location(device_id, data, received_at, future_reference)
    return decode_event(device_id, data, received_at, future_reference)


def deadletter_payload(
    topic: str, payload: bytes, received_at: datetime, error: WireError
) -> dict[str, Any]:
    return {
        "reason": error.reason.value,
        "detail": error.detail,
        "topic": topic[:200],
        "received_at": received_at.isoformat(),
        "payload": payload[:1024].decode("utf-8", errors="replace"),
    }
