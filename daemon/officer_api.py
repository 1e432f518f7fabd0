"""Officer actions — list, acknowledge, note, resolve, silence — for the HTTP API and the MQTT
command topic, with one bearer token per officer and caseload scoping:

    officer     the alerts of subjects whose officer they are
    supervisor  also those of the officers they supervise (their team)
    command     every alert

An alert outside the caller's scope answers 404, exactly like one that does not exist, so a
token cannot even learn that another officer's subject has an alert. Tokens carry a role
(daemon/access.py): operator tokens reach config and silences, admin tokens tokens and the
audit log (`/tokens`, `/audit`), neither any alert or location; a role lacking a permission
gets 403 with the reason. Every action and every read goes to the audit log. Actions
change the daemon's AlertBook (the single writer) and are recorded and published like any
transition; the answer says whether the database has it yet.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from alerts.lifecycle import AlertError
from alerts.model import Alert, AlertTransition, Disposition, RuleId
from alerts.policy import OfficerInfo, Role
from alerts.suppression import Silence
from daemon import alert_metrics
from daemon.access import (
    Permission,
    TokenRole,
    allows,
    in_caseload,
    refusal,
    role_for_token,
)
from daemon.pipeline import Pipeline
from daemon.store.access_repo import AUDIT_LIMIT_MAX, AuditQuery, new_token
from daemon.store.errors import StoreError
from daemon.store.lifecycle_repo import LifecycleStore

_LOGGER = logging.getLogger(__name__)

RECORD_WAIT_SECONDS = 5.0
NOTE_MAX_CHARS = 2000
LIST_LIMIT_MAX = 1000
# Tokens made over the API always expire (a remote act should not mint a credential for
# ever); `emon token create` on the host may make one without expiry.
API_TOKEN_DEFAULT_DAYS = 90.0
API_TOKEN_MAX_DAYS = 365.0
PRINCIPAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
OFFICER_DISPOSITIONS = frozenset(d.value for d in Disposition) - {
    Disposition.CONDITION_CLEARED.value
}

# Hands transitions to the daemon (publish + record); the future completes once recorded.
Dispatch = Callable[[Sequence[AlertTransition]], Awaitable["asyncio.Future[None]"]]


class ActionError(Exception):
    """An officer action refused: carries the HTTP status and a stable error code."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after_seconds: float | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after_seconds = retry_after_seconds


