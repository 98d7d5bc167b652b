-- Account kinds (DESIGN.md "Account kinds"). Every account an earlier
-- release wrote is a user's own mailbox connected through the
-- authorization-code flow: `delegated`, which the default makes it, with
-- nothing to reconnect.
ALTER TABLE accounts ADD COLUMN kind TEXT NOT NULL DEFAULT 'delegated';

-- `shared`: the connected `delegated` account whose token opens it.
ALTER TABLE accounts ADD COLUMN via_account_id TEXT;

-- `app`: the Microsoft directory (tenant id) whose app token opens it.
ALTER TABLE accounts ADD COLUMN directory TEXT;

-- A delegate's change of status reaches its shared mailboxes.
CREATE INDEX accounts_by_delegate ON accounts (via_account_id);
