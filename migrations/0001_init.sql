-- One schema for SQLite and PostgreSQL: only TEXT and BIGINT
-- columns, times as Unix seconds, secrets as `v1:{kid}:{nonce}:{ciphertext}` text.

CREATE TABLE accounts (
    id                    TEXT PRIMARY KEY,
    tenant_id             TEXT NOT NULL,
    provider              TEXT NOT NULL,
    email                 TEXT NOT NULL,
    auth_type             TEXT NOT NULL,
    status                TEXT NOT NULL,
    scopes                TEXT NOT NULL DEFAULT '',
    access_token_enc      TEXT,
    refresh_token_enc     TEXT,
    password_enc          TEXT,
    token_expires_at      BIGINT,
    provider_tenant_id    TEXT,
    connected_at          BIGINT,
    last_refresh_at       BIGINT,
    last_error            TEXT,
    consecutive_failures  BIGINT NOT NULL DEFAULT 0,
    lease_owner           TEXT,
    lease_until           BIGINT,
    created_at            BIGINT NOT NULL,
    updated_at            BIGINT NOT NULL,
    UNIQUE (tenant_id, email)
);

CREATE INDEX accounts_by_expiry ON accounts (status, token_expires_at);

-- One row per authorization request still in flight, keyed by the state's
-- `jti`; deleting it is what consumes the state.
CREATE TABLE oauth_states (
    jti                TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL,
    provider           TEXT NOT NULL,
    pkce_verifier_enc  TEXT NOT NULL,
    nonce              TEXT NOT NULL,
    expires_at         BIGINT NOT NULL,
    created_at         BIGINT NOT NULL
);

CREATE INDEX oauth_states_by_expiry ON oauth_states (expires_at);

-- Ids are UUIDv7, so ordering by id is ordering by time.
CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    account_id  TEXT,
    provider    TEXT,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    detail      TEXT,
    created_at  BIGINT NOT NULL
);

CREATE INDEX audit_events_by_tenant ON audit_events (tenant_id, id);
