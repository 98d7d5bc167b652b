-- The PKCE verifier and nonce now travel sealed (AES-256-GCM) inside the
-- signed state, so `authorize` writes nothing. What must be stored is only
-- which states were used: inserting the `jti` is the atomic consume, on any
-- replica. Rows live until a while after their state expires.
DROP TABLE oauth_states;

CREATE TABLE consumed_states (
    jti         TEXT PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);

CREATE INDEX consumed_states_by_expiry ON consumed_states (expires_at);
