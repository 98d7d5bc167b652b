-- Expiry warnings of providers' credentials (DESIGN.md "Credentials"):
-- `provider.credential_expiring` is sent once per threshold (30, 7 and 1
-- days before) for one expiry date, across every replica and restart. The
-- first replica to write a row sends the event, in the same transaction.
CREATE TABLE credential_warnings (
    provider        TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    threshold_days  BIGINT NOT NULL,
    sent_at         BIGINT NOT NULL,
    PRIMARY KEY (provider, expires_at, threshold_days)
);
