-- 0008: webhooks. A sanctuary user registers URLs; every event of its messages (a row of
-- message_status_history, except ``pending`` and notes) is owed to each of its webhooks that
-- subscribes to the event's type, durably: a delivery row is written in the same transaction
-- that advances the one shared cursor over the history, and stays ``owed`` until an attempt
-- succeeds, the schedule is used up, or the endpoint answers 410.

CREATE TABLE webhooks (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    url         text NOT NULL CHECK (length(url) <= 2048),
    events      text[] NOT NULL,          -- event types, or {'*'}
    secret      text NOT NULL,            -- whsec_<base64>: the gateway signs with it
    created_at  timestamptz NOT NULL,
    disabled_at timestamptz               -- set when the endpoint answered 410 Gone
);
CREATE INDEX webhooks_by_user ON webhooks (user_id, created_at);

-- How far the history has been turned into deliveries. One row; a process that advances it
-- holds it FOR UPDATE, the others skip it. Starts at the present: events from before webhooks
-- existed are owed to nobody.
CREATE TABLE webhook_cursor (
    one        boolean PRIMARY KEY DEFAULT true CHECK (one),
    history_id bigint NOT NULL
);
INSERT INTO webhook_cursor (history_id) SELECT coalesce(max(id), 0) FROM message_status_history;

-- One event owed to one webhook. ``body`` is fixed when the row is written, so every attempt
-- sends the same bytes (and the same webhook-id, the event id). ``leased_until``: a process
-- is attempting it; a lease that ran out (its process died) makes it due again.
CREATE TABLE webhook_deliveries (
    id              bigserial PRIMARY KEY,
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        bigint NOT NULL,      -- message_status_history.id
    type            text NOT NULL,
    body            text NOT NULL,
    state           text NOT NULL CHECK (state IN ('owed', 'delivered', 'given_up')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,          -- null unless owed
    leased_until    timestamptz,
    created_at      timestamptz NOT NULL,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'owed';

-- Each attempt, as the API lists it.
CREATE TABLE webhook_attempts (
    id              bigserial PRIMARY KEY,
    delivery_id     bigint NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    webhook_id      uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    attempt         integer NOT NULL CHECK (attempt >= 1),
    at              timestamptz NOT NULL,
    status_code     integer,
    error           text,
    outcome         text NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'given_up',
                                                     'disabled')),
    next_attempt_at timestamptz,
    CHECK ((status_code IS NULL) <> (error IS NULL))
);
CREATE INDEX webhook_attempts_by_webhook ON webhook_attempts (webhook_id, id DESC);
-- Deleting a webhook cascades through its deliveries to their attempts.
CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id);
