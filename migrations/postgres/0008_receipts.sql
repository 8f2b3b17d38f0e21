-- Signed decision receipts: one per debate that ended completed or no_consensus, stored as
-- the exact bytes served (native JSON and the ODR 0.1 / 0.2 documents), never rewritten.
-- Additive only: an older binary ignores the new table and column.
CREATE TABLE receipts (
    receipt_id  TEXT        PRIMARY KEY,
    debate_id   TEXT        NOT NULL UNIQUE REFERENCES debates (id) ON DELETE CASCADE,
    owner_id    TEXT,
    verdict     TEXT        NOT NULL,
    -- NULL: issued unsigned (ARAGORA_ODR_UNSIGNED=1).
    key_id      TEXT,
    chain_head  TEXT        NOT NULL,
    event_count BIGINT      NOT NULL,
    issued_at   TIMESTAMPTZ NOT NULL,
    receipt     TEXT        NOT NULL,
    odr_v01     TEXT        NOT NULL,
    odr_v02     TEXT        NOT NULL
);
CREATE INDEX receipts_issued_idx ON receipts (issued_at DESC, receipt_id);
CREATE INDEX receipts_owner_idx ON receipts (owner_id, issued_at DESC);

ALTER TABLE debates ADD COLUMN receipt_id TEXT;
-- Finished debates still waiting for their receipt (the sweeper's query).
CREATE INDEX debates_receipt_pending_idx ON debates (finished_at)
    WHERE receipt_id IS NULL AND status IN ('completed', 'no_consensus');

-- Every public key that has signed receipts here, so receipts signed before a key rotation
-- (or by another instance's key) still verify through the API.
CREATE TABLE receipt_keys (
    key_id         TEXT        PRIMARY KEY,
    public_key_pem TEXT        NOT NULL,
    first_used_at  TIMESTAMPTZ NOT NULL
);
