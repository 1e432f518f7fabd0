"""E-mail over SMTP (aiosmtplib: asyncio-native, so a slow server never blocks the loop)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from types import TracebackType
from typing import Literal, Self

import aiosmtplib

from alerts import messages
from daemon.notifiers import DeliveryError
from daemon.notifiers.base import transition_of, zone_of
from daemon.store.lifecycle_repo import Delivery

_LOGGER = logging.getLogger(__name__)


class EmailNotifier:
    def __init__(
        self,
        endpoint_id: str,
        *,
        host: str,
        port: int,
        security: Literal["none", "starttls", "tls"],
        username: str | None,
        password: str | None,
        from_address: str,
        timeout_seconds: float,
        console_url: str = "",
    ) -> None:
        self.endpoint_id = endpoint_id
        self._host, self._port, self._security = host, port, security
        self._username, self._password = username, password
        self._from = from_address
        self._timeout = timeout_seconds
        self._console_url = console_url

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def build(self, delivery: Delivery) -> EmailMessage:
        wire = transition_of(delivery)
        message = EmailMessage()
        message["From"] = self._from
        message["To"] = delivery.recipient
        message["Subject"] = messages.title(wire)
        message["Date"] = format_datetime(datetime.now(UTC))
        # Stable per delivery: a retried message that did arrive the first time is the
        # same message to the receiving system.
        message["Message-ID"] = make_msgid(idstring=delivery.delivery_id, domain="emon")
        message["X-Emon-Delivery"] = delivery.delivery_id
        message["X-Emon-Alert"] = str(wire.get("alert_id"))
        message.set_content(messages.plain_text(wire, zone_of(delivery), self._console_url))
        return message

    async def send(self, delivery: Delivery, attempt: int) -> None:
        if not delivery.recipient:
            raise DeliveryError("no e-mail address", permanent=True)
        try:
            await aiosmtplib.send(
                self.build(delivery),
                hostname=self._host,
                port=self._port,
                username=self._username,
                password=self._password,
                use_tls=self._security == "tls",
                start_tls=self._security == "starttls",
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(f"recipient refused: {exc}", permanent=True) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # 5xx: the server will not take it; 4xx: try again later.
            raise DeliveryError(
                f"SMTP {exc.code}: {exc.message}", permanent=500 <= exc.code < 600
            ) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
