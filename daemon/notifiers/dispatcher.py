"""Delivery workers: outbox rows in, notifications out, every attempt recorded.

One claimer task leases pending outbox rows per endpoint into that endpoint's bounded
queue (only as many as it has room for: the backlog waits in the database, and a full
queue is counted); named worker tasks per endpoint deliver them. A slow or dead endpoint
therefore fills only its own queue: ingest never waits on it, nor do the other endpoints.

Retries: exponential backoff with equal jitter (half the delay fixed, half random), up to
the endpoint's `max_attempts`; a permanent failure (4xx, refused address) is not retried.
Each attempt is recorded in the alert's history as sent, retried, failed or gave_up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from daemon import alert_metrics, metrics
from daemon.notifiers import DeliveryError
from daemon.notifiers.base import Notifier
from daemon.store.errors import StoreError
from daemon.store.lifecycle_repo import Delivery, DeliveryOutcome, LifecycleStore

_LOGGER = logging.getLogger(__name__)

OUTBOX_POLL_SECONDS = 1.0
# A claimed row waits in memory at most this long before a worker extends its lease; past
# it another daemon may take the row over (at-least-once delivery).
CLAIM_LEASE_SECONDS = 300.0
LEASE_MARGIN_SECONDS = 30.0
RECORD_RETRY_MAX_SECONDS = 10.0
UNKNOWN_ENDPOINT_CHECK_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    max_attempts: int
    initial_backoff_seconds: float
    max_backoff_seconds: float
    timeout_seconds: float
    workers: int
    queue_size: int


def backoff_seconds(policy: EndpointPolicy, attempt: int) -> float:
    """Delay before attempt `attempt + 1`: exponential, capped, with equal jitter."""
    delay: float = min(
        policy.max_backoff_seconds, policy.initial_backoff_seconds * 2.0 ** (attempt - 1)
    )
    return delay / 2 + random.uniform(0, delay / 2)


class DeliveryDispatcher:
    def __init__(
        self,
        store: LifecycleStore,
        notifiers: Mapping[str, Notifier],
        policies: Mapping[str, EndpointPolicy],
    ) -> None:
        self._store = store
        self._notifiers = notifiers
        self._policies = policies
        self._queues: dict[str, asyncio.Queue[Delivery]] = {
            eid: asyncio.Queue(policies[eid].queue_size) for eid in notifiers
        }
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._queued: set[str] = set()  # claimed, not yet taken by a worker
        self._last_unknown_check = 0.0

    def wake(self) -> None:
        """New outbox rows were committed: claim now instead of at the next poll."""
        self._wake.set()

    def request_stop(self) -> None:
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._claim_loop(), name="emon-notify-claimer")
            for endpoint_id, policy in self._policies.items():
                if endpoint_id not in self._notifiers:
                    continue
                for index in range(policy.workers):
                    tasks.create_task(
                        self._worker(endpoint_id), name=f"emon-notify-{endpoint_id}-{index}"
                    )
        _LOGGER.info("delivery workers stopped")

    # ------------------------------------------------------------------ claiming

    async def _claim_loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    await self._claim_once()
                except StoreError as exc:
                    _LOGGER.warning("claiming deliveries failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), OUTBOX_POLL_SECONDS)
        finally:
            # Give back what no worker has started, so a restarted daemon sends it at once.
            leftover = list(self._queued)
            self._queued.clear()
            for queue in self._queues.values():
                while not queue.empty():
                    queue.get_nowait()
            with contextlib.suppress(StoreError):
                await self._store.release(leftover)

    async def _claim_once(self) -> None:
        for endpoint_id, queue in self._queues.items():
            metrics.QUEUE_DEPTH.labels("notify_" + endpoint_id).set(queue.qsize())
            free = queue.maxsize - queue.qsize()
            if free <= 0:
                # The backlog stays in the outbox (nothing is lost); counted so it is seen.
                metrics.QUEUE_OVERFLOW.labels("notify_" + endpoint_id).inc()
                continue
            for delivery in await self._store.claim_deliveries(
                endpoint_id, free, CLAIM_LEASE_SECONDS
            ):
                self._queued.add(delivery.delivery_id)
                queue.put_nowait(delivery)
        now = time.monotonic()
        if now - self._last_unknown_check >= UNKNOWN_ENDPOINT_CHECK_SECONDS:
            self._last_unknown_check = now
            await self._give_up_unknown_endpoints()

    async def _give_up_unknown_endpoints(self) -> None:
        """Rows for an endpoint the config no longer has would wait for ever: close them."""
        for endpoint_id in await self._store.endpoints_pending():
            if endpoint_id in self._notifiers:
                continue
            for delivery in await self._store.claim_deliveries(endpoint_id, 100, 60.0):
                outcome = DeliveryOutcome(
                    delivery, "failed", delivery.attempts + 1, datetime.now(UTC),
                    error=f"endpoint {endpoint_id!r} is not configured",
                )
                await self._store.record_attempt(outcome, 0.0)
                alert_metrics.DELIVERIES.labels(endpoint_id, "failed").inc()

    # ------------------------------------------------------------------ delivering

    async def _worker(self, endpoint_id: str) -> None:
        queue = self._queues[endpoint_id]
        notifier = self._notifiers[endpoint_id]
        policy = self._policies[endpoint_id]
        while not self._stop.is_set():
            get = asyncio.ensure_future(queue.get())
            stop = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
                if not get.done():
                    get.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stop
            if not get.done() or get.cancelled():
                return
            delivery = get.result()
            self._queued.discard(delivery.delivery_id)
            await self._deliver(notifier, policy, delivery)

    async def _deliver(
        self, notifier: Notifier, policy: EndpointPolicy, delivery: Delivery
    ) -> None:
        attempt = delivery.attempts
        endpoint_id = notifier.endpoint_id
        while True:
            attempt += 1
            started = time.perf_counter()
            error: str | None = None
            permanent = False
            try:
                async with asyncio.timeout(policy.timeout_seconds):
                    await notifier.send(delivery, attempt)
            except DeliveryError as exc:
                error, permanent = str(exc), exc.permanent
            except TimeoutError:
                error = f"no answer within {policy.timeout_seconds:g} s"
            elapsed = time.perf_counter() - started
            alert_metrics.DELIVERY_SECONDS.labels(endpoint_id).observe(elapsed)
            retry_in: float | None = None
            if error is None:
                outcome = "sent"
            elif permanent:
                outcome = "failed"
            elif attempt >= policy.max_attempts:
                outcome = "gave_up"
            else:
                outcome = "retried"
                retry_in = backoff_seconds(policy, attempt)
            alert_metrics.DELIVERIES.labels(endpoint_id, outcome).inc()
            if outcome != "sent":
                _LOGGER.warning(
                    "delivery %s to %s attempt %d %s: %s", delivery.delivery_id, endpoint_id,
                    attempt, outcome, error,
                )
            record = DeliveryOutcome(
                delivery, outcome, attempt, datetime.now(UTC), error=error,
                retry_in_seconds=retry_in, elapsed_ms=round(elapsed * 1000, 1),
            )
            lease = (retry_in or 0.0) + policy.timeout_seconds + LEASE_MARGIN_SECONDS
            if not await self._record(record, lease):
                return
            if record.terminal:
                return
            assert retry_in is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), retry_in)
            if self._stop.is_set():
                # Not retried here: the lease runs out and the next daemon retries it.
                with contextlib.suppress(StoreError):
                    await self._store.release([delivery.delivery_id])
                return

    async def _record(self, outcome: DeliveryOutcome, lease_seconds: float) -> bool:
        """Record an attempt, retrying while the database is away; False if stopped first."""
        delay = 0.5
        while True:
            try:
                await self._store.record_attempt(outcome, lease_seconds)
                return True
            except StoreError as exc:
                if self._stop.is_set():
                    _LOGGER.error("stopping: delivery %s attempt %d unrecorded: %s",
                                  outcome.delivery.delivery_id, outcome.attempt, exc)
                    return False
                _LOGGER.warning("recording a delivery failed (%s); retry in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                delay = min(delay * 2, RECORD_RETRY_MAX_SECONDS)


def endpoint_policy(model: Any) -> EndpointPolicy:
    return EndpointPolicy(
        max_attempts=model.max_attempts,
        initial_backoff_seconds=model.initial_backoff_seconds,
        max_backoff_seconds=model.max_backoff_seconds,
        timeout_seconds=model.timeout_seconds,
        workers=model.workers,
        queue_size=model.queue_size,
    )
