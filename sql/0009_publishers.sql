-- 0009: publishers. Several gateway processes share one database and one broker; each node's
-- messages are published by one process at a time, so they reach the broker in order and, in
-- steady state, once.

-- A live gateway process. A process inserts its row at start (a new ``id`` every start) and
-- sets ``seen_at`` to the database's ``now()`` every second (the heartbeat). A row whose
-- ``seen_at`` is older than the lease (3 s) belongs to a dead process: another live process
-- deletes it (after handing its MQTT ``client_id`` to whatever must be done for a dead
-- session). A process that finds its own row gone publishes nothing more and stops. A process
-- that stops cleanly deletes its row itself. Times are the database's, never a host's clock.
CREATE TABLE gateway_processes (
    id         uuid PRIMARY KEY,
    client_id  text NOT NULL,           -- its MQTT client id
    host       text NOT NULL,
    pid        integer NOT NULL,
    started_at timestamptz NOT NULL,
    seen_at    timestamptz NOT NULL     -- its last heartbeat
);

-- Which process publishes a node's messages. A node gets the process that first claims one
-- of its messages for a bridge while it has no row here; only that process claims, publishes
-- and republishes the node's messages. When the process's row is gone (dead, or stopped), a
-- live process adopts the node: it becomes its publisher and publishes again, first, what the
-- dead one had claimed and the broker had not acknowledged; a node with nothing of the kind
-- loses its row instead. A live process keeps its nodes (one row per node it ever published:
-- as many as the mesh has nodes). Rows change only under the hand-over lock
-- (kosmo/dispatch_store.py).
-- ``process_id`` is not a foreign key: a row that outlives its process is exactly what
-- adoption looks for.
CREATE TABLE node_publishers (
    node_id    text PRIMARY KEY,
    process_id uuid NOT NULL
);
CREATE INDEX node_publishers_by_process ON node_publishers (process_id);

-- The MQTT session of a gateway process that is gone: dead (its row deleted by another
-- process) or stopped. While its client is offline, a persistent session that holds the
-- gateways' shared subscription keeps getting its turn of the reports, replies and nodes heard
-- (mosquitto: docs/reliability.md), so what it holds must be taken into the database and the
-- session deleted (actors/stranded.py, actors/session_drain.py). A row is inserted when a
-- process row goes; it is drained only once ``GRACE`` has passed and while no live process
-- has that client id (a restarted process takes its own session back), by one process at a
-- time (``drain_until`` is that process's lease); it is deleted once drained.
CREATE TABLE stranded_sessions (
    client_id   text PRIMARY KEY,
    since       timestamptz NOT NULL,      -- when its process's row went
    drain_until timestamptz,               -- a drain in progress, until then
    attempts    integer NOT NULL DEFAULT 0
);
