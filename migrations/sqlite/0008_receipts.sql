-- Signed decision receipts (see the Postgres migration of the same number). Timestamps are
-- fixed-width UTC text (see store::format_ts). Additive only.
CREATE TABLE receipts (
    receipt_id  TEXT    PRIMARY KEY,
    debate_id   TEXT    NOT NULL UNIQUE REFERENCES debates (id) ON DELETE CASCADE,
    owner_id    TEXT,
    verdict     TEXT    NOT NULL,
    key_id      TEXT,
    chain_head  TEXT    NOT NULL,
    event_count INTEGER NOT NULL,
    issued_at   TEXT    NOT NULL,
    receipt     TEXT    NOT NULL,
    odr_v01     TEXT    NOT NULL,
    odr_v02     TEXT    NOT NULL
);
CREATE INDEX receipts_issued_idx ON receipts (issued_at DESC, receipt_id);
CREATE INDEX receipts_owner_idx ON receipts (owner_id, issued_at DESC);

ALTER TABLE debates ADD COLUMN receipt_id TEXT;
CREATE INDEX debates_receipt_pending_idx ON debates (finished_at)
    WHERE receipt_id IS NULL AND status IN ('completed', 'no_consensus');

CREATE TABLE receipt_keys (
    key_id         TEXT PRIMARY KEY,
    public_key_pem TEXT NOT NULL,
    first_used_at  TEXT NOT NULL
);
