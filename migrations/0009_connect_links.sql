-- Connect links (DESIGN.md "Connect links"): an admin lets a mailbox's
-- owner connect it without an admin JWT. Only the SHA-256 (hex) of the
-- link's token is stored; the token itself is shown once, in its URL.
CREATE TABLE connect_links (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    provider    TEXT,
    email       TEXT,
    created_by  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT,
    used_at     BIGINT,
    account_id  TEXT
);

CREATE INDEX connect_links_by_tenant ON connect_links (tenant_id, created_at);
