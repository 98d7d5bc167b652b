-- The provider token-request budget that every replica shares
-- (MAILCONNECT_PROVIDER_RATE_LIMIT): one row per budget (a provider, or
-- Microsoft app tokens of one directory) and second, counting the token
-- requests sent in that second. A replica takes one before each request
-- with a conditional increment, so N replicas together stay under the
-- budget. The status route sums the last hour; housekeeping drops older
-- rows.
CREATE TABLE provider_pace (
    budget  TEXT NOT NULL,
    second  BIGINT NOT NULL,
    sent    BIGINT NOT NULL,
    PRIMARY KEY (budget, second)
);
