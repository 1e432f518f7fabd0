"""The console's HTTP side on the real daemon (in-process), real Mosquitto and PostgreSQL:
sign-in and its cookie, the anti-forgery header, scoped subjects, zones and tracks, every
track read audited, the live stream per officer, actions, sign-out and revocation."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml

from daemon.app import Daemon
from daemon.console.store import ConsoleStore, TokenGrant
from daemon.localservices import MosquittoProcess
from daemon.store.lifecycle_repo import LifecycleStore, token_digest
from daemon.store.pool import open_pool
from simulators.scripted_day import HOME_S001, HOME_S003
from tests.console_harness import Fix, issue_tokens, path_fixes, publish_fixes
from tests.daemon_harness import config_dir, eventually, load, publish_event, running_daemon

pytestmark = pytest.mark.services

OFFICERS = ("off-li", "off-chen", "sup-wang", "cmd-futian")
CSRF = {"X-Emon-Console": "1"}


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    dsn: str
    mosquitto: MosquittoProcess
    now: datetime

    def session(self) -> aiohttp.ClientSession:
        # unsafe=True: keep cookies for 127.0.0.1 (an IP address) as a browser does.
        return aiohttp.ClientSession(self.base, cookie_jar=aiohttp.CookieJar(unsafe=True))

    async def signed_in(self, officer: str) -> aiohttp.ClientSession:
        http = self.session()
        async with http.post("/console/api/session", json={"token": self.tokens[officer]},
                             headers=CSRF) as answer:
            assert answer.status == 200, await answer.text()
        return http

    async def audit(self, action: str) -> list[tuple[str, str, str, dict[str, Any]]]:
        async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
            cur = await conn.execute(
                "SELECT actor, object, source, detail FROM audit_log WHERE action = %s"
                " ORDER BY id", [action])
            return [(r[0], r[1], r[2], r[3]) for r in await cur.fetchall()]


@pytest.fixture
async def env(mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    loaded = load(config_dir(tmp_path), mosquitto.host, mosquitto.port, pg_dsn)
    async with running_daemon(loaded) as daemon:
        tokens = await issue_tokens(pg_dsn, OFFICERS)
        now = datetime.now(UTC).replace(microsecond=0)
        minute = timedelta(minutes=1)
        # Both at home in the last half hour; s001's strap opened (an open critical alert).
        await publish_fixes(mosquitto.host, mosquitto.port, "tag-s001",
                            path_fixes([(now - 30 * minute, HOME_S001), (now, HOME_S001)],
                                       5 * minute))
        await publish_fixes(mosquitto.host, mosquitto.port, "tag-s003",
                            path_fixes([(now - 30 * minute, HOME_S003), (now, HOME_S003)],
                                       5 * minute))
        await publish_event(mosquitto.host, mosquitto.port, "tag-s001", "strap_open", now)
        book = daemon._pipeline.book
        await eventually(lambda: len(book.unresolved()) == 1, what="s001's alert open")
        await eventually(lambda: _stored(pg_dsn, 14), what="pings stored")
        yield Env(daemon, f"http://127.0.0.1:{daemon.http_port}", tokens, pg_dsn, mosquitto,
                  now)


async def _stored(dsn: str, count: int) -> bool:
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM pings")
        row = await cur.fetchone()
        return row is not None and row[0] >= count


async def test_sign_in_sets_an_httponly_strict_cookie_and_is_audited(env: Env) -> None:
    async with env.session() as http:
        # No anti-forgery header: refused before the token is even looked at.
        async with http.post("/console/api/session", json={"token": env.tokens["off-li"]}) as r:
            assert r.status == 403
        async with http.post("/console/api/session", json={"token": "emon_wrong"},
                             headers=CSRF) as r:
            assert (r.status, (await r.json())["error"]) == (401, "unauthorized")
        async with http.get("/console/api/me") as r:
            assert r.status == 401
        async with http.post("/console/api/session", json={"token": env.tokens["off-li"]},
                             headers=CSRF) as r:
            assert r.status == 200
            me = await r.json()
            cookie = r.headers["Set-Cookie"]
        assert me["officer_id"] == "off-li"
        assert me["name"] == "Officer Li"
        assert me["map"]["tile_url"] is None  # no tile server configured: plain background
        assert "HttpOnly" in cookie
        assert "SameSite=Strict" in cookie
        assert "Path=/console" in cookie
        assert env.tokens["off-li"] not in cookie  # a session of its own, not the token
        async with http.get("/console/api/me") as r:
            assert (r.status, (await r.json())["role"]) == (200, "officer")
    logins = await env.audit("console.login")
    assert [(actor, source.split()[0]) for actor, _, source, _ in logins] == [
        ("off-li", "console")]
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        cur = await conn.execute("SELECT count(*) FROM console_sessions")
        row = await cur.fetchone()
        assert row == (1,)


async def test_subjects_and_zones_are_scoped_to_the_caseload(env: Env) -> None:
    expected = {"off-li": {"s001", "s002"}, "off-chen": {"s003"},
                "sup-wang": {"s001", "s002", "s003"}, "cmd-futian": {"s001", "s002", "s003"}}
    for officer, subjects in expected.items():
        async with await env.signed_in(officer) as http:
            async with http.get("/console/api/subjects") as r:
                body = await r.json()
            assert {s["subject_id"] for s in body["subjects"]} == subjects, officer
            async with http.get("/console/api/zones") as r:
                zones = await r.json()
            homes = {f["id"] for f in zones["features"] if f["properties"]["role"] == "home"}
            assert homes == {f"home-{s}" for s in subjects}, officer
    async with await env.signed_in("off-li") as http, http.get("/console/api/subjects") as r:
        body = await r.json()
    by_id = {s["subject_id"]: s for s in body["subjects"]}
    assert body["positions_complete"] is True
    assert by_id["s001"]["status"] == "alert"
    assert by_id["s001"]["alerts"] == {"open": 1, "acknowledged": 0, "top_tier": "critical"}
    assert by_id["s001"]["last_fix"]["ts"] == env.now.isoformat()
    assert by_id["s002"]["status"] == "stale"  # never sent a fix
    assert by_id["s002"]["last_fix"] is None
    async with await env.signed_in("off-chen") as http, http.get("/console/api/zones") as r:
        zones = await r.json()
    school = next(f for f in zones["features"] if f["id"] == "school-futian-1")
    assert school["properties"]["role"] == "exclusion"
    assert school["properties"]["subjects"] == ["s003"]  # not s001/s002, who share it
    assert school["geometry"]["type"] == "Polygon"
    lon, lat = school["geometry"]["coordinates"][0][0]
    assert 114.0 < lon < 114.1
    assert 22.5 < lat < 22.6  # WGS-84 [lon, lat]


async def test_newest_positions_survive_a_restart(env: Env, tmp_path: Path) -> None:
    """The map's starting point comes from the pings table when the daemon is new."""
    loaded = load(config_dir(tmp_path / "again"), env.mosquitto.host, env.mosquitto.port,
                  env.dsn)
    env.daemon.request_stop()
    async with running_daemon(loaded) as daemon:
        tokens = await issue_tokens(env.dsn, ["off-chen"])
        async with (
            aiohttp.ClientSession(f"http://127.0.0.1:{daemon.http_port}") as http,
            http.get("/console/api/subjects",
                     headers={"Authorization": f"Bearer {tokens['off-chen']}"}) as r,
        ):
            body = await r.json()
    [s003] = body["subjects"]
    assert s003["last_fix"]["ts"] == env.now.isoformat()
    assert s003["status"] == "ok"


