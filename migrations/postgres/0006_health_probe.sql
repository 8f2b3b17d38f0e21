-- One row the health check rewrites: proves the database takes writes, not only reads.
CREATE TABLE health_probe (
    id INTEGER     PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL
);
INSERT INTO health_probe (id, at) VALUES (1, now());
