"""Live updates for the console: a bounded fan-out from the daemon to browser streams.

The daemon calls `on_observation` and `on_transitions` from its ingest and alert paths;
both return at once and never wait for a browser. Each stream (`FeedClient`) has

- a bounded queue of alert transitions: never coalesced, because each is a change an
  officer must see; a stream whose queue is full is dropped (counted) and the browser
  reconnects and reloads its snapshot, so a slow client costs itself a reload, never
  ingest a wait;
- the newest position per subject: a position supersedes the previous one, so positions
  are coalesced (memory bounded by the subjects the officer may see) and written at most
  every `position_flush_seconds` — a command console over thousands of devices gets one
  update per subject per second, not every ping.

Each stream sees only the subjects in its officer's scope, computed once when it opens and
again whenever the daemon's config object changes (hot reload), so the per-ping cost is a
set lookup per stream. Messages are encoded once per event, not once per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from alerts.model import Alert, AlertTransition
from daemon import metrics as daemon_metrics
from daemon.console import metrics
from daemon.console.status import AlertSummary, LastFix, newer, subject_status
from daemon.pipeline import Pipeline
from geofence.observation import LocationFix, Observation

_LOGGER = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0  # a comment line: proxies keep the stream, dead peers show up
WRITE_TIMEOUT_SECONDS = 10.0  # a browser that takes longer to read one chunk is dropped
SESSION_RECHECK_SECONDS = 60.0  # a revoked token or ended session closes its streams
CLOSE_WAIT_SECONDS = 2.0  # at shutdown, how long streams get to say goodbye
RECONNECT_HINT_MILLISECONDS = 3000  # EventSource `retry:`

# Why a stream ended (the label of emon_console_streams_closed_total).
CLOSED_SLOW = "slow"
CLOSED_WRITE_TIMEOUT = "write_timeout"
CLOSED_GONE = "client_gone"
CLOSED_SIGNED_OUT = "signed_out"
CLOSED_OUT_OF_SCOPE = "out_of_scope"
CLOSED_SHUTDOWN = "shutdown"

HEARTBEAT = b": keepalive\n\n"


class FeedError(Exception):
    """Root of the live feed's errors."""


class FeedFullError(FeedError):
    """`max_clients` streams are open already."""


