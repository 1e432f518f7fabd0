"""The daemon: MQTT in, the pure pipeline, store and alerts out. One TaskGroup owns it all.

Shutdown (SIGTERM/SIGINT) drains in stages, each with its own timeout:
  1. ingest stops taking messages (the broker keeps queueing for our persistent session);
  2. alert transitions already decided are recorded in the database and published;
  3. escalation sweeps stop; deliveries in flight finish (queued ones stay in the outbox);
  4. buffered pings are flushed by the writer; the pool and HTTP close last.

The operator config is hot-reloaded (daemon/reload.py) on file change or SIGHUP: loaded and
validated whole in a worker thread, swapped in between two messages, or refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import signal
import ssl
import time
import traceback
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import psycopg
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from alerts.model import AlertTransition, Tier
from daemon import gcpolicy, metrics
from daemon.alerting import AlertingService
from daemon.clock import CLOCK_WATCH_INTERVAL_SECONDS, GuardedClock
from daemon.commands import COMMANDS_SUBSCRIPTION, CommandHandler
from daemon.configfiles import LoadedConfig, mqtt_password
from daemon.console.web import ConsoleService
from daemon.habitlearning import latest_learn_moment, learn_from_store
from daemon.http import HttpServer
from daemon.mqttbatch import ack_many, install_read_batching
from daemon.officer_api import OfficerActions, api_routes
from daemon.pipeline import Outcome, Pipeline
from daemon.protectedwire import PROTECTED_SUBSCRIPTION, is_protected_topic
from daemon.ratelimit import RateLimiter, rate_limit_middleware
from daemon.reload import OPERATORS_CONFIG_TOPIC, ConfigReloader
from daemon.storage import maintain, open_journal, writer_options
from daemon.store.alerts_repo import AlertRepository
from daemon.store.config_repo import ConfigVersionRepository
from daemon.store.errors import StoreClosedError, StoreError
from daemon.store.lifecycle_repo import alert_from_row
from daemon.store.migrations import StoreInfo, migrate
from daemon.store.pool import Pool, open_pool
from daemon.store.settings import AckPolicy
from daemon.store.writer import PingWriter
from daemon.ticks import grid_ceil, grid_floor
from daemon.wire import (
    ALERTS_TOPIC_PREFIX,
    DEADLETTER_TOPIC_PREFIX,
    DEVICE_SUBSCRIPTIONS,
    RejectReason,
    WireError,
    channel_of_topic,
    deadletter_payload,
    device_id_of_topic,
)
from geofence.compliancespec import UnauthorisedPings
from geofence.windows import ConfigLeaveCalendar

_LOGGER = logging.getLogger(__name__)

OUTBOUND_QUEUE_SIZE = 10_000
ALERT_RECORD_QUEUE_SIZE = 10_000
RECONNECT_MIN_SECONDS = 0.5
STARTUP_DB_RETRY_MAX_SECONDS = 10.0
STAGE_INGEST_TIMEOUT_SECONDS = 5.0
STAGE_ALERTS_TIMEOUT_SECONDS = 10.0
STAGE_NOTIFY_TIMEOUT_SECONDS = 10.0
ALERT_RECORD_RETRY_MAX_SECONDS = 10.0
# Batches of messages handled but not yet acknowledged (waiting for their rows to be
# durable); far more than the broker's window of unacknowledged messages, so it only fills
# if acks stall (the reader then waits).
ACK_QUEUE_SIZE = 10_000
# Messages handled as one batch at most (those aiomqtt has already received): one
# acknowledgement item and one socket write of PUBACKs per batch. Bounds how long one batch
# holds the event loop (~0.3 ms per message); the broker's in-flight window (100 in
# config/mosquitto) is smaller anyway.
READ_BATCH_MAX_MESSAGES = 256
# The writer is asked to write at once after this many messages awaiting durability for
# their acknowledgement: a third of the broker's in-flight window (max_inflight_messages 100
# in config/mosquitto; MQTT 3.1.1 does not tell a client), so the broker never stops
# delivering to wait for acknowledgements that wait for the writer's idle or age flush (at
# ~1,000 msg/s messages never pause 5 ms: the window filled every ~0.1 s, and fixes waited
# in the broker; bench p50 at 50 % load 100 ms).
ACK_FLUSH_MESSAGES = 32


class DaemonError(Exception):
    """Root of the daemon shell's own errors."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    kind: str  # "alert", "deadletter" or "operators": a metric label
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False
    # Completed once the broker has the message (notifiers wait on it); a cancelled one
    # (its waiter gave up) is not published.
    done: asyncio.Future[None] | None = field(default=None, compare=False)


_STOP: Any = object()  # sentinel that tells a worker to finish

# An acknowledgement item: the writer's durability target of a batch, and its messages'
# (mid, qos) in arrival order.
_AckItem = tuple[int, list[tuple[int, int]]]


