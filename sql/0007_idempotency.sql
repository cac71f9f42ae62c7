-- 0007: Idempotency-Key on sends. One row per (user, key): claimed before the send (a lease that
-- runs out, so a process that dies while holding it does not block the key for ever), and
-- completed with the answer in the transaction that stores and debits the message, so "message
-- stored" and "answer stored" are one fact. The primary key decides a race between processes.
-- Rows live 24 h from ``created_at``: older ones count as absent and are swept.
-- No foreign key to users: a send of an unknown user is refused like any other, key or not.

CREATE TABLE idempotency_keys (
    user_id      uuid        NOT NULL,
    key          text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint  bytea       NOT NULL,   -- SHA-256 of the request: method, path, body bytes
    token        uuid        NOT NULL,   -- who holds (or held) the lease
    created_at   timestamptz NOT NULL,   -- when this request was first seen
    locked_until timestamptz,            -- in flight: the lease's end; NULL once answered
    status       smallint,               -- the stored answer; NULL while in flight
    headers      jsonb,
    body         text,
    message_id   uuid,                   -- the message the answer created
    PRIMARY KEY (user_id, key),
    CHECK ((status IS NULL) = (locked_until IS NOT NULL))
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
