"""The chaos run as a test: each fault once under steady load, then every invariant holds.

Slow (about two minutes) and so skipped unless asked for; ``python -m tests.chaos`` runs the
longer version and prints the table quoted in docs/reliability.md.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import FAULTS, ChaosConfig, chaos_run

pytestmark = pytest.mark.chaos


async def test_nothing_lost_nothing_twice_quota_exact():
    result = await chaos_run(ChaosConfig(rounds=1, quiet=8.0))
    print(result.table())
    assert [f.kind for f in result.faults] == list(FAULTS)
    assert result.violations() == []
    assert all(None not in (f.api_back, f.air_back, f.caught_up) for f in result.faults)
