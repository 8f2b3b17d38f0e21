-- Durable debates: the debates table is the work queue (see the Postgres migration of the
-- same number). Timestamps are fixed-width UTC text (see store::format_ts). Additive only.
ALTER TABLE debates ADD COLUMN lease_owner TEXT;
ALTER TABLE debates ADD COLUMN lease_expires_at TEXT;
ALTER TABLE debates ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0;
ALTER TABLE debates ADD COLUMN instance TEXT;
ALTER TABLE debates ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;

CREATE INDEX debates_claim_idx ON debates (created_at, id)
    WHERE status IN ('queued', 'running');
CREATE INDEX debates_lease_owner_idx ON debates (lease_owner) WHERE lease_owner IS NOT NULL;
