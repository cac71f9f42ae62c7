-- Demo users for development and `kosmo up`. Safe to load again: it refreshes the periods to the
-- current month (UTC). Load with:  psql "$KOSMO_DATABASE_URL" -f sql/seed_demo.sql

BEGIN;

INSERT INTO users (id, email, display_name) VALUES
    ('11111111-1111-1111-1111-111111111111', 'wanderer@example.org',  'Demo Wanderer'),
    ('22222222-2222-2222-2222-222222222222', 'guardian@example.org',  'Demo Guardian'),
    ('33333333-3333-3333-3333-333333333333', 'sanctuary@example.org', 'Demo Sanctuary'),
    ('44444444-4444-4444-4444-444444444444', 'free@example.org',      'Demo Free'),
    ('55555555-5555-5555-5555-555555555555', 'canceled@example.org',  'Demo Canceled')
ON CONFLICT (id) DO NOTHING;

WITH month AS (
    SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS period_start
)
INSERT INTO subscriptions (id, user_id, plan_code, status,
                           current_period_start, current_period_end)
SELECT s.id::uuid, s.user_id::uuid, s.plan_code, s.status,
       month.period_start, month.period_start + interval '1 month'
FROM month, (VALUES
    ('a1111111-1111-1111-1111-111111111111', '11111111-1111-1111-1111-111111111111', 'wanderer',  'active'),
    ('a2222222-2222-2222-2222-222222222222', '22222222-2222-2222-2222-222222222222', 'guardian',  'active'),
    ('a3333333-3333-3333-3333-333333333333', '33333333-3333-3333-3333-333333333333', 'sanctuary', 'active'),
    ('a4444444-4444-4444-4444-444444444444', '44444444-4444-4444-4444-444444444444', 'free',      'active'),
    ('a5555555-5555-5555-5555-555555555555', '55555555-5555-5555-5555-555555555555', 'wanderer',  'canceled')
) AS s (id, user_id, plan_code, status)
ON CONFLICT (id) DO UPDATE SET
    plan_code = EXCLUDED.plan_code,
    status = EXCLUDED.status,
    current_period_start = EXCLUDED.current_period_start,
    current_period_end = EXCLUDED.current_period_end,
    updated_at = now();

INSERT INTO node_whitelist (user_id, node_id) VALUES
    ('22222222-2222-2222-2222-222222222222', '!a1b2c3d4')
ON CONFLICT DO NOTHING;

COMMIT;
