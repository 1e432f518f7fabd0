"""Alert snapshots and their transition history.

Alerts are few (a handful a minute at worst), so they are written directly, one
transaction per `record` call, not batched like pings. Every write is idempotent:
the alert row is an upsert that never moves backwards in `updated_at`, and the
history row is keyed by (alert_id, kind, at). A caller may therefore retry a failed
`record`, or replay transitions after a restart, without duplicating anything.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Final, Self

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.model import AlertTransition
from daemon.store._json import dumps as json_dumps
from daemon.store.errors import StoreClosedError, StoreError
from daemon.store.pool import Pool, open_pool

_LOGGER = logging.getLogger(__name__)

# `record` is called from the daemon's alert task; a slow or unreachable database
# must turn into a StoreError the caller can handle (retry later, keep publishing
# on MQTT), never a stall of that task. Includes waiting for a pool connection.
RECORD_TIMEOUT_SECONDS = 5.0
QUERY_TIMEOUT_SECONDS = 10.0

_ALERT_COLUMNS: Final = (
    "alert_id", "subject_id", "device_id", "rule", "zone_id", "tier", "state", "officer_id",
    "opened_at", "updated_at", "count", "condition_active", "cleared_at", "acknowledged_at",
    "acknowledged_by", "resolved_at", "resolved_by", "disposition", "reason", "trigger",
    "last_evidence",
)  # fmt: skip

# Latest snapshot wins: the WHERE makes the DO UPDATE a no-op when the stored row is
# newer. Equal updated_at does update, so transitions recorded in order at the same
# instant (e.g. updated then escalated) end with the last one, and re-recording the
# same snapshot is harmless.
_UPSERT_ALERT: Final = (
    f"INSERT INTO alerts ({', '.join(_ALERT_COLUMNS)})"
    f" VALUES ({', '.join(f'%({c})s' for c in _ALERT_COLUMNS)})"
    " ON CONFLICT (alert_id) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in _ALERT_COLUMNS if c != "alert_id")
    + " WHERE alerts.updated_at <= EXCLUDED.updated_at"
)
_INSERT_HISTORY: Final = (
    "INSERT INTO alert_history (alert_id, at, kind, actor, note, payload)"
    " VALUES (%(alert_id)s, %(at)s, %(kind)s, %(actor)s, %(note)s, %(payload)s)"
    " ON CONFLICT (alert_id, kind, at, ref) DO NOTHING"
)
# uuid columns are returned as text: the pure core uses text ids everywhere.
_SELECT_ALERTS: Final = "SELECT alert_id::text AS alert_id, " + ", ".join(
    c for c in _ALERT_COLUMNS if c != "alert_id"
)
_SELECT_HISTORY: Final = (
    "SELECT id, alert_id::text AS alert_id, at, kind, actor, note, ref, payload"
    " FROM alert_history WHERE alert_id = %s ORDER BY at, id"
)


def _jsonb(value: Any) -> Jsonb:
    return Jsonb(value, dumps=json_dumps)


def _alert_params(transition: AlertTransition) -> dict[str, Any]:
    a = transition.alert
    return {
        "alert_id": a.alert_id,
        "subject_id": a.subject_id,
        "device_id": a.device_id,
        "rule": a.rule.value,
        "zone_id": a.zone_id,
        "tier": a.tier.value,
        "state": a.state.value,
        "officer_id": a.officer_id,
        "opened_at": a.opened_at,
        "updated_at": a.updated_at,
        "count": a.count,
        "condition_active": a.condition_active,
        "cleared_at": a.cleared_at,
        "acknowledged_at": a.acknowledged_at,
        "acknowledged_by": a.acknowledged_by,
        "resolved_at": a.resolved_at,
        "resolved_by": a.resolved_by,
        "disposition": a.disposition,
        "reason": a.reason,
        "trigger": _jsonb(a.trigger),
        "last_evidence": _jsonb(a.last_evidence),
    }


def _history_params(transition: AlertTransition) -> dict[str, Any]:
    return {
        "alert_id": transition.alert.alert_id,
        "at": transition.at,
        "kind": transition.kind.value,
        "actor": transition.actor,
        "note": transition.note,
        # The full wire form: what was published, snapshot included.
        "payload": _jsonb(transition.to_wire()),
    }


class AlertRepository:
    """Stores alert transitions and answers alert queries; an async context manager.

    Given a pool it uses it (and does not close it); given a DSN it opens and
    closes a small pool of its own.
    """

    def __init__(
        self,
        pool: Pool | str,
        *,
        record_timeout_seconds: float = RECORD_TIMEOUT_SECONDS,
        query_timeout_seconds: float = QUERY_TIMEOUT_SECONDS,
    ) -> None:
        self._pool_arg = pool
        self._pool: Pool | None = None if isinstance(pool, str) else pool
        self._record_timeout = record_timeout_seconds
        self._query_timeout = query_timeout_seconds
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Self:
        if isinstance(self._pool_arg, str):
            self._pool = await self._stack.enter_async_context(
                open_pool(self._pool_arg, min_size=1, max_size=2, name="emon-alerts")
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()
        if isinstance(self._pool_arg, str):
            self._pool = None

    def _require_pool(self) -> Pool:
        if self._pool is None:
            raise StoreClosedError("alert repository is not open")
        return self._pool

    async def record(self, transitions: Sequence[AlertTransition]) -> None:
        """Store transitions in order, in one transaction: upsert snapshot, add history.

        Idempotent; raises StoreError (nothing stored) on a database error or when it
        takes longer than the record timeout, and the caller may simply retry.
        """
        if not transitions:
            return
        pool = self._require_pool()
        alerts = [_alert_params(t) for t in transitions]
        history = [_history_params(t) for t in transitions]
        try:
            async with (
                asyncio.timeout(self._record_timeout),
                pool.connection(timeout=self._record_timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                # Snapshots first: history rows reference alerts(alert_id).
                await cur.executemany(_UPSERT_ALERT, alerts)
                await cur.executemany(_INSERT_HISTORY, history)
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreError(
                f"could not record {len(transitions)} alert transition(s): "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _LOGGER.debug("recorded %s alert transition(s)", len(transitions))

    async def list_alerts(
        self, state: str | None = None, subject_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Alert snapshots, optionally filtered, oldest first (alert_id as text)."""
        query = _SELECT_ALERTS + " FROM alerts WHERE true"
        params: list[Any] = []
        if state is not None:
            query += " AND state = %s"
            params.append(state)
        if subject_id is not None:
            query += " AND subject_id = %s"
            params.append(subject_id)
        query += " ORDER BY opened_at, alert_id"
        return await self._fetch(query, params)

    async def history(self, alert_id: str) -> list[dict[str, Any]]:
        """Every recorded transition of one alert, in time order."""
        return await self._fetch(_SELECT_HISTORY, [alert_id])

    async def _fetch(self, query: str, params: list[Any]) -> list[dict[str, Any]]:
        pool = self._require_pool()
        try:
            async with (
                asyncio.timeout(self._query_timeout),
                pool.connection(timeout=self._query_timeout) as conn,
                conn.cursor(row_factory=dict_row) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()
        except (psycopg.Error, TimeoutError) as exc:
            raise StoreError(f"alert query failed: {type(exc).__name__}: {exc}") from exc
