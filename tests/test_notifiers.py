"""Notifiers against real receivers started in the test: an aiohttp webhook server that
checks the HMAC signature and answers with failures first (retries, giving up), an
aiosmtpd SMTP server, and WeCom/DingTalk robot stand-ins that check the documented JSON
formats and DingTalk's signed URL. Deliveries go through the real outbox (PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from prometheus_client import REGISTRY

from alerts.lifecycle import AlertBook
from alerts.model import AlertTransition, Finding, FindingKind, RuleId, Tier
from daemon.localservices import find_free_port
from daemon.notifiers import DeliveryError
from daemon.notifiers.base import Notifier
from daemon.notifiers.dispatcher import DeliveryDispatcher, EndpointPolicy
from daemon.notifiers.email import EmailNotifier
from daemon.notifiers.http import DingtalkNotifier, WebhookNotifier, WecomNotifier
from daemon.notifiers.routing import Router
from daemon.policyfile import PoliciesFile, compile_alerting
from daemon.store.lifecycle_repo import Delivery, LifecycleStore
from daemon.store.migrations import migrate
from daemon.store.pool import open_pool

pytestmark = pytest.mark.services

SECRET = b"test-signing-key"
FAST = EndpointPolicy(max_attempts=4, initial_backoff_seconds=0.05, max_backoff_seconds=0.2,
                      timeout_seconds=2.0, workers=1, queue_size=10)
T0 = datetime(2026, 11, 20, 2, 15, tzinfo=UTC)
EVIDENCE = {"ping": {"lat": 22.5445, "lon": 114.0462, "acc": 6.0}}


@dataclass
class Receiver:
    """An HTTP server whose answers are scripted; it records every request."""

    answers: list[tuple[int, Any]]
    requests: list[tuple[dict[str, str], bytes, dict[str, str]]] = field(default_factory=list)
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body, dict(request.query)))
        status, answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return web.json_response(answer, status=status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Receiver], Any]]:
    runners: list[web.AppRunner] = []

    async def start(receiver: Receiver) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        receiver.port = find_free_port()
        await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
        runners.append(runner)
        return receiver

    yield start
    for runner in runners:
        await runner.cleanup()


def opened_transition() -> AlertTransition:
    book = AlertBook(lambda _s: "off-li")
    [transition] = book.apply(
        Finding("s001", "tag-s001", RuleId.STRAP_OPEN, None, Tier.CRITICAL, FindingKind.RAISED,
                T0, EVIDENCE, "Strap opened on device tag-s001")
    )
    return transition


async def deliver_through_outbox(
    dsn: str, notifier: Notifier, policy: EndpointPolicy
) -> tuple[str, list[dict[str, Any]]]:
    """Record an opened alert whose endpoint feed gets it; run the dispatcher until the
    delivery is final; return its status and the delivery rows of the alert's history."""
    await migrate(dsn)
    policies = PoliciesFile.model_validate(
        {"notifiers": {notifier.endpoint_id: {
            "kind": "webhook", "url": "http://127.0.0.1:9/x", "secret_env": "UNUSED",
            "feed": ["opened"]}}, "mqtt_officer_topics": False}
    )
    transition = opened_transition()
    async with open_pool(dsn, min_size=1, max_size=3) as pool, notifier:
        store = LifecycleStore(pool)
        await store.record([transition], compile_alerting(policies, {}), Router(policies, {}))
        dispatcher = DeliveryDispatcher(store, {notifier.endpoint_id: notifier},
                                        {notifier.endpoint_id: policy})
        task = asyncio.create_task(dispatcher.run())
        try:
            async with asyncio.timeout(20):
                while True:
                    counts = await store.outbox_counts()
                    final = [s for (_e, s) in counts if s != "pending"]
                    if final:
                        break
                    await asyncio.sleep(0.05)
        finally:
            dispatcher.request_stop()
            await task
        history = await store.history(transition.alert.alert_id)
    return final[0], [h["payload"] for h in history if h["kind"] == "delivery"]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_webhook_is_signed_and_retried_until_it_arrives(
    pg_dsn: str, serve: Callable[[Receiver], Any]
) -> None:
    receiver: Receiver = await serve(
        Receiver([(500, {"error": "busy"}), (503, {}), (200, {"ok": True})])
    )
    notifier = WebhookNotifier("ops", receiver.url, SECRET, 2.0, include_evidence=False)
    status, deliveries = await deliver_through_outbox(pg_dsn, notifier, FAST)

    assert status == "sent"
    assert len(receiver.requests) == 3
    delivery_ids = set()
    for attempt, (headers, body, _query) in enumerate(receiver.requests, start=1):
        expected = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-Emon-Signature"], expected)
        payload = json.loads(body)
        assert payload["attempt"] == attempt
        assert payload["alert"]["transition"] == "opened"
        assert "trigger" not in payload["alert"]
        assert "last_evidence" not in payload["alert"]
        delivery_ids.add(headers["X-Emon-Delivery"])
        assert payload["delivery_id"] == headers["X-Emon-Delivery"]
    assert len(delivery_ids) == 1  # the same delivery each time: receivers deduplicate
    assert [(d["outcome"], d["attempt"]) for d in deliveries] == [
        ("retried", 1), ("retried", 2), ("sent", 3)
    ]
    assert "HTTP 500" in deliveries[0]["error"]
    assert all(0 < d["retry_in_seconds"] <= 0.2 for d in deliveries[:2])


