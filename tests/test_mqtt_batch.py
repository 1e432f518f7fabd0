"""daemon/mqttbatch.py against a real Mosquitto: reading every waiting packet per readable
event, and one socket write acknowledging many messages; what is not acknowledged is
redelivered to the persistent session."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode

from daemon.localservices import MosquittoProcess
from daemon.mqttbatch import ack_many, install_read_batching

MESSAGES = 50
ACKED = 30
RECEIVE_TIMEOUT_SECONDS = 10.0


async def _receive(client: aiomqtt.Client, n: int) -> list[aiomqtt.Message]:
    received: list[aiomqtt.Message] = []
    async with asyncio.timeout(RECEIVE_TIMEOUT_SECONDS):
        async for message in client.messages:
            received.append(message)
            if len(received) == n:
                return received
    raise AssertionError("message iteration ended")


async def _synced(client: aiomqtt.Client, topic: str) -> None:
    """A QoS 1 publish's PUBACK comes back only once the broker has read everything sent
    before it on this stream, the PUBACKs included. Without it, runs under load twice saw
    acknowledgements written just before a clean DISCONNECT not yet applied when the
    session was taken up again (the messages came back: redelivery, never loss)."""
    await client.publish(f"{topic}/sync", b"", qos=1)


def _session(broker: MosquittoProcess, client_id: str) -> aiomqtt.Client:
    client = aiomqtt.Client(broker.host, broker.port, identifier=client_id, clean_session=False)
    client._client.manual_ack_set(True)
    return client


async def test_batched_reads_and_acks_keep_order_and_redeliver_the_unacknowledged(
    mosquitto: MosquittoProcess,
) -> None:
    client_id = f"batch-{uuid.uuid4().hex[:8]}"
    topic = f"test/batch/{client_id}"
    async with _session(mosquitto, client_id) as subscriber:
        await subscriber.subscribe(topic, qos=1)
    # Queued by the broker for the offline persistent session: delivered in one burst.
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
        for i in range(MESSAGES):
            await publisher.publish(topic, str(i).encode(), qos=1)

    session = _session(mosquitto, client_id)
    assert install_read_batching(session._client)
    batched_read = session._client.loop_read
    reads = 0

    def counting_read(max_packets: int = 1) -> MQTTErrorCode:
        nonlocal reads
        reads += 1
        return batched_read(max_packets)

    session._client.loop_read = counting_read  # type: ignore[method-assign]
    async with session:
        received = await _receive(session, MESSAGES)
        assert [m.payload for m in received] == [str(i).encode() for i in range(MESSAGES)]
        # paho alone reads one PUBLISH per readable event; batched, several per event.
        assert reads < MESSAGES
        ack_many(session._client, [(m.mid, m.qos) for m in received[:ACKED]])
        await _synced(session, topic)

    async with _session(mosquitto, client_id) as again:
        redelivered = await _receive(again, MESSAGES - ACKED)
        assert [m.payload for m in redelivered] == [
            str(i).encode() for i in range(ACKED, MESSAGES)
        ]
        ack_many(again._client, [(m.mid, m.qos) for m in redelivered])
        await _synced(again, topic)

    async with _session(mosquitto, client_id) as last:
        # Everything acknowledged: nothing comes back (a message published now does).
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as publisher:
            await publisher.publish(topic, b"fresh", qos=1)
        (fresh,) = await _receive(last, 1)
        assert fresh.payload == b"fresh"
        ack_many(last._client, [(fresh.mid, fresh.qos)])
