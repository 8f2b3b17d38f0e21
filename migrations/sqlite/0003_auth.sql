-- Accounts and access: users, API keys, refresh tokens, usage. Additive only: an older
-- binary ignores these tables. Timestamps are fixed-width UTC text (see store::format_ts).
CREATE TABLE users (
    id              TEXT    PRIMARY KEY NOT NULL,
    email           TEXT    NOT NULL UNIQUE,      -- stored lower-cased
    password_hash   TEXT    NOT NULL,             -- argon2id PHC string
    role            TEXT    NOT NULL,             -- member, admin or owner
    failed_logins   INTEGER NOT NULL DEFAULT 0,
    locked_until    TEXT,
    created_at      TEXT    NOT NULL
);

-- API keys: only the SHA-256 (hex) of the key is kept, plus a display prefix.
CREATE TABLE api_keys (
    id           TEXT    PRIMARY KEY NOT NULL,
    user_id      TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash     TEXT    NOT NULL UNIQUE,
    prefix       TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    last_used_at TEXT,
    revoked_at   TEXT
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);

-- Refresh tokens (SHA-256 hex); a rotation marks the old one used; reuse of a used token
-- revokes every token of its family.
CREATE TABLE refresh_tokens (
    token_hash TEXT    PRIMARY KEY NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  TEXT    NOT NULL,
    expires_at TEXT    NOT NULL,
    used       INTEGER NOT NULL DEFAULT 0,
    revoked    INTEGER NOT NULL DEFAULT 0,
    created_at TEXT    NOT NULL
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);

-- One row per agent call. No foreign keys: usage outlives users and debates.
CREATE TABLE usage (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    principal_id  TEXT    NOT NULL,
    debate_id     TEXT,
    agent         TEXT    NOT NULL,
    provider      TEXT    NOT NULL,
    model         TEXT    NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    estimated     INTEGER NOT NULL DEFAULT 0,
    cost_usd      REAL    NOT NULL DEFAULT 0,
    created_at    TEXT    NOT NULL
);
CREATE INDEX usage_principal_created_idx ON usage (principal_id, created_at);
