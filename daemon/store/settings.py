"""Operator settings of the store: `store:` and `retention:` in settings.yaml.

Validated whole with the rest of settings.yaml (daemon.configfiles); every field has a
title and bounds, and the cross-field rules (a journal segment fits in the journal, data
is compressed before it is dropped) are checked here, so a bad combination is refused at
start-up rather than discovered during an outage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from daemon.strictmodel import StrictModel

# EMON_JOURNAL_DIR overrides store.journal.dir (tests and the demo give each daemon its own).
ENV_JOURNAL_DIR = "EMON_JOURNAL_DIR"

# The audit log's floor; migration 0007's trigger refuses to delete younger rows.
AUDIT_LOG_MIN_DAYS = 365

MIB = 1024 * 1024
GIB = 1024 * MIB




class FsyncPolicy(StrEnum):
    """When journal appends are forced to disk (docs/storage.md has the trade-off)."""

    # fsync after every group append, before its rows count as durable (and their MQTT
    # messages are acknowledged): survives a power cut; ~1 fsync per 50 ms under outage.
    ALWAYS = "always"
    # write() only: survives a daemon crash (the kernel has the data) but not a machine
    # crash or power cut; for disks where fsync is very slow.
    NEVER = "never"


class AckPolicy(StrEnum):
    """When an MQTT message is acknowledged to the broker."""

    # Once the row it carried is committed in PostgreSQL or appended to the journal: a
    # daemon killed at any moment loses nothing (the broker redelivers the rest).
    DURABLE = "durable"
    # Once evaluated and buffered in memory (before issue 3): faster acknowledgements,
    # but a crash loses the rows still buffered.
    BUFFERED = "buffered"


class JournalSettings(StrictModel):
    dir: str = Field(
        ".run/journal",
        min_length=1,
        max_length=4096,
        title="Directory of the on-disk journal (relative: to the working directory); "
        "each database and MQTT client id gets its own subdirectory",
    )
    fsync: FsyncPolicy = Field(FsyncPolicy.ALWAYS, title="When appends are forced to disk")
    max_bytes: int = Field(
        2 * GIB,
        ge=MIB,
        le=1024 * GIB,
        title="Disk the journal may use; when full, ingest waits (backpressure), never drops",
    )
    segment_bytes: int = Field(
        64 * MIB,
        ge=64 * 1024,
        le=GIB,
        title="Size at which a new segment file is started (replayed segments are deleted)",
    )

    @model_validator(mode="after")
    def _segment_fits(self) -> Self:
        if self.segment_bytes > self.max_bytes:
            raise ValueError("segment_bytes must not exceed max_bytes")
        return self


class StoreSettings(StrictModel):
    buffer_rows: int = Field(
        50_000,
        ge=1_000,
        le=5_000_000,
        title="Rows held in memory before they spill to the journal (~500 bytes each)",
    )
    ack: AckPolicy = Field(AckPolicy.DURABLE, title="When MQTT messages are acknowledged")
    journal: JournalSettings = JournalSettings()
    partitions_ahead_days: int = Field(
        7, ge=1, le=90, title="Day partitions created ahead of time (plain PostgreSQL layout)"
    )
    maintenance_interval_minutes: float = Field(
        60.0,
        ge=1.0,
        le=24 * 60.0,
        title="How often partitions, retention and the hourly/daily rollups are maintained",
    )
    rollup_lookback_hours: int = Field(
        6,
        ge=1,
        le=24 * 30,
        title="Rollup buckets recomputed at each maintenance run (late, store-and-forward data)",
    )

    def journal_dir(self, env: Mapping[str, str] | None = None) -> Path:
        """The configured journal root, with EMON_JOURNAL_DIR taking precedence."""
        env = os.environ if env is None else env
        return Path(env.get(ENV_JOURNAL_DIR) or self.journal.dir)


class RetentionSettings(StrictModel):
    """How long each kind of data is kept (Community Corrections Law: purpose-bound data,
    bounded retention). Old day partitions (or TimescaleDB chunks) are dropped whole."""

    pings_days: int = Field(180, ge=1, le=3650, title="Location pings")
    device_events_days: int = Field(180, ge=1, le=3650, title="Device events (tamper, battery)")
    zone_transitions_days: int = Field(180, ge=1, le=3650, title="Zone transitions")
    rollups_days: int = Field(730, ge=1, le=3650, title="Hourly and daily per-subject figures")
    resolved_alerts_days: int = Field(
        730, ge=1, le=3650, title="Resolved alerts and their history, after resolution"
    )
    compress_after_days: int = Field(
        7, ge=1, le=3650, title="TimescaleDB: compress chunks older than this"
    )
    delivered_notifications_days: int = Field(
        30, ge=1, le=3650,
        title="Finished outbox rows (sent, failed, gave up) after they finished; each "
        "attempt stays in its alert's history. Pending ones are never deleted",
    )
    console_sessions_days: int = Field(
        30, ge=1, le=3650, title="Console sign-ins after they ended or expired"
    )
    silences_days: int = Field(
        730, ge=1, le=3650, title="Silences after they ended or expired (as resolved alerts)"
    )
    audit_log_days: int = Field(
        AUDIT_LOG_MIN_DAYS * 5, ge=AUDIT_LOG_MIN_DAYS, le=7300,
        title="Audit log entries (who read or did what); at least a year (the database "
        "refuses younger deletions) and at least as long as any data it is about",
    )

    @model_validator(mode="after")
    def _audit_outlives_data(self) -> Self:
        longest = max(
            self.pings_days, self.device_events_days, self.zone_transitions_days,
            self.rollups_days, self.resolved_alerts_days, self.silences_days,
        )
        if self.audit_log_days < longest:
            raise ValueError(
                f"audit_log_days ({self.audit_log_days}) must be at least the longest data "
                f"retention ({longest} days): who read a record must outlive the record"
            )
        return self

    @model_validator(mode="after")
    def _compress_before_drop(self) -> Self:
        shortest = min(self.pings_days, self.device_events_days, self.zone_transitions_days)
        if self.compress_after_days >= shortest:
            raise ValueError(
                f"compress_after_days ({self.compress_after_days}) must be less than the "
                f"shortest time-series retention ({shortest} days)"
            )
        return self

    def days_for(self, table: str) -> int:
        return {
            "pings": self.pings_days,
            "device_events": self.device_events_days,
            "zone_transitions": self.zone_transitions_days,
        }[table]
