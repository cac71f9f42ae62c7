-- 0005: airtime stewardship. Messages wait in the database until the gateway hands them to one
-- bridge (``handed_at``, ``bridge_id``); while they wait they carry their place in their radio's
-- fair queue and the estimated time they go on air. A waiting message can be canceled. Each
-- plan weighs its users' share of a radio's airtime.

ALTER TABLE plans
    ADD COLUMN airtime_weight integer NOT NULL DEFAULT 1 CHECK (airtime_weight BETWEEN 1 AND 1000);
UPDATE plans SET airtime_weight = 2 WHERE code = 'guardian';
UPDATE plans SET airtime_weight = 4 WHERE code = 'sanctuary';

ALTER TABLE messages
    ADD COLUMN handed_at             timestamptz,   -- given to ``bridge_id``; never moves after
    ADD COLUMN queue_position        integer CHECK (queue_position >= 1),
    ADD COLUMN estimated_transmit_at timestamptz;

-- Each history line keeps what the message JSON said then (its event says it again on a
-- resumed stream): the bridge, the place in the queue and the estimate.
ALTER TABLE message_status_history
    ADD COLUMN bridge_id             text,
    ADD COLUMN queue_position        integer,
    ADD COLUMN estimated_transmit_at timestamptz;

-- Messages the broker already acknowledged to a bridge before this version were handed.
UPDATE messages SET handed_at = updated_at WHERE direction = 'outbound' AND status <> 'pending';

ALTER TABLE messages DROP CONSTRAINT messages_status_check;
ALTER TABLE messages ADD CONSTRAINT messages_status_check CHECK (status IN
    ('pending', 'queued', 'transmitted', 'delivered', 'failed', 'expired', 'received',
     'canceled')) NOT VALID;
ALTER TABLE messages VALIDATE CONSTRAINT messages_status_check;

-- The waiting messages (the dispatcher's queue) and those handed but not yet on air (what a
-- bridge holds against its credit).
CREATE INDEX messages_waiting ON messages (created_at, id)
    WHERE status = 'pending' AND handed_at IS NULL;
CREATE INDEX messages_held ON messages (bridge_id)
    WHERE handed_at IS NOT NULL AND status IN ('pending', 'queued');