async def _next_batch(client: aiomqtt.Client) -> list[aiomqtt.Message]:
    """The messages aiomqtt has received, in order (at least one: waits for it), at most
    READ_BATCH_MAX_MESSAGES. Raises aiomqtt.MqttError once disconnected and drained."""
    # aiomqtt's incoming queue (what `len(client.messages)` counts): taken from directly,
    # without the task and asyncio.wait its iterator costs per message, while non-empty.
    queue: asyncio.Queue[aiomqtt.Message] = client._queue
    batch = [await anext(client.messages)] if queue.empty() else []
    while len(batch) < READ_BATCH_MAX_MESSAGES:
        try:
            batch.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            break
    return batch

# policies.yaml parts the AlertingService reads once at start (a reload names them).
_RESTART_ONLY_POLICY_FIELDS = (
    "notifiers", "contacts", "mqtt_officer_topics", "sweep_interval_seconds", "console_url",
    "silences",
)


def _tls_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """TLS 1.2+ with the broker's certificate and host name verified, or None (plain)."""
    if ca_file is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise DaemonError(f"cannot use mqtt.tls_ca_file {ca_file}: {exc}") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _note_published(
    alerting: AlertingService, transition: AlertTransition, topic: str, done: asyncio.Future[None]
) -> None:
    if not done.cancelled():
        alerting.note_published(transition, topic)


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(0.8, 1.2)


def _payload_of(message: aiomqtt.Message) -> bytes:
    raw = message.payload
    return raw if isinstance(raw, bytes) else str(raw).encode() if raw is not None else b""


