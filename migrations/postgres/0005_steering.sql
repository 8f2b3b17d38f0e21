-- Steering: a pause asked of a debate that runs on another instance (its runner sees it with
-- the control poll). Additive only.
ALTER TABLE debates ADD COLUMN pause_requested BOOLEAN NOT NULL DEFAULT FALSE;
