-- 0004: coverage, which nodes each bridge's radio hears (docs/mqtt.md, {root}/bridge/{id}/heard).
-- One row per bridge and node: the newest observation. An observation older than the row (or
-- as old) changes nothing, so reports may arrive late, twice or out of order.

CREATE TABLE coverage (
    bridge_id  text NOT NULL,
    node_id    text NOT NULL,
    last_heard timestamptz NOT NULL,
    snr        double precision,
    hops_away  smallint CHECK (hops_away BETWEEN 0 AND 7),
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (bridge_id, node_id)
);
-- "Which bridges hear this node, most recently first" (routing).
CREATE INDEX coverage_by_node ON coverage (node_id, last_heard DESC);
