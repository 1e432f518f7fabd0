"""Prometheus metrics of the daemon shell (the store has its own, prefixed emon_store_)."""

from __future__ import annotations

from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram

_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


class Children(Generic[_Metric]):
    """A metric's labelled children, looked up once per label values: `.labels()` builds a
    key and takes a lock on every call, which the ingest path paid per message. Only for
    labels of bounded cardinality (channels, reasons, kinds), as all of ours are."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._children: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


MESSAGES_RECEIVED = Counter(
    "emon_messages_received_total", "MQTT messages received from devices", ["channel"]
)
MESSAGES_REJECTED = Counter(
    "emon_messages_rejected_total", "Device messages refused by the wire decoder", ["reason"]
)
MESSAGES_FAILED = Counter(
    "emon_messages_failed_total",
    "Messages whose handling raised unexpectedly (dead-lettered as internal_error)", ["stage"],
)
OUTSIDE_AUTHORISATION = Counter(
    "emon_observations_outside_authorisation_total",
    "Observations taken outside their subject's authorised monitoring (Art. 29), by what "
    "was done with them (rules.authorisation.pings: store or deadletter)", ["action"],
)
MESSAGES_IGNORED = Counter(
    "emon_messages_ignored_total",
    "Well-formed device messages with nothing to evaluate (e.g. OwnTracks lwt)", ["reason"],
)
OBSERVATIONS_PROCESSED = Counter(
    "emon_observations_processed_total", "Observations evaluated by the core", ["kind"]
)
TICKS = Counter("emon_ticks_total", "Ticks run: time-driven rules judged (silence, schedules)")
ENGINE_EVENTS = Counter(
    "emon_engine_events_total", "Noise-discipline decisions of the core (late, jump, ...)",
    ["event"],
)
ALERT_TRANSITIONS = Counter(
    "emon_alert_transitions_total", "Alert transitions decided", ["transition", "rule", "tier"]
)
OPEN_ALERTS = Gauge("emon_open_alerts", "Unresolved alerts", ["tier"])
QUEUE_DEPTH = Gauge("emon_queue_depth", "Items waiting in a bounded queue", ["queue"])
QUEUE_OVERFLOW = Counter(
    "emon_queue_overflow_total", "Items refused by a full bounded queue", ["queue"]
)
MQTT_CONNECTED = Gauge("emon_mqtt_connected", "1 while connected to the broker")
MQTT_RECONNECTS = Counter("emon_mqtt_reconnects_total", "Broker connection attempts that failed")
PUBLISH_FAILURES = Counter(
    "emon_mqtt_publish_failures_total", "Publishes that failed and were retried", ["kind"]
)
PROCESS_SECONDS = Histogram(
    "emon_message_process_seconds", "Time to decode and evaluate one message",
    buckets=(0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1),
)
CONFIG_INFO = Gauge("emon_config_info", "Loaded config version", ["version"])

# Children of the metrics counted per message on the ingest path (daemon/app.py).
RECEIVED_BY_CHANNEL = Children(MESSAGES_RECEIVED)
REJECTED_BY_REASON = Children(MESSAGES_REJECTED)
IGNORED_BY_REASON = Children(MESSAGES_IGNORED)
PROCESSED_BY_KIND = Children(OBSERVATIONS_PROCESSED)
