-- 0002 (plain PostgreSQL): no TimescaleDB, so pings and device_events stay ordinary
-- tables. Rows arrive roughly in ts order, so a BRIN index on ts is tiny and good
-- enough for time-range scans and retention deletes.
--
-- TODO(later issue): declarative day partitioning (PARTITION BY RANGE (ts)) with
-- partitions created ahead of time, so retention becomes DROP PARTITION instead of
-- a bulk DELETE. Converting needs a table swap, hence its own migration.
CREATE INDEX pings_ts_brin ON pings USING brin (ts);
CREATE INDEX device_events_ts_brin ON device_events USING brin (ts);
