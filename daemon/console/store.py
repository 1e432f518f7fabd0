"""The console's queries: sign-in sessions, a subject's track, the newest fix per subject.

Every method is one transaction. A track is read in the same transaction as its audit row:
if the audit row cannot be written, no location data leaves the database (Art. 29: every
read of a person's movements is on record).

Issue 3 adds `emon track` queries with stop detection in daemon/store/; this module keeps
its own two small queries over `pings` so that the console depends on nothing but the
table: (device_id, ts) is its unique key, so both are index range scans, and the time
bounds let a day-partitioned `pings` prune to the days asked for.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

from daemon.console.status import LastFix
from daemon.store.access_repo import (
    TokenGrant as TokenGrant,
)
from daemon.store.access_repo import (
    grant_for_digest,
    insert_audit,
    run_transaction,
)
from daemon.store.pool import Pool

TRANSACTION_TIMEOUT_SECONDS = 10.0
# Ended or expired sign-ins are deleted by the store's maintenance job after
# `retention.console_sessions_days` (daemon/store/maintenance.py); the audit log keeps the
# sign-in and sign-out for its own, longer retention.
SESSION_PREFIX = "emcs_"

_T = TypeVar("_T")


def session_digest(session: str) -> str:
    return hashlib.sha256(session.encode()).hexdigest()


def new_session() -> str:
    """256 random bits, URL-safe; only its SHA-256 is stored."""
    return SESSION_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class TrackPoint:
    device_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float
    source: str
    battery_pct: float | None

    def to_wire(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id, "ts": self.ts.isoformat(), "lat": self.lat,
            "lon": self.lon, "acc": self.accuracy_m, "src": self.source,
            "batt": self.battery_pct,
        }


@dataclass(frozen=True, slots=True)
class Track:
    points: list[TrackPoint]  # oldest first
    truncated: bool  # more fixes in the period than the limit: these are the newest


class ConsoleStore:
    def __init__(self, pool: Pool, *, timeout_seconds: float = TRANSACTION_TIMEOUT_SECONDS):
        self._pool = pool
        self._timeout = timeout_seconds

    async def _run(
        self, what: str, body: Callable[[AsyncConnection[TupleRow]], Awaitable[_T]]
    ) -> _T:
        return await run_transaction(self._pool, what, body, timeout_seconds=self._timeout)

    @staticmethod
    async def _audit(
        conn: AsyncConnection[TupleRow], actor: str, action: str, obj: str, source: str,
        detail: dict[str, Any],
    ) -> None:
        await insert_audit(conn, actor, action, obj, source, detail)

    async def audit(
        self, actor: str, action: str, obj: str, source: str, detail: dict[str, Any]
    ) -> None:
        async def body(conn: AsyncConnection[TupleRow]) -> None:
            await insert_audit(conn, actor, action, obj, source, detail)

        await self._run("writing the audit log", body)

    # ------------------------------------------------------------------ sessions

    async def grant_for_token(self, token_sha256: str, now: datetime) -> TokenGrant | None:
        async def body(conn: AsyncConnection[TupleRow]) -> TokenGrant | None:
            return await grant_for_digest(conn, token_sha256, now)

        return await self._run("checking a token", body)

    async def create_session(
        self, grant: TokenGrant, now: datetime, lifetime: timedelta, source: str
    ) -> tuple[str, datetime]:
        """A new session for the token's officer; returns it and when it expires."""
        session = new_session()
        expires_at = now + lifetime
        if grant.expires_at is not None:
            expires_at = min(expires_at, grant.expires_at)

        async def body(conn: AsyncConnection[TupleRow]) -> None:
            await conn.execute(
                "INSERT INTO console_sessions (session_sha256, token_id, officer_id,"
                " created_at, expires_at, source) VALUES (%s, %s, %s, %s, %s, %s)",
                [session_digest(session), grant.token_id, grant.officer_id, now, expires_at,
                 source],
            )
            await self._audit(conn, grant.officer_id, "console.login", grant.token_id, source,
                              {"expires_at": expires_at.isoformat()})

        await self._run("starting a console session", body)
        return session, expires_at

    async def officer_for_session(self, session: str, now: datetime) -> str | None:
        async def body(conn: AsyncConnection[TupleRow]) -> str | None:
            cur = await conn.execute(
                "SELECT s.officer_id FROM console_sessions s"
                " JOIN api_tokens t ON t.token_id = s.token_id"
                " WHERE s.session_sha256 = %s AND s.ended_at IS NULL AND s.expires_at > %s"
                " AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > %s)",
                [session_digest(session), now, now],
            )
            row = await cur.fetchone()
            return str(row[0]) if row else None

        return await self._run("checking a console session", body)

    async def end_session(self, session: str, now: datetime, source: str) -> bool:
        async def body(conn: AsyncConnection[TupleRow]) -> bool:
            cur = await conn.execute(
                "UPDATE console_sessions SET ended_at = %s"
                " WHERE session_sha256 = %s AND ended_at IS NULL"
                " RETURNING officer_id, token_id::text",
                [now, session_digest(session)],
            )
            row = await cur.fetchone()
            if row is None:
                return False
            await self._audit(conn, str(row[0]), "console.logout", str(row[1]), source, {})
            return True

        return await self._run("ending a console session", body)

    # ------------------------------------------------------------------ positions

    async def track(
        self,
        subject_id: str,
        device_ids: Sequence[str],
        since: datetime,
        until: datetime,
        limit: int,
        *,
        actor: str,
        source: str,
    ) -> Track:
        """The subject's fixes in [since, until), newest `limit` of them, audited."""

        async def body(conn: AsyncConnection[TupleRow]) -> Track:
            cur = await conn.execute(
                "SELECT device_id, ts, lat, lon, acc_m, src, battery_pct FROM pings"
                " WHERE device_id = ANY(%s) AND subject_id = %s AND ts >= %s AND ts < %s"
                " ORDER BY ts DESC, device_id LIMIT %s",
                [list(device_ids), subject_id, since, until, limit + 1],
            )
            rows = await cur.fetchall()
            truncated = len(rows) > limit
            points = [
                TrackPoint(str(r[0]), r[1], float(r[2]), float(r[3]), float(r[4]), str(r[5]),
                           float(r[6]) if r[6] is not None else None)
                for r in reversed(rows[:limit])
            ]
            await self._audit(conn, actor, "track.read", subject_id, source, {
                "from": since.isoformat(), "to": until.isoformat(), "points": len(points),
                "truncated": truncated,
            })
            return Track(points, truncated)

        return await self._run("reading a track", body)

    async def latest_fixes(
        self, subject_of_device: Mapping[str, str], since: datetime
    ) -> list[LastFix]:
        """The newest fix of each device since `since` (one index probe per device)."""
        if not subject_of_device:
            return []

        async def body(conn: AsyncConnection[TupleRow]) -> list[LastFix]:
            cur = await conn.execute(
                "SELECT p.device_id, p.subject_id, p.ts, p.lat, p.lon, p.acc_m, p.src,"
                " p.battery_pct FROM unnest(%s::text[]) AS d(device_id)"
                " CROSS JOIN LATERAL (SELECT * FROM pings"
                "   WHERE pings.device_id = d.device_id AND pings.ts >= %s"
                "   ORDER BY pings.ts DESC LIMIT 1) p",
                [list(subject_of_device), since],
            )
            rows = await cur.fetchall()
            return [
                LastFix(subject_of_device[str(r[0])], str(r[0]), r[2], float(r[3]),
                        float(r[4]), float(r[5]), str(r[6]),
                        float(r[7]) if r[7] is not None else None)
                for r in rows
                # A fix recorded while the device belonged to someone else is not theirs.
                if subject_of_device.get(str(r[0])) == str(r[1])
            ]

        return await self._run("reading the newest fixes", body)
