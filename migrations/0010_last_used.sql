-- Adaptive keep-warm (DESIGN.md, MAILCONNECT_REFRESH_WARM_WINDOW_SECS): when
-- a worker last got a token for the account (token route or verify), Unix
-- seconds, written in batches (docs/scaling.md). An account used within the
-- warm window is renewed ahead of expiry; any other is only kept alive.
-- NULL means "not handed out since it was connected": idle.
ALTER TABLE accounts ADD COLUMN last_used_at BIGINT;

-- Accounts connected before this release count as used at the upgrade (the
-- old refresher renewed every one within the hour, so their last refresh,
-- or their connect, is about now): they stay warm for one window, and an
-- upgrade never makes a worker wait for a refresh.
UPDATE accounts SET last_used_at =
    CASE WHEN connected_at IS NULL OR last_refresh_at > connected_at
         THEN last_refresh_at ELSE connected_at END
WHERE status = 'connected';
