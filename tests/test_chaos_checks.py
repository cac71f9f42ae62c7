"""The chaos run's judge: each invariant it checks reports a violation when broken.

(The run itself is ``pytest -m chaos`` / ``python -m tests.chaos``; this proves its checks can
fail, with hand-made results.)"""

from __future__ import annotations

import re

import pytest

from tests.chaos.harness import ChaosConfig, ChaosResult, Fault, Send, bad_5xx


def clean() -> ChaosResult:
    result = ChaosResult(ChaosConfig())
    result.sends = [Send(0, "a", 1.0, 1.1, 201, "m1"), Send(0, "b", 2.0, 2.1, 429)]
    result.quota = {"u0": {"used": 1, "on_air": 1, "charged": 1, "messages": 1}}
    result.error_logs = {"gateway": [], "bridge": []}
    result.faults = [Fault("gateway", 1.5, part="gateway", back=1.6, ready=2.0, api_back=0.5,
                           air_back=0.6, caught_up=0.7, slowest=0.0)]
    return result


def test_a_clean_run_has_no_violations_and_a_table():
    result = clean()
    assert result.violations() == []
    table = result.table()
    assert "| gateway | 1.5 | 0.1 | 0.50 | 0.50 | 0.60 | 0.70 | 0.00 |" in table
    assert re.search(r"^sends +2 \(201: 1, 429: 1\)$", table, re.MULTILINE), table


@pytest.mark.parametrize(("break_it", "expected"), [
    (lambda r: r.lost.append("m1"), "accepted messages missing"),
    (lambda r: r.stuck.append("m1 queued"), "not final"),
    (lambda r: r.duplicates_on_air.append("a"), "on air twice"),
    (lambda r: r.unknown_on_air.append("z"), "unknown to the database"),
    (lambda r: r.quota["u0"].update(used=2), "quota mismatch for u0"),
    (lambda r: r.quota["u0"].update(on_air=0), "quota mismatch for u0"),
    (lambda r: r.bad_5xx.append("500 at 3.0 s"), "500 at 3.0 s"),
    (lambda r: r.error_logs["bridge"].append("x ERROR y"), "ERROR lines in the bridge log"),
    (lambda r: r.sends.clear(), "no message was accepted"),
])
def test_each_broken_invariant_is_reported(break_it, expected):
    result = clean()
    break_it(result)
    assert any(expected in line for line in result.violations()), result.violations()


def test_only_503s_with_retry_after_inside_a_database_outage_are_allowed():
    outages = [[10.0, 15.0]]
    fine = [Send(0, "a", 11.0, 11.1, 503, retry_after="5"), Send(0, "b", 1.0, 1.1, 201),
            Send(0, "c", 14.0, 15.5, 503, retry_after="5"), Send(0, "d", 3.0, 8.0, None)]
    assert bad_5xx(fine, outages) == []
    wrong = [Send(0, "e", 11.0, 11.1, 503),  # no Retry-After
             Send(0, "f", 20.0, 20.1, 503, retry_after="5"),  # after the outage
             Send(0, "g", 12.0, 12.1, 500),
             Send(0, "h", 12.0, 12.1, 502)]
    assert [line.split(" ")[0] for line in bad_5xx(wrong, outages)] == ["503", "503", "500", "502"]
