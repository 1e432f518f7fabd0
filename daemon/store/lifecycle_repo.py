"""The alert lifecycle in PostgreSQL: transitions with their escalation state and outbox,
escalation sweeps, delivery bookkeeping, silences, API tokens and the audit log.

Decisions are the pure core's (`alerts.escalation`, `alerts.suppression`); this module only
loads their inputs, stores their outputs, and makes the claims that keep two daemons from
deciding the same thing twice:
  - a sweep claims due escalation rows with `FOR UPDATE SKIP LOCKED` and writes the new
    state, the history rows and the outbox rows in that same transaction;
  - delivery workers lease outbox rows (`lease_until`), so a slow endpoint holds no lock
    and a dead daemon's deliveries are taken over when the lease runs out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Protocol

import psycopg
from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow, TupleRow, dict_row
from psycopg.types.json import Jsonb

from alerts.escalation import (
    EscalationState,
    Mute,
    Phase,
    advance,
    on_transition,
    state_for_alert,
)
from alerts.model import Alert, AlertState, AlertTransition, RuleId, Tier
from alerts.policy import AlertingConfig
from alerts.suppression import Silence
from daemon.access import TokenRole
from daemon.store._json import dumps as json_dumps
from daemon.store.access_repo import (
    TOKEN_PREFIX as TOKEN_PREFIX,
)
from daemon.store.access_repo import (
    AccessStore,
    TokenGrant,
    insert_audit,
    run_transaction,
)
from daemon.store.access_repo import (
    new_token as new_token,
)
from daemon.store.access_repo import (
    token_digest as token_digest,
)
from daemon.store.alerts_repo import (
    _ALERT_COLUMNS,
    _INSERT_HISTORY,
    _UPSERT_ALERT,
    _alert_params,
    _history_params,
)
from daemon.store.errors import StoreError
from daemon.store.pool import Pool

_LOGGER = logging.getLogger(__name__)

TRANSACTION_TIMEOUT_SECONDS = 10.0
SWEEP_BATCH_ROWS = 200
DELIVERY_KIND = "delivery"  # alert_history.kind of a delivery attempt


class OutboxRouter(Protocol):
    def feed(self, transition: AlertTransition) -> Sequence[Any]: ...

    def targeted(self, transition: AlertTransition, recipients: Sequence[str]) -> Sequence[Any]: ...


MuteOf = Callable[[Alert, datetime, Sequence[Alert], Sequence[Silence]], Mute | None]


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=json_dumps)


def alert_from_row(row: dict[str, Any]) -> Alert:
    return Alert(
        alert_id=str(row["alert_id"]),
        subject_id=row["subject_id"],
        device_id=row["device_id"],
        rule=RuleId(row["rule"]),
        zone_id=row["zone_id"],
        tier=Tier(row["tier"]),
        state=AlertState(row["state"]),
        opened_at=row["opened_at"],
        updated_at=row["updated_at"],
        officer_id=row["officer_id"],
        trigger=row["trigger"] or {},
        last_evidence=row["last_evidence"] or {},
        reason=row.get("reason") or "",
        count=row["count"],
        condition_active=row["condition_active"],
        cleared_at=row["cleared_at"],
        acknowledged_at=row["acknowledged_at"],
        acknowledged_by=row["acknowledged_by"],
        resolved_at=row["resolved_at"],
        resolved_by=row["resolved_by"],
        disposition=row["disposition"],
    )


_ESC_COLUMNS: Final = (
    "tier", "phase", "step", "started_at", "next_due_at", "wake_at", "repeats",
    "acknowledged_by", "muted",
)  # fmt: skip
_SELECT_ESC: Final = "alert_id::text AS alert_id, " + ", ".join(_ESC_COLUMNS)
_UPSERT_ESC: Final = (
    f"INSERT INTO alert_escalations (alert_id, {', '.join(_ESC_COLUMNS)}, updated_at)"
    f" VALUES (%(alert_id)s, {', '.join(f'%({c})s' for c in _ESC_COLUMNS)}, now())"
    " ON CONFLICT (alert_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ESC_COLUMNS)
    + ", updated_at = now()"
)
_ALERT_SELECT: Final = "a.alert_id::text AS alert_id, " + ", ".join(
    f"a.{c}" for c in _ALERT_COLUMNS if c != "alert_id"
)
_SWEEP_ESC_SELECT: Final = ", ".join(f"e.{c} AS esc_{c}" for c in _ESC_COLUMNS)
_INSERT_OUTBOX: Final = (
    "INSERT INTO notification_outbox (delivery_id, alert_id, transition_kind, transition_at,"
    " endpoint, recipient, officer_id, message)"
    " VALUES (%(delivery_id)s, %(alert_id)s, %(kind)s, %(at)s, %(endpoint)s, %(recipient)s,"
    " %(officer_id)s, %(message)s)"
    " ON CONFLICT ON CONSTRAINT notification_outbox_once_key DO NOTHING"
)
_INSERT_DELIVERY_HISTORY: Final = (
    "INSERT INTO alert_history (alert_id, at, kind, actor, note, ref, payload)"
    " VALUES (%(alert_id)s, %(at)s, 'delivery', %(endpoint)s, %(note)s, %(ref)s, %(payload)s)"
    " ON CONFLICT (alert_id, kind, at, ref) DO NOTHING"
)


def _state_from_row(row: dict[str, Any], prefix: str = "") -> EscalationState:
    return EscalationState(
        alert_id=str(row["alert_id"]),
        tier=Tier(row[prefix + "tier"]),
        phase=Phase(row[prefix + "phase"]),
        step=row[prefix + "step"],
        started_at=row[prefix + "started_at"],
        next_due_at=row[prefix + "next_due_at"],
        wake_at=row[prefix + "wake_at"],
        repeats=row[prefix + "repeats"],
        acknowledged_by=row[prefix + "acknowledged_by"],
        muted=row[prefix + "muted"],
    )


def _state_params(state: EscalationState) -> dict[str, Any]:
    return {
        "alert_id": state.alert_id,
        "tier": state.tier.value,
        "phase": state.phase.value,
        "step": state.step,
        "started_at": state.started_at,
        "next_due_at": state.next_due_at,
        "wake_at": state.wake_at,
        "repeats": state.repeats,
        "acknowledged_by": state.acknowledged_by,
        "muted": state.muted,
    }


def _outbox_params(transition: AlertTransition, item: Any) -> dict[str, Any]:
    return {
        "delivery_id": uuid.uuid4(),
        "alert_id": transition.alert.alert_id,
        "kind": transition.kind.value,
        "at": transition.at,
        "endpoint": item.endpoint,
        "recipient": item.recipient,
        "officer_id": item.officer_id,
        "message": _jsonb(item.message),
    }


def _silence_from_row(row: dict[str, Any]) -> Silence:
    return Silence(
        silence_id=str(row["silence_id"]),
        subject_id=row["subject_id"],
        rule=row["rule"],
        reason=row["reason"],
        author=row["author"],
        starts_at=row["starts_at"],
        expires_at=row["expires_at"],
        ended_at=row["ended_at"],
        ended_by=row["ended_by"],
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One claimed outbox row."""

    delivery_id: str
    alert_id: str
    transition_kind: str
    transition_at: datetime
    endpoint: str
    recipient: str
    officer_id: str | None
    message: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    delivery: Delivery
    outcome: str  # sent | retried | failed | gave_up
    attempt: int
    at: datetime
    error: str | None = None
    retry_in_seconds: float | None = None
    elapsed_ms: float | None = None

    @property
    def terminal(self) -> bool:
        return self.outcome != "retried"

    def history_params(self) -> dict[str, Any]:
        d = self.delivery
        note = f"{self.outcome} via {d.endpoint}" + (f" to {d.recipient}" if d.recipient else "")
        if self.error:
            note += f": {self.error}"
        return {
            "alert_id": d.alert_id,
            "at": self.at,
            "endpoint": d.endpoint,
            "note": note[:1000],
            "ref": f"{d.delivery_id}#{self.attempt}",
            "payload": _jsonb(
                {
                    "delivery_id": d.delivery_id,
                    "endpoint": d.endpoint,
                    "recipient": d.recipient or None,
                    "officer_id": d.officer_id,
                    "transition": d.transition_kind,
                    "transition_at": d.transition_at.isoformat(),
                    "outcome": self.outcome,
                    "attempt": self.attempt,
                    "error": self.error,
                    "retry_in_seconds": self.retry_in_seconds,
                    "elapsed_ms": self.elapsed_ms,
                }
            ),
        }



