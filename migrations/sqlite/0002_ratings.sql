-- Elo leaderboard. Additive only: an older binary ignores these tables.
-- domain '' is the overall rating (NOT NULL so the primary key (agent, domain) holds);
-- any other value is that domain's separate rating.
CREATE TABLE ratings (
    agent      TEXT    NOT NULL,
    domain     TEXT    NOT NULL DEFAULT '',
    rating     REAL    NOT NULL,
    games      INTEGER NOT NULL DEFAULT 0,
    wins       INTEGER NOT NULL DEFAULT 0,
    losses     INTEGER NOT NULL DEFAULT 0,
    draws      INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (agent, domain)
);

-- The leaderboard read: one domain, highest rating first, ties by agent.
CREATE INDEX ratings_board_idx ON ratings (domain, rating DESC, agent);

-- Debates whose results were applied, written in the same transaction as the ratings, so a
-- debate is rated at most once. No foreign key: ratings outlive debate rows.
CREATE TABLE rated_debates (
    debate_id TEXT    PRIMARY KEY NOT NULL,
    domain    TEXT    NOT NULL DEFAULT '',
    matches   INTEGER NOT NULL,
    rated_at  TEXT    NOT NULL
);