def encode_event(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event. json.dumps escapes newlines, so `data` is a single line."""
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n".encode()


@dataclass(eq=False)
class FeedClient:
    client_id: int
    officer_id: str
    visible: frozenset[str]
    alerts: asyncio.Queue[bytes]
    session: str = ""  # digest of the sign-in it belongs to ("" for a bearer token)
    positions: dict[str, bytes] = field(default_factory=dict)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    closed: str | None = None
    # The writer has been told that positions wait; it wakes for them when their flush is
    # due, so further positions need not wake it (a busy ingest would wake every stream
    # on every ping otherwise).
    positions_signalled: bool = False

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        self.wake.set()

    def offer_alert(self, data: bytes) -> None:
        if self.closed is not None:
            return
        try:
            self.alerts.put_nowait(data)
        except asyncio.QueueFull:
            daemon_metrics.QUEUE_OVERFLOW.labels("console_stream").inc()
            _LOGGER.warning(
                "console stream %d of %s fell %d alert transitions behind: dropped",
                self.client_id, self.officer_id, self.alerts.maxsize,
            )
            self.close(CLOSED_SLOW)
            return
        self.wake.set()

    def offer_position(self, subject_id: str, data: bytes) -> None:
        if self.closed is None:
            self.positions[subject_id] = data
            if not self.positions_signalled:
                self.positions_signalled = True
                self.wake.set()

    def take_alerts(self) -> list[bytes]:
        out: list[bytes] = []
        while not self.alerts.empty():
            out.append(self.alerts.get_nowait())
        return out

    def take_positions(self) -> list[bytes]:
        out = list(self.positions.values())
        self.positions.clear()
        self.positions_signalled = False
        return out


# Which subjects an officer may see under the current config; None: the officer is gone.
ScopeOf = Callable[[str], frozenset[str] | None]


class LiveFeed:
    """The fan-out hub, and the newest fix of every subject (the map's starting point)."""

    def __init__(
        self,
        pipeline: Pipeline,
        scope_of: ScopeOf,
        *,
        max_clients: int,
        queue_size: int,
        stale_after: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._pipeline = pipeline
        self._scope_of = scope_of
        self._max_clients = max_clients
        self._queue_size = queue_size
        self._stale_after = stale_after
        self._clock = clock
        self._clients: dict[int, FeedClient] = {}
        self._ids = itertools.count(1)
        self._latest: dict[str, LastFix] = {}
        self._scoped_config: object = pipeline.config
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    async def __aenter__(self) -> LiveFeed:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Before the HTTP server closes: an open stream would hold its shutdown up.
        self.close_all(CLOSED_SHUTDOWN)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_closed.wait(), CLOSE_WAIT_SECONDS)

    def configure(self, *, max_clients: int, queue_size: int, stale_after: timedelta) -> None:
        """New limits from a reloaded config; open streams keep their queue's size."""
        self._max_clients = max_clients
        self._queue_size = queue_size
        self._stale_after = stale_after

    # ------------------------------------------------------------------ streams

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def subscribe(
        self, officer_id: str, visible: frozenset[str], session: str = ""
    ) -> FeedClient:
        if len(self._clients) >= self._max_clients:
            metrics.STREAMS_REFUSED.inc()
            raise FeedFullError(f"{self._max_clients} console streams are open")
        client = FeedClient(
            next(self._ids), officer_id, visible, asyncio.Queue(self._queue_size), session
        )
        self._clients[client.client_id] = client
        self._all_closed.clear()
        metrics.STREAMS_OPEN.set(len(self._clients))
        return client

    def unsubscribe(self, client: FeedClient) -> None:
        if self._clients.pop(client.client_id, None) is None:
            return
        metrics.STREAMS_CLOSED.labels(client.closed or CLOSED_GONE).inc()
        metrics.STREAMS_OPEN.set(len(self._clients))
        if not self._clients:
            self._all_closed.set()

    def close_all(self, reason: str) -> None:
        for client in self._clients.values():
            client.close(reason)

    def close_session(self, session: str, reason: str) -> None:
        for client in self._clients.values():
            if session and client.session == session:
                client.close(reason)

    def _rescope_if_config_changed(self) -> None:
        config = self._pipeline.config
        if config is self._scoped_config:
            return
        self._scoped_config = config
        for client in self._clients.values():
            visible = self._scope_of(client.officer_id)
            if visible is None:
                client.close(CLOSED_OUT_OF_SCOPE)
            else:
                client.visible = visible

    # ------------------------------------------------------------------ the daemon's side

    def on_observation(self, observation: Observation, subject_id: str) -> None:
        """A stored-and-evaluated observation (called on the ingest path: never waits)."""
        if not isinstance(observation, LocationFix):
            return
        fix = LastFix.of(observation, subject_id)
        if not newer(fix, self._latest.get(subject_id)):
            return  # a late upload: it is in the track, not the live position
        self._latest[subject_id] = fix
        if not self._clients:
            return
        self._rescope_if_config_changed()
        data: bytes | None = None
        for client in self._clients.values():
            if subject_id in client.visible:
                data = data or encode_event("position", fix.to_wire())
                client.offer_position(subject_id, data)

    def on_transitions(self, transitions: Sequence[AlertTransition]) -> None:
        """Alert transitions as the daemon publishes them (never waits)."""
        if not self._clients or not transitions:
            return
        self._rescope_if_config_changed()
        for transition in transitions:
            subject_id = transition.alert.subject_id
            if not any(subject_id in c.visible for c in self._clients.values()):
                continue
            payload = transition.to_wire()
            payload["subject"] = self.subject_view(subject_id)
            data = encode_event("alert", payload)
            for client in list(self._clients.values()):
                if subject_id in client.visible:
                    client.offer_alert(data)

    # ------------------------------------------------------------------ positions

    def seed(self, fixes: Iterable[LastFix]) -> None:
        """Newest fixes read from the database: kept where newer than what is held."""
        for fix in fixes:
            if newer(fix, self._latest.get(fix.subject_id)):
                self._latest[fix.subject_id] = fix

    def last_fix(self, subject_id: str) -> LastFix | None:
        return self._latest.get(subject_id)

    def subject_view(self, subject_id: str) -> dict[str, Any]:
        return self.subject_views([subject_id])[subject_id]

    def subject_views(self, subject_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Status and alert counts of these subjects (one pass over the unresolved alerts)."""
        wanted: dict[str, list[Alert]] = {s: [] for s in subject_ids}
        for alert in self._pipeline.book.unresolved():
            if alert.subject_id in wanted:
                wanted[alert.subject_id].append(alert)
        now = self._clock()
        out: dict[str, dict[str, Any]] = {}
        for subject_id, alerts in wanted.items():
            summary = AlertSummary.of(alerts)
            fix = self._latest.get(subject_id)
            status = subject_status(
                summary, fix.ts if fix is not None else None, now, self._stale_after
            )
            out[subject_id] = {
                "subject_id": subject_id, "status": status.value, "alerts": summary.to_wire(),
            }
        return out


async def pump(
    client: FeedClient,
    write: Callable[[bytes], Awaitable[None]],
    *,
    position_flush_seconds: float,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
    write_timeout_seconds: float = WRITE_TIMEOUT_SECONDS,
    still_signed_in: Callable[[], Awaitable[bool]] | None = None,
    recheck_seconds: float = SESSION_RECHECK_SECONDS,
) -> str:
    """Write a client's events until it is closed; returns why it ended.

    Alert transitions go out at once; positions at most every `position_flush_seconds`;
    a heartbeat when nothing else was written for `heartbeat_seconds`.
    """
    loop = asyncio.get_running_loop()
    next_positions = loop.time()
    next_heartbeat = loop.time() + heartbeat_seconds
    next_recheck = loop.time() + recheck_seconds
    while client.closed is None:
        # Cleared before taking, so an event offered meanwhile wakes the wait below.
        client.wake.clear()
        now = loop.time()
        chunks = client.take_alerts()
        alert_count = len(chunks)
        position_count = 0
        if client.positions and now >= next_positions:
            positions = client.take_positions()
            position_count = len(positions)
            chunks.extend(positions)
            next_positions = now + position_flush_seconds
        if not chunks and now >= next_heartbeat:
            chunks.append(HEARTBEAT)
        if chunks:
            try:
                async with asyncio.timeout(write_timeout_seconds):
                    await write(b"".join(chunks))
            except TimeoutError:
                client.close(CLOSED_WRITE_TIMEOUT)
                _LOGGER.warning(
                    "console stream %d of %s: a write took over %.0f s: dropped",
                    client.client_id, client.officer_id, write_timeout_seconds,
                )
                break
            except ConnectionError:
                client.close(CLOSED_GONE)
                break
            metrics.EVENTS_SENT.labels("alert").inc(alert_count)
            metrics.EVENTS_SENT.labels("position").inc(position_count)
            next_heartbeat = loop.time() + heartbeat_seconds
            continue
        if still_signed_in is not None and now >= next_recheck:
            next_recheck = now + recheck_seconds
            if not await still_signed_in():
                client.close(CLOSED_SIGNED_OUT)
                break
            continue
        deadline = min(next_heartbeat, next_recheck if still_signed_in else next_heartbeat)
        if client.positions:
            deadline = min(deadline, next_positions)
        # asyncio.timeout, not wait_for: no task per wait (this runs for every stream).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await client.wake.wait()
    return client.closed or CLOSED_GONE
