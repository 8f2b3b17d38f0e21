-- Claiming a debate just accepted reads only queued rows, oldest first: the claim scan of
-- 0004 walks every running debate before it reaches a queued one, which made each claim
-- cost as much as the number of debates running. Running debates whose lease is gone are
-- looked for on the claimer's poll period instead. Additive: the previous binary keeps
-- using debates_claim_idx.
CREATE INDEX debates_queued_idx ON debates (created_at, id) WHERE status = 'queued';
