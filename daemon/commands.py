"""Officer actions over MQTT: `emon/v1/commands/<officer_id>` in, `.../<officer_id>/reply` out.

Request (JSON): {"token": "...", "request_id": "...", "action": "list" | "ack" | "resolve" |
"note", "alert_id": "...", "disposition": "...", "note": "...", "state": "..."}.
Reply: {"request_id", "ok": true, "result": {...}} or {"request_id", "ok": false, "status",
"error", "detail"}. The token must belong to the officer named in the topic.

The MQTT reader only queues a command (bounded; overflow counted and answered "busy"), so a
slow database never holds up pings; one named worker task carries commands out through the
same `OfficerActions` as the HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon import metrics
from daemon.officer_api import ActionError, OfficerActions, text_field

_LOGGER = logging.getLogger(__name__)

COMMANDS_TOPIC_PREFIX = "emon/v1/commands/"
COMMANDS_SUBSCRIPTION = COMMANDS_TOPIC_PREFIX + "+"
REPLY_SUFFIX = "/reply"
COMMAND_QUEUE_SIZE = 100
COMMAND_MAX_BYTES = 8192

Reply = Callable[[str, bytes], None]  # topic, payload: queued for publishing, never blocks


def reply_topic(officer_id: str) -> str:
    return COMMANDS_TOPIC_PREFIX + officer_id + REPLY_SUFFIX


@dataclass(frozen=True, slots=True)
class _Command:
    officer_id: str
    payload: bytes


class CommandHandler:
    def __init__(self, actions: OfficerActions, reply: Reply) -> None:
        self._actions = actions
        self._reply = reply
        self._queue: asyncio.Queue[_Command] = asyncio.Queue(COMMAND_QUEUE_SIZE)
        self._stop = asyncio.Event()

    @staticmethod
    def is_command(topic: str) -> bool:
        return topic.startswith(COMMANDS_TOPIC_PREFIX) and not topic.endswith(REPLY_SUFFIX)

    def submit(self, topic: str, payload: bytes) -> None:
        officer_id = topic[len(COMMANDS_TOPIC_PREFIX):]
        if not officer_id or "/" in officer_id:
            metrics.MESSAGES_REJECTED.labels("bad_topic").inc()
            return
        try:
            self._queue.put_nowait(_Command(officer_id, payload))
        except asyncio.QueueFull:
            metrics.QUEUE_OVERFLOW.labels("commands").inc()
            self._send(officer_id, _request_id(payload), 503, "busy", "too many commands")

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            command: _Command | None = None
            with contextlib.suppress(TimeoutError):
                command = await asyncio.wait_for(self._queue.get(), 0.5)
            if command is not None:
                await self._handle(command)

    def _send(
        self, officer_id: str, request_id: Any, status: int, error: str | None, detail: Any
    ) -> None:
        body: dict[str, Any] = {"request_id": request_id, "ok": error is None}
        if error is None:
            body["result"] = detail
        else:
            body.update(status=status, error=error, detail=detail)
        self._reply(
            reply_topic(officer_id),
            json.dumps(body, ensure_ascii=False, default=str).encode(),
        )

    async def _handle(self, command: _Command) -> None:
        request_id = _request_id(command.payload)
        try:
            result = await self._execute(command)
        except ActionError as exc:
            self._send(command.officer_id, request_id, exc.status, exc.code, exc.message)
            return
        except Exception:  # a bug must not stop the worker; the officer gets an answer
            _LOGGER.exception("command failed")
            self._send(command.officer_id, request_id, 500, "internal", "command failed")
            return
        self._send(command.officer_id, request_id, 200, None, result)

    async def _execute(self, command: _Command) -> Any:
        if len(command.payload) > COMMAND_MAX_BYTES:
            raise ActionError(413, "too_large", f"commands are at most {COMMAND_MAX_BYTES} bytes")
        try:
            body = json.loads(command.payload)
        except ValueError:
            raise ActionError(400, "bad_request", "not JSON") from None
        if not isinstance(body, dict):
            raise ActionError(400, "bad_request", "not a JSON object")
        token = body.get("token")
        caller = await self._actions.authenticate(
            token if isinstance(token, str) else None, "mqtt", "mqtt"
        )
        if caller.officer.officer_id != command.officer_id:
            # The topic names the officer: a token may only act on its own topic.
            raise ActionError(401, "unauthorized", "token does not belong to this topic")
        action = body.get("action")
        alert_id = text_field(body, "alert_id")
        if action == "list":
            state = body.get("state", "unresolved")
            return await self._actions.list_alerts(
                caller, state=state if isinstance(state, str) else "", limit=200
            )
        if alert_id is None:
            raise ActionError(400, "bad_request", "alert_id is required")
        if action == "ack":
            return await self._actions.acknowledge(caller, alert_id, text_field(body, "note"))
        if action == "resolve":
            disposition = body.get("disposition")
            return await self._actions.resolve(
                caller, alert_id, disposition if isinstance(disposition, str) else None,
                text_field(body, "note"),
            )
        if action == "note":
            note = text_field(body, "note", required=True)
            assert note is not None
            return await self._actions.note(caller, alert_id, note)
        raise ActionError(400, "bad_request", "action must be list, ack, resolve or note")


def _request_id(payload: bytes) -> Any:
    try:
        body = json.loads(payload)
    except ValueError:
        return None
    return body.get("request_id") if isinstance(body, dict) else None
