"""The alert lifecycle's shell: records transitions with their escalation state, runs the
escalation sweeps (APScheduler), delivers notifications, and keeps the lifecycle metrics.

The decisions are the pure core's; this class wires them to PostgreSQL (`LifecycleStore`),
the notifiers and the daemon's MQTT connection. Officer actions (HTTP API, MQTT commands)
go through the daemon's AlertBook — the single writer — and come back here as transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Self

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from alerts.escalation import Mute
from alerts.model import Alert, AlertState, AlertTransition, Disposition, Tier, TransitionKind
from alerts.suppression import NO_LEAVE, LeaveCalendar, Silence, mute_for
from daemon import alert_metrics, metrics
from daemon.configfiles import LoadedConfig
from daemon.notifiers.dispatcher import DeliveryDispatcher
from daemon.notifiers.factory import build_notifiers
from daemon.notifiers.mqtt import Publish
from daemon.notifiers.routing import Router
from daemon.pipeline import Pipeline
from daemon.store.errors import StoreError
from daemon.store.lifecycle_repo import Delivery, DeliveryOutcome, LifecycleStore
from daemon.store.pool import Pool

_LOGGER = logging.getLogger(__name__)

SWEEP_JOB_ID = "emon-escalation-sweep"
GAUGE_JOB_ID = "emon-alert-gauges"
GAUGE_INTERVAL_SECONDS = 30.0
SWEEP_ROUNDS_PER_JOB = 20
YIELD_WINDOW_DAYS = 30.0
PUBLISH_LOG_QUEUE_SIZE = 10_000
PUBLISH_LOG_BATCH = 200
PUBLISH_LOG_RETRY_SECONDS = 1.0
PUBLISH_LOG_MAX_ROUNDS = 30  # an alert not recorded after this many rounds: give up (counted)
ALERTS_TOPIC_ENDPOINT = "mqtt-alerts"  # history name of the alerts-topic publishes
_ESCALATION_NAMESPACE = uuid.UUID("0b7a3f4e-2f55-4c36-9a0e-6f7e51d2c9a1")

PublishTransitions = Callable[[Sequence[AlertTransition]], Awaitable[None]]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class AlertingService:
    def __init__(
        self,
        loaded: LoadedConfig,
        pipeline: Pipeline,
        pool: Pool,
        publish_transitions: PublishTransitions,
        mqtt_publish: Publish | None,
        *,
        leave: LeaveCalendar = NO_LEAVE,
        env: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = _wall_clock,
    ) -> None:
        # Escalation decisions (due steps, decision times) on the daemon's engine clock, so
        # they agree with the alerts' decided_at through a wall-clock step (daemon/clock.py).
        self._clock = clock
        self._pipeline = pipeline
        self._policies = loaded.policies
        self.store = LifecycleStore(pool)
        self.router = Router(
            loaded.policies, {s.id: s.timezone for s in loaded.subjects.subjects}
        )
        self._publish_transitions = publish_transitions
        self._leave = leave
        notifiers, specs = build_notifiers(
            loaded.policies, os.environ if env is None else env, mqtt_publish
        )
        self._notifiers = notifiers
        self.dispatcher = DeliveryDispatcher(self.store, notifiers, specs)
        self._stack = contextlib.AsyncExitStack()
        self._scheduler: AsyncIOScheduler | None = None
        self._stop = asyncio.Event()
        self._publish_log: asyncio.Queue[tuple[DeliveryOutcome, int]] = asyncio.Queue(
            PUBLISH_LOG_QUEUE_SIZE
        )
        self._sweep_lock = asyncio.Lock()
        self._sweep_running = False
        self._sweep_again = False
        self._last_sweep_error: str | None = None

    async def __aenter__(self) -> Self:
        for notifier in self._notifiers.values():
            await self._stack.enter_async_context(notifier)
        try:
            started = await self.store.backfill(self._pipeline.config.alerting)
        except StoreError as exc:
            _LOGGER.error("escalation state of older alerts not backfilled: %s", exc)
        else:
            if started:
                _LOGGER.warning("started escalation for %d older unresolved alerts", started)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @property
    def sweep_interval_seconds(self) -> float:
        return self._policies.sweep_interval_seconds

    def schedule(self, scheduler: AsyncIOScheduler) -> None:
        self._scheduler = scheduler
        scheduler.add_job(
            self.sweep_job, "interval", seconds=self._policies.sweep_interval_seconds,
            id=SWEEP_JOB_ID, max_instances=1, coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        scheduler.add_job(
            self.gauge_job, "interval", seconds=GAUGE_INTERVAL_SECONDS, id=GAUGE_JOB_ID,
            max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
        )

    def sweep_soon(self) -> None:
        """Run the sweep job now (a new alert's first step should not wait an interval)."""
        if self._sweep_running:
            self._sweep_again = True  # the running job goes round once more
        elif self._scheduler is not None and not self._stop.is_set():
            with contextlib.suppress(Exception):  # the job is gone during shutdown
                self._scheduler.modify_job(SWEEP_JOB_ID, next_run_time=datetime.now(UTC))

    def request_stop(self) -> None:
        self._stop.set()
        self.dispatcher.request_stop()
        if self._scheduler is not None:
            for job_id in (SWEEP_JOB_ID, GAUGE_JOB_ID):
                with contextlib.suppress(Exception):
                    self._scheduler.remove_job(job_id)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.dispatcher.run(), name="emon-notify")
            tasks.create_task(self._publish_log_writer(), name="emon-delivery-log")

    # ------------------------------------------------------------------ recording

    async def record(
        self, transitions: Sequence[AlertTransition], decided_at: datetime | None = None
    ) -> None:
        """Store transitions (the daemon's alert recorder calls this; raises StoreError).

        `decided_at`: when the daemon decided them (a retried batch keeps its time)."""
        await self.store.record(
            transitions, self._pipeline.config.alerting, self.router,
            decided_at or self._clock(),
        )
        for transition in transitions:
            if transition.kind is TransitionKind.ACKNOWLEDGED:
                alert = transition.alert
                alert_metrics.TIME_TO_ACK.labels(alert.tier.value).observe(
                    max(0.0, (transition.at - alert.opened_at).total_seconds())
                )
        self.dispatcher.wake()
        if any(
            t.kind in (TransitionKind.OPENED, TransitionKind.REOPENED) for t in transitions
        ):
            self.sweep_soon()

    # ------------------------------------------------------------------ sweeping

    def mute_of(
        self, alert: Alert, now: datetime, unresolved: Sequence[Alert],
        silences: Sequence[Silence],
    ) -> Mute | None:
        return mute_for(
            alert, now, config=self._pipeline.config.alerting, unresolved=unresolved,
            silences=silences, leave=self._leave,
        )

    def _book_is_ahead(self, stored: Alert) -> bool:
        """The AlertBook (single writer) has acknowledged or resolved what the database
        still has open: the recorder is about to store it."""
        current = self._pipeline.book.get(stored.alert_id)
        if current is None or current.state is stored.state:
            return False
        return current.state is AlertState.RESOLVED or stored.state is AlertState.OPEN

    async def sweep(self, now: datetime | None = None) -> list[AlertTransition]:
        """One sweep: claim due escalations, decide, store, publish. Returns what it decided."""
        async with self._sweep_lock:  # one sweep at a time in this process
            now = self._clock() if now is None else now
            transitions = await self.store.sweep(
                now, self._pipeline.config.alerting, self.router, self.mute_of,
                newer=self._book_is_ahead,
            )
        if transitions:
            for t in transitions:
                alert_metrics.ESCALATION_ACTIONS.labels(t.alert.tier.value, t.kind.value).inc()
                alert_metrics.SWEEP_LATENESS.observe(max(0.0, (now - t.at).total_seconds()))
            await self._publish_transitions(transitions)
            self.dispatcher.wake()
        return transitions

    async def sweep_job(self) -> None:
        if self._stop.is_set():
            return
        self._sweep_running = True
        try:
            # A sweep handles one batch of due rows; a backlog (after an outage) takes a few.
            for _ in range(SWEEP_ROUNDS_PER_JOB):
                self._sweep_again = False
                if self._stop.is_set() or not (await self.sweep() or self._sweep_again):
                    break
            alert_metrics.SWEEPS.labels("ok").inc()
            if self._last_sweep_error is not None:
                _LOGGER.warning("escalation sweeps work again")
                self._last_sweep_error = None
        except StoreError as exc:
            alert_metrics.SWEEPS.labels("store_error").inc()
            # Logged once per outage: escalation state is in the database, nothing is lost,
            # the steps go out (late) when it is back.
            if self._last_sweep_error is None:
                _LOGGER.error("escalation sweep failed, retrying every interval: %s", exc)
            self._last_sweep_error = str(exc)
        except Exception:
            alert_metrics.SWEEPS.labels("error").inc()
            _LOGGER.exception("escalation sweep failed")
        finally:
            self._sweep_running = False

    # ------------------------------------------------------------------ MQTT alerts topic

    def note_published(self, transition: AlertTransition, topic: str) -> None:
        """An alert transition reached the broker: record the delivery in its history."""
        alert = transition.alert
        delivery_id = str(
            uuid.uuid5(
                _ESCALATION_NAMESPACE,
                f"{alert.alert_id}|{transition.kind.value}|{transition.at.isoformat()}",
            )
        )
        delivery = Delivery(
            delivery_id, alert.alert_id, transition.kind.value, transition.at,
            ALERTS_TOPIC_ENDPOINT, topic, None, {}, 0,
        )
        outcome = DeliveryOutcome(delivery, "sent", 1, datetime.now(UTC))
        alert_metrics.DELIVERIES.labels(ALERTS_TOPIC_ENDPOINT, "sent").inc()
        try:
            self._publish_log.put_nowait((outcome, 0))
        except asyncio.QueueFull:
            metrics.QUEUE_OVERFLOW.labels("delivery_log").inc()

    async def _publish_log_writer(self) -> None:
        while not (self._stop.is_set() and self._publish_log.empty()):
            batch: list[tuple[DeliveryOutcome, int]] = []
            with contextlib.suppress(TimeoutError):
                batch.append(await asyncio.wait_for(self._publish_log.get(), 0.5))
            while batch and not self._publish_log.empty() and len(batch) < PUBLISH_LOG_BATCH:
                batch.append(self._publish_log.get_nowait())
            if not batch:
                continue
            try:
                recorded = await self.store.alerts_exist([o.delivery.alert_id for o, _ in batch])
                await self.store.record_published(
                    [o for o, _ in batch if o.delivery.alert_id in recorded]
                )
            except StoreError as exc:
                _LOGGER.warning("recording MQTT publishes failed: %s", exc)
                recorded = set()
            late = [(o, n + 1) for o, n in batch if o.delivery.alert_id not in recorded]
            if late:
                # Published before the recorder stored the alert: try again shortly.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), PUBLISH_LOG_RETRY_SECONDS)
                for outcome, rounds in late:
                    if rounds >= PUBLISH_LOG_MAX_ROUNDS or self._stop.is_set():
                        metrics.QUEUE_OVERFLOW.labels("delivery_log_unrecorded").inc()
                        continue
                    try:
                        self._publish_log.put_nowait((outcome, rounds))
                    except asyncio.QueueFull:
                        metrics.QUEUE_OVERFLOW.labels("delivery_log").inc()

    # ------------------------------------------------------------------ gauges

    def update_age_gauges(self, now: datetime) -> None:
        counts: Counter[tuple[str, str, str]] = Counter()
        for alert in self._pipeline.book.unresolved():
            age = (now - alert.opened_at).total_seconds()
            bucket = next(n for n, limit in alert_metrics.AGE_BUCKETS_SECONDS if age < limit)
            counts[(alert.tier.value, alert.state.value, bucket)] += 1
        for tier in Tier:
            for state in (AlertState.OPEN, AlertState.ACKNOWLEDGED):
                for bucket, _ in alert_metrics.AGE_BUCKETS_SECONDS:
                    key = (tier.value, state.value, bucket)
                    alert_metrics.OPEN_BY_AGE.labels(*key).set(counts.get(key, 0))

    async def gauge_job(self) -> None:
        now = datetime.now(UTC)
        self.update_age_gauges(now)
        try:
            rows = await self.store.resolutions(now - timedelta(days=YIELD_WINDOW_DAYS))
            outbox = await self.store.outbox_counts()
        except StoreError as exc:
            _LOGGER.debug("lifecycle gauges not updated: %s", exc)
            return
        set_yield(rows)
        for (endpoint, status), n in outbox.items():
            alert_metrics.OUTBOX.labels(endpoint, status).set(n)


def set_yield(rows: Sequence[Mapping[str, object]]) -> None:
    """Alert yield per tier: confirmed violations / alerts resolved by a person.

    Auto-resolved alerts (condition_cleared) are left out: nobody judged them."""
    confirmed: Counter[str] = Counter()
    judged: Counter[str] = Counter()
    for row in rows:
        tier, disposition = str(row["tier"]), str(row["disposition"])
        n = int(str(row["n"]))
        alert_metrics.RESOLVED.labels(tier, disposition or "none").set(n)
        if disposition == Disposition.CONDITION_CLEARED.value:
            continue
        judged[tier] += n
        judged["all"] += n
        if disposition == Disposition.CONFIRMED_VIOLATION.value:
            confirmed[tier] += n
            confirmed["all"] += n
    for tier in [*(t.value for t in Tier), "all"]:
        alert_metrics.YIELD.labels(tier).set(confirmed[tier] / judged[tier] if judged[tier] else 0)
