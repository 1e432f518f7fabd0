-- 0004: which operator config decided about each row, and what that config said.
--
-- Hot reload (issue 7) swaps the config between two messages. Each stored ping and
-- device event names the config version the core evaluated it against (the content
-- fingerprint, CoreConfig.version), so "which fences were in force when this ping was
-- judged" is answered from the data itself, and a reload can be checked to have
-- evaluated every ping against exactly one whole config. NULL: stored by something
-- that did not evaluate it (an import, rows written before this migration).
--
-- Nullable and without a default: on PostgreSQL and on TimescaleDB hypertables, even
-- compressed ones, this is a catalogue-only change, not a table rewrite.
ALTER TABLE pings ADD COLUMN config_version text;
ALTER TABLE device_events ADD COLUMN config_version text;

-- Every config version the daemon has run, with the files it was built from (path ->
-- UTF-8 text), recorded when it is first applied. It is the evidence of what a fence
-- or a schedule was on a given day, after the files on disk have changed again.
CREATE TABLE config_versions (
    version          text        PRIMARY KEY,
    first_applied_at timestamptz NOT NULL,
    last_applied_at  timestamptz NOT NULL,
    directory        text        NOT NULL,
    files            jsonb       NOT NULL
);
