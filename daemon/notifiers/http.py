"""HTTP notifiers: a signed JSON webhook, and WeCom and DingTalk group robots."""

from __future__ import annotations

import json
import logging
import time
from types import TracebackType
from typing import Any, Self

import aiohttp

from alerts import messages
from daemon.notifiers import DeliveryError
from daemon.notifiers.base import (
    USER_AGENT,
    http_status_error,
    mentions_of,
    transition_of,
    zone_of,
)
from daemon.store.lifecycle_repo import Delivery

_LOGGER = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Emon-Signature"
DELIVERY_HEADER = "X-Emon-Delivery"
# Robot error codes that mean "too many messages": retried, every other code is final.
WECOM_RATE_LIMITED = frozenset({45009})
DINGTALK_RATE_LIMITED = frozenset({130101, 660026})


class _HttpNotifier:
    def __init__(self, endpoint_id: str, url: str, timeout_seconds: float) -> None:
        self.endpoint_id = endpoint_id
        self._url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout, headers={"User-Agent": USER_AGENT}
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> str:
        if self._session is None:
            raise DeliveryError("notifier is not open")
        try:
            async with self._session.post(url, data=body, headers=headers) as response:
                text = await response.text()
                if not 200 <= response.status < 300:
                    raise http_status_error(response.status, text)
                return text
        except aiohttp.ClientError as exc:
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc


class WebhookNotifier(_HttpNotifier):
    """POSTs JSON; `X-Emon-Signature: sha256=<hex HMAC-SHA256(secret, body)>` lets the
    receiver check that emon sent it; `X-Emon-Delivery` (also in the body) is the same on
    every retry, so the receiver can drop duplicates."""

    def __init__(
        self, endpoint_id: str, url: str, secret: bytes, timeout_seconds: float,
        include_evidence: bool,
    ) -> None:
        super().__init__(endpoint_id, url, timeout_seconds)
        self._secret = secret
        self._include_evidence = include_evidence

    async def send(self, delivery: Delivery, attempt: int) -> None:
        body = json.dumps(
            messages.webhook_body(
                transition_of(delivery), delivery_id=delivery.delivery_id,
                endpoint=self.endpoint_id, recipient=delivery.officer_id, attempt=attempt,
                include_evidence=self._include_evidence,
            ),
            ensure_ascii=False, separators=(",", ":"),
        ).encode()
        await self._post(
            self._url, body,
            {
                "Content-Type": "application/json",
                SIGNATURE_HEADER: messages.sign_body(self._secret, body),
                DELIVERY_HEADER: delivery.delivery_id,
            },
        )


def _robot_answer(text: str, rate_limited: frozenset[int], name: str) -> None:
    try:
        answer: Any = json.loads(text)
    except ValueError:
        raise DeliveryError(f"{name} answered non-JSON: {text[:200]}") from None
    code = answer.get("errcode") if isinstance(answer, dict) else None
    if code == 0:
        return
    raise DeliveryError(
        f"{name} errcode {code}: {answer.get('errmsg') if isinstance(answer, dict) else ''}",
        permanent=code not in rate_limited,
    )


class WecomNotifier(_HttpNotifier):
    """WeCom (企业微信) group robot: POST to its webhook URL (the key is in the URL)."""

    def __init__(
        self, endpoint_id: str, url: str, timeout_seconds: float, console_url: str = ""
    ) -> None:
        super().__init__(endpoint_id, url, timeout_seconds)
        self._console_url = console_url

    async def send(self, delivery: Delivery, attempt: int) -> None:
        payload = messages.wecom_payload(
            transition_of(delivery), mentions_of(delivery), zone_of(delivery), self._console_url
        )
        text = await self._post(
            self._url, json.dumps(payload, ensure_ascii=False).encode(),
            {"Content-Type": "application/json"},
        )
        _robot_answer(text, WECOM_RATE_LIMITED, "WeCom")


class DingtalkNotifier(_HttpNotifier):
    """DingTalk (钉钉) group robot, optionally with 加签: timestamp and HMAC in the URL."""

    def __init__(
        self, endpoint_id: str, url: str, secret: str | None, timeout_seconds: float,
        console_url: str = "",
    ) -> None:
        super().__init__(endpoint_id, url, timeout_seconds)
        self._secret = secret
        self._console_url = console_url

    async def send(self, delivery: Delivery, attempt: int) -> None:
        payload = messages.dingtalk_payload(
            transition_of(delivery), mentions_of(delivery), zone_of(delivery), self._console_url
        )
        url = self._url
        if self._secret:
            # The signature is valid for one hour around its timestamp: made per attempt.
            query = messages.dingtalk_signed_query(self._secret, int(time.time() * 1000))
            url += query if "?" in url else "?" + query[1:]
        text = await self._post(
            url, json.dumps(payload, ensure_ascii=False).encode(),
            {"Content-Type": "application/json"},
        )
        _robot_answer(text, DINGTALK_RATE_LIMITED, "DingTalk")
