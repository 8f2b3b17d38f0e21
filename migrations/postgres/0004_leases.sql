-- Durable debates: the debates table is the work queue. A running debate is held by one
-- instance under a lease that instance renews; an expired or released lease lets any
-- instance claim the debate and resume it from its event log. Additive only: an older
-- binary ignores these columns.
ALTER TABLE debates ADD COLUMN lease_owner TEXT;                 -- instance holding the lease
ALTER TABLE debates ADD COLUMN lease_expires_at TIMESTAMPTZ;     -- NULL: released
-- Fencing token: bumped by every claim and checked by every append, so an instance that
-- lost its lease can never write into a debate another instance now runs.
ALTER TABLE debates ADD COLUMN lease_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE debates ADD COLUMN instance TEXT;                    -- last instance that ran it
ALTER TABLE debates ADD COLUMN cancel_requested BOOLEAN NOT NULL DEFAULT FALSE;

-- The claim scan: queued debates oldest first, and running ones whose lease is gone.
CREATE INDEX debates_claim_idx ON debates (created_at, id)
    WHERE status IN ('queued', 'running');
CREATE INDEX debates_lease_owner_idx ON debates (lease_owner) WHERE lease_owner IS NOT NULL;