def _dead_letter(
    topic: str,
    payload: bytes,
    received_at: datetime,
    error: WireError,
    done: asyncio.Future[None] | None = None,
) -> OutboundMessage:
    """The dead letter of a refused or failed device message: QoS 1 when the caller waits
    for the broker to have it (`done`) before acknowledging the message it stands for."""
    body = deadletter_payload(topic, payload, received_at, error)
    return OutboundMessage(
        "deadletter", DEADLETTER_TOPIC_PREFIX + device_id_of_topic(topic),
        json.dumps(body, ensure_ascii=False).encode(), qos=0 if done is None else 1, done=done,
    )


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, freeze_gc: bool = False) -> None:
        # freeze_gc: the GC policy of daemon/gcpolicy.py, for a process of its own (`emon
        # run`); it would also freeze the objects of whatever else runs in the process.
        self._freeze_gc = freeze_gc
        self._loaded = loaded
        self._settings = loaded.settings
        self._pipeline = Pipeline(loaded.core)
        self._outbound: asyncio.Queue[OutboundMessage] = asyncio.Queue(OUTBOUND_QUEUE_SIZE)
        self._alert_records: asyncio.Queue[
            tuple[Sequence[AlertTransition], asyncio.Future[None], datetime]
        ] = asyncio.Queue(ALERT_RECORD_QUEUE_SIZE)
        self._alerting: AlertingService | None = None
        self._commands: CommandHandler | None = None
        self._console: ConsoleService | None = None
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stop_started: float | None = None
        self._reader_busy = False
        self._reader_task: asyncio.Task[None] | None = None
        self._reader_done = asyncio.Event()
        self._pending_publish: OutboundMessage | None = None
        self._writer: PingWriter | None = None
        self._pool: Pool | None = None
        self._store_info: StoreInfo | None = None
        self._policies_set = False
        self._ack_durable = self._settings.store.ack is AckPolicy.DURABLE
        self._mqtt_connected = False
        self._mqtt_tls: ssl.SSLContext | None = None
        self._exported_engine_stats: Counter[str] = Counter()
        self._handle_stage = "evaluate"  # where _handle is: the label of a failure
        self._recorder_done = asyncio.Event()
        self._alerting_done = asyncio.Event()
        self._scheduler: AsyncIOScheduler | None = None
        self._config_repo: ConfigVersionRepository | None = None
        self._reloader = ConfigReloader(
            loaded.directory, loaded, self._apply_config, self._publish_operators,
            record=self._record_config_version,
        )
        # Arrival, tick and decision times: the wall clock without its steps (daemon/clock.py).
        self._clock = GuardedClock(on_step=self._after_clock_step)
        self._rate_limiter = RateLimiter(loaded.settings.rate_limit)
        self.http_port: int | None = None
        self.ready = asyncio.Event()  # set once subscribed: for the demo and tests

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        if not self._stop_requested.is_set():
            _LOGGER.info("stop requested: draining")
            self._stop_requested.set()

    def _stop_deadline_passed(self) -> bool:
        loop = asyncio.get_running_loop()
        return (
            self._stop_started is not None
            and loop.time() - self._stop_started > STAGE_ALERTS_TIMEOUT_SECONDS
        )

    @property
    def open_alert_count(self) -> int:
        return len(self._pipeline.book.unresolved())

    def _health(self) -> dict[str, Any]:
        return {
            "ok": self._mqtt_connected,
            "mqtt_connected": self._mqtt_connected,
            "config_version": self._pipeline.config.version,
            "config_reload": self._reloader.status.to_json(),
            "open_alerts": len(self._pipeline.book.unresolved()),
        }

    async def run(self) -> None:
        dsn = self._settings.database.dsn
        if not dsn:
            raise DaemonError("no database: set EMON_DATABASE_URL or database.dsn")
        # Checked before anything starts: a wrong CA path is a config error, not an outage.
        self._mqtt_tls = _tls_context(self._settings.mqtt.tls_ca_file)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop)
        with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
            loop.add_signal_handler(signal.SIGHUP, self._reloader.request_reload)
        info = await self._migrate_with_retry(dsn)
        _LOGGER.info(
            "store ready: %s, schema %s",
            "TimescaleDB" if info.timescale else "plain PostgreSQL", info.version,
        )
        metrics.CONFIG_INFO.labels(self._pipeline.config.version).set(1)
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(open_pool(dsn))
            self._pool, self._store_info = pool, info
            repo = AlertRepository(pool)
            self._config_repo = ConfigVersionRepository(pool)
            await self._restore_alerts(repo)
            # Entered before the writer, so closed after it: the writer keeps in the
            # journal whatever the database cannot take at shutdown.
            journal = await stack.enter_async_context(open_journal(self._settings, pool))
            self._writer = await stack.enter_async_context(
                PingWriter(pool, journal=journal, **writer_options(self._settings))
            )
            alerting = await stack.enter_async_context(
                AlertingService(
                    self._loaded, self._pipeline, pool,
                    self._publish_recorded, self._publish_and_wait,
                    leave=ConfigLeaveCalendar(lambda: self._pipeline.config),
                    clock=self._clock.now,
                )
            )
            self._alerting = alerting
            actions = OfficerActions(
                self._pipeline, alerting.store, self._dispatch,
                silence_max_seconds=self._loaded.policies.silences.max_seconds,
            )
            actions.on_silence_change = alerting.sweep_soon
            actions.reload_status = self._reloader.status.to_json
            actions.reload_requested = self._reloader.request_reload
            self._commands = CommandHandler(actions, self._reply)
            console = ConsoleService(self._loaded, self._pipeline, actions, pool)
            http = await stack.enter_async_context(
                HttpServer(
                    self._settings.http.host, self._settings.http.port, self._health,
                    [*api_routes(actions), *console.routes()],
                    [rate_limit_middleware(self._rate_limiter)],
                )
            )
            self.http_port = http.bound_port
            # Entered after the HTTP server, so it closes the console's streams first.
            self._console = await stack.enter_async_context(console)
            scheduler = AsyncIOScheduler(timezone="UTC")
            tick_s = self._settings.tick_interval_seconds
            scheduler.add_job(
                self._tick_job, "interval", seconds=tick_s, id="emon-tick",
                max_instances=1, coalesce=True,
                start_date=grid_ceil(datetime.now(UTC), tick_s),  # the grid replay uses
            )
            # First run at once (in the background: ingest does not wait for rollups);
            # today's partitions already exist from the migration.
            scheduler.add_job(
                self._maintenance_job, "interval",
                minutes=self._settings.store.maintenance_interval_minutes,
                id="emon-store-maintenance", max_instances=1, coalesce=True,
                next_run_time=datetime.now(UTC),
            )
            # Issue 5: frequent places, at start-up and daily (daemon/habitlearning.py).
            scheduler.add_job(
                self._learn_places_job, "cron",
                hour=self._loaded.settings.behaviour.habits.learn_hour_utc, minute=0,
                id="emon-learn-places", max_instances=1, coalesce=True,
                next_run_time=datetime.now(UTC),
            )
            alerting.schedule(scheduler)
            scheduler.start()
            self._scheduler = scheduler
            if self._freeze_gc:
                gcpolicy.freeze_survivors()  # before ingest: its one full collection
            try:
                async with asyncio.TaskGroup() as tasks:
                    if self._freeze_gc:
                        tasks.create_task(
                            gcpolicy.freeze_periodically(self._stop_requested),
                            name="emon-gc-freeze",
                        )
                    tasks.create_task(self._mqtt_loop(), name="emon-mqtt")
                    tasks.create_task(self._alert_recorder(), name="emon-alert-recorder")
                    tasks.create_task(self._run_alerting(alerting), name="emon-alerting")
                    tasks.create_task(self._commands.run(), name="emon-commands")
                    tasks.create_task(
                        self._reloader.run(self._stop_requested), name="emon-config-reload"
                    )
                    tasks.create_task(self._shutdown_controller(), name="emon-shutdown")
                    tasks.create_task(self._watch_clock(), name="emon-clock-watch")
            finally:
                scheduler.shutdown(wait=False)
            await self._reloader.close()
            # Leaving the exit stack flushes the writer (stage 3), then closes HTTP and pool.
        _LOGGER.info("stopped cleanly")

    async def _migrate_with_retry(self, dsn: str) -> Any:
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                return await migrate(dsn)
            except StoreError as exc:
                if self._stop_requested.is_set():
                    raise DaemonError(f"stopped before the database was reachable: {exc}") from exc
                _LOGGER.warning("database not ready (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_requested.wait(), _jittered(delay))
                delay = min(delay * 2, STARTUP_DB_RETRY_MAX_SECONDS)

    async def _restore_alerts(self, repo: AlertRepository) -> None:
        rows = await repo.list_alerts()
        alerts = [alert_from_row(r) for r in rows]
        self._pipeline.book.restore(alerts)
        _LOGGER.info("restored %d alerts (%d unresolved)", len(alerts),
                     len(self._pipeline.book.unresolved()))
        self._update_open_gauge()

    async def _shutdown_controller(self) -> None:
        await self._stop_requested.wait()
        # Stage 1: stop ingest. Cancel the reader only while it waits for a message, never
        # in the middle of handling one.
        self._stopping = True
        self._stop_started = asyncio.get_running_loop().time()
        if self._reader_task is not None and not self._reader_busy:
            self._reader_task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reader_done.wait(), STAGE_INGEST_TIMEOUT_SECONDS)
        # Stage 2: record and publish the alert transitions already decided.
        if self._commands is not None:
            self._commands.request_stop()
        await self._alert_records.put(_STOP)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._recorder_done.wait(), STAGE_ALERTS_TIMEOUT_SECONDS)
        # Stage 3: no more sweeps; deliveries in flight finish, queued ones are released
        # to the outbox for the next start. The publisher stays up for them meanwhile.
        if self._alerting is not None:
            self._alerting.request_stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._alerting_done.wait(), STAGE_NOTIFY_TIMEOUT_SECONDS)
        await self._outbound.put(_STOP)

    # ------------------------------------------------------------------ MQTT

    async def _mqtt_loop(self) -> None:
        mqtt = self._settings.mqtt
        try:
            password = mqtt_password(mqtt)
        except OSError as exc:
            raise DaemonError(f"cannot read mqtt.password_file: {exc.strerror}") from exc
        delay = RECONNECT_MIN_SECONDS
        while True:
            failed: Exception | None = None
            try:
                client = aiomqtt.Client(
                    mqtt.host, mqtt.port, identifier=mqtt.client_id, clean_session=False,
                    keepalive=mqtt.keepalive_seconds, username=mqtt.username, password=password,
                    tls_context=self._mqtt_tls,
                )
                # aiomqtt has no manual acknowledgement; its paho client does. A QoS 1 message
                # is acknowledged only after it has been evaluated and handed to the writer,
                # so one that was received but not handled (shutdown, crash) is redelivered
                # by the broker from our persistent session, and the idempotent store keeps
                # one row.
                client._client.manual_ack_set(True)
                # Every packet on the socket per readable event, so messages come in
                # batches (daemon/mqttbatch.py).
                install_read_batching(client._client)
                async with client:
                    delay = RECONNECT_MIN_SECONDS
                    _LOGGER.info("connected to broker %s:%s", mqtt.host, mqtt.port)
                    if not self._stopping:
                        for topic in (*DEVICE_SUBSCRIPTIONS, PROTECTED_SUBSCRIPTION,
                                      COMMANDS_SUBSCRIPTION):
                            await client.subscribe(topic, qos=1)
                    # Healthy only once subscribed: a new session (first start, new client
                    # id) receives nothing published before its subscriptions exist.
                    self._mqtt_connected = True
                    metrics.MQTT_CONNECTED.set(1)
                    if not self._stopping:
                        self.ready.set()
                    # Acknowledgements of this connection only: after a reconnect the
                    # broker redelivers what was not acknowledged.
                    acks: asyncio.Queue[_AckItem] = asyncio.Queue(ACK_QUEUE_SIZE)
                    async with asyncio.TaskGroup() as tasks:
                        acker = tasks.create_task(self._acker(client, acks), name="emon-mqtt-acker")
                        if not self._stopping:
                            self._reader_task = tasks.create_task(
                                self._read(client, acks), name="emon-mqtt-reader"
                            )
                        await self._publish(client)
                        await acks.put(_STOP)
                        await acker
                    return
            except* aiomqtt.MqttError as group:
                failed = group.exceptions[0] if group.exceptions else None
            finally:
                self._mqtt_connected = False
                metrics.MQTT_CONNECTED.set(0)
            metrics.MQTT_RECONNECTS.inc()
            if self._stopping and self._stop_deadline_passed():
                _LOGGER.error(
                    "stopping without a broker: %d messages (alerts, dead letters) unpublished; "
                    "alerts are in the database", self._outbound.qsize(),
                )
                return
            _LOGGER.warning("broker connection lost (%s); reconnecting in %.1f s", failed, delay)
            await asyncio.sleep(_jittered(delay))
            delay = min(delay * 2, mqtt.reconnect_max_seconds)

    async def _read(self, client: aiomqtt.Client, acks: asyncio.Queue[_AckItem]) -> None:
        """Handle messages in order, in batches of those already received, and queue one
        acknowledgement item per batch (or acknowledge at once without `store.ack:
        durable`). A message whose handling raises is dead-lettered and the batch goes on.
        """
        awaiting_flush = 0  # messages waiting for durability since the last flush request
        try:
            while True:
                batch = await _next_batch(client)
                self._reader_busy = True
                to_ack: list[tuple[int, int]] = []
                assert self._writer is not None
                target = self._writer.seq
                # One reading of the clocks per batch: its messages came off the socket in
                # one read, so this is when each was received. Read again if anything else
                # (a tick, a sweep, an officer action, while a message waited) read a later
                # engine time meanwhile: engine time never goes back, as replay assumes.
                read_s = math.nan
                try:
                    for message in batch:
                        if self._clock.last_read_s != read_s:
                            read_s = self._clock.read()
                            received_at = datetime.fromtimestamp(read_s, UTC)
                            wall_now = self._clock.wall_now()
                        try:
                            target = await self._handle(message, received_at, wall_now)
                        except StoreClosedError:
                            raise  # not this message's fault: left unacknowledged, redelivered
                        except Exception as exc:  # one message must not stop ingest
                            target = await self._dead_letter_failed(message, exc)
                        if message.qos > 0:
                            to_ack.append((message.mid, message.qos))
                except BaseException:
                    self._reader_busy = False
                    if to_ack:
                        # Stopped part-way: what was handled is acknowledged once durable
                        # (in order); the rest is redelivered.
                        self._queue_acks_nowait(client, acks, target, to_ack)
                    raise
                self._reader_busy = False
                if to_ack:
                    if self._ack_durable:
                        await acks.put((target, to_ack))  # full: ingest waits (backpressure)
                        awaiting_flush += len(to_ack)
                        if awaiting_flush >= ACK_FLUSH_MESSAGES:
                            self._writer.request_flush()
                            awaiting_flush = 0
                    else:
                        ack_many(client._client, to_ack)
                if self._stopping and len(client.messages) == 0:
                    return
        except asyncio.CancelledError:
            if not self._stopping:
                raise
        finally:
            if self._stopping:
                self._reader_done.set()

    def _queue_acks_nowait(
        self,
        client: aiomqtt.Client,
        acks: asyncio.Queue[_AckItem],
        target: int,
        to_ack: list[tuple[int, int]],
    ) -> None:
        """The acknowledgements of a batch the reader stopped in (it cannot wait then)."""
        if not self._ack_durable:
            ack_many(client._client, to_ack)
            return
        try:
            acks.put_nowait((target, to_ack))
        except asyncio.QueueFull:
            # Counted; those messages stay unacknowledged and the broker redelivers them
            # after the next reconnect (the store keeps one row each).
            metrics.QUEUE_OVERFLOW.labels("acks").inc(len(to_ack))

    async def _acker(self, client: aiomqtt.Client, acks: asyncio.Queue[_AckItem]) -> None:
        """Acknowledge messages in order, each batch once the rows it carried are durable
        (committed, or in the journal): a daemon killed at any moment loses nothing.
        Batches already durable by then are acknowledged together, in one socket write."""
        writer = self._writer
        assert writer is not None
        # A batch taken from the queue while gathering, not durable yet: handled next.
        pending: _AckItem | None = None
        while True:
            metrics.QUEUE_DEPTH.labels("acks").set(acks.qsize())
            item = pending if pending is not None else await acks.get()
            pending = None
            if item is _STOP:
                return
            target, to_ack = item
            try:
                if self._stopping:
                    # Shutdown: what is not durable in time is redelivered next start.
                    async with asyncio.timeout(STAGE_INGEST_TIMEOUT_SECONDS):
                        await writer.wait_durable(target)
                else:
                    await writer.wait_durable(target)
            except (TimeoutError, StoreError) as exc:
                _LOGGER.warning(
                    "leaving %d batch(es) of messages unacknowledged for redelivery: %s",
                    acks.qsize() + 1, exc or type(exc).__name__,
                )
                return
            while not acks.empty():
                queued = acks.get_nowait()
                if queued is _STOP or writer.durable_seq < queued[0]:
                    pending = queued
                    break
                to_ack.extend(queued[1])  # the reader hands each list over: ours now
            ack_many(client._client, to_ack)

    async def _dead_letter_failed(self, message: aiomqtt.Message, exc: Exception) -> int:
        """A message whose handling raised (a bug, an unstorable observation): logged with
        the exception's type and frames (not its text, which may quote the payload's
        coordinates), counted, and dead-lettered with reason internal_error. Returns the
        durability target to acknowledge it at: only once the dead letter is with the
        broker (QoS 1), so a crash before that redelivers the message."""
        stage = self._handle_stage
        topic = message.topic.value
        metrics.MESSAGES_FAILED.labels(stage).inc()
        frames = "".join(traceback.format_tb(exc.__traceback__)).rstrip()
        assert self._writer is not None
        if is_protected_topic(topic):
            # A protected person's position is never stored, dead-lettered or logged (issue
            # 5), not even its topic: counted and dropped.
            _LOGGER.error(
                "handling a protected person's message failed at %s (%s); dropped\n%s",
                stage, type(exc).__name__, frames,
            )
            return self._writer.seq
        _LOGGER.error(
            "handling a message on %s failed at %s (%s); dead-lettered as internal_error\n%s",
            topic, stage, type(exc).__name__, frames,
        )
        error = WireError(RejectReason.INTERNAL_ERROR, f"{type(exc).__name__} at {stage}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outbound.put(
            _dead_letter(topic, _payload_of(message), self._clock.now(), error, done=done)
        )
        await done
        return self._writer.seq

    async def _watch_clock(self) -> None:
        """Read the engine clock at least once a second, so a wall-clock step is noticed
        (and the scheduler re-armed) even when no message or tick arrives."""
        while not self._stop_requested.is_set():
            self._clock.read()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), CLOCK_WATCH_INTERVAL_SECONDS)

    def _after_clock_step(self, step_seconds: float) -> None:
        """APScheduler times its jobs on the wall clock: after a step backwards it would
        wait the whole step before the next tick or escalation sweep, after a step forwards
        it counts the jobs as missed. Re-arm each job from the new wall-clock time."""
        scheduler = self._scheduler
        if scheduler is None or not scheduler.running:
            return
        wall_now = datetime.now(UTC)
        for job in scheduler.get_jobs():
            if job.id == "emon-tick":
                due = grid_ceil(wall_now, self._settings.tick_interval_seconds)
            elif isinstance(job.trigger, IntervalTrigger):
                due = wall_now
            else:  # a daily job (place learning): its next time of day, not at once
                due = job.trigger.get_next_fire_time(None, wall_now)
            with contextlib.suppress(Exception):  # a job removed meanwhile (shutdown)
                job.modify(next_run_time=due)

    async def _handle(
        self, message: aiomqtt.Message, received_at: datetime, wall_now: datetime
    ) -> int:
        """Decide on one message, received at `received_at` (engine time; `wall_now`: the
        wall clock then), and hand its rows to the writer; returns the writer's durability
        target for the message (everything put so far)."""
        self._handle_stage = "evaluate"
        topic = message.topic.value
        payload = _payload_of(message)
        if self._commands is not None and CommandHandler.is_command(topic):
            self._commands.submit(topic, payload)  # queued: never waits on the database
            assert self._writer is not None
            return self._writer.seq
        started = time.perf_counter()
        outcome = self._pipeline.handle(
            topic, payload, received_at, future_reference=wall_now
        )
        metrics.PROCESS_SECONDS.observe(time.perf_counter() - started)
        if outcome.protected:
            return await self._handle_protected(outcome)
        if outcome.outside_authorisation:  # issue 5 part A: Art. 29, rules.authorisation.pings
            target = await self._outside_authorisation(topic, payload, received_at, outcome)
            if target is not None:
                return target
        if outcome.rejection is not None:
            reason = outcome.rejection.reason.value
            metrics.REJECTED_BY_REASON(reason).inc()
            _LOGGER.debug("rejected %s: %s", topic, outcome.rejection)
            self._enqueue_nowait(_dead_letter(topic, payload, received_at, outcome.rejection))
            assert self._writer is not None
            return self._writer.seq
        if outcome.ignored is not None:
            metrics.IGNORED_BY_REASON(outcome.ignored).inc()
            assert self._writer is not None
            return self._writer.seq
        observation = outcome.observation
        assert observation is not None
        assert outcome.subject_id is not None
        metrics.RECEIVED_BY_CHANNEL(channel_of_topic(topic)).inc()
        metrics.PROCESSED_BY_KIND(type(observation).__name__).inc()
        assert self._writer is not None
        self._handle_stage = "store"
        target = await self._writer.put(
            observation, outcome.subject_id, outcome.config_version,
            outside_authorisation=outcome.outside_authorisation,  # Art. 29 (migration 0008)
        )
        target = await self._store_zone_transitions(outcome) or target
        self._handle_stage = "dispatch"
        if self._console is not None:
            self._console.feed.on_observation(observation, outcome.subject_id)
        if outcome.transitions:
            await self._dispatch(outcome.transitions)
        return target

    async def _outside_authorisation(
        self, topic: str, payload: bytes, received_at: datetime, outcome: Outcome
    ) -> int | None:
        """An observation taken outside its subject's authorised monitoring: counted, and
        with policy `deadletter` not stored but dead-lettered (its alerts, e.g. the
        monitoring_unauthorised one, still go out). None: store it as usual."""
        action = self._pipeline.config.rules.compliance.authorisation.pings
        metrics.OUTSIDE_AUTHORISATION.labels(action.value).inc()
        if action is UnauthorisedPings.STORE:
            return None
        error = WireError(RejectReason.OUTSIDE_AUTHORISATION, "no authorised monitoring period")
        metrics.MESSAGES_REJECTED.labels(error.reason.value).inc()
        self._enqueue_nowait(_dead_letter(topic, payload, received_at, error))
        if outcome.transitions:
            await self._dispatch(outcome.transitions)
        assert self._writer is not None
        return self._writer.seq

    async def _handle_protected(self, outcome: Outcome) -> int:
        """Issue 5: a protected person's position was judged and is forgotten: never
        stored, logged, dead-lettered or shown; only the subjects' alerts go on."""
        assert self._writer is not None
        if outcome.rejection is not None:
            metrics.REJECTED_BY_REASON(outcome.rejection.reason.value).inc()
            return self._writer.seq
        metrics.RECEIVED_BY_CHANNEL("protected").inc()
        target = await self._store_zone_transitions(outcome) or self._writer.seq
        if outcome.transitions:
            await self._dispatch(outcome.transitions)
        return target

    async def _learn_places_job(self) -> None:
        """Issue 5: relearn every subject's frequent places from the stored pings, at the
        latest daily learning moment (the one `emon replay` uses too)."""
        habits = self._pipeline.config.behaviour.habits
        if not habits.enabled or self._pool is None:
            return
        moment = latest_learn_moment(self._clock.now(), habits.learn_hour_utc)
        try:
            learned = await learn_from_store(self._pool, self._pipeline.config, moment)
        except Exception:
            # Retried at the next daily run; the places learnt before stay in force.
            _LOGGER.exception("learning frequent places failed")
            return
        for places in learned:
            self._pipeline.engine.set_frequent_places(places)
        _LOGGER.info(
            "frequent places learnt for %d subjects (%d armed)", len(learned),
            sum(p.armed(habits) for p in learned),
        )

    async def _store_zone_transitions(self, outcome: Outcome) -> int | None:
        assert self._writer is not None
        target: int | None = None
        for transition in outcome.zone_transitions:
            target = await self._writer.put(
                transition, transition.subject_id, outcome.config_version or None
            )
        return target

    def _enqueue_nowait(self, message: OutboundMessage) -> None:
        try:
            self._outbound.put_nowait(message)
        except asyncio.QueueFull:
            metrics.QUEUE_OVERFLOW.labels("outbound_" + message.kind).inc()

    async def _publish(self, client: aiomqtt.Client) -> None:
        while True:
            message = self._pending_publish
            if message is None:
                metrics.QUEUE_DEPTH.labels("outbound").set(self._outbound.qsize())
                message = await self._outbound.get()
                if message is _STOP:
                    self._cancel_reader_if_running()
                    return
                if message.done is not None and message.done.done():
                    continue  # its waiter gave up (timeout): it will be sent again
                self._pending_publish = message
            try:
                await client.publish(
                    message.topic, message.payload, qos=message.qos, retain=message.retain
                )
            except aiomqtt.MqttError:
                metrics.PUBLISH_FAILURES.labels(message.kind).inc()
                raise  # kept in _pending_publish; retried after reconnect
            self._pending_publish = None
            if message.done is not None and not message.done.done():
                message.done.set_result(None)

    def _cancel_reader_if_running(self) -> None:
        if self._reader_task is not None and not self._reader_task.done():
            self._reader_task.cancel()

    # ------------------------------------------------------------------ alerts

    async def _publish_and_wait(self, topic: str, payload: bytes) -> None:
        """Publish (QoS 1) and wait for the broker's acknowledgement: the MQTT notifier."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._outbound.put(OutboundMessage("notification", topic, payload, done=done))
        await done

    async def _publish_recorded(self, transitions: Sequence[AlertTransition]) -> None:
        """Escalation transitions: the sweep has stored them; publish only."""
        await self._dispatch(transitions, record=False)

    def _reply(self, topic: str, payload: bytes) -> None:
        self._enqueue_nowait(OutboundMessage("command_reply", topic, payload))

    async def _dispatch(
        self, transitions: Sequence[AlertTransition], record: bool = True
    ) -> asyncio.Future[None]:
        """Publish transitions on the alerts topic and (unless already stored) record them.

        The returned future completes when the database has them (at once if `record` is
        False); officer actions wait on it to say whether their change is stored."""
        loop = asyncio.get_running_loop()
        if self._console is not None:
            self._console.feed.on_transitions(transitions)  # never waits for a browser
        for transition in transitions:
            alert = transition.alert
            metrics.ALERT_TRANSITIONS.labels(
                transition.kind.value, alert.rule.value, alert.tier.value
            ).inc()
            _LOGGER.info(
                "alert %s %s: subject %s rule %s tier %s",
                transition.kind.value, alert.alert_id, alert.subject_id, alert.rule.value,
                alert.tier.value,
            )
            payload = json.dumps(transition.to_wire(), ensure_ascii=False).encode()
            topic = ALERTS_TOPIC_PREFIX + alert.subject_id
            published: asyncio.Future[None] = loop.create_future()
            if self._alerting is not None:
                published.add_done_callback(
                    functools.partial(_note_published, self._alerting, transition, topic)
                )
            # Alerts are never dropped: a full queue slows ingest instead (backpressure).
            await self._outbound.put(OutboundMessage("alert", topic, payload, done=published))
        recorded: asyncio.Future[None] = loop.create_future()
        if record:
            # Decided now: an escalation ladder starts then, however long recording takes.
            await self._alert_records.put((transitions, recorded, self._clock.now()))
        else:
            recorded.set_result(None)
        self._update_open_gauge()
        return recorded

    def _update_open_gauge(self) -> None:
        counts = Counter(a.tier for a in self._pipeline.book.unresolved())
        for tier in Tier:
            metrics.OPEN_ALERTS.labels(tier.value).set(counts.get(tier, 0))

    async def _run_alerting(self, alerting: AlertingService) -> None:
        try:
            await alerting.run()
        finally:
            self._alerting_done.set()

    async def _alert_recorder(self) -> None:
        try:
            await self._record_alerts()
        finally:
            self._recorder_done.set()

    async def _record_alerts(self) -> None:
        assert self._alerting is not None
        while True:
            metrics.QUEUE_DEPTH.labels("alert_records").set(self._alert_records.qsize())
            item = await self._alert_records.get()
            if item is _STOP:
                return
            batch, recorded, decided_at = item
            delay = RECONNECT_MIN_SECONDS
            while True:
                try:
                    # The snapshot, history, escalation state and feed notifications: one
                    # transaction.
                    await self._alerting.record(batch, decided_at)
                    if not recorded.done():
                        recorded.set_result(None)
                    break
                except (StoreError, psycopg.Error) as exc:
                    # Never drop an alert: retry until the database is back.
                    if self._stopping and self._stop_deadline_passed():
                        _LOGGER.error(
                            "stopping without a database: %d alert transitions unrecorded: %s",
                            len(batch), [t.alert.alert_id for t in batch],
                        )
                        break
                    _LOGGER.warning("recording alerts failed (%s); retry in %.1f s", exc, delay)
                    await asyncio.sleep(_jittered(delay))
                    delay = min(delay * 2, ALERT_RECORD_RETRY_MAX_SECONDS)

    async def _maintenance_job(self) -> None:
        """Partitions ahead, retention, rollups (daemon/store/maintenance.py); the first
        run also sets the TimescaleDB policies from the settings."""
        if self._pool is None or self._store_info is None:
            return
        try:
            # Retention and rollup settings apply at once after a reload (the journal
            # and buffer settings of `store` need a restart).
            report = await maintain(
                self._pool, self._loaded.settings, self._pipeline.config,
                timescale=self._store_info.timescale, now=datetime.now(UTC),
                set_policies=not self._policies_set,
            )
            self._policies_set = self._policies_set or (
                not report.skipped and "policies" not in report.failed_steps
            )
        except Exception:
            # A failed run is retried at the next interval; ingest is not affected.
            _LOGGER.exception("store maintenance failed")

    # ------------------------------------------------------------------ config reload

    def _apply_config(self, new: LoadedConfig) -> list[str]:
        """Swap a validated config in (on the event loop: between two messages); return the
        settings that only a restart applies."""
        old = self._loaded
        self._pipeline.swap_config(new.core)
        with contextlib.suppress(KeyError):
            metrics.CONFIG_INFO.remove(old.core.version)
        metrics.CONFIG_INFO.labels(new.core.version).set(1)
        tick_seconds = new.settings.tick_interval_seconds
        if tick_seconds != old.settings.tick_interval_seconds and self._scheduler is not None:
            self._scheduler.reschedule_job("emon-tick", trigger="interval", seconds=tick_seconds)
        self._loaded = new
        if self._console is not None:
            self._console.swap_config(new)
        if new.settings.rate_limit != old.settings.rate_limit:
            self._rate_limiter.reconfigure(new.settings.rate_limit)
        # Connections and listeners keep the settings they were opened with; notifier
        # endpoints, contacts and the sweep are built once by the AlertingService. The
        # escalation ladders, inhibitions and leave mutes are in the core: they apply now.
        restart = [
            name for name in ("mqtt", "database", "http", "store")
            if getattr(self._settings, name) != getattr(new.settings, name)
        ]
        if old.settings.console.enabled != new.settings.console.enabled:
            restart.append("console.enabled")  # the console's routes are set up at start
        restart += [
            f"policies.{name}" for name in _RESTART_ONLY_POLICY_FIELDS
            if getattr(old.policies, name) != getattr(new.policies, name)
        ]
        return restart

    def _publish_operators(self, body: dict[str, Any]) -> None:
        self._enqueue_nowait(
            OutboundMessage(
                "operators", OPERATORS_CONFIG_TOPIC,
                json.dumps(body, ensure_ascii=False).encode(), qos=1, retain=True,
            )
        )

    async def _record_config_version(
        self, version: str, directory: Path, files: Mapping[str, str], applied_at: datetime
    ) -> None:
        if self._config_repo is None:
            raise DaemonError("database not open yet")
        await self._config_repo.record(version, directory, files, applied_at)

    async def _tick_job(self) -> None:
        try:
            # Judged at the grid point this tick belongs to (daemon.ticks), as in replay.
            now = grid_floor(self._clock.now(), self._settings.tick_interval_seconds)
            outcome = self._pipeline.tick_outcome(now)
            metrics.TICKS.inc()
            await self._store_zone_transitions(outcome)
            transitions = outcome.transitions
            if transitions:
                await self._dispatch(transitions)
            self._export_engine_stats()
        except Exception:
            # A failing tick must never stop the scheduler; the next tick tries again.
            _LOGGER.exception("tick failed")

    def _export_engine_stats(self) -> None:
        stats = self._pipeline.engine.stats
        for name, value in stats.items():
            delta = value - self._exported_engine_stats[name]
            if delta > 0:
                metrics.ENGINE_EVENTS.labels(name).inc(delta)
        self._exported_engine_stats = Counter(stats)
