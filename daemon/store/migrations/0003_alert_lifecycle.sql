-- 0003: the alert lifecycle (issue 6): escalation state, the notification outbox,
-- silences, officers' API tokens and an append-only audit log.

-- Escalation state per unresolved alert (alerts.escalation.EscalationState). Sweeps
-- claim rows whose wake_at has come with FOR UPDATE SKIP LOCKED, decide with the pure
-- `advance`, and write the row back in the same transaction: two daemons never send the
-- same step twice, and a daemon killed between two steps leaves the next one due here.
CREATE TABLE alert_escalations (
    alert_id        uuid        PRIMARY KEY REFERENCES alerts (alert_id) ON DELETE CASCADE,
    tier            text        NOT NULL,
    phase           text        NOT NULL,
    step            integer     NOT NULL,
    started_at      timestamptz NOT NULL,
    next_due_at     timestamptz,
    wake_at         timestamptz,
    repeats         integer     NOT NULL DEFAULT 0,
    acknowledged_by text,
    muted           text,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alert_escalations_wake_idx ON alert_escalations (wake_at)
    WHERE wake_at IS NOT NULL;

-- Notifications to deliver, written in the same transaction as the decision that made
-- them (transactional outbox), so a crash never loses one; delivered at least once by
-- the delivery workers, who lease rows (lease_until) rather than hold locks while a slow
-- endpoint answers. The unique key makes enqueueing idempotent.
CREATE TABLE notification_outbox (
    delivery_id     uuid        PRIMARY KEY,
    alert_id        uuid        NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    transition_kind text        NOT NULL,
    transition_at   timestamptz NOT NULL,
    endpoint        text        NOT NULL,
    recipient       text        NOT NULL DEFAULT '',
    officer_id      text,
    message         jsonb       NOT NULL,
    status          text        NOT NULL DEFAULT 'pending',  -- pending | sent | failed | gave_up
    attempts        integer     NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    last_error      text,
    CONSTRAINT notification_outbox_once_key
        UNIQUE (alert_id, transition_kind, transition_at, endpoint, recipient)
);
CREATE INDEX notification_outbox_pending_idx ON notification_outbox (endpoint, created_at)
    WHERE status = 'pending';

-- Deliveries are recorded in the alert's history next to its transitions (kind
-- 'delivery', one row per attempt). Several can share an instant, so the history key
-- gains `ref` ('' for transitions, the delivery id and attempt for deliveries).
ALTER TABLE alert_history ADD COLUMN ref text NOT NULL DEFAULT '';
ALTER TABLE alert_history DROP CONSTRAINT alert_history_alert_kind_at_key;
ALTER TABLE alert_history
    ADD CONSTRAINT alert_history_alert_kind_at_ref_key UNIQUE (alert_id, kind, at, ref);

-- Silences: mute notifications for a subject, a rule, or a rule of one subject, with a
-- reason, an author and an expiry. Never deleted: ending one early sets ended_at/by.
CREATE TABLE silences (
    silence_id  uuid        PRIMARY KEY,
    subject_id  text,
    rule        text,
    reason      text        NOT NULL CHECK (reason <> ''),
    author      text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    starts_at   timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    ended_at    timestamptz,
    ended_by    text,
    CHECK (subject_id IS NOT NULL OR rule IS NOT NULL),
    CHECK (expires_at > starts_at)
);
CREATE INDEX silences_live_idx ON silences (expires_at) WHERE ended_at IS NULL;

-- Officers' API tokens, stored as SHA-256 of the token (tokens are 256 random bits, so
-- a fast hash is enough: there is no dictionary to attack). The token itself is shown
-- once by `emon token create`.
CREATE TABLE api_tokens (
    token_id     uuid        PRIMARY KEY,
    token_sha256 text        NOT NULL UNIQUE,
    officer_id   text        NOT NULL,
    label        text        NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);

-- Who did what, when, from where: officer actions, silences, tokens. Append-only: a
-- trigger refuses UPDATE and DELETE.
CREATE TABLE audit_log (
    id      bigserial   PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text        NOT NULL,
    action  text        NOT NULL,
    object  text        NOT NULL,
    source  text        NOT NULL,
    detail  jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_object_idx ON audit_log (object, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
