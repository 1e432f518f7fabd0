-- 0008 (issue 5): a ping taken outside its subject's authorised monitoring periods
-- (Community Corrections Law Art. 29) under `rules.authorisation.pings: store` is stored
-- with this flag, so it can be found, withheld from ordinary use and purged; NULL means
-- "within authorisation, or no authorisation recorded" (no default: adding the column
-- rewrites nothing, also on a compressed TimescaleDB hypertable). Rows written by an older
-- emon (journal frames without the column) get NULL.
ALTER TABLE pings ADD COLUMN outside_authorisation boolean;
