-- 0005 (plain PostgreSQL): day partitions, zone transitions, per-subject rollups.
--
-- pings, device_events and zone_transitions are range-partitioned by day (UTC days,
-- named <table>_pYYYYMMDD). Retention drops whole partitions (no bulk DELETE, no
-- VACUUM debt); a query for a time range only touches its days. Partitions are created
-- ahead of time by the daemon's maintenance job (store.partitions_ahead_days); a row
-- for a day without one (a late or replayed ping) makes the writer create it on
-- demand, so no row is ever refused for its date. Within a partition a BRIN index on ts
-- serves time-range scans at a tiny size (rows arrive nearly in ts order).
--
-- Existing unpartitioned tables are converted in this migration's transaction (copy,
-- then drop). Columns are copied with LIKE, so columns added by other migrations
-- survive whatever order they were applied in.

-- Creates the missing day partitions of `parent` for [first_day, last_day] (UTC days);
-- returns how many it created. Serialised per table by an advisory lock, so daemons
-- racing for the same day do not collide.
CREATE FUNCTION emon_ensure_day_partitions(parent regclass, first_day date, last_day date)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    parent_schema text;
    parent_name text;
    day date;
    partition_name text;
    created integer := 0;
BEGIN
    IF last_day < first_day THEN
        RETURN 0;
    END IF;
    IF last_day - first_day > 3660 THEN
        RAISE EXCEPTION 'emon_ensure_day_partitions: % days requested for %, at most 3661',
            last_day - first_day + 1, parent;
    END IF;
    SELECT n.nspname, c.relname INTO parent_schema, parent_name
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = parent;
    PERFORM pg_advisory_xact_lock(hashtext('emon_day_partitions:' || parent::oid::text));
    FOR day IN SELECT g::date FROM generate_series(first_day, last_day, INTERVAL '1 day') AS g LOOP
        partition_name := parent_name || '_p' || to_char(day, 'YYYYMMDD');
        IF to_regclass(format('%I.%I', parent_schema, partition_name)) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                parent_schema, partition_name, parent_schema, parent_name,
                day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END
$$;

-- Drops the day partitions of `parent` for days before `keep_from` (UTC); returns
-- their names. Only partitions named by emon_ensure_day_partitions are considered.
CREATE FUNCTION emon_drop_day_partitions(parent regclass, keep_from date)
RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    parent_name text;
    part record;
BEGIN
    SELECT c.relname INTO parent_name FROM pg_class c WHERE c.oid = parent;
    FOR part IN
        SELECT n.nspname AS schema_name, c.relname AS name
          FROM pg_inherits i
          JOIN pg_class c ON c.oid = i.inhrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE i.inhparent = parent
           AND c.relname ~ ('^' || parent_name || '_p[0-9]{8}$')
           AND to_date(right(c.relname, 8), 'YYYYMMDD') < keep_from
         ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I.%I', part.schema_name, part.name);
        RETURN NEXT part.name;
    END LOOP;
END
$$;

-- pings -> partitioned
ALTER TABLE pings RENAME TO pings_unpartitioned;
CREATE TABLE pings (LIKE pings_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS
    INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (ts);
DO $$
DECLARE d date;
BEGIN
    FOR d IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM pings_unpartitioned LOOP
        PERFORM emon_ensure_day_partitions('pings', d, d);
    END LOOP;
END
$$;
INSERT INTO pings SELECT * FROM pings_unpartitioned;
DROP TABLE pings_unpartitioned;
ALTER TABLE pings ADD CONSTRAINT pings_device_ts_key UNIQUE (device_id, ts);
CREATE INDEX pings_ts_brin ON pings USING brin (ts);

-- device_events -> partitioned
ALTER TABLE device_events RENAME TO device_events_unpartitioned;
CREATE TABLE device_events (LIKE device_events_unpartitioned INCLUDING DEFAULTS
    INCLUDING CONSTRAINTS INCLUDING STORAGE INCLUDING COMMENTS) PARTITION BY RANGE (ts);
DO $$
DECLARE d date;
BEGIN
    FOR d IN SELECT DISTINCT (ts AT TIME ZONE 'UTC')::date FROM device_events_unpartitioned LOOP
        PERFORM emon_ensure_day_partitions('device_events', d, d);
    END LOOP;
END
$$;
INSERT INTO device_events SELECT * FROM device_events_unpartitioned;
DROP TABLE device_events_unpartitioned;
ALTER TABLE device_events ADD CONSTRAINT device_events_device_ts_type_key UNIQUE (device_id, ts, type);
CREATE INDEX device_events_ts_brin ON device_events USING brin (ts);

-- Zone transitions (daemon/transitions.py): kind 'presence' rows say a subject was
-- confirmed inside/outside a zone from ts on (previous: what was confirmed before);
-- rows whose kind is a rule id (curfew_away, exclusion_entry, boundary_exit, ...) say
-- the rule became violated/cleared at ts. role: what the zone was for the subject.
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
) PARTITION BY RANGE (ts);
CREATE INDEX zone_transitions_ts_brin ON zone_transitions USING brin (ts);
-- A subject's transitions in a time range (rollups, reports).
CREATE INDEX zone_transitions_subject_ts_idx ON zone_transitions (subject_id, ts);

-- The current day and the next week, so that the first rows need no on-demand creation
-- (the maintenance job keeps this range moving).
SELECT emon_ensure_day_partitions(t::regclass, (now() AT TIME ZONE 'UTC')::date - 1,
                                  (now() AT TIME ZONE 'UTC')::date + 7)
  FROM unnest(ARRAY['pings', 'device_events', 'zone_transitions']) AS t;

-- Per-subject figures (daemon/store/rollup.py computes them; the same tables and
-- queries on both layouts). Hourly buckets are UTC hours; daily buckets are the
-- subject's local days (day_start/day_end in UTC). largest_gap_s: the longest time in
-- the bucket (up to now) without a ping; NULL for a bucket that has not begun.
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
