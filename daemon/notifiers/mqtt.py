"""Officers' own MQTT topics: `emon/v1/officers/<officer_id>/notifications` (QoS 1).

Published through the daemon's one MQTT connection: `publish` returns once the broker has
acknowledged the message (PUBACK), or raises when the connection is down."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Self

from daemon.notifiers import DeliveryError
from daemon.notifiers.base import transition_of
from daemon.store.lifecycle_repo import Delivery

OFFICER_TOPIC_PREFIX = "emon/v1/officers/"
OFFICER_TOPIC_SUFFIX = "/notifications"

Publish = Callable[[str, bytes], Awaitable[None]]


def officer_topic(officer_id: str) -> str:
    return OFFICER_TOPIC_PREFIX + officer_id + OFFICER_TOPIC_SUFFIX


class MqttNotifier:
    def __init__(self, endpoint_id: str, publish: Publish) -> None:
        self.endpoint_id = endpoint_id
        self._publish = publish

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def send(self, delivery: Delivery, attempt: int) -> None:
        if not delivery.officer_id:
            raise DeliveryError("no officer for an MQTT notification", permanent=True)
        body = dict(transition_of(delivery))
        body["delivery_id"] = delivery.delivery_id
        payload = json.dumps(body, ensure_ascii=False).encode()
        await self._publish(officer_topic(delivery.officer_id), payload)
