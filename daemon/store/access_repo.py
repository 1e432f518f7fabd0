"""Access in PostgreSQL: API tokens (with the role they grant), the audit log (append-only,
migrations 0003 and 0007) and the one-transaction helper the stores share.

Shared by the officer API's store (daemon.store.lifecycle_repo), the console's
(daemon.console.store), the CLI (`emon token`, `emon audit`, `emon track`) and the admin
API, so a token is checked, and an audit row written, by one piece of code.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from daemon.access import TokenRole
from daemon.store._json import dumps as json_dumps
from daemon.store.errors import StoreError
from daemon.store.pool import Pool

TRANSACTION_TIMEOUT_SECONDS: Final = 10.0
AUDIT_LIMIT_MAX: Final = 100_000
_T = TypeVar("_T")


def token_digest(token: str) -> str:
    """Tokens are 256 random bits, so a fast hash is enough: there is no dictionary."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenGrant:
    token_id: str
    officer_id: str  # the person the token names (an officer, operator or admin id)
    expires_at: datetime | None
    role: TokenRole = TokenRole.OFFICER


async def run_transaction(
    pool: Pool,
    what: str,
    body: Callable[[AsyncConnection[Any]], Awaitable[_T]],
    *,
    timeout_seconds: float = TRANSACTION_TIMEOUT_SECONDS,
) -> _T:
    """`body` in one transaction on a pooled connection; StoreError on any database error
    or when the whole takes longer than the timeout."""
    try:
        async with (
            asyncio.timeout(timeout_seconds),
            pool.connection(timeout=timeout_seconds) as conn,
            conn.transaction(),
        ):
            return await body(conn)
    except (psycopg.Error, TimeoutError) as exc:
        raise StoreError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


async def insert_audit(
    conn: AsyncConnection[Any], actor: str, action: str, obj: str, source: str,
    detail: dict[str, Any],
) -> None:
    await conn.execute(
        "INSERT INTO audit_log (actor, action, object, source, detail)"
        " VALUES (%s, %s, %s, %s, %s)",
        [actor, action, obj, source, Jsonb(detail, dumps=json_dumps)],
    )


async def grant_for_digest(
    conn: AsyncConnection[Any], token_sha256: str, now: datetime
) -> TokenGrant | None:
    cur = await conn.execute(
        "SELECT token_id::text, officer_id, expires_at, role FROM api_tokens"
        " WHERE token_sha256 = %s AND revoked_at IS NULL"
        " AND (expires_at IS NULL OR expires_at > %s)",
        [token_sha256, now],
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return TokenGrant(str(row[0]), str(row[1]), row[2], TokenRole(row[3]))


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    action: str | None = None  # exact, or a prefix ending in "." ("alert." for all actions)
    subject_id: str | None = None
    limit: int = 1000

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.since is not None:
            clauses.append("at >= %s")
            params.append(self.since)
        if self.until is not None:
            clauses.append("at < %s")
            params.append(self.until)
        if self.actor is not None:
            clauses.append("actor = %s")
            params.append(self.actor)
        if self.action is not None:
            if self.action.endswith("."):
                clauses.append("starts_with(action, %s)")
            else:
                clauses.append("action = %s")
            params.append(self.action)
        if self.subject_id is not None:
            # Track reads name the subject as their object; silences and alert actions
            # carry it in their detail (alert actions: see `alerts.subject_id`).
            clauses.append(
                "(object = %s OR detail->>'subject_id' = %s"
                " OR object IN (SELECT alert_id::text FROM alerts WHERE subject_id = %s))"
            )
            params += [self.subject_id] * 3
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.since.isoformat() if self.since else None,
            "to": self.until.isoformat() if self.until else None,
            "actor": self.actor, "action": self.action, "subject_id": self.subject_id,
            "limit": self.limit,
        }


