-- Debates and their append-only event log. JSON is TEXT; timestamps are fixed-width RFC3339
-- UTC text (microseconds, trailing Z) so text order is time order.
CREATE TABLE debates (
    id             TEXT    PRIMARY KEY NOT NULL,
    task           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    agents         TEXT    NOT NULL,          -- JSON array of agent names, seat order
    rounds         INTEGER NOT NULL,
    rounds_used    INTEGER NOT NULL DEFAULT 0,
    consensus      TEXT    NOT NULL,
    owner_id       TEXT,
    correlation_id TEXT,
    options        TEXT    NOT NULL DEFAULT '{}',
    result         TEXT,
    error          TEXT,
    created_at     TEXT    NOT NULL,
    started_at     TEXT,
    finished_at    TEXT,
    -- Highest event seq; bumped in the same transaction as each append.
    last_seq       INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX debates_created_idx ON debates (created_at DESC, id DESC);
CREATE INDEX debates_status_created_idx ON debates (status, created_at DESC, id DESC);
CREATE INDEX debates_owner_created_idx ON debates (owner_id, created_at DESC);

CREATE TABLE debate_events (
    debate_id  TEXT    NOT NULL REFERENCES debates (id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    round      INTEGER,
    agent      TEXT,
    data       TEXT    NOT NULL,
    created_at TEXT    NOT NULL,
    PRIMARY KEY (debate_id, seq)
);
