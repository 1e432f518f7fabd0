-- 0007: access roles on tokens, an audit log that only the retention job may shorten,
-- and the indexes that `emon audit` and the retention job need (issue 10, docs/access.md).

-- A token carries the role it grants. 'officer' tokens act as the officer named in
-- officer_id, with that officer's role in subjects.yaml (officer, supervisor or
-- command) and caseload; 'operator' and 'admin' tokens name a person (officer_id holds
-- their id) and grant no caseload at all. A person with two roles has two tokens.
ALTER TABLE api_tokens ADD COLUMN role text NOT NULL DEFAULT 'officer'
    CHECK (role IN ('officer', 'operator', 'admin'));
-- Who made the token: "cli:<os user>@<host>" or the admin token's person.
ALTER TABLE api_tokens ADD COLUMN created_by text NOT NULL DEFAULT '';

CREATE INDEX audit_log_at_idx ON audit_log (at);
CREATE INDEX audit_log_actor_idx ON audit_log (actor, at);

-- Append-only, with one door: the retention job. A DELETE passes only while the
-- transaction-local setting emon.audit_purge is on (emon_purge_audit_log sets it) AND
-- only for rows older than 365 days. The floor is here, not in settings: a caller who
-- sets the flag by hand still cannot erase the last year of who-read-what. UPDATE and
-- TRUNCATE are always refused (TRUNCATE fires no row trigger, so it has its own).
DROP TRIGGER audit_log_no_change ON audit_log;

CREATE FUNCTION audit_log_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('emon.audit_purge', true) = 'on'
       AND OLD.at < now() - interval '365 days' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (only the retention job deletes, rows older than 365 days)';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_delete_only_by_retention BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_delete_guard();

-- The retention job's door: deletes rows older than keep_from, records that it did,
-- and closes the door again before returning (the setting is transaction-local anyway).
CREATE FUNCTION emon_purge_audit_log(keep_from timestamptz, purged_by text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM set_config('emon.audit_purge', 'on', true);
    DELETE FROM audit_log WHERE at < keep_from;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    PERFORM set_config('emon.audit_purge', 'off', true);
    IF deleted > 0 THEN
        INSERT INTO audit_log (actor, action, object, source, detail)
        VALUES ('retention', 'retention.purge', 'audit_log', purged_by,
                jsonb_build_object('before', keep_from, 'rows', deleted));
    END IF;
    RETURN deleted;
END;
$$;

-- Retention of the smaller tables (daemon/store/maintenance.py).
CREATE INDEX notification_outbox_finished_idx ON notification_outbox (finished_at)
    WHERE status <> 'pending';
CREATE INDEX silences_end_idx ON silences ((coalesce(ended_at, expires_at)));
CREATE INDEX store_rejects_at_idx ON store_rejects (rejected_at);
