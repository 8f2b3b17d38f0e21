-- Debates and their append-only event log. Tables are unqualified so they land in the
-- connection's search_path (tests isolate in their own schema that way).
CREATE TABLE debates (
    id             TEXT        PRIMARY KEY,
    task           TEXT        NOT NULL,
    status         TEXT        NOT NULL,
    agents         JSONB       NOT NULL,      -- JSON array of agent names, seat order
    rounds         INTEGER     NOT NULL,
    rounds_used    INTEGER     NOT NULL DEFAULT 0,
    consensus      TEXT        NOT NULL,
    owner_id       TEXT,
    correlation_id TEXT,
    options        JSONB       NOT NULL DEFAULT '{}'::jsonb,
    result         JSONB,
    error          TEXT,
    created_at     TIMESTAMPTZ NOT NULL,
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    -- Highest event seq; the row lock taken when bumping it serialises appenders.
    last_seq       BIGINT      NOT NULL DEFAULT 0
);

CREATE INDEX debates_created_idx ON debates (created_at DESC, id DESC);
CREATE INDEX debates_status_created_idx ON debates (status, created_at DESC, id DESC);
CREATE INDEX debates_owner_created_idx ON debates (owner_id, created_at DESC);

CREATE TABLE debate_events (
    debate_id  TEXT        NOT NULL REFERENCES debates (id) ON DELETE CASCADE,
    seq        BIGINT      NOT NULL,
    kind       TEXT        NOT NULL,
    round      INTEGER,
    agent      TEXT,
    data       JSONB       NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (debate_id, seq)
);
