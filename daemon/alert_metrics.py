"""Prometheus metrics of the alert lifecycle: escalation, deliveries, officer actions, yield."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# From minutes (NIJ-1004's 4-minute budget) to a day.
TIME_TO_ACK = Histogram(
    "emon_alert_time_to_acknowledge_seconds",
    "From an alert opening (or reopening) to a person acknowledging it",
    ["tier"],
    buckets=(30, 60, 120, 240, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400),
)
OPEN_BY_AGE = Gauge(
    "emon_open_alerts_by_age", "Unresolved alerts by tier, state and age since opening",
    ["tier", "state", "age"],
)
AGE_BUCKETS_SECONDS: tuple[tuple[str, float], ...] = (
    ("lt_5m", 300.0), ("5m_1h", 3600.0), ("1h_24h", 86400.0), ("1d_7d", 7 * 86400.0),
    ("ge_7d", float("inf")),
)
RESOLVED = Gauge(
    "emon_alerts_resolved_window", "Alerts resolved in the yield window, by disposition",
    ["tier", "disposition"],
)
YIELD = Gauge(
    "emon_alert_yield_ratio",
    "Confirmed violations / resolved alerts in the yield window (per tier, and tier=all)",
    ["tier"],
)
ESCALATION_ACTIONS = Counter(
    "emon_escalation_actions_total", "Escalation actions decided by sweeps", ["tier", "action"]
)
SWEEPS = Counter("emon_escalation_sweeps_total", "Escalation sweeps run", ["result"])
SWEEP_LATENESS = Histogram(
    "emon_escalation_lateness_seconds", "How late an escalation action went out after its due time",
    buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
DELIVERIES = Counter(
    "emon_notification_deliveries_total", "Delivery attempts by endpoint and outcome",
    ["endpoint", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "emon_notification_delivery_seconds", "Time of one delivery attempt", ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.3, 1, 3, 10, 30),
)
OUTBOX = Gauge("emon_notification_outbox", "Outbox rows by endpoint and status",
               ["endpoint", "status"])
OFFICER_ACTIONS = Counter(
    "emon_officer_actions_total", "Officer actions by action, channel and result",
    ["action", "channel", "result"],
)
AUTH_FAILURES = Counter("emon_api_auth_failures_total", "Refused API tokens", ["channel"])
ACCESS_REFUSED = Counter(
    "emon_api_access_refused_total",
    "Requests refused (403) because the caller's role lacks the permission",
    ["role", "permission"],
)