async def test_track_is_scoped_bounded_ordered_and_every_read_audited(env: Env) -> None:
    since = (env.now - timedelta(hours=1)).isoformat()
    until = (env.now + timedelta(minutes=1)).isoformat()
    query = {"from": since, "to": until}
    async with await env.signed_in("off-chen") as http:
        async with http.get("/console/api/subjects/s001/track", params=query) as r:
            assert (r.status, (await r.json())["error"]) == (404, "not_found")
        async with http.get("/console/api/subjects/nobody/track", params=query) as r:
            assert r.status == 404
        async with http.get("/console/api/subjects/s003/track", params=query) as r:
            assert r.status == 200
            track = await r.json()
        assert track["count"] == 7
        assert track["truncated"] is False
        times = [p["ts"] for p in track["points"]]
        assert times == sorted(times)
        assert times[-1] == env.now.isoformat()
        for bad in ({"from": until, "to": since}, {"from": "yesterday"},
                    {"from": "2026-11-20T10:00:00"},  # no offset
                    {"from": (env.now - timedelta(days=8)).isoformat(), "to": until}):
            async with http.get("/console/api/subjects/s003/track", params=bad) as r:
                assert (r.status, (await r.json())["error"]) == (400, "bad_request"), bad
    reads = await env.audit("track.read")
    assert len(reads) == 1  # the refused requests read nothing
    actor, obj, source, detail = reads[0]
    assert (actor, obj, source.split()[0]) == ("off-chen", "s003", "console")
    assert detail["points"] == 7
    assert detail["from"] == datetime.fromisoformat(since).isoformat()


async def test_track_keeps_the_newest_fixes_when_there_are_too_many(env: Env) -> None:
    async with open_pool(env.dsn, min_size=1, max_size=1) as pool:
        store = ConsoleStore(pool)
        track = await store.track("s001", ["tag-s001"], env.now - timedelta(hours=1),
                                  env.now + timedelta(minutes=1), 3, actor="cmd-futian",
                                  source="test")
    assert track.truncated is True
    assert [p.ts for p in track.points] == [env.now - timedelta(minutes=m) for m in (10, 5, 0)]
    [(_, _, _, detail)] = await env.audit("track.read")
    assert (detail["points"], detail["truncated"]) == (3, True)


