-- Diagnosis (DESIGN.md "Diagnosis"): why an account or a provider broke,
-- from the closed list of causes, and when that was seen. `last_error`
-- keeps the provider's own code; `cause` explains it.
ALTER TABLE accounts ADD COLUMN cause TEXT;
ALTER TABLE accounts ADD COLUMN cause_at BIGINT;
ALTER TABLE provider_state ADD COLUMN cause TEXT;

-- Failures an earlier release recorded get the cause their code names, so
-- an upgraded troubled account is explained at once (the AADSTS number was
-- not kept then; a new failure brings it).
UPDATE accounts SET
    cause = CASE
        WHEN last_error = 'invalid_grant' THEN 'grant_revoked'
        WHEN last_error = 'consent_required' THEN 'consent_missing'
        WHEN last_error = 'admin_consent_revoked' THEN 'admin_consent_revoked'
        WHEN last_error LIKE 'provider_unavailable%' THEN 'provider_unavailable'
        ELSE 'unknown'
    END,
    cause_at = updated_at
WHERE last_error IS NOT NULL AND last_error <> 'delegate_disconnected';

UPDATE provider_state SET cause = CASE
        WHEN error = 'invalid_client' THEN 'client_credentials_invalid'
        ELSE 'unknown'
    END
WHERE state = 'misconfigured';
