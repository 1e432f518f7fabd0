"""OwnTracks phones as emon devices: `owntracks/<user>/<device>` decoding (docs/wire.md).

Pure, like `daemon.wire`: a topic, bytes and the arrival time in; a `LocationFix`, an
`IgnoredMessage` or a `WireError` out.

Device id: `<user>.<device>`, e.g. `owntracks/s001/phone` -> `s001.phone`, which must be in
the roster like any other device. The user part may not contain a dot, so the mapping is
one-to-one: with broker ACLs that let a user publish only under `owntracks/<own user>/#`, no
user can publish as another user's device (a `-` separator would let user `a` with device
`b-c` collide with user `a-b`, device `c`).

OwnTracks does not say how a fix was obtained (satellites, Wi-Fi or cell), so its fixes are
recorded with `src: gnss`; every presence decision uses the stated accuracy `acc`, which is
therefore required here although OwnTracks calls it optional.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from typing import Any, Final

from daemon.wire import (
    MAX_ACCURACY_M,
    MAX_EXTRA_FIELDS,
    OWNTRACKS_TOPIC_PREFIX,
    IgnoredMessage,
    RejectReason,
    WireError,
    _number,
    load_json_object,
    parse_timestamp,
)
from geofence.observation import FixSource, LocationFix

OWNTRACKS_USER_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,30}$")
OWNTRACKS_DEVICE_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
DEVICE_ID_SEPARATOR: Final = "."

LOCATION_TYPE: Final = "location"
ENCRYPTED_TYPE: Final = "encrypted"
# Payload types the apps publish that carry no fix for emon: counted and ignored. `lwt` is
# the broker's last will when a phone drops off (a hint for the silence rule, not a fix).
KNOWN_IGNORED_TYPES: Final = frozenset(
    {
        "beacon", "card", "cmd", "configuration", "lwt", "request", "status", "steps",
        "transition", "waypoint", "waypoints", "dump",
    }
)
IGNORED_REASON_PREFIX: Final = "owntracks_"
IGNORED_OTHER_REASON: Final = "owntracks_other_type"
"""A `_type` this build does not know: ignored (newer app versions add types)."""

_CONSUMED_KEYS: Final = frozenset({"_type", "lat", "lon", "tst", "acc", "batt", "topic"})
"""Fields mapped onto the fix (`topic` repeats the MQTT topic and is dropped)."""


def parse_owntracks_topic(topic: str) -> tuple[str, str]:
    """`owntracks/<user>/<device>` -> (user, device), or `WireError(bad_topic)`."""
    if not topic.startswith(OWNTRACKS_TOPIC_PREFIX):
        raise WireError(RejectReason.BAD_TOPIC, f"not an OwnTracks topic: {topic[:120]!r}")
    parts = topic[len(OWNTRACKS_TOPIC_PREFIX) :].split("/")
    if len(parts) != 2:
        raise WireError(RejectReason.BAD_TOPIC, f"not owntracks/<user>/<device>: {topic[:120]!r}")
    user, device = parts
    if not OWNTRACKS_USER_PATTERN.match(user):
        raise WireError(RejectReason.BAD_TOPIC, f"invalid OwnTracks user: {user[:40]!r}")
    if not OWNTRACKS_DEVICE_PATTERN.match(device):
        raise WireError(RejectReason.BAD_TOPIC, f"invalid OwnTracks device: {device[:40]!r}")
    return user, device


def owntracks_device_id(user: str, device: str) -> str:
    """The roster id of an OwnTracks phone: `<user>.<device>` (interned, as in
    `daemon.wire.parse_device_topic`)."""
    return sys.intern(f"{user}{DEVICE_ID_SEPARATOR}{device}")


def device_id_of_owntracks_topic(topic: str) -> str | None:
    """The device id of a valid OwnTracks topic, else None (for dead-letter routing)."""
    try:
        return owntracks_device_id(*parse_owntracks_topic(topic))
    except WireError:
        return None


def decode_owntracks(
    topic: str, payload: bytes, received_at: datetime, future_reference: datetime | None = None
) -> LocationFix | IgnoredMessage:
    user, device = parse_owntracks_topic(topic)
    device_id = owntracks_device_id(user, device)
    data = load_json_object(payload)
    if "_type" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "_type")
    message_type = data["_type"]
    if not isinstance(message_type, str):
        raise WireError(RejectReason.BAD_TYPE, "_type must be a string")
    if message_type == ENCRYPTED_TYPE:
        # Location data we cannot read is lost data: refuse it visibly (dead letter), so an
        # operator turns encryption off on the phone (or gives emon the key, not supported).
        raise WireError(RejectReason.UNSUPPORTED_PAYLOAD, "encrypted OwnTracks payload")
    if message_type != LOCATION_TYPE:
        if message_type in KNOWN_IGNORED_TYPES:
            return IgnoredMessage(IGNORED_REASON_PREFIX + message_type)
        return IgnoredMessage(IGNORED_OTHER_REASON)
    return _decode_location(device_id, data, received_at, future_reference)


def _decode_location(
    device_id: str,
    data: dict[str, Any],
    received_at: datetime,
    future_reference: datetime | None = None,
) -> LocationFix:
    if "tst" not in data:
        raise WireError(RejectReason.MISSING_FIELD, "tst")
    ts_value = data["tst"]
    if isinstance(ts_value, str):
        # OwnTracks sends integer epoch seconds; a string here is a broken or forged client.
        raise WireError(RejectReason.BAD_TIMESTAMP, "tst must be epoch seconds")
    ts = parse_timestamp(ts_value, received_at, future_reference)
    lat = _number(data, "lat", -90.0, 90.0)
    lon = _number(data, "lon", -180.0, 180.0)
    accuracy = _number(data, "acc", 0.0, MAX_ACCURACY_M)
    battery = _number(data, "batt", 0.0, 100.0) if "batt" in data else None
    extra = {k: v for k, v in data.items() if k not in _CONSUMED_KEYS}
    if len(extra) >= MAX_EXTRA_FIELDS:
        extra = dict(list(extra.items())[: MAX_EXTRA_FIELDS - 1])
    extra["protocol"] = "owntracks"
    return LocationFix(
        device_id=device_id,
        ts=ts,
        lat=lat,
        lon=lon,
        accuracy_m=accuracy,
        source=FixSource.GNSS,
        received_at=received_at,
        battery_pct=battery,
        extra=extra,
    )