class LifecycleStore:
    """Stateless over a pool; every method is one transaction (or one query)."""

    def __init__(self, pool: Pool, *, timeout_seconds: float = TRANSACTION_TIMEOUT_SECONDS):
        self._pool = pool
        self._timeout = timeout_seconds
        self.access = AccessStore(pool, timeout_seconds=timeout_seconds)

    async def _run(self, what: str, body: Callable[[AsyncConnection[TupleRow]], Any]) -> Any:
        return await run_transaction(self._pool, what, body, timeout_seconds=self._timeout)

    # ------------------------------------------------------------------ transitions

    async def record(
        self,
        transitions: Sequence[AlertTransition],
        config: AlertingConfig,
        router: OutboxRouter,
        now: datetime | None = None,
    ) -> None:
        """Transitions, in order and in one transaction: the alert snapshot, the history row,
        the escalation state and the feed notifications. Idempotent (safe to retry).

        `now`: when the daemon decided them; a ladder never starts before it."""
        if not transitions:
            return

        async def body(conn: AsyncConnection[TupleRow]) -> None:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.executemany(_UPSERT_ALERT, [_alert_params(t) for t in transitions])
                await cur.executemany(_INSERT_HISTORY, [_history_params(t) for t in transitions])
                ids = sorted({t.alert.alert_id for t in transitions})
                # Locked in id order (as a sweep's claim is in wake order, the lock is per
                # row and a sweep skips locked rows: no deadlock either way).
                await cur.execute(
                    f"SELECT {_SELECT_ESC} FROM alert_escalations WHERE alert_id = ANY(%s)"
                    " ORDER BY alert_id FOR UPDATE",
                    [ids],
                )
                states: dict[str, EscalationState | None] = {
                    r["alert_id"]: _state_from_row(r) for r in await cur.fetchall()
                }
                changed: dict[str, EscalationState] = {}
                outbox: list[dict[str, Any]] = []
                for t in transitions:
                    policy = config.policy(t.alert.tier)
                    before = states.get(t.alert.alert_id)
                    after = on_transition(before, t, policy, now)
                    if after is not None and after != before:
                        states[t.alert.alert_id] = after
                        changed[t.alert.alert_id] = after
                    outbox += [_outbox_params(t, item) for item in router.feed(t)]
                if changed:
                    await cur.executemany(_UPSERT_ESC, [_state_params(s) for s in changed.values()])
                if outbox:
                    await cur.executemany(_INSERT_OUTBOX, outbox)

        await self._run(f"recording {len(transitions)} alert transition(s)", body)

    async def backfill(self, config: AlertingConfig) -> int:
        """Escalation rows for unresolved alerts that have none (alerts recorded before
        escalation existed, i.e. before migration 0003): their ladder starts now."""

        async def body(conn: AsyncConnection[TupleRow]) -> int:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {_ALERT_SELECT} FROM alerts a WHERE a.state <> 'resolved'"
                    " AND NOT EXISTS (SELECT 1 FROM alert_escalations e"
                    "   WHERE e.alert_id = a.alert_id)"
                )
                states = [
                    state_for_alert(alert, config.policy(alert.tier))
                    for alert in map(alert_from_row, await cur.fetchall())
                ]
                rows = [_state_params(s) for s in states if s is not None]
                if rows:
                    await cur.executemany(_UPSERT_ESC, rows)
                return len(rows)

        result: int = await self._run("backfilling escalation state", body)
        return result

    # ------------------------------------------------------------------ sweeps

    async def sweep(
        self,
        now: datetime,
        config: AlertingConfig,
        router: OutboxRouter,
        mute_of: MuteOf,
        *,
        limit: int = SWEEP_BATCH_ROWS,
        newer: Callable[[Alert], bool] = lambda _alert: False,
    ) -> list[AlertTransition]:
        """Claim the escalations due by `now`, advance them, store everything they decided.

        Rows locked by another sweep (another daemon) are skipped, not waited for; after
        the commit their wake_at lies in the future, so nobody claims them again until the
        next step is due. Returns the escalation transitions, for publishing.

        `newer(alert)` says the caller knows a newer state of that alert than the row
        (an acknowledgement the recorder has not stored yet): such rows are left for the
        recorder to move on, so nobody is notified of an alert already taken.
        """

        async def body(conn: AsyncConnection[TupleRow]) -> list[AlertTransition]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    f"SELECT {_ALERT_SELECT}, {_SWEEP_ESC_SELECT}"
                    " FROM alert_escalations e JOIN alerts a ON a.alert_id = e.alert_id"
                    " WHERE e.wake_at <= %s ORDER BY e.wake_at, e.alert_id LIMIT %s"
                    " FOR UPDATE OF e SKIP LOCKED",
                    [now, limit],
                )
                rows = await cur.fetchall()
                if not rows:
                    return []
                silences = await self._active_silences(cur, now)
                subjects = sorted({r["subject_id"] for r in rows})
                await cur.execute(
                    f"SELECT {_ALERT_SELECT} FROM alerts a"
                    " WHERE a.subject_id = ANY(%s) AND a.state <> 'resolved'",
                    [subjects],
                )
                unresolved = [alert_from_row(r) for r in await cur.fetchall()]
                out: list[AlertTransition] = []
                updates: list[dict[str, Any]] = []
                outbox: list[dict[str, Any]] = []
                for row in rows:
                    state = _state_from_row(row, "esc_")
                    alert = alert_from_row(row)
                    if newer(alert):
                        continue
                    if alert.state is AlertState.RESOLVED:
                        done = EscalationState(
                            state.alert_id, state.tier, Phase.DONE, state.step,
                            state.started_at, None, None, state.repeats,
                        )
                        updates.append(_state_params(done))
                        continue
                    new, actions = advance(
                        state, config.policy(state.tier), now,
                        officer_id=alert.officer_id, directory=config.directory,
                        mute=mute_of(alert, now, unresolved, silences),
                    )
                    updates.append(_state_params(new))
                    for action in actions:
                        transition = action.transition(alert)
                        out.append(transition)
                        outbox += [
                            _outbox_params(transition, item)
                            for item in [
                                *router.targeted(transition, action.recipients),
                                *router.feed(transition),
                            ]
                        ]
                await cur.executemany(_UPSERT_ESC, updates)
                if out:
                    await cur.executemany(_INSERT_HISTORY, [_history_params(t) for t in out])
                if outbox:
                    await cur.executemany(_INSERT_OUTBOX, outbox)
                return out

        result: list[AlertTransition] = await self._run("escalation sweep", body)
        return result

    async def next_wake(self) -> datetime | None:
        rows = await self._fetch("SELECT min(wake_at) AS wake FROM alert_escalations", [])
        wake: datetime | None = rows[0]["wake"] if rows else None
        return wake

    async def escalation(self, alert_id: str) -> dict[str, Any] | None:
        rows = await self._fetch(
            f"SELECT {_SELECT_ESC} FROM alert_escalations WHERE alert_id = %s", [alert_id]
        )
        return rows[0] if rows else None

    # ------------------------------------------------------------------ deliveries

    async def claim_deliveries(
        self, endpoint: str, limit: int, lease_seconds: float
    ) -> list[Delivery]:
        """Lease up to `limit` pending deliveries of one endpoint (oldest first)."""
        if limit <= 0:
            return []

        async def body(conn: AsyncConnection[TupleRow]) -> list[Delivery]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "UPDATE notification_outbox o"
                    " SET lease_until = now() + make_interval(secs => %s)"
                    " WHERE o.delivery_id IN ("
                    "   SELECT delivery_id FROM notification_outbox"
                    "   WHERE status = 'pending' AND endpoint = %s"
                    "     AND (lease_until IS NULL OR lease_until < now())"
                    "   ORDER BY created_at LIMIT %s FOR UPDATE SKIP LOCKED)"
                    " RETURNING o.delivery_id::text AS delivery_id,"
                    " o.alert_id::text AS alert_id, o.transition_kind, o.transition_at,"
                    " o.endpoint, o.recipient, o.officer_id, o.message, o.attempts,"
                    " o.created_at",
                    [lease_seconds, endpoint, limit],
                )
                rows = sorted(await cur.fetchall(), key=lambda r: r["created_at"])
                return [
                    Delivery(
                        r["delivery_id"], r["alert_id"], r["transition_kind"],
                        r["transition_at"], r["endpoint"], r["recipient"], r["officer_id"],
                        r["message"], r["attempts"],
                    )
                    for r in rows
                ]

        result: list[Delivery] = await self._run("claiming deliveries", body)
        return result

    async def endpoints_pending(self) -> list[str]:
        rows = await self._fetch(
            "SELECT DISTINCT endpoint FROM notification_outbox WHERE status = 'pending'", []
        )
        return [r["endpoint"] for r in rows]

    async def extend_lease(self, delivery_id: str, lease_seconds: float) -> None:
        async def body(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(
                "UPDATE notification_outbox SET lease_until = now() + make_interval(secs => %s)"
                " WHERE delivery_id = %s",
                [lease_seconds, delivery_id],
            )

        await self._run("extending a delivery lease", body)

    async def release(self, delivery_ids: Sequence[str]) -> None:
        """Give leased but unattempted deliveries back (shutdown), for anyone to take."""
        if not delivery_ids:
            return

        async def body(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(
                "UPDATE notification_outbox SET lease_until = NULL"
                " WHERE delivery_id = ANY(%s::uuid[]) AND status = 'pending'",
                [list(delivery_ids)],
            )

        await self._run("releasing deliveries", body)

    async def record_attempt(self, outcome: DeliveryOutcome, lease_seconds: float) -> None:
        """One attempt: the outbox row's status and the alert history row, together."""

        async def body(conn: AsyncConnection[TupleRow]) -> None:
            status = "pending" if not outcome.terminal else outcome.outcome
            await conn.execute(
                "UPDATE notification_outbox SET attempts = %s, status = %s, last_error = %s,"
                " finished_at = CASE WHEN %s THEN now() END,"
                " lease_until = CASE WHEN %s THEN NULL"
                "   ELSE now() + make_interval(secs => %s) END"
                " WHERE delivery_id = %s",
                [outcome.attempt, status, outcome.error, outcome.terminal, outcome.terminal,
                 lease_seconds, outcome.delivery.delivery_id],
            )
            await conn.execute(_INSERT_DELIVERY_HISTORY, outcome.history_params())

        await self._run("recording a delivery attempt", body)

    async def record_published(self, outcomes: Sequence[DeliveryOutcome]) -> None:
        """History rows for MQTT alerts-topic publishes (no outbox row behind them).

        Skips alerts not recorded yet (a publish can overtake the recorder); the caller
        retries those."""
        if not outcomes:
            return

        async def body(conn: AsyncConnection[TupleRow]) -> None:
            async with conn.cursor() as cur:
                for outcome in outcomes:
                    params = outcome.history_params()
                    await cur.execute(
                        "INSERT INTO alert_history (alert_id, at, kind, actor, note, ref, payload)"
                        " SELECT %(alert_id)s, %(at)s, 'delivery', %(endpoint)s, %(note)s,"
                        " %(ref)s, %(payload)s"
                        " WHERE EXISTS (SELECT 1 FROM alerts WHERE alert_id = %(alert_id)s)"
                        " ON CONFLICT (alert_id, kind, at, ref) DO NOTHING",
                        params,
                    )

        await self._run("recording MQTT publishes", body)

    async def alerts_exist(self, alert_ids: Sequence[str]) -> set[str]:
        rows = await self._fetch(
            "SELECT alert_id::text AS alert_id FROM alerts WHERE alert_id = ANY(%s::uuid[])",
            [list(alert_ids)],
        )
        return {r["alert_id"] for r in rows}

    async def outbox_counts(self) -> dict[tuple[str, str], int]:
        rows = await self._fetch(
            "SELECT endpoint, status, count(*) AS n FROM notification_outbox"
            " GROUP BY endpoint, status",
            [],
        )
        return {(r["endpoint"], r["status"]): int(r["n"]) for r in rows}

    # ------------------------------------------------------------------ silences

    @staticmethod
    async def _active_silences(cur: AsyncCursor[DictRow], now: datetime) -> list[Silence]:
        await cur.execute(
            "SELECT * FROM silences WHERE ended_at IS NULL AND starts_at <= %s"
            " AND expires_at > %s",
            [now, now],
        )
        return [_silence_from_row(r) for r in await cur.fetchall()]

    async def active_silences(self, now: datetime) -> list[Silence]:
        async def body(conn: AsyncConnection[TupleRow]) -> list[Silence]:
            async with conn.cursor(row_factory=dict_row) as cur:
                return await self._active_silences(cur, now)

        result: list[Silence] = await self._run("reading silences", body)
        return result

    async def list_silences(self, include_ended_since: datetime | None = None) -> list[Silence]:
        if include_ended_since is None:
            rows = await self._fetch(
                "SELECT * FROM silences WHERE ended_at IS NULL AND expires_at > now()"
                " ORDER BY starts_at", [],
            )
        else:
            rows = await self._fetch(
                "SELECT * FROM silences WHERE coalesce(ended_at, expires_at) >= %s"
                " ORDER BY starts_at", [include_ended_since],
            )
        return [_silence_from_row(r) for r in rows]

    async def get_silence(self, silence_id: str) -> Silence | None:
        rows = await self._fetch("SELECT * FROM silences WHERE silence_id = %s", [silence_id])
        return _silence_from_row(rows[0]) if rows else None

    async def create_silence(self, silence: Silence, source: str) -> None:
        async def body(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(
                "INSERT INTO silences (silence_id, subject_id, rule, reason, author, starts_at,"
                " expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [silence.silence_id, silence.subject_id, silence.rule, silence.reason,
                 silence.author, silence.starts_at, silence.expires_at],
            )
            await self._audit(conn, silence.author, "silence.create", silence.silence_id, source,
                              {"subject_id": silence.subject_id, "rule": silence.rule,
                               "reason": silence.reason,
                               "starts_at": silence.starts_at.isoformat(),
                               "expires_at": silence.expires_at.isoformat()})

        await self._run("creating a silence", body)

    async def end_silence(self, silence_id: str, by: str, at: datetime, source: str) -> bool:
        async def body(conn: AsyncConnection[TupleRow]) -> bool:
            cur = await conn.execute(
                "UPDATE silences SET ended_at = %s, ended_by = %s"
                " WHERE silence_id = %s AND ended_at IS NULL AND expires_at > %s",
                [at, by, silence_id, at],
            )
            if cur.rowcount != 1:
                return False
            await self._audit(conn, by, "silence.end", silence_id, source, {})
            # Muted escalations look again now rather than at their next re-check.
            await conn.execute(
                "UPDATE alert_escalations SET wake_at = %s"
                " WHERE muted IS NOT NULL AND wake_at > %s",
                [at, at],
            )
            return True

        result: bool = await self._run("ending a silence", body)
        return result

    # ------------------------------------------------------------------ tokens and audit

    async def create_token(
        self, officer_id: str, label: str, expires_at: datetime | None, token: str, *,
        role: TokenRole = TokenRole.OFFICER, actor: str = "operator", source: str = "cli",
    ) -> str:
        return await self.access.create_token(
            officer_id, label, expires_at, token, role=role, actor=actor, source=source
        )

    async def token_grant(self, token: str, now: datetime) -> TokenGrant | None:
        return await self.access.grant(token, now)

    async def officer_for_token(self, token: str, now: datetime) -> str | None:
        grant = await self.access.grant(token, now)
        return grant.officer_id if grant is not None else None

    async def list_tokens(self) -> list[dict[str, Any]]:
        return await self.access.list_tokens()

    async def revoke_token(
        self, token_id: str, *, actor: str = "operator", source: str = "cli"
    ) -> bool:
        return await self.access.revoke_token(token_id, actor=actor, source=source)

    @staticmethod
    async def _audit(
        conn: AsyncConnection[TupleRow], actor: str, action: str, obj: str, source: str,
        detail: dict[str, Any],
    ) -> None:
        await insert_audit(conn, actor, action, obj, source, detail)

    async def audit(
        self, actor: str, action: str, obj: str, source: str, detail: dict[str, Any]
    ) -> None:
        await self.access.audit(actor, action, obj, source, detail)

    async def audit_entries(self, obj: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        if obj is None:
            return await self._fetch(
                "SELECT * FROM audit_log ORDER BY id DESC LIMIT %s", [limit]
            )
        return await self._fetch(
            "SELECT * FROM audit_log WHERE object = %s ORDER BY id DESC LIMIT %s", [obj, limit]
        )

    # ------------------------------------------------------------------ measures

    async def resolutions(self, since: datetime) -> list[dict[str, Any]]:
        """Resolved alerts since `since` per tier and disposition (the alert-yield measure)."""
        return await self._fetch(
            "SELECT tier, coalesce(disposition, '') AS disposition, count(*) AS n FROM alerts"
            " WHERE state = 'resolved' AND resolved_at >= %s GROUP BY tier, disposition",
            [since],
        )

    async def history(self, alert_id: str) -> list[dict[str, Any]]:
        return await self._fetch(
            "SELECT at, kind, actor, note, payload FROM alert_history WHERE alert_id = %s"
            " ORDER BY at, id", [alert_id],
        )

    async def _fetch(self, query: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        try:
            async with (
                asyncio.timeout(self._timeout),
                self._pool.connection(timeout=self._timeout) as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreError(f"query failed: {type(exc).__name__}: {exc}") from exc


def window_start(now: datetime, days: float) -> datetime:
    return now - timedelta(days=days)
