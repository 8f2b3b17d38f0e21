-- Elo leaderboard. Additive only: an older binary ignores these tables.
-- domain '' is the overall rating (NOT NULL so the primary key (agent, domain) holds);
-- any other value is that domain's separate rating.
CREATE TABLE ratings (
    agent      TEXT             NOT NULL,
    domain     TEXT             NOT NULL DEFAULT '',
    rating     DOUBLE PRECISION NOT NULL,
    games      BIGINT           NOT NULL DEFAULT 0,
    wins       BIGINT           NOT NULL DEFAULT 0,
    losses     BIGINT           NOT NULL DEFAULT 0,
    draws      BIGINT           NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ      NOT NULL,
    PRIMARY KEY (agent, domain)
);

-- The leaderboard read: one domain, highest rating first, ties by agent (byte order, as in
-- SQLite).
CREATE INDEX ratings_board_idx ON ratings (domain, rating DESC, agent COLLATE "C");

-- Debates whose results were applied, written in the same transaction as the ratings, so a
-- debate is rated at most once. No foreign key: ratings outlive debate rows.
CREATE TABLE rated_debates (
    debate_id TEXT        PRIMARY KEY,
    domain    TEXT        NOT NULL DEFAULT '',
    matches   INTEGER     NOT NULL,
    rated_at  TIMESTAMPTZ NOT NULL
);