async def test_webhook_tampered_body_fails_the_check() -> None:
    body = b'{"alert":{"tier":"critical"}}'
    signature = "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    from alerts.messages import sign_body

    assert sign_body(SECRET, body) == signature
    assert sign_body(SECRET, body.replace(b"critical", b"low")) != signature


async def test_webhook_gives_up_after_max_attempts_and_counts_it(
    pg_dsn: str, serve: Callable[[Receiver], Any]
) -> None:
    receiver: Receiver = await serve(Receiver([(503, {})]))
    notifier = WebhookNotifier("down", receiver.url, SECRET, 2.0, include_evidence=False)
    before = metric("emon_notification_deliveries_total", endpoint="down", outcome="gave_up")
    policy = EndpointPolicy(3, 0.02, 0.05, 2.0, 1, 10)
    status, deliveries = await deliver_through_outbox(pg_dsn, notifier, policy)
    assert status == "gave_up"
    assert len(receiver.requests) == 3
    assert [d["outcome"] for d in deliveries] == ["retried", "retried", "gave_up"]
    assert metric("emon_notification_deliveries_total", endpoint="down",
                  outcome="gave_up") == before + 1
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT status, attempts, last_error FROM notification_outbox")
        assert await cur.fetchone() == ("gave_up", 3, "HTTP 503: {}")


async def test_a_client_error_is_not_retried(
    pg_dsn: str, serve: Callable[[Receiver], Any]
) -> None:
    receiver: Receiver = await serve(Receiver([(400, {"error": "bad schema"})]))
    notifier = WebhookNotifier("strict", receiver.url, SECRET, 2.0, include_evidence=True)
    status, deliveries = await deliver_through_outbox(pg_dsn, notifier, FAST)
    assert status == "failed"
    assert len(receiver.requests) == 1
    assert [d["outcome"] for d in deliveries] == ["failed"]
    assert json.loads(receiver.requests[0][1])["alert"]["trigger"] == EVIDENCE


def delivery(recipient: str = "", mentions: list[str] | None = None) -> Delivery:
    transition = opened_transition()
    return Delivery("0c7d5d43-5a49-4f0a-9d59-1b2b3c4d5e6f", transition.alert.alert_id, "opened",
                    T0, "x", recipient, "off-li",
                    {"transition": transition.to_wire(), "mentions": mentions or [],
                     "timezone": "Asia/Shanghai"}, 0)


