-- Failed logins by email (SHA-256 hex of the lower-cased address), whether or not an account
-- has that email: a lockout then tells nothing about which emails exist.
CREATE TABLE login_attempts (
    email_hash   TEXT    PRIMARY KEY NOT NULL,
    failures     INTEGER NOT NULL DEFAULT 0,
    locked_until TEXT,
    updated_at   TEXT    NOT NULL
);
