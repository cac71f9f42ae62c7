-- 0002: replies from the mesh, delivery reports, the event stream and dead letters.
-- Every row of message_status_history is an event of the live stream; its id is the event id.
-- Writers take an advisory lock just before inserting history rows (and hold it to commit), so
-- ids are assigned in commit order and a client resuming after event N misses nothing.

ALTER TABLE messages
    ADD COLUMN reply_to_packet_id bigint,
    ADD COLUMN rx_time            timestamptz;

-- The same radio packet heard by several bridges is stored once.
CREATE UNIQUE INDEX messages_inbound_packet ON messages (node_id, packet_id)
    WHERE direction = 'inbound';
-- Threading a reply to the outbound packet it answers.
CREATE INDEX messages_outbound_packet ON messages (node_id, packet_id)
    WHERE direction = 'outbound' AND packet_id IS NOT NULL;
-- "Who messaged this node most recently".
CREATE INDEX messages_outbound_by_node ON messages (node_id, created_at DESC)
    WHERE direction = 'outbound';
-- Expiry sweeps.
CREATE INDEX messages_unsent_expiry ON messages (expires_at)
    WHERE status IN ('pending', 'queued');

-- Events of one user, for resuming the stream.
ALTER TABLE message_status_history ADD COLUMN user_id uuid;
-- The one sanctioned rewrite of history: filling the new column for rows written before it.
ALTER TABLE message_status_history DISABLE TRIGGER message_status_history_append_only;
UPDATE message_status_history h SET user_id = m.user_id FROM messages m WHERE m.id = h.message_id;
ALTER TABLE message_status_history ENABLE TRIGGER message_status_history_append_only;
CREATE INDEX message_status_history_by_user ON message_status_history (user_id, id);

-- MQTT payloads that could not be used, kept for inspection.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    payload     bytea NOT NULL,
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
