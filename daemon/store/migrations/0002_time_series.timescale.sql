-- 0002 (TimescaleDB): the migration runner has already run
-- CREATE EXTENSION IF NOT EXISTS timescaledb (it decides the layout and needs to
-- fall back cleanly, so that step is not in this file).
--
-- One-day chunks: at ~1 ping/min per device a few thousand devices make a few
-- million rows a day, which keeps a chunk's indexes in memory while it is hot.
SELECT create_hypertable('pings', 'ts',
    chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE);
SELECT create_hypertable('device_events', 'ts',
    chunk_time_interval => INTERVAL '1 day', if_not_exists => TRUE, migrate_data => TRUE);

-- Compress chunks older than 7 days, segmented by device so one device's track
-- decompresses alone. TimescaleDB requires every column of a unique key to be a
-- segmentby or orderby column, hence `type` in device_events' orderby. Late pings for compressed chunks still insert (TimescaleDB
-- >= 2.11 decompresses the affected segment for ON CONFLICT checks), only slower.
ALTER TABLE pings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts DESC'
);
ALTER TABLE device_events SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'ts DESC, type'
);
SELECT add_compression_policy('pings', INTERVAL '7 days', if_not_exists => TRUE);
SELECT add_compression_policy('device_events', INTERVAL '7 days', if_not_exists => TRUE);
