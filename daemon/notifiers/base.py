"""What every notifier is: an async context manager with one `send`."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from daemon.store.lifecycle_repo import Delivery

USER_AGENT = "emon-notifier/1"
# HTTP answers worth retrying; any other 4xx is the request's fault and would fail again.
RETRYABLE_HTTP_STATUSES = frozenset({408, 425, 429})


class Notifier(Protocol):
    endpoint_id: str

    async def send(self, delivery: Delivery, attempt: int) -> None:
        """Deliver once; raise DeliveryError (permanent or not) when it did not arrive."""
        ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def transition_of(delivery: Delivery) -> dict[str, Any]:
    transition: dict[str, Any] = delivery.message.get("transition", {})
    return transition


def zone_of(delivery: Delivery) -> ZoneInfo | None:
    name = delivery.message.get("timezone")
    try:
        return ZoneInfo(str(name)) if name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def mentions_of(delivery: Delivery) -> list[str]:
    return [str(m) for m in delivery.message.get("mentions", [])]


def http_status_error(status: int, body: str) -> Exception:
    from daemon.notifiers import DeliveryError

    permanent = 400 <= status < 500 and status not in RETRYABLE_HTTP_STATUSES
    return DeliveryError(f"HTTP {status}: {body[:200]}", permanent=permanent)
