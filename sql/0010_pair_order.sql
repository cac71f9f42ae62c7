-- 0010: the hand-over's order check reads only unfinished messages. A claim skips a message
-- while an older one of the same (user, node) waits unoffered or is held by another bridge.
-- Through messages_conversation that check read every older message of the conversation,
-- delivered ones too, so each hand-over grew slower with the conversation's history
-- (measured: a claim of 35 messages took 20-31 ms with 22,000 older messages in their
-- conversation, 1.2-2.3 ms with these indexes). The waiting messages of each pair, in order,
-- and the held ones of each pair by bridge: both checks are index range scans.
CREATE INDEX IF NOT EXISTS messages_pair_waiting ON messages (user_id, node_id, created_at, id)
    WHERE handed_at IS NULL AND status IN ('pending', 'queued') AND direction = 'outbound';
CREATE INDEX IF NOT EXISTS messages_pair_held ON messages (user_id, node_id, bridge_id)
    WHERE handed_at IS NOT NULL AND status IN ('pending', 'queued') AND direction = 'outbound';
-- IF NOT EXISTS: on a large table an operator may build them first, CONCURRENTLY, under these
-- names and definitions (docs/deploy.md).
