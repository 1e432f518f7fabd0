"""Prometheus metrics of the officer console."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

STREAMS_OPEN = Gauge("emon_console_streams", "Live-update streams (server-sent events) open")
STREAMS_REFUSED = Counter(
    "emon_console_streams_refused_total", "Streams refused because max_clients were open"
)
STREAMS_CLOSED = Counter(
    "emon_console_streams_closed_total",
    "Streams ended, by reason (slow and write_timeout: dropped for falling behind)",
    ["reason"],
)
EVENTS_SENT = Counter(
    "emon_console_events_sent_total", "Server-sent events written to streams", ["kind"]
)
LOGINS = Counter("emon_console_logins_total", "Console sign-ins", ["result"])
TRACK_READS = Counter("emon_console_track_reads_total", "Track requests answered", ["result"])