async def test_email_over_smtp_to_a_real_server() -> None:
    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    port = find_free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notifier = EmailNotifier("mail", host="127.0.0.1", port=port, security="none",
                                 username=None, password=None, from_address="emon@example.org",
                                 timeout_seconds=5.0)
        async with notifier:
            await notifier.send(delivery("li@example.org"), 1)
    finally:
        controller.stop()
    [envelope] = received
    assert envelope.rcpt_tos == ["li@example.org"]
    message = message_from_bytes(envelope.content, policy=email_policy.default)
    assert isinstance(message, EmailMessage)
    assert message["Subject"] == "[CRITICAL] strap_open · subject s001 · new alert"
    assert message["X-Emon-Delivery"] == "0c7d5d43-5a49-4f0a-9d59-1b2b3c4d5e6f"
    text = message.get_content()
    assert "Strap opened on device tag-s001" in text
    assert "10:15:00 CST" in text  # the subject's time zone (Asia/Shanghai)
    assert "22.54" not in text
    assert "114.04" not in text


async def test_email_refused_recipient_is_permanent() -> None:
    class Refuse:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              options: Any) -> str:
            return "550 no such user"

    port = find_free_port()
    controller = Controller(Refuse(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        notifier = EmailNotifier("mail", host="127.0.0.1", port=port, security="none",
                                 username=None, password=None, from_address="emon@example.org",
                                 timeout_seconds=5.0)
        with pytest.raises(DeliveryError) as caught:
            await notifier.send(delivery("nobody@example.org"), 1)
    finally:
        controller.stop()
    assert caught.value.permanent


async def test_wecom_robot_formats_and_error_codes(serve: Callable[[Receiver], Any]) -> None:
    receiver: Receiver = await serve(
        Receiver([(200, {"errcode": 0, "errmsg": "ok"}), (200, {"errcode": 0, "errmsg": "ok"}),
                  (200, {"errcode": 45009, "errmsg": "api freq out of limit"}),
                  (200, {"errcode": 93000, "errmsg": "invalid webhook url"})])
    )
    notifier = WecomNotifier("wecom", receiver.url, 2.0)
    async with notifier:
        await notifier.send(delivery(), 1)
        await notifier.send(delivery(mentions=["13800000000"]), 1)
        with pytest.raises(DeliveryError) as limited:
            await notifier.send(delivery(), 1)
        with pytest.raises(DeliveryError) as invalid:
            await notifier.send(delivery(), 1)
    markdown = json.loads(receiver.requests[0][1])
    assert markdown["msgtype"] == "markdown"
    assert markdown["markdown"]["content"].startswith("### [CRITICAL] strap_open")
    text = json.loads(receiver.requests[1][1])
    assert text["msgtype"] == "text"
    assert text["text"]["mentioned_mobile_list"] == ["13800000000"]
    assert "22.54" not in receiver.requests[0][1].decode()
    assert not limited.value.permanent
    assert invalid.value.permanent


async def test_dingtalk_robot_signed_url_and_format(serve: Callable[[Receiver], Any]) -> None:
    receiver: Receiver = await serve(Receiver([(200, {"errcode": 0, "errmsg": "ok"})]))
    secret = "SEC0123456789abcdef"
    notifier = DingtalkNotifier("ding", receiver.url + "?access_token=abc", secret, 2.0)
    async with notifier:
        await notifier.send(delivery(mentions=["13900000000"]), 1)
    [(_headers, body, query)] = receiver.requests
    # Verify as DingTalk does: HMAC-SHA256(secret, "timestamp\nsecret"), base64.
    assert query["access_token"] == "abc"
    to_sign = f"{query['timestamp']}\n{secret}".encode()
    expected = base64.b64encode(hmac.new(secret.encode(), to_sign, hashlib.sha256).digest())
    assert query["sign"] == expected.decode()
    assert abs(int(query["timestamp"]) / 1000 - datetime.now(UTC).timestamp()) < 60
    payload = json.loads(body)
    assert payload["msgtype"] == "markdown"
    assert payload["markdown"]["title"].startswith("[CRITICAL] strap_open")
    assert "@13900000000" in payload["markdown"]["text"]
    assert payload["at"] == {"atMobiles": ["13900000000"], "isAtAll": False}
