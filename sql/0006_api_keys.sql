-- 0006: API keys. A key is a bearer credential of one user (a plan with ``api_access``). Only a
-- SHA-256 hash of its secret is kept, never the secret; ``prefix`` (the secret's first 17
-- characters) finds the candidate rows and is what lists show. Revoking a key deletes its row,
-- so the next request with it, in any gateway process, finds nothing.

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix       text NOT NULL CHECK (prefix ~ '^kosmo_sk_[A-Za-z0-9_-]{8}$'),
    secret_hash  bytea NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz          -- written at most once a minute per key
);
CREATE INDEX api_keys_by_prefix ON api_keys (prefix);
CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at, id);
