"""Wire contract v1, protected persons (issue 5): `emon/v1/protected/<protected_id>/location`.

A protected person's phone (bilateral monitoring) publishes its position like a device's
location (`ts`, `lat`, `lon`, `acc`). Pure, and as distrustful as `daemon.wire`. The
position is judged and forgotten: the daemon never stores it, never logs it and never
dead-letters the payload (a rejection is counted by reason only), see docs/wire.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from daemon.wire import (
    DEVICE_ID_PATTERN,
    MAX_ACCURACY_M,
    MAX_PAYLOAD_BYTES,
    TOPIC_ROOT,
    RejectReason,
    WireError,
    _number,
    load_json_object,
    parse_timestamp,
)
from geofence.victims import ProtectedPosition

PROTECTED_TOPIC_PREFIX = f"{TOPIC_ROOT}/protected/"
PROTECTED_SUBSCRIPTION = f"{PROTECTED_TOPIC_PREFIX}+/location"


def is_protected_topic(topic: str) -> bool:
    return topic.startswith(PROTECTED_TOPIC_PREFIX)


def protected_topic(protected_id: str) -> str:
    return f"{PROTECTED_TOPIC_PREFIX}{protected_id}/location"


def _field(data: dict[str, Any], key: str, low: float, high: float) -> float:
    try:
        return _number(data, key, low, high)
    except WireError as error:
        # The detail names the field only: even a wrong value may be a position.
        raise WireError(error.reason, key) from None


def decode_protected(
    topic: str, payload: bytes, received_at: datetime, future_reference: datetime | None = None
) -> ProtectedPosition:
    rest = topic[len(PROTECTED_TOPIC_PREFIX):].split("/")
    if len(rest) != 2 or rest[1] != "location":
        raise WireError(RejectReason.BAD_TOPIC, "unknown protected-person channel")
    if not DEVICE_ID_PATTERN.match(rest[0]):
        raise WireError(RejectReason.BAD_TOPIC, "invalid protected person id")
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise WireError(RejectReason.PAYLOAD_TOO_LARGE, f"{len(payload)} bytes")
    data = load_json_object(payload)
    if "ts" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "ts")
    return ProtectedPosition(
        protected_id=rest[0],
        ts=parse_timestamp(data["ts"], received_at, future_reference),
        lat=_field(data, "lat", -90.0, 90.0),
        lon=_field(data, "lon", -180.0, 180.0),
        accuracy_m=_field(data, "acc", 0.0, MAX_ACCURACY_M),
        received_at=received_at,
    )
