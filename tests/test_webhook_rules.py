"""The pure webhook rules (kosmo.webhooks) and the webhook settings, as units.

What this proves:
- The signature is the Standard Webhooks one: the reference package computes the same, and
  verifies our headers; a changed body or id does not verify.
- Retry delays follow the schedule within ±10 %, and end after it; 2xx delivers, 410 disables,
  anything else (or no answer) retries.
- The retry schedule and allow-private settings parse as documented.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import standardwebhooks
from hypothesis import given
from hypothesis import strategies as st

from kosmo import config, webhooks
from kosmo.webhooks import Outcome


@given(st.text(min_size=1, max_size=40), st.integers(0, 2**33), st.text(max_size=200))
def test_the_signature_is_the_reference_one(msg_id: str, timestamp: int, body: str):
    secret = webhooks.new_secret()
    reference = standardwebhooks.Webhook(secret).sign(
        msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    assert webhooks.signature(secret, msg_id, timestamp, body) == reference


def test_the_reference_verifier_accepts_our_headers_and_nothing_changed():
    secret = webhooks.new_secret()
    now = int(datetime.now(UTC).timestamp())
    body = '{"type":"message.queued"}'
    headers = webhooks.signed_headers(secret, "00000000000000000001", now, body)
    verifier = standardwebhooks.Webhook(secret)
    assert verifier.verify(body.encode(), headers) == {"type": "message.queued"}
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body.replace("queued", "failed").encode(), headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        verifier.verify(body.encode(), {**headers, "webhook-id": "00000000000000000002"})


@given(st.integers(1, 9), st.floats(0, 0.999999))
def test_retry_delays_follow_the_schedule_within_ten_percent(attempt: int, jitter: float):
    schedule = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)
    delay = webhooks.retry_delay(schedule, attempt, jitter)
    if attempt > len(schedule):
        assert delay is None
    else:
        assert delay is not None
        assert 0.9 * schedule[attempt - 1] <= delay <= 1.1 * schedule[attempt - 1]


@pytest.mark.parametrize(("status", "outcome"), [
    (200, Outcome.DELIVERED), (204, Outcome.DELIVERED), (299, Outcome.DELIVERED),
    (410, Outcome.DISABLED), (301, Outcome.RETRYING), (404, Outcome.RETRYING),
    (500, Outcome.RETRYING), (None, Outcome.RETRYING)])
def test_what_an_answer_means(status, outcome):
    assert webhooks.judge(status) is outcome


def test_the_schedule_and_allow_private_settings():
    settings = config.load({"KOSMO_DATABASE_URL": "postgresql://x@127.0.0.1/x"})
    assert settings.webhook_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.webhook_allow_private is False
    settings = config.load({"KOSMO_DATABASE_URL": "postgresql://x@127.0.0.1/x",
                            "KOSMO_WEBHOOK_RETRY_SCHEDULE": "1s, 2s,0.5m",
                            "KOSMO_WEBHOOK_ALLOW_PRIVATE": "true"})
    assert settings.webhook_retry_schedule == (1, 2, 30)
    assert settings.webhook_allow_private is True
    for bad in ({"KOSMO_WEBHOOK_RETRY_SCHEDULE": "1s,,2s"},
                {"KOSMO_WEBHOOK_RETRY_SCHEDULE": "0s"},
                {"KOSMO_WEBHOOK_ALLOW_PRIVATE": "maybe"}):
        with pytest.raises(config.ConfigError, match=next(iter(bad))):
            config.load({"KOSMO_DATABASE_URL": "postgresql://x@127.0.0.1/x", **bad})
