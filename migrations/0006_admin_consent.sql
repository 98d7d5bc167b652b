-- Admin consent (DESIGN.md "Admin consent (Microsoft)"): the Microsoft
-- directory whose admin consented for the tenant, one at a time (a new
-- consent replaces it).
CREATE TABLE admin_consents (
    tenant_id   TEXT PRIMARY KEY,
    directory   TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    granted_by  TEXT NOT NULL
);

-- App tokens (client credentials), one per Microsoft directory, shared by
-- every `app` mailbox of that directory and every replica. The token is
-- sealed like any token (the directory and column as associated data);
-- the lease keeps two replicas from asking for one directory at once, as
-- for accounts; `refused` marks a directory that refused the app (its app
-- mailboxes are then `needs_reauth`) until a later success.
CREATE TABLE app_tokens (
    directory             TEXT PRIMARY KEY,
    access_token_enc      TEXT,
    expires_at            BIGINT,
    refresh_due_at        BIGINT,
    refused               BIGINT NOT NULL DEFAULT 0,
    last_error            TEXT,
    consecutive_failures  BIGINT NOT NULL DEFAULT 0,
    lease_owner           TEXT,
    lease_until           BIGINT,
    updated_at            BIGINT NOT NULL
);

CREATE INDEX app_tokens_by_due ON app_tokens (refresh_due_at);

-- A directory's app mailboxes, for its refusal and recovery.
CREATE INDEX accounts_by_directory ON accounts (directory);
