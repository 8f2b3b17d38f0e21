-- One row the health check rewrites: proves the database takes writes, not only reads.
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY NOT NULL,
    at TEXT    NOT NULL
);
INSERT INTO health_probe (id, at) VALUES (1, '1970-01-01T00:00:00.000000Z');
