"""Officer actions end to end on the real daemon (in-process), real Mosquitto and PostgreSQL:
tokens, caseload scoping, ack/note/resolve over HTTP, the CLI and the MQTT command topic,
silences, the audit log, and the lifecycle metrics."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import psycopg
import pytest
from prometheus_client import REGISTRY

from daemon.app import Daemon
from daemon.cli import main as emon_main
from daemon.localservices import MosquittoProcess
from daemon.store.lifecycle_repo import LifecycleStore, new_token
from daemon.store.pool import open_pool
from tests.daemon_harness import config_dir, eventually, load, publish_event, running_daemon

pytestmark = pytest.mark.services

OFFICERS = ("off-li", "off-chen", "sup-wang", "cmd-futian")


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    alert_of: dict[str, str]  # subject -> alert id
    http: aiohttp.ClientSession
    dsn: str
    mosquitto: MosquittoProcess

    async def call(self, officer: str | None, method: str, path: str,
                   body: dict[str, Any] | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[officer]}"} if officer else {}
        async with self.http.request(method, self.base + path, json=body,
                                     headers=headers) as response:
            return response.status, await response.json()


@pytest.fixture
async def env(mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    loaded = load(config_dir(tmp_path), mosquitto.host, mosquitto.port, pg_dsn)
    async with running_daemon(loaded) as daemon, aiohttp.ClientSession() as http:
        tokens = {}
        async with open_pool(pg_dsn, min_size=1, max_size=1) as pool:
            store = LifecycleStore(pool)
            for officer in OFFICERS:
                tokens[officer] = new_token()
                await store.create_token(officer, "test", None, tokens[officer])
        # s001 belongs to off-li, s003 to off-chen (config/subjects.yaml).
        await publish_event(mosquitto.host, mosquitto.port, "tag-s001", "strap_open")
        await publish_event(mosquitto.host, mosquitto.port, "tag-s003", "strap_open")
        book = daemon._pipeline.book
        await eventually(lambda: len(book.unresolved()) == 2, what="two alerts open")
        alert_of = {a.subject_id: a.alert_id for a in book.unresolved()}
        # The officers have been told (step 1 of the ladder) before they act.
        await eventually(lambda: _notified(pg_dsn, list(alert_of.values())),
                         what="first step notified")
        yield Env(daemon, f"http://127.0.0.1:{daemon.http_port}", tokens, alert_of, http,
                  pg_dsn, mosquitto)


async def _notified(dsn: str, alert_ids: list[str]) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(DISTINCT alert_id) FROM alert_history WHERE kind = 'notified'"
            " AND alert_id = ANY(%s::uuid[])", [alert_ids],
        )
        row = await cur.fetchone()
        return row is not None and row[0] == len(alert_ids)


def subjects_of(body: dict[str, Any]) -> set[str]:
    return {a["subject_id"] for a in body["alerts"]}


async def test_an_officers_token_cannot_read_or_act_on_another_officers_subject(env: Env) -> None:
    s001, s003 = env.alert_of["s001"], env.alert_of["s003"]
    # Each officer sees their own caseload; the supervisor their team's; command all.
    assert subjects_of((await env.call("off-li", "GET", "/alerts"))[1]) == {"s001"}
    assert subjects_of((await env.call("off-chen", "GET", "/alerts"))[1]) == {"s003"}
    assert subjects_of((await env.call("sup-wang", "GET", "/alerts"))[1]) == {"s001", "s003"}
    assert subjects_of((await env.call("cmd-futian", "GET", "/alerts"))[1]) == {"s001", "s003"}
    # Another officer's alert is "not found", for reading and for every action.
    assert (await env.call("off-chen", "GET", f"/alerts/{s001}"))[0] == 404
    assert (await env.call("off-chen", "POST", f"/alerts/{s001}/ack", {}))[0] == 404
    assert (await env.call("off-chen", "POST", f"/alerts/{s001}/notes", {"note": "x"}))[0] == 404
    status, body = await env.call(
        "off-chen", "POST", f"/alerts/{s001}/resolve", {"disposition": "false_alarm"}
    )
    assert (status, body["error"]) == (404, "not_found")
    assert (await env.call("off-chen", "GET", "/alerts?subject=s001"))[1]["alerts"] == []
    # Nothing changed on s001; off-chen can act on their own.
    assert env.daemon._pipeline.book.get(s001).state.value == "open"  # type: ignore[union-attr]
    assert (await env.call("off-chen", "POST", f"/alerts/{s003}/ack", {}))[0] == 200
    # No token, a wrong token: 401.
    assert (await env.call(None, "GET", "/alerts"))[0] == 401
    env.tokens["nobody"] = "emon_" + uuid.uuid4().hex
    assert (await env.call("nobody", "GET", "/alerts"))[0] == 401


async def test_ack_note_resolve_over_http_recorded_published_audited(env: Env) -> None:
    s001 = env.alert_of["s001"]
    async with aiomqtt.Client(env.mosquitto.host, env.mosquitto.port,
                              identifier=f"t-watch-{uuid.uuid4().hex[:6]}") as watch:
        await watch.subscribe("emon/v1/alerts/s001", qos=1)
        status, body = await env.call("off-li", "POST", f"/alerts/{s001}/ack",
                                      {"note": "calling him"})
        assert status == 200
        assert body["recorded"] is True
        assert body["alert"]["state"] == "acknowledged"
        assert body["alert"]["acknowledged_by"] == "off-li"
        # Twice is a conflict, an unknown disposition a bad request.
        assert (await env.call("off-li", "POST", f"/alerts/{s001}/ack", {}))[0] == 409
        status, body = await env.call("off-li", "POST", f"/alerts/{s001}/resolve",
                                      {"disposition": "whatever"})
        assert (status, body["error"]) == (400, "bad_request")
        assert (await env.call("off-li", "POST", f"/alerts/{s001}/notes",
                               {"note": "strap was cut"}))[0] == 200
        status, body = await env.call(
            "sup-wang", "POST", f"/alerts/{s001}/resolve",
            {"disposition": "confirmed_violation", "note": "reported to the court"},
        )
        assert status == 200
        assert body["alert"]["state"] == "resolved"
        assert body["alert"]["disposition"] == "confirmed_violation"
        kinds = []
        async with asyncio.timeout(10):
            async for message in watch.messages:
                assert isinstance(message.payload, bytes)
                kinds.append(json.loads(message.payload)["transition"])
                if kinds[-1] == "resolved":
                    break
        assert kinds == ["acknowledged", "noted", "resolved"]

    status, detail = await env.call("off-li", "GET", f"/alerts/{s001}")
    assert status == 200
    history = [(h["kind"], h["actor"]) for h in detail["history"] if h["kind"] != "delivery"]
    assert ("acknowledged", "off-li") in history
    assert ("noted", "off-li") in history
    assert ("resolved", "sup-wang") in history
    assert detail["escalation"]["phase"] == "done"
    deliveries = [h["delivery"] for h in detail["history"] if h["kind"] == "delivery"]
    # Every publish on the alerts topic is in the history (the publish log is asynchronous).
    await eventually(lambda: _delivery_count(env.dsn, s001), what="publishes recorded")
    assert all(d["outcome"] == "sent" for d in deliveries)
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        cur = await conn.execute(
            "SELECT actor, action FROM audit_log WHERE object = %s ORDER BY id", [s001]
        )
        actions = await cur.fetchall()
        assert ("off-li", "alert.ack") in actions
        assert ("sup-wang", "alert.resolve") in actions
        assert ("off-li", "alert.read") in actions
        # The audit log is append-only.
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await conn.execute("DELETE FROM audit_log")
    assert _sample("emon_alert_time_to_acknowledge_seconds_count", tier="critical") >= 1
    assert _sample("emon_officer_actions_total", action="alert.resolve", channel="http",
                   result="ok") >= 1


async def _delivery_count(dsn: str, alert_id: str) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute(
            "SELECT count(*) FROM alert_history WHERE alert_id = %s AND kind = 'delivery'"
            " AND actor = 'mqtt-alerts'", [alert_id],
        )
        row = await cur.fetchone()
        # opened, notified (step 1), acknowledged, noted, resolved: five publishes.
        return row is not None and row[0] >= 5


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_cli_lists_and_acknowledges_through_the_api(
    env: Env, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(env.tokens["off-chen"])
    common = ["--api-url", env.base, "--token-file", str(token_file)]
    code = await asyncio.to_thread(emon_main, ["alerts", "list", *common])
    out = capsys.readouterr().out
    assert code == 0
    assert env.alert_of["s003"] in out
    assert env.alert_of["s001"] not in out
    code = await asyncio.to_thread(
        emon_main, ["alerts", "ack", env.alert_of["s001"], *common]
    )
    assert code == 1
    assert "not_found" in capsys.readouterr().err
    code = await asyncio.to_thread(
        emon_main, ["alerts", "ack", env.alert_of["s003"], "--note", "on it", *common]
    )
    assert code == 0
    assert '"acknowledged"' in capsys.readouterr().out


async def test_mqtt_command_topic(env: Env) -> None:
    s001 = env.alert_of["s001"]
    host, port = env.mosquitto.host, env.mosquitto.port
    async with aiomqtt.Client(host, port, identifier=f"t-cmd-{uuid.uuid4().hex[:6]}") as client:
        await client.subscribe("emon/v1/commands/+/reply", qos=1)

        async def command(topic_officer: str, body: dict[str, Any]) -> dict[str, Any]:
            await client.publish(f"emon/v1/commands/{topic_officer}", json.dumps(body), qos=1)
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    reply: dict[str, Any] = json.loads(message.payload)
                    if reply.get("request_id") == body.get("request_id"):
                        assert message.topic.value == f"emon/v1/commands/{topic_officer}/reply"
                        return reply
            raise AssertionError("no reply")

        # off-li's token on off-chen's topic: refused.
        reply = await command("off-chen", {"token": env.tokens["off-li"], "request_id": "r1",
                                           "action": "list"})
        assert (reply["ok"], reply["error"]) == (False, "unauthorized")
        # off-chen cannot act on s001 (another officer's subject).
        reply = await command("off-chen", {"token": env.tokens["off-chen"], "request_id": "r2",
                                           "action": "ack", "alert_id": s001})
        assert (reply["ok"], reply["status"]) == (False, 404)
        reply = await command("off-li", {"token": env.tokens["off-li"], "request_id": "r3",
                                         "action": "list"})
        assert reply["ok"]
        assert {a["subject_id"] for a in reply["result"]} == {"s001"}
        reply = await command("off-li", {"token": env.tokens["off-li"], "request_id": "r4",
                                         "action": "ack", "alert_id": s001, "note": "mqtt"})
        assert reply["ok"]
        assert reply["result"]["alert"]["state"] == "acknowledged"
        reply = await command("off-li", {"token": env.tokens["off-li"], "request_id": "r5",
                                         "action": "resolve", "alert_id": s001,
                                         "disposition": "device_fault"})
        assert reply["ok"]
        assert reply["result"]["alert"]["disposition"] == "device_fault"
        reply = await command("off-li", {"request_id": "r6", "action": "list"})
        assert reply["error"] == "unauthorized"
        # Garbage never stops the daemon.
        await client.publish("emon/v1/commands/off-li", b"\xff not json", qos=1)
        reply = await command("off-li", {"token": env.tokens["off-li"], "request_id": "r7",
                                         "action": "dance", "alert_id": s001})
        assert reply["error"] == "bad_request"


async def test_silences_scoped_audited_and_muting(env: Env) -> None:
    status, body = await env.call("off-chen", "POST", "/silences",
                                  {"subject_id": "s001", "reason": "x", "duration_seconds": 60})
    assert (status, body["error"]) == (404, "not_found")  # not their subject
    status, body = await env.call("off-li", "POST", "/silences",
                                  {"rule": "strap_open", "reason": "x", "duration_seconds": 60})
    assert (status, body["error"]) == (403, "forbidden")  # a rule for everyone: command only
    status, body = await env.call("off-li", "POST", "/silences",
                                  {"subject_id": "s001", "reason": "", "duration_seconds": 60})
    assert (status, body["error"]) == (400, "bad_request")
    status, body = await env.call("off-li", "POST", "/silences",
                                  {"subject_id": "s001", "reason": "x",
                                   "duration_seconds": 30 * 86400})
    assert (status, body["error"]) == (400, "bad_request")  # longer than silences.max_seconds
    status, silence = await env.call(
        "off-li", "POST", "/silences",
        {"subject_id": "s002", "reason": "hospital visit, approved by phone",
         "duration_seconds": 3600},
    )
    assert status == 201
    assert silence["author"] == "off-li"
    assert [s["silence_id"] for s in (await env.call("off-li", "GET", "/silences"))[1]
            ["silences"]] == [silence["silence_id"]]
    assert (await env.call("off-chen", "GET", "/silences"))[1]["silences"] == []
    # An alert of s002 opened during the silence is recorded but its first step is muted.
    await publish_event(env.mosquitto.host, env.mosquitto.port, "tag-s002", "strap_open")
    book = env.daemon._pipeline.book
    s002 = await eventually(
        lambda: next((a.alert_id for a in book.unresolved() if a.subject_id == "s002"), None)
    )

    async def kinds() -> list[str]:
        async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
            cur = await conn.execute(
                "SELECT kind FROM alert_history WHERE alert_id = %s AND kind <> 'delivery'"
                " ORDER BY at, id", [s002],
            )
            return [r[0] for r in await cur.fetchall()]

    await eventually(lambda: _has(kinds, "suppressed"), what="suppressed recorded")
    assert "notified" not in await kinds()
    # Ending it early (audited) lets the pending step go out at the next sweep.
    status, ended = await env.call("off-li", "DELETE", f"/silences/{silence['silence_id']}")
    assert status == 200
    assert ended["ended_by"] == "off-li"
    assert (await env.call("off-li", "DELETE", f"/silences/{silence['silence_id']}"))[0] == 409
    await eventually(lambda: _has(kinds, "notified"), what="notified after the silence")
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        cur = await conn.execute(
            "SELECT action FROM audit_log WHERE object = %s ORDER BY id", [silence["silence_id"]]
        )
        assert [r[0] for r in await cur.fetchall()] == ["silence.create", "silence.end"]


async def _has(kinds: Any, kind: str) -> bool:
    return kind in await kinds()
