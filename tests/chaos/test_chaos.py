"""The chaos run as a test: each fault once under steady load, then every invariant holds.

Slow (about two minutes each) and so skipped unless asked for; ``python -m tests.chaos`` runs
the longer version and prints the table quoted in docs/reliability.md.
"""

from __future__ import annotations

import pytest

from tests.chaos.harness import FAULTS, ChaosConfig, chaos_run, two_gateway_faults

pytestmark = pytest.mark.chaos


async def test_nothing_lost_nothing_twice_quota_exact():
    result = await chaos_run(ChaosConfig(rounds=1, quiet=8.0))
    print(result.table())
    assert [f.kind for f in result.faults] == list(FAULTS)
    assert result.violations() == []
    assert all(None not in (f.api_back, f.air_back, f.caught_up) for f in result.faults)


# Without the broker restart: with two gateways the reports go through a shared subscription,
# which mosquitto (2.0.11 measured) does not restore from persistence, so the reports a bridge
# publishes after a broker restart and before the gateways subscribe again are lost and their
# messages stay held (docs/reliability.md, "Two gateway processes"). ``python -m tests.chaos
# --gateways 2`` keeps the broker restart in and reports it.
TWO_GATEWAY_FAULTS = tuple(f for f in two_gateway_faults() if f != "broker")


async def test_two_gateways_one_killed_in_turn():
    """kill -9 of one of two gateways under load, each in turn, beside the other faults:
    nothing lost, quota exact, and the other carries the flow before the killed one is back:
    it adopts the killed one's nodes, publishes what it had claimed, and (once the killed
    one's MQTT session is drained, after the lease and a grace of 3 s) every node has texts
    on air again."""
    config = ChaosConfig(rounds=1, quiet=8.0, gateways=2, faults=TWO_GATEWAY_FAULTS,
                         gateway_down=20.0)
    result = await chaos_run(config)
    print(result.table())
    kills = [f for f in result.faults if f.kind == "gateway"]
    assert [f.part for f in kills] == ["gateway 1", "gateway 2"]
    assert result.violations() == []
    assert result.by_gateway().keys() == {1, 2}
    assert all(None not in (f.api_back, f.caught_up) for f in result.faults)
    for kill in kills:
        assert kill.nodes_back is not None
        assert kill.nodes_back < config.gateway_down
        if kill.recovered:
            assert kill.recovered_by is not None
            assert kill.recovered_by < config.gateway_down
        if kill.owned is not None:  # a schema with node publishers: they moved
            assert kill.adopted is not None
            assert kill.adopted < config.gateway_down
