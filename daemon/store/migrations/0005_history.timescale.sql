-- 0005 (TimescaleDB): zone transitions as a hypertable, per-subject rollups, and
-- continuous aggregates of pings per subject per hour and per day.
--
-- Chunks replace the plain layout's day partitions (created by TimescaleDB on insert);
-- retention and compression policies are set by the daemon at start-up from
-- settings.yaml (retention:), because their intervals are operator settings.

-- See 0005_history.plain.sql for the meaning of the columns.
CREATE TABLE zone_transitions (
    device_id   text COLLATE "C" NOT NULL,
    subject_id  text COLLATE "C" NOT NULL,
    zone_id     text COLLATE "C" NOT NULL,
    kind        text        NOT NULL,
    state       text        NOT NULL,
    ts          timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    role        text        NOT NULL,
    previous    text,
    config_version text,  -- the config the core decided it against (see 0004)
    CONSTRAINT zone_transitions_key UNIQUE (device_id, zone_id, kind, ts)
);
CREATE INDEX zone_transitions_subject_ts_idx ON zone_transitions (subject_id, ts);
-- Transitions are rare (a few per subject per day): week-long chunks.
SELECT create_hypertable('zone_transitions', 'ts',
    chunk_time_interval => INTERVAL '7 days', if_not_exists => TRUE);
ALTER TABLE zone_transitions SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts DESC, zone_id, kind'
);

-- The rollup tables, identical to the plain layout (daemon/store/rollup.py): largest
-- gap and minutes in a state need window functions and interval overlap per bucket,
-- which continuous aggregates cannot express (no window functions), so they are
-- computed by the maintenance job on both layouts.
CREATE TABLE subject_hourly (
    subject_id       text COLLATE "C" NOT NULL,
    bucket           timestamptz      NOT NULL,
    pings            integer          NOT NULL,
    largest_gap_s    double precision,
    away_in_curfew_s double precision NOT NULL,
    in_exclusion_s   double precision NOT NULL,
    computed_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, bucket)
);
CREATE TABLE subject_daily (
    subject_id       text COLLATE "C" NOT NULL,
    day              date             NOT NULL,
    timezone         text             NOT NULL,
    day_start        timestamptz      NOT NULL,
    day_end          timestamptz      NOT NULL,
    pings            integer          NOT NULL,
    largest_gap_s    double precision,
    away_in_curfew_s double precision NOT NULL,
    in_exclusion_s   double precision NOT NULL,
    computed_at      timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (subject_id, day)
);
CREATE INDEX subject_daily_day_idx ON subject_daily (day);

-- Ping counts per subject per UTC hour and day, kept current by TimescaleDB itself
-- (dashboards, capacity questions); the report reads subject_hourly/subject_daily.
CREATE MATERIALIZED VIEW pings_per_subject_hourly
WITH (timescaledb.continuous) AS
SELECT subject_id,
       time_bucket(INTERVAL '1 hour', ts) AS bucket,
       count(*) AS pings,
       min(ts) AS first_ts,
       max(ts) AS last_ts
  FROM pings
 GROUP BY subject_id, time_bucket(INTERVAL '1 hour', ts)
WITH NO DATA;
CREATE MATERIALIZED VIEW pings_per_subject_daily
WITH (timescaledb.continuous) AS
SELECT subject_id,
       time_bucket(INTERVAL '1 day', ts) AS bucket,
       count(*) AS pings,
       min(ts) AS first_ts,
       max(ts) AS last_ts
  FROM pings
 GROUP BY subject_id, time_bucket(INTERVAL '1 day', ts)
WITH NO DATA;
-- Late (store-and-forward) pings up to three days old are folded in.
SELECT add_continuous_aggregate_policy('pings_per_subject_hourly',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('pings_per_subject_daily',
    start_offset => INTERVAL '4 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '1 hour');