class AccessStore:
    """Tokens and the audit log over a pool; every method is one transaction."""

    def __init__(self, pool: Pool, *, timeout_seconds: float = TRANSACTION_TIMEOUT_SECONDS):
        self._pool = pool
        self._timeout = timeout_seconds

    async def _run(self, what: str, body: Callable[[AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        return await run_transaction(self._pool, what, body, timeout_seconds=self._timeout)

    # ------------------------------------------------------------------ tokens

    async def grant(self, token: str, now: datetime) -> TokenGrant | None:
        async def body(conn: AsyncConnection[Any]) -> TokenGrant | None:
            return await grant_for_digest(conn, token_digest(token), now)

        return await self._run("checking a token", body)

    async def create_token(
        self, principal: str, label: str, expires_at: datetime | None, token: str, *,
        role: TokenRole = TokenRole.OFFICER, actor: str, source: str,
    ) -> str:
        token_id = str(uuid.uuid4())

        async def body(conn: AsyncConnection[Any]) -> None:
            await conn.execute(
                "INSERT INTO api_tokens (token_id, token_sha256, officer_id, label, expires_at,"
                " role, created_by) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [token_id, token_digest(token), principal, label, expires_at, role.value, actor],
            )
            await insert_audit(conn, actor, "token.create", token_id, source, {
                "officer_id": principal, "role": role.value, "label": label,
                "expires_at": expires_at.isoformat() if expires_at else None,
            })

        await self._run("creating a token", body)
        return token_id

    async def list_tokens(self, principal: str | None = None) -> list[dict[str, Any]]:
        async def body(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT token_id::text AS token_id, officer_id, role, label, created_at,"
                    " created_by, expires_at, revoked_at FROM api_tokens"
                    " WHERE %s::text IS NULL OR officer_id = %s ORDER BY created_at",
                    [principal, principal],
                )
                return await cur.fetchall()

        return await self._run("listing tokens", body)

    async def revoke_token(self, token_id: str, *, actor: str, source: str) -> bool:
        try:
            uuid.UUID(token_id)
        except ValueError:
            return False

        async def body(conn: AsyncConnection[Any]) -> bool:
            cur = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE token_id = %s AND revoked_at IS NULL RETURNING officer_id, role",
                [token_id],
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await insert_audit(conn, actor, "token.revoke", token_id, source,
                               {"officer_id": row[0], "role": row[1]})
            return True

        return await self._run("revoking a token", body)

    async def revoke_person(self, principal: str, *, actor: str, source: str) -> list[str]:
        """Revoke every active token of one person (they left, or a device was lost and
        nobody knows which token was on it); one audit row per token, one transaction."""

        async def body(conn: AsyncConnection[Any]) -> list[str]:
            cur = await conn.execute(
                "UPDATE api_tokens SET revoked_at = now()"
                " WHERE officer_id = %s AND revoked_at IS NULL RETURNING token_id::text, role",
                [principal],
            )
            revoked = await cur.fetchall()
            for token_id, role in revoked:
                await insert_audit(conn, actor, "token.revoke", str(token_id), source,
                                   {"officer_id": principal, "role": role, "all_of_person": True})
            return [str(r[0]) for r in revoked]

        return await self._run("revoking a person's tokens", body)

    # ------------------------------------------------------------------ audit

    async def audit(
        self, actor: str, action: str, obj: str, source: str, detail: dict[str, Any]
    ) -> None:
        async def body(conn: AsyncConnection[Any]) -> None:
            await insert_audit(conn, actor, action, obj, source, detail)

        await self._run("writing the audit log", body)

    async def read_audit(
        self, query: AuditQuery, *, actor: str, source: str
    ) -> list[dict[str, Any]]:
        """Entries matching `query`, oldest first; the read is itself audited, in the
        same transaction (no answer without its row)."""
        where, params = query.where()

        async def body(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(
                    "SELECT id, at, actor, action, object, source, detail FROM ("
                    f"SELECT * FROM audit_log{where} ORDER BY at DESC, id DESC LIMIT %s"
                    ") newest ORDER BY at, id",
                    [*params, query.limit],
                )
                rows = await cur.fetchall()
            await insert_audit(conn, actor, "audit.read", "audit_log", source,
                               {**query.to_json(), "rows": len(rows)})
            return rows

        return await self._run("reading the audit log", body)


def new_token() -> str:
    """256 random bits, URL-safe; only its SHA-256 is stored."""
    import secrets

    return TOKEN_PREFIX + secrets.token_urlsafe(32)


TOKEN_PREFIX: Final = "emon_"