def _aware(text: str, field: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ActionError(400, "bad_request", f"{field}: not an ISO 8601 time") from None
    if value.tzinfo is None:
        raise ActionError(400, "bad_request", f"{field}: needs a UTC offset")
    return value.astimezone(UTC)


def text_field(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise ActionError(400, "bad_request", f"{key} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise ActionError(400, "bad_request", f"{key} must be a non-empty string")
    if len(value) > NOTE_MAX_CHARS:
        raise ActionError(400, "bad_request", f"{key} is longer than {NOTE_MAX_CHARS} characters")
    return value


def silence_to_json(s: Silence) -> dict[str, Any]:
    return {
        "silence_id": s.silence_id, "subject_id": s.subject_id, "rule": s.rule,
        "reason": s.reason, "author": s.author, "starts_at": s.starts_at.isoformat(),
        "expires_at": s.expires_at.isoformat(),
        "ended_at": s.ended_at.isoformat() if s.ended_at else None, "ended_by": s.ended_by,
    }


@dataclass(frozen=True, slots=True)
class Caller:
    # The person and the role the request acts with (daemon.access): an officer's
    # directory entry, or for operator and admin tokens an entry outside the directory.
    officer: OfficerInfo
    channel: str  # "http" or "mqtt": audit and metrics
    source: str  # e.g. "http 127.0.0.1"

    @property
    def role(self) -> Role:
        return self.officer.role


def require(caller: Caller, permission: Permission) -> None:
    """403 with the reason when the caller's role lacks the permission altogether."""
    if not allows(caller.role, permission):
        alert_metrics.ACCESS_REFUSED.labels(caller.role.value, permission.name.lower()).inc()
        raise ActionError(403, "forbidden", refusal(caller.role, permission))


def _no_reloader() -> Any:
    raise ActionError(503, "unavailable", "this process does not reload config")


class OfficerActions:
    def __init__(
        self,
        pipeline: Pipeline,
        store: LifecycleStore,
        dispatch: Dispatch,
        *,
        silence_max_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pipeline = pipeline
        self._store = store
        self._dispatch = dispatch
        self._silence_max = silence_max_seconds
        self._clock = clock
        self.on_silence_change: Callable[[], None] = lambda: None
        # Set by the daemon (its ConfigReloader); without them config requests answer 503.
        self.reload_status: Callable[[], dict[str, Any]] = _no_reloader
        self.reload_requested: Callable[[], None] = _no_reloader

    # ------------------------------------------------------------------ who

    async def authenticate(self, token: str | None, channel: str, source: str) -> Caller:
        grant = None
        if token:
            try:
                grant = await self._store.token_grant(token, self._clock())
            except StoreError as exc:
                raise ActionError(503, "unavailable", "cannot check the token now") from exc
        officer = self.person_of(grant.officer_id, grant.role) if grant is not None else None
        if officer is None:
            # A token of an officer no longer in the config is refused like a wrong one.
            alert_metrics.AUTH_FAILURES.labels(channel).inc()
            raise ActionError(401, "unauthorized", "missing, unknown, expired or revoked token")
        return Caller(officer, channel, source)

    def person_of(self, principal: str, token_role: TokenRole) -> OfficerInfo | None:
        """Who a token acts as: the officer's directory entry (their config role), or an
        operator or admin outside the directory; None when an officer left the config."""
        directory = self._pipeline.config.alerting.directory
        found = directory.officers.get(principal)
        role = role_for_token(token_role, found.role if found is not None else None)
        if role is None:
            return None
        if token_role is TokenRole.OFFICER and found is not None:
            return found
        return OfficerInfo(principal, role)

    def _officer_of_subject(self, subject_id: str) -> str | None:
        subject = self._pipeline.config.subjects.get(subject_id)
        return subject.officer_id if subject is not None else None

    def may_see_subject(self, caller: Caller, subject_id: str) -> bool:
        return in_caseload(
            self._pipeline.config.alerting.directory, caller.officer,
            self._officer_of_subject(subject_id),
        )

    def may_see(self, caller: Caller, alert: Alert) -> bool:
        return self.may_see_subject(caller, alert.subject_id)

    def _visible_alert(self, caller: Caller, alert_id: str) -> Alert:
        alert = self._pipeline.book.get(alert_id)
        if alert is None or not self.may_see(caller, alert):
            raise ActionError(404, "not_found", f"no alert {alert_id} in your caseload")
        return alert

    # ------------------------------------------------------------------ reading

    async def list_alerts(
        self, caller: Caller, *, state: str = "unresolved", subject_id: str | None = None,
        tier: str | None = None, limit: int = 200,
    ) -> list[dict[str, Any]]:
        require(caller, Permission.ALERTS_READ)
        if state not in ("unresolved", "open", "acknowledged", "resolved", "all"):
            raise ActionError(400, "bad_request", f"unknown state {state!r}")
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ActionError(400, "bad_request", f"limit must be 1..{LIST_LIMIT_MAX}")
        book = self._pipeline.book
        alerts = book.unresolved() if state in ("unresolved", "open", "acknowledged") else (
            book.all_alerts()
        )
        out = [
            a for a in alerts
            if self.may_see(caller, a)
            and (state in ("unresolved", "all") or a.state.value == state)
            and (subject_id is None or a.subject_id == subject_id)
            and (tier is None or a.tier.value == tier)
        ]
        # Newest first for resolved lists; the queue (unresolved) oldest first.
        if state in ("resolved", "all"):
            out.sort(key=lambda a: (a.updated_at, a.alert_id), reverse=True)
        await self._audit(caller, "alert.list", subject_id or "*",
                          {"state": state, "tier": tier, "count": len(out[:limit])})
        return [a.to_wire() for a in out[:limit]]

    async def get_alert(self, caller: Caller, alert_id: str) -> dict[str, Any]:
        require(caller, Permission.ALERTS_READ)
        alert = self._visible_alert(caller, alert_id)
        body = alert.to_wire()
        try:
            escalation = await self._store.escalation(alert_id)
            history = await self._store.history(alert_id)
        except StoreError as exc:
            raise ActionError(503, "unavailable", "history not available now") from exc
        body["escalation"] = escalation
        body["history"] = [
            {"at": h["at"].isoformat(), "kind": h["kind"], "actor": h["actor"], "note": h["note"],
             **({"delivery": h["payload"]} if h["kind"] == "delivery" else {}),
             **({"notification": h["payload"].get("notification")}
                if isinstance(h["payload"], dict) and h["payload"].get("notification") else {})}
            for h in history
        ]
        await self._audit(caller, "alert.read", alert_id, {})
        return body

    # ------------------------------------------------------------------ acting

    async def acknowledge(self, caller: Caller, alert_id: str, note: str | None) -> dict[str, Any]:
        require(caller, Permission.ALERTS_ACT)
        alert = self._visible_alert(caller, alert_id)
        return await self._act(
            caller, "alert.ack", alert,
            lambda now: self._pipeline.book.acknowledge(
                alert_id, caller.officer.officer_id, now, note
            ),
            {"note": note},
        )

    async def resolve(
        self, caller: Caller, alert_id: str, disposition: str | None, note: str | None
    ) -> dict[str, Any]:
        require(caller, Permission.ALERTS_ACT)
        if disposition not in OFFICER_DISPOSITIONS:
            raise ActionError(
                400, "bad_request",
                f"disposition must be one of {', '.join(sorted(OFFICER_DISPOSITIONS))}",
            )
        alert = self._visible_alert(caller, alert_id)
        return await self._act(
            caller, "alert.resolve", alert,
            lambda now: self._pipeline.book.resolve(
                alert_id, caller.officer.officer_id, disposition, now, note
            ),
            {"disposition": disposition, "note": note},
        )

    async def note(self, caller: Caller, alert_id: str, note: str) -> dict[str, Any]:
        require(caller, Permission.ALERTS_ACT)
        alert = self._visible_alert(caller, alert_id)
        return await self._act(
            caller, "alert.note", alert,
            lambda now: self._pipeline.book.note(alert_id, caller.officer.officer_id, note, now),
            {"note": note},
        )

    async def _act(
        self, caller: Caller, action: str, alert: Alert,
        change: Callable[[datetime], list[AlertTransition]], detail: dict[str, Any],
    ) -> dict[str, Any]:
        now = self._clock()
        try:
            # Synchronous: nothing else touches the book between the check and the change.
            transitions = change(now)
        except AlertError as exc:
            alert_metrics.OFFICER_ACTIONS.labels(action, caller.channel, "conflict").inc()
            raise ActionError(409, "conflict", str(exc)) from exc
        recorded_future = await self._dispatch(transitions)
        try:
            await asyncio.wait_for(asyncio.shield(recorded_future), RECORD_WAIT_SECONDS)
            recorded = True
        except (TimeoutError, StoreError):
            recorded = False  # decided, published, and recorded once the database is back
        alert_metrics.OFFICER_ACTIONS.labels(action, caller.channel, "ok").inc()
        await self._audit(caller, action, alert.alert_id, detail)
        snapshot = transitions[-1].alert if transitions else alert
        return {"alert": snapshot.to_wire(), "recorded": recorded}

    async def _audit(self, caller: Caller, action: str, obj: str, detail: dict[str, Any]) -> None:
        try:
            await self._store.audit(caller.officer.officer_id, action, obj, caller.source, detail)
        except StoreError as exc:
            # The action stands (it is in the alert's own history); the audit row is lost,
            # which is logged at ERROR so an operator sees it.
            _LOGGER.error("audit log write failed for %s %s: %s", action, obj, exc)

    # ------------------------------------------------------------------ silences

    def _sees_every_silence(self, caller: Caller) -> bool:
        # Command and operators (maintenance windows) see and end every silence; silences
        # carry ids, rules and reasons, never a location.
        return allows(caller.role, Permission.SILENCES_EVERYONE)

    def _may_silence_subject(self, caller: Caller, subject_id: str) -> bool:
        if self._sees_every_silence(caller):
            return subject_id in self._pipeline.config.subjects
        return self.may_see_subject(caller, subject_id)

    async def list_silences(self, caller: Caller) -> list[dict[str, Any]]:
        require(caller, Permission.SILENCES_READ)
        try:
            silences = await self._store.list_silences()
        except StoreError as exc:
            raise ActionError(503, "unavailable", "silences not available now") from exc
        return [
            silence_to_json(s) for s in silences
            if self._sees_every_silence(caller)
            or (s.subject_id is not None and self.may_see_subject(caller, s.subject_id))
        ]

    async def create_silence(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        require(caller, Permission.SILENCES_WRITE)
        subject_id = text_field(body, "subject_id")
        rule = text_field(body, "rule")
        reason = text_field(body, "reason", required=True)
        assert reason is not None
        if subject_id is None and rule is None:
            raise ActionError(400, "bad_request", "give subject_id, rule, or both")
        if rule is not None and rule not in {r.value for r in RuleId}:
            raise ActionError(400, "bad_request", f"unknown rule {rule!r}")
        if subject_id is None:
            require(caller, Permission.SILENCES_EVERYONE)
        if subject_id is not None and not self._may_silence_subject(caller, subject_id):
            raise ActionError(404, "not_found", f"no subject {subject_id} in your caseload")
        now = self._clock()
        starts_at = _aware(str(body["starts_at"]), "starts_at") if body.get("starts_at") else now
        if body.get("expires_at"):
            expires_at = _aware(str(body["expires_at"]), "expires_at")
        elif isinstance(body.get("duration_seconds"), int | float) and not isinstance(
            body.get("duration_seconds"), bool
        ):
            expires_at = starts_at + timedelta(seconds=float(body["duration_seconds"]))
        else:
            raise ActionError(400, "bad_request", "give expires_at or duration_seconds")
        if not starts_at < expires_at:
            raise ActionError(400, "bad_request", "the silence must end after it starts")
        if (expires_at - max(starts_at, now)).total_seconds() > self._silence_max:
            raise ActionError(
                400, "bad_request", f"a silence may last at most {self._silence_max:g} s"
            )
        silence = Silence(
            str(uuid.uuid4()), subject_id, rule, reason, caller.officer.officer_id,
            starts_at, expires_at,
        )
        try:
            await self._store.create_silence(silence, caller.source)
        except StoreError as exc:
            raise ActionError(503, "unavailable", "could not store the silence") from exc
        alert_metrics.OFFICER_ACTIONS.labels("silence.create", caller.channel, "ok").inc()
        self.on_silence_change()
        return silence_to_json(silence)

    async def end_silence(self, caller: Caller, silence_id: str) -> dict[str, Any]:
        require(caller, Permission.SILENCES_WRITE)
        try:
            uuid.UUID(silence_id)
            silence = await self._store.get_silence(silence_id)
        except ValueError:
            silence = None
        except StoreError as exc:
            raise ActionError(503, "unavailable", "silences not available now") from exc
        visible = silence is not None and (
            self._sees_every_silence(caller)
            or (silence.subject_id is not None and self.may_see_subject(caller, silence.subject_id))
        )
        if silence is None or not visible:
            raise ActionError(404, "not_found", f"no silence {silence_id} you can see")
        try:
            ended = await self._store.end_silence(
                silence_id, caller.officer.officer_id, self._clock(), caller.source
            )
        except StoreError as exc:
            raise ActionError(503, "unavailable", "could not end the silence") from exc
        if not ended:
            raise ActionError(409, "conflict", "the silence has already ended")
        self.on_silence_change()
        updated = await self._store.get_silence(silence_id)
        assert updated is not None
        return silence_to_json(updated)


    # ------------------------------------------------------------------ config (operator)

    def config_status(self, caller: Caller) -> dict[str, Any]:
        require(caller, Permission.CONFIG_READ)
        return {"version": self._pipeline.config.version, "reload": self.reload_status()}

    async def request_reload(self, caller: Caller) -> dict[str, Any]:
        require(caller, Permission.CONFIG_RELOAD)
        # Like SIGHUP: the reload task loads the directory whole and swaps it in between
        # two messages, or keeps the running version; GET /config tells which.
        self.reload_requested()
        await self._audit(caller, "config.reload_request", self._pipeline.config.version, {})
        return {"requested": True, "running_version": self._pipeline.config.version}

    # ------------------------------------------------------------------ tokens (admin)

    async def list_tokens(self, caller: Caller, principal: str | None) -> list[dict[str, Any]]:
        require(caller, Permission.TOKENS_MANAGE)
        try:
            rows = await self._store.access.list_tokens(principal)
        except StoreError as exc:
            raise ActionError(503, "unavailable", "tokens not available now") from exc
        await self._audit(caller, "token.list", principal or "*", {"count": len(rows)})
        return [
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
            for row in rows
        ]

    async def create_token(self, caller: Caller, body: dict[str, Any]) -> dict[str, Any]:
        require(caller, Permission.TOKENS_MANAGE)
        try:
            role = TokenRole(str(body.get("role", TokenRole.OFFICER.value)))
        except ValueError:
            raise ActionError(
                400, "bad_request", f"role must be one of {', '.join(r.value for r in TokenRole)}"
            ) from None
        principal = text_field(body, "officer_id", required=True)
        assert principal is not None
        if not PRINCIPAL_RE.match(principal):
            raise ActionError(400, "bad_request", "officer_id: 1-64 of A-Z a-z 0-9 . _ @ -")
        if role is TokenRole.OFFICER and self.person_of(principal, role) is None:
            raise ActionError(400, "bad_request", f"no officer {principal} in subjects.yaml")
        label = text_field(body, "label") or ""
        days = body.get("expires_days", API_TOKEN_DEFAULT_DAYS)
        if (
            not isinstance(days, int | float) or isinstance(days, bool)
            or not 0 < days <= API_TOKEN_MAX_DAYS
        ):
            raise ActionError(
                400, "bad_request", f"expires_days must be in (0, {API_TOKEN_MAX_DAYS:g}]"
            )
        expires_at = self._clock() + timedelta(days=float(days))
        token = new_token()
        try:
            token_id = await self._store.access.create_token(
                principal, label, expires_at, token, role=role,
                actor=caller.officer.officer_id, source=caller.source,
            )
        except StoreError as exc:
            raise ActionError(503, "unavailable", "could not store the token") from exc
        alert_metrics.OFFICER_ACTIONS.labels("token.create", caller.channel, "ok").inc()
        return {
            "token_id": token_id, "token": token, "officer_id": principal, "role": role.value,
            "label": label, "expires_at": expires_at.isoformat(),
        }

    async def revoke_token(self, caller: Caller, token_id: str) -> dict[str, Any]:
        require(caller, Permission.TOKENS_MANAGE)
        try:
            revoked = await self._store.access.revoke_token(
                token_id, actor=caller.officer.officer_id, source=caller.source
            )
        except StoreError as exc:
            raise ActionError(503, "unavailable", "could not revoke the token") from exc
        if not revoked:
            raise ActionError(404, "not_found", f"no active token {token_id}")
        alert_metrics.OFFICER_ACTIONS.labels("token.revoke", caller.channel, "ok").inc()
        return {"token_id": token_id, "revoked": True}

    # ------------------------------------------------------------------ audit (admin)

    async def read_audit(self, caller: Caller, query: AuditQuery) -> list[dict[str, Any]]:
        require(caller, Permission.AUDIT_READ)
        if not 1 <= query.limit <= AUDIT_LIMIT_MAX:
            raise ActionError(400, "bad_request", f"limit must be 1..{AUDIT_LIMIT_MAX}")
        try:
            rows = await self._store.access.read_audit(
                query, actor=caller.officer.officer_id, source=caller.source
            )
        except StoreError as exc:
            # The read and its own audit row are one transaction: no row, no answer.
            raise ActionError(503, "unavailable", "the audit log is not available now") from exc
        return [audit_entry_json(r) for r in rows]


def audit_entry_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"], "at": row["at"].isoformat(), "actor": row["actor"],
        "action": row["action"], "object": row["object"], "source": row["source"],
        "detail": row["detail"],
    }


# ---------------------------------------------------------------------- HTTP


def error_response(exc: ActionError) -> web.Response:
    """`{"error": code, "detail": text}` with the status (the API's and the console's)."""
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if exc.retry_after_seconds is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_seconds)))
    return web.json_response(
        {"error": exc.code, "detail": exc.message}, status=exc.status, headers=headers or None
    )


async def read_json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except ValueError:
        raise ActionError(400, "bad_request", "body is not JSON") from None
    if not isinstance(body, dict):
        raise ActionError(400, "bad_request", "body must be a JSON object")
    return body


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def query_time(request: web.Request, key: str) -> datetime | None:
    text = request.query.get(key)
    return _aware(text, key) if text else None


def query_int(request: web.Request, key: str, default: int) -> int:
    try:
        return int(request.query.get(key, str(default)))
    except ValueError:
        raise ActionError(400, "bad_request", f"{key} must be a number") from None


def api_routes(actions: OfficerActions) -> list[web.RouteDef]:
    """`GET /alerts`, `GET /alerts/{id}`, `POST /alerts/{id}/ack|resolve|notes`,
    `GET|POST /silences`, `DELETE /silences/{id}`, `GET /me`."""

    async def caller_of(request: web.Request) -> Caller:
        return await actions.authenticate(
            bearer_token(request), "http", f"http {request.remote or '-'}"
        )

    def handler(
        body: Callable[[web.Request, Caller], Awaitable[Any]], status: int = 200
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            try:
                caller = await caller_of(request)
                result = await body(request, caller)
            except ActionError as exc:
                return error_response(exc)
            code = status
            if isinstance(result, dict) and result.get("recorded") is False:
                code = 202  # decided and published; the database will have it when back
            return web.json_response(result, status=code, dumps=dumps)

        return handle

    async def list_alerts(request: web.Request, caller: Caller) -> Any:
        q = request.query
        limit = query_int(request, "limit", 200)
        alerts = await actions.list_alerts(
            caller, state=q.get("state", "unresolved"), subject_id=q.get("subject"),
            tier=q.get("tier"), limit=limit,
        )
        return {"alerts": alerts, "count": len(alerts)}

    async def get_alert(request: web.Request, caller: Caller) -> Any:
        return await actions.get_alert(caller, request.match_info["alert_id"])

    async def ack(request: web.Request, caller: Caller) -> Any:
        body = await read_json_body(request)
        return await actions.acknowledge(
            caller, request.match_info["alert_id"], text_field(body, "note")
        )

    async def resolve(request: web.Request, caller: Caller) -> Any:
        body = await read_json_body(request)
        disposition = body.get("disposition")
        return await actions.resolve(
            caller, request.match_info["alert_id"],
            disposition if isinstance(disposition, str) else None, text_field(body, "note"),
        )

    async def note(request: web.Request, caller: Caller) -> Any:
        body = await read_json_body(request)
        text = text_field(body, "note", required=True)
        assert text is not None
        return await actions.note(caller, request.match_info["alert_id"], text)

    async def me(_request: web.Request, caller: Caller) -> Any:
        return {"officer_id": caller.officer.officer_id, "role": caller.officer.role.value}

    async def silences(_request: web.Request, caller: Caller) -> Any:
        return {"silences": await actions.list_silences(caller)}

    async def create_silence(request: web.Request, caller: Caller) -> Any:
        return await actions.create_silence(caller, await read_json_body(request))

    async def end_silence(request: web.Request, caller: Caller) -> Any:
        return await actions.end_silence(caller, request.match_info["silence_id"])

    async def tokens(request: web.Request, caller: Caller) -> Any:
        return {"tokens": await actions.list_tokens(caller, request.query.get("officer"))}

    async def create_token(request: web.Request, caller: Caller) -> Any:
        return await actions.create_token(caller, await read_json_body(request))

    async def revoke_token(request: web.Request, caller: Caller) -> Any:
        return await actions.revoke_token(caller, request.match_info["token_id"])

    async def audit(request: web.Request, caller: Caller) -> Any:
        query = AuditQuery(
            since=query_time(request, "from"), until=query_time(request, "to"),
            actor=request.query.get("actor"), action=request.query.get("action"),
            subject_id=request.query.get("subject"), limit=query_int(request, "limit", 1000),
        )
        entries = await actions.read_audit(caller, query)
        return {"entries": entries, "count": len(entries)}

    async def config(_request: web.Request, caller: Caller) -> Any:
        return actions.config_status(caller)

    async def reload(_request: web.Request, caller: Caller) -> Any:
        return await actions.request_reload(caller)

    return [
        web.get("/me", handler(me)),
        web.get("/tokens", handler(tokens)),
        web.post("/tokens", handler(create_token, 201)),
        web.delete("/tokens/{token_id}", handler(revoke_token)),
        web.get("/audit", handler(audit)),
        web.get("/config", handler(config)),
        web.post("/config/reload", handler(reload, 202)),
        web.get("/alerts", handler(list_alerts)),
        web.get("/alerts/{alert_id}", handler(get_alert)),
        web.post("/alerts/{alert_id}/ack", handler(ack)),
        web.post("/alerts/{alert_id}/resolve", handler(resolve)),
        web.post("/alerts/{alert_id}/notes", handler(note)),
        web.get("/silences", handler(silences)),
        web.post("/silences", handler(create_silence, 201)),
        web.delete("/silences/{silence_id}", handler(end_silence)),
    ]

