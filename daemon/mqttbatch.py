"""Batched reading and acknowledging on aiomqtt's paho client (the daemon's ingest path).

aiomqtt drives paho from the asyncio loop (no paho thread): the socket's reader callback
calls `loop_read()`, and every packet paho queues for sending registers the socket for
writing through `call_soon_threadsafe` (a write to the loop's self-pipe), is sent by its
own writer callback, and unregisters it again. Two consequences cost the daemon per
message (py-spy, docs/benchmarks.md):

* paho's `loop_read()` reads at most as many packets as it has QoS exchanges in flight,
  i.e. ONE incoming PUBLISH per readable event, so the reader task wakes once per message
  and never sees more than one message waiting;
* every manual PUBACK (`Client.ack`) costs a self-pipe write, an epoll registration, a
  loop iteration, a `send` and an epoll unregistration.

Neither has a supported knob (paho ignores `loop_read`'s `max_packets` argument; aiomqtt
exposes no batch acknowledgement), so this module uses paho internals, kept minimal and
checked: `PAHO_TESTED` names the paho versions whose internals this was written against
(pyproject pins paho-mqtt below the next minor), and `install_read_batching` /
`ack_many` fall back to paho's public behaviour when an internal is missing.
tests/test_mqtt_batch.py checks both against a real Mosquitto.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.matcher import MQTTMatcher

_LOGGER = logging.getLogger(__name__)

# paho-mqtt versions whose private attributes (`_packet_read`, `_loop_rc_handle`, `_sock`,
# `_out_packet` and its packet dicts) this module was written and tested against.
PAHO_TESTED = ("2.1", "2.2")
# Incoming packets read per readable event at most: a whole broker in-flight window
# (Mosquitto's max_inflight_messages, 100 in config/mosquitto) in one go, but a bound on
# how long one callback holds the event loop (~20 us per packet).
READ_PACKETS_PER_EVENT = 256
# PUBACK of MQTT 3.1.1 and (success, no properties) of MQTT 5: fixed header 0x40,
# remaining length 2, packet identifier.
_PUBACK = struct.Struct("!BBH")
_PUBACK_COMMAND = 0x40


def _has_internals(client: paho.Client) -> bool:
    return (
        hasattr(client, "_packet_read")
        and hasattr(client, "_loop_rc_handle")
        and hasattr(client, "_sock")
        and isinstance(getattr(client, "_out_packet", None), deque)
    )


def install_read_batching(client: paho.Client) -> bool:
    """Make `client.loop_read()` read every packet already on the socket (up to
    READ_PACKETS_PER_EVENT), so messages reach aiomqtt's queue in bursts the reader takes
    as one batch. False (nothing changed) if this paho lacks the internals used."""
    if not _has_internals(client):
        _LOGGER.warning(
            "paho-mqtt %s: batched reading unavailable (tested with %s)",
            paho.__version__ if hasattr(paho, "__version__") else "?", PAHO_TESTED,
        )
        return False
    packet_read = client._packet_read
    rc_handle = client._loop_rc_handle

    def loop_read(max_packets: int = READ_PACKETS_PER_EVENT) -> MQTTErrorCode:
        # paho's loop_read() body with the packet budget it computes replaced by ours.
        for _ in range(max(max_packets, READ_PACKETS_PER_EVENT)):
            if client._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = packet_read()
            if rc > 0:
                return rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    # An instance attribute: aiomqtt's reader callback calls `client.loop_read()`.
    client.loop_read = loop_read  # type: ignore[method-assign]
    matcher = getattr(client, "_on_message_filtered", None)
    if isinstance(matcher, MQTTMatcher) and not matcher._root._children:
        # paho walks its per-topic callback trie for every incoming message (a generator
        # per topic level; py-spy: several % of the daemon) although aiomqtt registers no
        # per-topic callback (it has no API for one): give it nothing to walk.
        client._on_message_filtered = _NO_TOPIC_CALLBACKS
    return True


class _NoTopicCallbacks(MQTTMatcher):
    """paho's topic-callback trie, empty and not searched (see install_read_batching)."""

    def iter_match(self, topic: str) -> Iterator[Any]:
        return iter(())

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError("per-topic callbacks are not used with aiomqtt")


_NO_TOPIC_CALLBACKS = _NoTopicCallbacks()  # type: ignore[no-untyped-call]  # paho untyped


def ack_many(client: paho.Client, acks: Iterable[tuple[int, int]]) -> None:
    """Acknowledge QoS 1 messages (mid, qos), in order, with one socket write.

    The PUBACKs are queued as one outgoing packet and written at once on the loop's
    thread by paho's public `loop_write()`; what the socket does not take now is sent by
    aiomqtt's writer callback, which `loop_write()` registers as usual. QoS 2 (never
    subscribed by the daemon) and a paho without the internals go through `Client.ack`.
    """
    mids: list[int] = []
    for mid, qos in acks:
        if qos == 1:
            mids.append(mid)
        elif qos == 2:
            client.ack(mid, qos)
    if not mids:
        return
    if not _has_internals(client):
        for mid in mids:
            client.ack(mid, 1)
        return
    packet = b"".join([_PUBACK.pack(_PUBACK_COMMAND, 2, mid) for mid in mids])
    # The dict paho's _packet_queue builds; only "command" (neither PUBLISH nor
    # DISCONNECT: no callback) and the byte counters are read when it is written.
    out: dict[str, Any] = {
        "command": _PUBACK_COMMAND, "mid": mids[-1], "qos": 1, "pos": 0,
        "to_process": len(packet), "packet": packet, "info": None,
    }
    client._out_packet.append(out)  # type: ignore[arg-type]
    client.loop_write()
