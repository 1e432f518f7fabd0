-- 0001: the tables emon writes. Layout-specific parts (hypertables or plain-table
-- indexes on ts) are in 0002, which has one variant per layout.
--
-- All timestamps are timestamptz (stored as UTC). ids are text as in the pure core,
-- except alert_id, which is always a uuid (uuid5, see alerts.model.alert_id_for) and
-- is stored as one to halve its index.
--
-- Ids are opaque, so they use the "C" collation: byte comparison instead of the
-- database's linguistic one (e.g. en_US.UTF-8). Maintaining the unique keys is
-- most of the cost of writing a ping, and byte comparison made COPY into the keyed
-- table 15-40% faster in bench runs (even against C.UTF-8); the order is also
-- independent of the server's locale.

-- One row per location ping. (device_id, ts) is the idempotency key: a QoS 1
-- redelivery or a replay of the same ping stores one row (a batch that holds a
-- stored key is inserted with ON CONFLICT DO NOTHING). With TimescaleDB a unique key must contain the time
-- column, which this one does.
CREATE TABLE pings (
    device_id   text COLLATE "C" NOT NULL,
    subject_id  text COLLATE "C" NOT NULL,
    ts          timestamptz      NOT NULL,
    received_at timestamptz      NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    acc_m       real             NOT NULL,
    src         text             NOT NULL,
    battery_pct real,
    extra       jsonb,
    CONSTRAINT pings_device_ts_key UNIQUE (device_id, ts)
);

-- Tamper, battery, charger and check-in events. Two different events may share a
-- device timestamp (strap_open + battery_low in one message), so type is part of
-- the key.
CREATE TABLE device_events (
    device_id   text COLLATE "C" NOT NULL,
    subject_id  text COLLATE "C" NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    type        text        NOT NULL,
    attributes  jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT device_events_device_ts_type_key UNIQUE (device_id, ts, type)
);

-- The latest snapshot of each alert (one row per alert_id, upserted; a snapshot
-- with an older updated_at never overwrites a newer one).
CREATE TABLE alerts (
    alert_id         uuid        PRIMARY KEY,
    subject_id       text COLLATE "C" NOT NULL,
    device_id        text COLLATE "C" NOT NULL,
    rule             text        NOT NULL,
    zone_id          text,
    tier             text        NOT NULL,
    state            text        NOT NULL,
    officer_id       text,
    opened_at        timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    count            integer     NOT NULL,
    condition_active boolean     NOT NULL,
    cleared_at       timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    disposition      text,
    reason           text        NOT NULL DEFAULT '',
    trigger          jsonb       NOT NULL,
    last_evidence    jsonb       NOT NULL
);
-- The officers' queue: open/acknowledged alerts by tier.
CREATE INDEX alerts_state_tier_idx ON alerts (state, tier);
-- A subject's alert history.
CREATE INDEX alerts_subject_idx ON alerts (subject_id);

-- Every transition, append-only (the audit trail). Replaying a transition is a
-- no-op thanks to the unique key; the leading alert_id also serves history lookups.
CREATE TABLE alert_history (
    id       bigserial   PRIMARY KEY,
    alert_id uuid        NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    at       timestamptz NOT NULL,
    kind     text        NOT NULL,
    actor    text,
    note     text,
    payload  jsonb       NOT NULL,
    CONSTRAINT alert_history_alert_kind_at_key UNIQUE (alert_id, kind, at)
);

-- Rows PostgreSQL refused for reasons of their own content (a data error such as
-- a NUL in a JSON string), isolated from their batch by the writer so one bad ping
-- cannot wedge the writer, and kept here rather than dropped. Should stay empty;
-- emon_store_rows_rejected_total counts what lands here.
CREATE TABLE store_rejects (
    id          bigserial   PRIMARY KEY,
    rejected_at timestamptz NOT NULL DEFAULT now(),
    table_name  text        NOT NULL,
    error       text        NOT NULL,
    row_text    text        NOT NULL,
    row_md5     text        GENERATED ALWAYS AS (md5(row_text)) STORED,
    -- A batch retried after an outage re-isolates the same bad row: store it once.
    CONSTRAINT store_rejects_row_key UNIQUE (table_name, row_md5)
);