async def test_a_track_is_not_answered_without_its_audit_row(env: Env) -> None:
    """No location data leaves the database unless the read is on record (same
    transaction): with the audit log refusing inserts, the track is refused."""
    async with await psycopg.AsyncConnection.connect(env.dsn, autocommit=True) as conn:
        await conn.execute(
            "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN RAISE EXCEPTION 'audit log full'; END $$")
        await conn.execute(
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_log"
            " FOR EACH ROW EXECUTE FUNCTION refuse_audit()")
    async with env.session() as http, http.get(
        "/console/api/subjects/s003/track",
        headers={"Authorization": f"Bearer {env.tokens['off-chen']}"},
    ) as r:
        assert (r.status, (await r.json())["error"]) == (503, "unavailable")


class Stream:
    """A console stream read by the test: events as (name, data)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.task = asyncio.create_task(self._read(), name="test-sse-reader")

    async def _read(self) -> None:
        event = ""
        async for raw in self.response.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                self.events.append((event, json.loads(line[6:])))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for name, data in self.events if name == kind]

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.response.close()


async def _open_stream(http: aiohttp.ClientSession) -> Stream:
    response = await http.get("/console/api/events")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    stream = Stream(response)
    await eventually(lambda: stream.of("hello"), within=5, what="hello")
    return stream


async def test_live_stream_carries_only_the_officers_own_subjects(env: Env) -> None:
    li_http, chen_http = await env.signed_in("off-li"), await env.signed_in("off-chen")
    try:
        li, chen = await _open_stream(li_http), await _open_stream(chen_http)
        later = env.now + timedelta(minutes=1)
        await publish_fixes(env.mosquitto.host, env.mosquitto.port, "tag-s001",
                            [Fix(later, HOME_S001)])
        await publish_fixes(env.mosquitto.host, env.mosquitto.port, "tag-s003",
                            [Fix(later, HOME_S003)])
        await publish_event(env.mosquitto.host, env.mosquitto.port, "tag-s003", "strap_open",
                            later)
        await eventually(lambda: chen.of("alert") and chen.of("position"), within=10,
                         what="off-chen's events")
        await eventually(lambda: li.of("position"), within=10, what="off-li's position")
        # Both published before s003's strap event: had off-li been sent s003's, it is here.
        await asyncio.sleep(0.5)
        assert {e["subject_id"] for e in li.of("position")} == {"s001"}
        assert li.of("alert") == []
        assert {e["subject_id"] for e in chen.of("position")} == {"s003"}
        [opened] = [e for e in chen.of("alert") if e["transition"] == "opened"]
        assert (opened["subject_id"], opened["rule"]) == ("s003", "strap_open")
        assert opened["subject"]["status"] == "alert"
        streams = await env.audit("console.stream")
        assert {actor for actor, *_ in streams} == {"off-li", "off-chen"}
        await li.close()
        await chen.close()
    finally:
        await li_http.close()
        await chen_http.close()


async def test_acknowledge_and_resolve_from_the_console(env: Env) -> None:
    alert_id = env.daemon._pipeline.book.unresolved()[0].alert_id
    # Not in off-chen's caseload: not found, like the officer API.
    async with (
        await env.signed_in("off-chen") as chen,
        chen.post(f"/console/api/alerts/{alert_id}/ack", json={}, headers=CSRF) as r,
    ):
        assert r.status == 404
    async with await env.signed_in("off-li") as http:
        async with http.get("/console/api/alerts") as r:
            assert [a["alert_id"] for a in (await r.json())["alerts"]] == [alert_id]
        # A cookie alone does not act: the page's header is needed (cross-site forgery).
        async with http.post(f"/console/api/alerts/{alert_id}/ack", json={}) as r:
            assert r.status == 403
        async with http.post(f"/console/api/alerts/{alert_id}/ack",
                             json={"note": "calling him"}, headers=CSRF) as r:
            assert r.status == 200
            assert (await r.json())["alert"]["state"] == "acknowledged"
        async with http.post(f"/console/api/alerts/{alert_id}/resolve",
                             json={"disposition": "nonsense"}, headers=CSRF) as r:
            assert r.status == 400
        async with http.post(f"/console/api/alerts/{alert_id}/resolve",
                             json={"disposition": "device_fault"}, headers=CSRF) as r:
            assert r.status == 200
    async with await psycopg.AsyncConnection.connect(env.dsn) as conn:
        cur = await conn.execute(
            "SELECT state, acknowledged_by, resolved_by, disposition FROM alerts"
            " WHERE alert_id = %s", [alert_id])
        assert await cur.fetchone() == ("resolved", "off-li", "off-li", "device_fault")
        cur = await conn.execute(
            "SELECT action, source FROM audit_log WHERE object = %s AND action LIKE 'alert.%%'"
            " ORDER BY id", [alert_id])
        actions = [(a, s.split()[0]) for a, s in await cur.fetchall()]
    assert ("alert.ack", "console") in actions
    assert ("alert.resolve", "console") in actions


async def test_sign_out_ends_the_session_and_its_stream(env: Env) -> None:
    http = await env.signed_in("off-li")
    try:
        stream = await _open_stream(http)
        async with http.delete("/console/api/session", headers=CSRF) as r:
            assert (r.status, await r.json()) == (200, {"signed_out": True})
        await asyncio.wait_for(stream.task, 5)  # the server ended the stream
        assert [name for name, _ in stream.events][-1] == "signed_out"
        stream.response.close()
        async with http.get("/console/api/me") as r:
            assert r.status == 401
    finally:
        await http.close()
    assert [actor for actor, *_ in await env.audit("console.logout")] == ["off-li"]


async def test_revoking_the_token_ends_its_sessions(env: Env) -> None:
    async with await env.signed_in("off-chen") as http:
        async with open_pool(env.dsn, min_size=1, max_size=1) as pool:
            lifecycle = LifecycleStore(pool)
            token_id = next(t["token_id"] for t in await lifecycle.list_tokens()
                            if t["officer_id"] == "off-chen")
            assert await lifecycle.revoke_token(token_id)
        async with http.get("/console/api/me") as r:
            assert r.status == 401
        async with http.post("/console/api/session", json={"token": env.tokens["off-chen"]},
                             headers=CSRF) as r:
            assert r.status == 401


async def test_a_session_never_outlives_its_token(env: Env) -> None:
    async with open_pool(env.dsn, min_size=1, max_size=1) as pool:
        store = ConsoleStore(pool)
        grant = await store.grant_for_token(token_digest(env.tokens["off-li"]), env.now)
        assert grant is not None
        soon = env.now + timedelta(minutes=5)
        short = TokenGrant(grant.token_id, grant.officer_id, soon)
        session, expires_at = await store.create_session(short, env.now, timedelta(hours=12),
                                                         "test")
        assert expires_at == soon
        assert await store.officer_for_session(session, env.now) == "off-li"
        assert await store.officer_for_session(session, soon + timedelta(seconds=1)) is None


async def test_page_and_assets_are_served_with_a_strict_policy(env: Env) -> None:
    async with env.session() as http:
        async with http.get("/console/") as r:
            assert r.status == 200
            page = await r.text()
            policy = r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy
        assert "http" not in policy  # no tile server configured: nothing outside this host
        # No CDN: every script, stylesheet and icon comes from the daemon (or is inline data).
        assert re.findall(r'(?:src|href)="([^"]+)"', page)
        assert all(ref.startswith(("/console/assets/", "data:"))
                   for ref in re.findall(r'(?:src|href)="([^"]+)"', page))
        script = page.split('<script defer src="', 1)[1].split('"', 1)[0]
        async with http.get(script) as r:
            assert r.status == 200
            assert "immutable" in r.headers["Cache-Control"]
        async with http.get("/console/alerts/0b7e3c1c-54a8-5b57-9d35-1c6f2f1e6b11") as r:
            assert (r.status, await r.text()) == (200, page)  # the deep link is the page
        for bad in ("/console/assets/..%2Fweb.py", "/console/assets/nothing.js"):
            async with http.get(bad) as r:
                assert r.status == 404, bad
        async with http.get("/", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/console/")


async def test_a_reloaded_config_reaches_the_console(env: Env, tmp_path: Path) -> None:
    """Hot reload: map settings and limits apply at once; `enabled` needs a restart."""
    directory = config_dir(tmp_path / "reloaded")
    settings_path = directory / "settings.yaml"
    settings = yaml.safe_load(settings_path.read_text(encoding="utf-8"))
    settings["console"] = {"tile_url": "http://tiles.internal:8080/{z}/{x}/{y}.png",
                           "tile_attribution": "OSM", "stale_after_seconds": 600,
                           "enabled": False}
    settings_path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    new = load(directory, env.mosquitto.host, env.mosquitto.port, env.dsn)
    restart = env.daemon._apply_config(new)
    assert "console.enabled" in restart
    async with await env.signed_in("off-li") as http:
        async with http.get("/console/api/me") as r:
            me = await r.json()
        async with http.get("/console/") as r:
            policy = r.headers["Content-Security-Policy"]
    assert me["map"]["tile_url"] == "http://tiles.internal:8080/{z}/{x}/{y}.png"
    assert me["map"]["stale_after_seconds"] == 600
    assert "img-src 'self' data: http://tiles.internal:8080;" in policy
