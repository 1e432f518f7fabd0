"""Access and audit (issue 10, part B): the permission matrix and rate-limit buckets (pure),
then on a real PostgreSQL and over real HTTP: roles enforced by the officer API and the
console, token management and audit reading by admins, config reload by operators, the
rate limits, the CLI's audited track reads and `emon audit`, retention per data class, and
an audit log that only the retention job may shorten."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from prometheus_client import REGISTRY
from pydantic import ValidationError

from alerts.policy import Directory, OfficerInfo, Role
from daemon.access import (
    PERMISSIONS,
    Permission,
    TokenRole,
    allows,
    in_caseload,
    role_for_token,
)
from daemon.app import Daemon
from daemon.cli import main as emon_main
from daemon.http import HttpServer
from daemon.localservices import MosquittoProcess
from daemon.officer_api import OfficerActions, api_routes
from daemon.pipeline import Pipeline
from daemon.ratelimit import RateLimiter, RateLimitSettings, TokenBucket, rate_limit_middleware
from daemon.store.access_repo import AccessStore, new_token
from daemon.store.lifecycle_repo import LifecycleStore
from daemon.store.maintenance import run_maintenance
from daemon.store.migrations import migrate
from daemon.store.pool import open_pool
from daemon.store.settings import RetentionSettings, StoreSettings
from tests.daemon_harness import config_dir, eventually, load, publish_event, running_daemon
from tests.storekit import execute, rows, scalar

# ---------------------------------------------------------------------- pure: the matrix


def test_permission_matrix_roles_see_only_their_part() -> None:
    caseload = (Role.OFFICER, Role.SUPERVISOR, Role.COMMAND)
    for role in caseload:
        assert allows(role, Permission.ALERTS_ACT)
        assert allows(role, Permission.LOCATIONS_READ)
        assert not allows(role, Permission.TOKENS_MANAGE)
        assert not allows(role, Permission.AUDIT_READ)
        assert not allows(role, Permission.CONFIG_RELOAD)
    assert allows(Role.COMMAND, Permission.SILENCES_EVERYONE)
    assert not allows(Role.OFFICER, Permission.SILENCES_EVERYONE)
    # Operators: config and silences, no location and no alert.
    assert PERMISSIONS[Role.OPERATOR] == {
        Permission.SILENCES_READ, Permission.SILENCES_WRITE, Permission.SILENCES_EVERYONE,
        Permission.CONFIG_READ, Permission.CONFIG_RELOAD,
    }
    # Admins: tokens and the audit log only.
    assert PERMISSIONS[Role.ADMIN] == {Permission.TOKENS_MANAGE, Permission.AUDIT_READ}
    # An officer token takes its officer's role from the config; gone from it: refused.
    assert role_for_token(TokenRole.OFFICER, Role.SUPERVISOR) is Role.SUPERVISOR
    assert role_for_token(TokenRole.OFFICER, None) is None
    assert role_for_token(TokenRole.OPERATOR, None) is Role.OPERATOR
    # Operator and admin ids never have a caseload, even if they equal an officer's id.
    directory = Directory({
        "off-li": OfficerInfo("off-li", Role.OFFICER, "sup-wang"),
        "sup-wang": OfficerInfo("sup-wang", Role.SUPERVISOR),
    })
    assert in_caseload(directory, directory.officers["off-li"], "off-li")
    assert in_caseload(directory, directory.officers["sup-wang"], "off-li")
    assert not in_caseload(directory, OfficerInfo("off-li", Role.ADMIN), "off-li")
    assert not in_caseload(directory, OfficerInfo("off-li", Role.OPERATOR), "off-li")


# ---------------------------------------------------------------------- pure: buckets


def test_token_bucket_refills_and_says_how_long_to_wait() -> None:
    bucket = TokenBucket(rate_per_second=2.0, capacity=3.0, tokens=3.0, updated_at=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.wait_seconds(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    assert bucket.available(100.0) == 3.0  # never above capacity


def test_rate_limiter_locks_out_failing_address_and_evicts_counted() -> None:
    settings = RateLimitSettings(
        per_address_per_second=100, per_address_burst=100, per_credential_per_second=1,
        per_credential_burst=2, failed_auth_per_minute=6, failed_auth_burst=2,
        max_tracked_keys=100,
    )
    limiter = RateLimiter(settings)
    for _ in range(2):
        assert limiter.check("10.0.0.9", "bad", 0.0).allowed
        limiter.refused_credential("10.0.0.9", 0.0)
    verdict = limiter.check("10.0.0.9", "good-token", 0.0)
    assert (verdict.allowed, verdict.limit) == (False, "failed_auth")
    assert verdict.retry_after_seconds == pytest.approx(10.0)  # 6 a minute
    # Another address is not affected; an uncredentialed request (the page) still passes.
    assert limiter.check("10.0.0.8", "good-token", 0.0).allowed
    assert limiter.check("10.0.0.9", None, 0.0).allowed
    assert limiter.check("10.0.0.9", "good-token", 10.0).allowed
    # Per credential: burst of 2, then wait.
    assert limiter.check("10.0.0.7", "tok", 20.0).allowed
    assert limiter.check("10.0.0.7", "tok", 20.0).allowed
    assert limiter.check("10.0.0.7", "tok", 20.0).limit == "credential"
    # A flood of distinct credentials fills the table: evictions, counted, bounded size.
    for n in range(150):
        limiter.check(f"10.0.1.{n}", f"random-{n}", 30.0)
    assert len(limiter.credentials) == 100
    assert limiter.credentials.evictions >= 50
    # A reload with new limits applies at once (the buckets start afresh).
    limiter.reconfigure(settings.model_copy(update={"per_credential_burst": 1}))
    assert limiter.check("10.0.0.7", "tok", 20.0).allowed
    assert limiter.check("10.0.0.7", "tok", 20.0).limit == "credential"


def test_rate_limit_and_retention_settings_are_checked() -> None:
    with pytest.raises(ValidationError, match="failed_auth_burst"):
        RateLimitSettings(per_address_burst=5, failed_auth_burst=10)
    with pytest.raises(ValidationError, match="extra"):
        RateLimitSettings.model_validate({"per_ip": 3})
    with pytest.raises(ValidationError, match="audit_log_days"):
        RetentionSettings(audit_log_days=400, resolved_alerts_days=730)
    with pytest.raises(ValidationError):
        RetentionSettings(audit_log_days=100)  # below the database's one-year floor


# ---------------------------------------------------------------------- real HTTP, real daemon

PEOPLE: dict[str, tuple[TokenRole, str]] = {
    "off-chen": (TokenRole.OFFICER, "off-chen"),
    "off-li": (TokenRole.OFFICER, "off-li"),
    "ops-zhang": (TokenRole.OPERATOR, "ops-zhang"),
    "adm-liu": (TokenRole.ADMIN, "adm-liu"),
    # An admin token for an id that is also an officer's: still no caseload.
    "adm-as-li": (TokenRole.ADMIN, "off-li"),
}


@dataclass
class Env:
    daemon: Daemon
    base: str
    tokens: dict[str, str]
    alert_of: dict[str, str]
    http: aiohttp.ClientSession
    dsn: str

    async def call(self, who: str | None, method: str, path: str,
                   body: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        async with self.http.request(method, self.base + path, json=body,
                                     headers={**sent, **(headers or {})}) as response:
            return response.status, await response.json()


@pytest.fixture
async def env(mosquitto: MosquittoProcess, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Env]:
    loaded = load(config_dir(tmp_path), mosquitto.host, mosquitto.port, pg_dsn)
    async with running_daemon(loaded) as daemon, aiohttp.ClientSession() as http:
        tokens = {}
        async with open_pool(pg_dsn, min_size=1, max_size=1) as pool:
            store = AccessStore(pool)
            for name, (role, principal) in PEOPLE.items():
                tokens[name] = new_token()
                await store.create_token(principal, "test", None, tokens[name], role=role,
                                         actor="test", source="test")
        await publish_event(mosquitto.host, mosquitto.port, "tag-s001", "strap_open")
        book = daemon._pipeline.book
        await eventually(lambda: len(book.unresolved()) == 1, what="an alert open")
        alert_of = {a.subject_id: a.alert_id for a in book.unresolved()}
        yield Env(daemon, f"http://127.0.0.1:{daemon.http_port}", tokens, alert_of, http,
                  pg_dsn)


def _refused_count(role: str, permission: str) -> float:
    value = REGISTRY.get_sample_value(
        "emon_api_access_refused_total", {"role": role, "permission": permission}
    )
    return value or 0.0


@pytest.mark.services
async def test_roles_enforced_over_http_and_console_and_audited(env: Env) -> None:
    s001 = env.alert_of["s001"]
    before = _refused_count("operator", "alerts_read")
    # Operator: no alert, no track, no token, no audit: 403 with the reason.
    status, body = await env.call("ops-zhang", "GET", "/alerts")
    assert (status, body["error"]) == (403, "forbidden")
    assert body["detail"] == "role operator may not read alerts"
    assert _refused_count("operator", "alerts_read") == before + 1
    assert (await env.call("ops-zhang", "POST", f"/alerts/{s001}/ack", {}))[0] == 403
    assert (await env.call("ops-zhang", "GET", "/console/api/subjects/s001/track"))[0] == 403
    assert (await env.call("ops-zhang", "GET", "/console/api/subjects"))[0] == 403
    assert (await env.call("ops-zhang", "GET", "/tokens"))[0] == 403
    assert (await env.call("ops-zhang", "GET", "/audit"))[0] == 403
    # ... and cannot sign in to the map.
    status, body = await env.call(None, "POST", "/console/api/session",
                                  {"token": env.tokens["ops-zhang"]}, {"X-Emon-Console": "1"})
    assert status == 403
    assert "not operator" in body["detail"]
    # Operator: config status, a reload, and a maintenance window for everyone.
    status, body = await env.call("ops-zhang", "GET", "/config")
    assert status == 200
    assert body["version"] == env.daemon._pipeline.config.version
    assert (await env.call("ops-zhang", "POST", "/config/reload"))[0] == 202
    status, silence = await env.call("ops-zhang", "POST", "/silences", {
        "rule": "gnss_lost", "reason": "tower maintenance", "duration_seconds": 600})
    assert status == 201
    assert silence["author"] == "ops-zhang"
    status, body = await env.call("ops-zhang", "GET", "/silences")
    assert [s["silence_id"] for s in body["silences"]] == [silence["silence_id"]]
    # An officer cannot silence everyone (403) and sees nothing outside the caseload (404).
    assert (await env.call("off-chen", "POST", "/silences", {
        "rule": "gnss_lost", "reason": "x", "duration_seconds": 60}))[0] == 403
    assert (await env.call("off-chen", "GET", f"/alerts/{s001}"))[0] == 404
    assert (await env.call("off-chen", "GET", "/tokens"))[0] == 403
    assert (await env.call("off-chen", "GET", "/config"))[0] == 403
    # Admin: no alert, no location, even with an officer's id.
    for admin in ("adm-liu", "adm-as-li"):
        assert (await env.call(admin, "GET", "/alerts"))[0] == 403
        assert (await env.call(admin, "POST", f"/alerts/{s001}/ack", {}))[0] == 403
        assert (await env.call(admin, "GET", "/console/api/subjects/s001/track"))[0] == 403
        assert (await env.call(admin, "GET", "/silences"))[0] == 403
    # Admin: make a token for off-li; it works; revoke it; it is refused.
    status, made = await env.call("adm-liu", "POST", "/tokens", {
        "role": "officer", "officer_id": "off-li", "label": "new phone", "expires_days": 30})
    assert status == 201
    assert made["token"].startswith("emon_")
    env.tokens["new-li"] = made["token"]
    status, body = await env.call("new-li", "GET", "/alerts")
    assert status == 200
    assert [a["alert_id"] for a in body["alerts"]] == [s001]
    assert (await env.call("adm-liu", "POST", "/tokens", {
        "role": "officer", "officer_id": "nobody"}))[0] == 400
    assert (await env.call("adm-liu", "POST", "/tokens", {
        "role": "admin", "officer_id": "x", "expires_days": 9999}))[0] == 400
    status, listed = await env.call("adm-liu", "GET", "/tokens?officer=off-li")
    assert status == 200
    assert {t["role"] for t in listed["tokens"]} == {"officer", "admin"}
    assert (await env.call("adm-liu", "DELETE", f"/tokens/{made['token_id']}"))[0] == 200
    assert (await env.call("new-li", "GET", "/alerts"))[0] == 401
    assert (await env.call("adm-liu", "DELETE", f"/tokens/{made['token_id']}"))[0] == 404
    # Admin reads the audit log: who did what, from where; the read itself is recorded.
    status, body = await env.call("adm-liu", "GET", "/audit?action=token.")
    assert status == 200
    mine = [(e["actor"], e["action"], e["object"]) for e in body["entries"]
            if e["actor"] == "adm-liu"]
    assert mine == [("adm-liu", "token.create", made["token_id"]),
                    ("adm-liu", "token.list", "off-li"),
                    ("adm-liu", "token.revoke", made["token_id"])]
    assert all(e["source"] == "http 127.0.0.1" for e in body["entries"]
               if e["actor"] == "adm-liu")
    status, body = await env.call("adm-liu", "GET", "/audit?actor=ops-zhang")
    assert [e["action"] for e in body["entries"]] == [
        "config.reload_request", "silence.create"]
    status, body = await env.call("adm-liu", "GET", "/audit?subject=s001&action=alert.")
    assert status == 200
    assert body["entries"] == []  # nobody acted on s001's alert yet
    assert await scalar(env.dsn, "SELECT count(*) FROM audit_log WHERE action = 'audit.read'"
                        " AND actor = 'adm-liu'") == 3
    assert (await env.call("adm-liu", "GET", "/audit?from=yesterday"))[0] == 400
    # The reload the operator asked for ran (unchanged files: same version).
    await eventually(lambda: env.daemon._reloader.status.last_attempt_at is not None,
                     what="reload attempted")
    # The daemon's own limits (settings.yaml defaults): ten refused credentials from this
    # address (the revoked token above was one), then 429 with Retry-After, even for a
    # right token.
    csrf = {"X-Emon-Console": "1"}
    for _ in range(9):
        status, _body = await env.call(None, "POST", "/console/api/session",
                                       {"token": "emon_" + uuid.uuid4().hex}, csrf)
        assert status == 401
    async with env.http.post(env.base + "/console/api/session", headers=csrf,
                             json={"token": env.tokens["off-li"]}) as response:
        assert response.status == 429
        assert int(response.headers["Retry-After"]) >= 1


# ---------------------------------------------------------------------- rate limit over HTTP


@pytest.mark.services
async def test_rate_limit_429_with_retry_after_for_guessers_and_chatty_tokens(
    pg_dsn: str, tmp_path: Path
) -> None:
    """The officer API on the daemon's HTTP server (real sockets) over a real PostgreSQL,
    with the rate-limit middleware on a virtual clock; no MQTT needed: nothing here acts
    on an alert."""
    loaded = load(config_dir(tmp_path), "127.0.0.1", 1, pg_dsn)
    settings = RateLimitSettings(
        per_address_per_second=1000, per_address_burst=1000, per_credential_per_second=1,
        per_credential_burst=5, failed_auth_per_minute=3, failed_auth_burst=3,
    )
    now = [1000.0]
    await migrate(pg_dsn)

    async def never_dispatch(_transitions: Any) -> asyncio.Future[None]:
        raise AssertionError("no alert action in this test")

    async with open_pool(pg_dsn, min_size=1, max_size=2) as pool:
        token = new_token()
        await AccessStore(pool).create_token("off-li", "t", None, token, actor="t", source="t")
        actions = OfficerActions(Pipeline(loaded.core), LifecycleStore(pool), never_dispatch,
                                 silence_max_seconds=3600)
        limited = rate_limit_middleware(RateLimiter(settings), clock=lambda: now[0])
        async with HttpServer("127.0.0.1", 0, lambda: {"ok": True}, api_routes(actions),
                              [limited]) as server, aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{server.bound_port}"

            async def get(path: str, bearer: str | None) -> tuple[int, Any, str | None]:
                headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
                async with http.get(base + path, headers=headers) as r:
                    return r.status, await r.json(), r.headers.get("Retry-After")

            limited_before = REGISTRY.get_sample_value(
                "emon_http_rate_limited_total", {"limit": "failed_auth"}) or 0.0
            # Three wrong tokens: 401 each. The fourth guess: 429 before any lookup, and
            # so is the right token from that address until the bucket refills.
            for _ in range(3):
                assert (await get("/me", "emon_" + uuid.uuid4().hex))[0] == 401
            status, body, retry = await get("/me", "emon_" + uuid.uuid4().hex)
            assert (status, body["error"], retry) == (429, "too_many_requests", "20")
            assert (await get("/me", token))[0] == 429
            assert REGISTRY.get_sample_value(
                "emon_http_rate_limited_total", {"limit": "failed_auth"}) == limited_before + 2
            # /metrics is never limited.
            async with http.get(base + "/metrics") as r:
                assert r.status == 200
            now[0] += 20.0
            # One token's burst of 5, then 429 with when to come back.
            statuses = [(await get("/me", token))[0] for _ in range(6)]
            assert statuses == [200] * 5 + [429]
            status, _body, retry = await get("/me", token)
            assert (status, retry) == (429, "1")
            now[0] += 1.0
            assert (await get("/me", token))[0] == 200


# ---------------------------------------------------------------------- CLI: track and audit


@pytest.mark.services
async def test_cli_track_read_is_audited_with_caller_and_emon_audit_lists_it(
    pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = config_dir(tmp_path)
    monkeypatch.setenv("EMON_DATABASE_URL", pg_dsn)
    layout = await migrate(pg_dsn)
    at = datetime(2026, 11, 20, 14, 0, tzinfo=UTC)
    if not layout.timescale:  # TimescaleDB makes its chunks itself
        await execute(pg_dsn, "SELECT emon_ensure_day_partitions('pings'::regclass, %s, %s)",
                      [at.date(), at.date()])
    await execute(
        pg_dsn,
        "INSERT INTO pings (device_id, subject_id, ts, received_at, lat, lon, acc_m, src)"
        " VALUES ('tag-s001', 's001', %s, %s, 22.54, 114.05, 8, 'gnss')", [at, at],
    )
    common = ["--config", str(directory), "--from", "2026-11-20T00:00+00:00",
              "--to", "2026-11-21T00:00+00:00"]
    # off-chen's caseload is s003: refused, nothing read, nothing recorded as read.
    assert await asyncio.to_thread(
        emon_main, ["track", "s001", "--as", "off-chen", *common]) == 2
    assert await asyncio.to_thread(emon_main, ["track", "s001", "--as", "ghost", *common]) == 2
    assert await scalar(pg_dsn, "SELECT count(*) FROM audit_log WHERE action = 'track.read'") == 0
    assert await asyncio.to_thread(emon_main, [
        "track", "s001", "--as", "off-li", "--reason", "curfew check", *common]) == 0
    assert await asyncio.to_thread(emon_main, ["track", "s001", *common]) == 0
    reads = await rows(pg_dsn, "SELECT actor, object, source, detail FROM audit_log"
                       " WHERE action = 'track.read' ORDER BY id")
    assert [r[0] for r in reads] == ["off-li", reads[1][0]]
    assert reads[1][0].startswith("os:")
    assert all(r[1] == "s001" and r[2].startswith("cli:") and "@" in r[2] for r in reads)
    assert reads[0][3]["points"] == 1
    assert reads[0][3]["reason"] == "curfew check"
    # `emon audit` lists them (JSON), and its own read is then in the log.
    out = tmp_path / "audit.jsonl"
    code = await asyncio.to_thread(_run_to_file, out, [
        "audit", "--config", str(directory), "--subject", "s001", "--action", "track.read",
        "--json", "--as", "sup-wang"])
    assert code == 0
    listed = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["actor"] for e in listed] == [r[0] for r in reads]
    audit_reads = await rows(pg_dsn, "SELECT actor, detail FROM audit_log"
                             " WHERE action = 'audit.read'")
    assert audit_reads[0][0] == "sup-wang"
    assert audit_reads[0][1]["rows"] == 2
    assert audit_reads[0][1]["subject_id"] == "s001"
    # The compliance report (figures per subject, no positions) is on record too.
    assert await asyncio.to_thread(_run_to_file, tmp_path / "report", [
        "report", "compliance", "--day", "2026-11-20", "--config", str(directory),
        "--as", "cmd-futian"]) == 0
    assert await rows(pg_dsn, "SELECT actor, object FROM audit_log"
                      " WHERE action = 'report.compliance'") == [("cmd-futian", "2026-11-20")]
    # The what-if replays everyone's stored pings: recorded before the first row is read.
    assert await asyncio.to_thread(_run_to_file, tmp_path / "diff", [
        "config", "diff", str(directory), str(directory), "--quiet",
        "--from", "2026-11-20T00:00+00:00", "--to", "2026-11-21T00:00+00:00"]) == 0
    replays = await rows(pg_dsn, "SELECT actor, object, source, detail FROM audit_log"
                         " WHERE action = 'pings.read'")
    assert len(replays) == 1
    assert replays[0][0].startswith("os:")
    assert replays[0][3]["purpose"] == "config diff"
    # Tokens made on the host: role and who made it are recorded.
    assert await asyncio.to_thread(_run_to_file, tmp_path / "tok", [
        "token", "create", "--operator", "ops-zhang", "--config", str(directory)]) == 0
    made = await rows(pg_dsn, "SELECT role, officer_id, created_by FROM api_tokens")
    assert made[0][:2] == ("operator", "ops-zhang")
    assert made[0][2].startswith("os:")
    # Offboarding: every token of a person at once, each revocation on record.
    assert await asyncio.to_thread(emon_main, [
        "token", "revoke", "--officer", "ops-zhang", "--config", str(directory)]) == 0
    assert await scalar(pg_dsn, "SELECT count(*) FROM api_tokens WHERE revoked_at IS NULL") == 0
    assert await scalar(pg_dsn, "SELECT count(*) FROM audit_log WHERE action = 'token.revoke'"
                        " AND detail->>'officer_id' = 'ops-zhang'") == 1
    assert await asyncio.to_thread(emon_main, [
        "token", "revoke", "--officer", "ops-zhang", "--config", str(directory)]) == 1


def _run_to_file(path: Path, argv: list[str]) -> int:
    import contextlib

    with path.open("w", encoding="utf-8") as out, contextlib.redirect_stdout(out):
        return emon_main(argv)


# ---------------------------------------------------------------------- retention


async def _alert(dsn: str, state: str, resolved_at: datetime | None, opened_at: datetime) -> str:
    alert_id = str(uuid.uuid4())
    await execute(
        dsn,
        "INSERT INTO alerts (alert_id, subject_id, device_id, rule, tier, state, opened_at,"
        " updated_at, count, condition_active, resolved_at, trigger, last_evidence)"
        " VALUES (%s, 's001', 'tag-s001', 'strap_open', 'critical', %s, %s, %s, 1, false, %s,"
        " '{}', '{}')",
        [alert_id, state, opened_at, opened_at, resolved_at],
    )
    await execute(dsn, "INSERT INTO alert_history (alert_id, at, kind, payload)"
                  " VALUES (%s, %s, 'opened', '{}')", [alert_id, opened_at])
    return alert_id


@pytest.mark.services
async def test_retention_per_data_class_and_audit_log_shortened_only_by_it(
    pg_dsn: str,
) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=800)
    recent = now - timedelta(days=5)
    layout = await migrate(pg_dsn)
    old_resolved = await _alert(pg_dsn, "resolved", old, old)
    old_open = await _alert(pg_dsn, "open", None, old)
    old_acked = await _alert(pg_dsn, "acknowledged", None, old)
    for delivery, status, finished in (
        ("sent-old", "sent", old), ("sent-new", "sent", recent), ("pending-old", "pending", None),
    ):
        await execute(
            pg_dsn,
            "INSERT INTO notification_outbox (delivery_id, alert_id, transition_kind,"
            " transition_at, endpoint, message, status, finished_at, created_at)"
            " VALUES (%s, %s, 'notified', %s, %s, '{}', %s, %s, %s)",
            [uuid.uuid5(uuid.NAMESPACE_URL, delivery), old_open, old, delivery, status,
             finished, old],
        )
    token_id = uuid.uuid4()
    await execute(pg_dsn, "INSERT INTO api_tokens (token_id, token_sha256, officer_id)"
                  " VALUES (%s, 'x', 'off-li')", [token_id])
    for digest, ended in (("s-old", old), ("s-new", recent)):
        await execute(
            pg_dsn,
            "INSERT INTO console_sessions (session_sha256, token_id, officer_id, created_at,"
            " expires_at, ended_at, source) VALUES (%s, %s, 'off-li', %s, %s, %s, 'test')",
            [digest, token_id, ended - timedelta(hours=1), ended + timedelta(hours=11), ended],
        )
    for reason, ends in (("old", old), ("new", recent)):
        await execute(
            pg_dsn,
            "INSERT INTO silences (silence_id, subject_id, reason, author, starts_at,"
            " expires_at) VALUES (%s, 's001', %s, 'off-li', %s, %s)",
            [uuid.uuid4(), reason, ends - timedelta(hours=1), ends],
        )
    for at, what in ((now - timedelta(days=2000), "ancient"), (now - timedelta(days=400), "old"),
                     (recent, "recent")):
        await execute(pg_dsn, "INSERT INTO audit_log (at, actor, action, object, source)"
                      " VALUES (%s, 'off-li', 'track.read', %s, 'test')", [at, what])
    # Tampering is refused: UPDATE, DELETE, TRUNCATE; and the retention flag set by hand
    # does not open the door to rows younger than a year.
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        for statement in ("UPDATE audit_log SET actor = 'someone else'",
                          "DELETE FROM audit_log WHERE object = 'recent'",
                          "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                await conn.execute(statement)
        async with conn.transaction():
            await conn.execute("SELECT set_config('emon.audit_purge', 'on', true)")
            with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
                await conn.execute("DELETE FROM audit_log WHERE object = 'recent'")
    retention = RetentionSettings(
        resolved_alerts_days=730, silences_days=730, console_sessions_days=30,
        delivered_notifications_days=30, audit_log_days=1825,
    )
    async with open_pool(pg_dsn, min_size=1, max_size=1) as pool:
        report = await run_maintenance(
            pool, timescale=layout.timescale, store=StoreSettings(), retention=retention,
            subjects={}, now=now,
        )
        assert report.failed_steps == []
        # A shorter audit retention (the floor is a year) takes the 400-day-old row too.
        shorter = retention.model_copy(update={"audit_log_days": 365})
        again = await run_maintenance(
            pool, timescale=layout.timescale, store=StoreSettings(), retention=shorter,
            subjects={}, now=now,
        )
    assert report.alerts_deleted == 1
    assert report.rows_deleted == {"notification_outbox": 1, "console_sessions": 1,
                                   "silences": 1, "audit_log": 1}
    alerts = {r[0] for r in await rows(pg_dsn, "SELECT alert_id::text FROM alerts")}
    assert alerts == {old_open, old_acked}  # open alerts are never deleted, however old
    assert await scalar(pg_dsn, "SELECT count(*) FROM alert_history WHERE alert_id = %s",
                        [old_resolved]) == 0
    # Finished deliveries go after 30 days, even of an open alert (each attempt is in the
    # alert's history); a pending one never.
    assert {r[0] for r in await rows(pg_dsn, "SELECT endpoint FROM notification_outbox")} == {
        "sent-new", "pending-old"}
    assert [r[0] for r in await rows(pg_dsn, "SELECT session_sha256 FROM console_sessions")] == [
        "s-new"]
    assert [r[0] for r in await rows(pg_dsn, "SELECT reason FROM silences")] == ["new"]
    kept = {r[0] for r in await rows(pg_dsn, "SELECT object FROM audit_log"
                                     " WHERE action = 'track.read'")}
    assert kept == {"recent"}
    assert again.rows_deleted == {"audit_log": 1}
    # Every purge is itself on record, by class.
    purged = {r[0]: r[1]["rows"] for r in await rows(
        pg_dsn, "SELECT object, detail FROM audit_log WHERE action = 'retention.purge'")}
    assert purged == {"alerts": 1, "notification_outbox": 1, "console_sessions": 1,
                      "silences": 1, "audit_log": 1}


@pytest.mark.services
async def test_tokens_are_stored_only_as_digests(pg_dsn: str) -> None:
    # A copy of the database (a backup, a leaked dump) must not give anyone a usable token:
    # neither the tokens table nor the audit of its creation holds the token itself.
    await migrate(pg_dsn)
    token = new_token()
    async with open_pool(pg_dsn, min_size=1, max_size=1) as pool:
        store = AccessStore(pool)
        await store.create_token("off-li", "laptop", None, token, actor="adm-liu",
                                 source="cli:test@host")
        now = datetime.now(UTC)
        grant = await store.grant(token, now)
        assert grant is not None
        assert await store.grant(token[:-1] + ("a" if token[-1] != "a" else "b"), now) is None
    stored = [
        *await rows(pg_dsn, "SELECT to_jsonb(t) FROM api_tokens t"),
        *await rows(pg_dsn, "SELECT to_jsonb(t) FROM audit_log t"),
    ]
    dump = "\n".join(json.dumps(row, default=str) for row in stored)
    assert "off-li" in dump  # the rows are there
    assert token not in dump
    digests = await rows(pg_dsn, "SELECT token_sha256 FROM api_tokens")
    assert digests == [(hashlib.sha256(token.encode()).hexdigest(),)]
