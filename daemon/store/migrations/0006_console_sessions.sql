-- 0006: sign-ins of the officer console (daemon/console). A browser exchanges an API token
-- for a session (an HttpOnly cookie) once; only the cookie's SHA-256 is stored. A session
-- belongs to the token it was made from: revoking or expiring the token ends its sessions
-- at the next request (the lookup joins api_tokens), and deleting the token deletes them.
-- Kept in the database, not in the daemon's memory, so a restart does not sign out the
-- officers watching the map at 3 a.m. Sign-ins and sign-outs are in audit_log as well.
CREATE TABLE console_sessions (
    session_sha256 text        PRIMARY KEY,
    token_id       uuid        NOT NULL REFERENCES api_tokens (token_id) ON DELETE CASCADE,
    officer_id     text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    ended_at       timestamptz,
    source         text        NOT NULL
);
-- Pruning of long-expired rows at sign-in.
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
