-- 0001: the gateway's core schema.
-- Billing writes users, subscriptions and the whitelist; the gateway reads them. The gateway's
-- quota ledger is the only writer of quota_usage; messages and their status history are written
-- by the gateway alone. Status history is append-only (enforced by a trigger).

CREATE TABLE plans (
    code          text PRIMARY KEY,
    name          text NOT NULL,
    scope         text NOT NULL CHECK (scope IN ('none', 'any', 'whitelist')),
    monthly_quota integer CHECK (monthly_quota >= 0),          -- NULL: unlimited
    api_access    boolean NOT NULL DEFAULT false
);

CREATE TABLE users (
    id           uuid PRIMARY KEY,
    email        text UNIQUE,
    display_name text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id                   uuid PRIMARY KEY,
    user_id              uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    plan_code            text NOT NULL REFERENCES plans (code),
    status               text NOT NULL CHECK (status IN
                             ('active', 'trialing', 'past_due', 'unpaid', 'canceled',
                              'incomplete', 'expired')),
    current_period_start timestamptz NOT NULL,
    current_period_end   timestamptz NOT NULL,
    quota_override       integer CHECK (quota_override >= 0),  -- NULL: the plan's quota
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (current_period_end > current_period_start)
);
CREATE INDEX subscriptions_by_user ON subscriptions (user_id, current_period_end DESC);

-- Nodes a guardian-plan user may message.
CREATE TABLE node_whitelist (
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    node_id    text NOT NULL CHECK (node_id ~ '^![0-9a-f]{8}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, node_id)
);

-- Messages debited per user and subscription period.
CREATE TABLE quota_usage (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    used         integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (user_id, period_start)
);

CREATE TABLE messages (
    id                 uuid PRIMARY KEY,
    direction          text NOT NULL CHECK (direction IN ('outbound', 'inbound')),
    user_id            uuid REFERENCES users (id),             -- NULL: inbound, unassigned
    node_id            text NOT NULL CHECK (node_id ~ '^![0-9a-f]{8}$'),
    text               text NOT NULL,
    status             text NOT NULL CHECK (status IN
                           ('pending', 'queued', 'transmitted', 'delivered', 'failed',
                            'expired', 'received')),
    reason             text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL,
    expires_at         timestamptz,
    debit_period_start timestamptz,          -- outbound: the quota period it was debited in
    charged            boolean NOT NULL DEFAULT false,  -- still counted in quota_usage
    packet_id          bigint,
    bridge_id          text,
    CHECK (direction = 'inbound' OR user_id IS NOT NULL),
    CHECK (NOT charged OR debit_period_start IS NOT NULL)
);
CREATE INDEX messages_conversation ON messages (user_id, node_id, created_at, id);
CREATE INDEX messages_pending ON messages (created_at) WHERE status = 'pending';

-- Every status a message took, in order. Append-only.
CREATE TABLE message_status_history (
    id         bigserial PRIMARY KEY,
    message_id uuid NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    status     text NOT NULL,
    reason     text,
    note       boolean NOT NULL DEFAULT false,   -- recorded, but changed nothing
    at         timestamptz NOT NULL
);
CREATE INDEX message_status_history_by_message ON message_status_history (message_id, id);

CREATE FUNCTION message_status_history_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'message_status_history is append-only';
END $$;

CREATE TRIGGER message_status_history_append_only
    BEFORE UPDATE ON message_status_history
    FOR EACH ROW EXECUTE FUNCTION message_status_history_append_only();

INSERT INTO plans (code, name, scope, monthly_quota, api_access) VALUES
    ('free',      'Free',      'none',      0,    false),
    ('wanderer',  'Wanderer',  'any',       50,   false),
    ('guardian',  'Guardian',  'whitelist', 500,  false),
    ('sanctuary', 'Sanctuary', 'any',       NULL, true);
