-- Webhook outbox: one row per (endpoint, event), written in the same
-- transaction as the state change that causes the event, so an event is
-- delivered exactly when the change is stored. Delivered in order per
-- `ordering_key` (the account id, or `provider:{name}`) and endpoint: a row
-- is only claimed when no earlier row of its key is still pending. Times in
-- `*_ms` columns are Unix milliseconds (retries may be sub-second in tests).
CREATE TABLE webhook_outbox (
    endpoint         TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    ordering_key     TEXT NOT NULL,
    tenant_id        TEXT,
    account_id       TEXT,
    body             TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_until_ms   BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    finished_at      BIGINT,
    PRIMARY KEY (endpoint, event_id)
);

CREATE INDEX webhook_outbox_order ON webhook_outbox (endpoint, ordering_key, state, event_id);
CREATE INDEX webhook_outbox_due ON webhook_outbox (state, next_attempt_ms);

-- A provider's health as every replica sees it, so `provider.misconfigured`
-- and `provider.recovered` fire once per transition, not once per attempt
-- or per replica: only the conditional update that changes `state` emits.
CREATE TABLE provider_state (
    provider    TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    error       TEXT,
    changed_at  BIGINT NOT NULL
);

-- The audit API filters by account, newest first; the status route reads
-- each account's last event.
CREATE INDEX audit_events_by_account ON audit_events (account_id, id);
