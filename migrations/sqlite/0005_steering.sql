-- Steering: a pause asked of a running debate (see the Postgres migration of the same
-- number). Additive only.
ALTER TABLE debates ADD COLUMN pause_requested INTEGER NOT NULL DEFAULT 0;
