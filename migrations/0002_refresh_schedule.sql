-- When the background refresher should next look at an account: before its
-- access token expires (minus the lead time and some jitter), before its
-- refresh token has gone unused too long, or after a backoff. Kept as one
-- indexed column so finding due accounts never scans the table.
ALTER TABLE accounts ADD COLUMN refresh_due_at BIGINT;

UPDATE accounts SET refresh_due_at = token_expires_at - 600 WHERE status = 'connected';

CREATE INDEX accounts_by_refresh_due ON accounts (status, refresh_due_at);
