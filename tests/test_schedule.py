"""The schedule (``kosmo.schedule``): when texts go on air from a radio's pace, with realistic
airtime from ``kosmo.airtime``; then properties of any schedule it gives."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kosmo.airtime import duty_cycle, preset_params, text_airtime
from kosmo.schedule import RadioPace, lane_at, lay, pass_over, rate_per_hour, transmit_times

NOW = 1_750_000_000.0
LONG_FAST = preset_params("LONG_FAST")
SHORT = text_airtime(LONG_FAST, 50)  # about 0.89 s
LONGEST = text_airtime(preset_params("LONG_SLOW"), 200)  # about 13 s
US = RadioPace(duty_cycle=duty_cycle("US"))
EU_868 = RadioPace(duty_cycle=duty_cycle("EU_868"), window_s=3600.0)


def gaps(starts: list[float]) -> list[float]:
    return [b - a for a, b in pairwise(starts)]


def test_the_2_s_rule_alone() -> None:
    assert US.duty_cycle is None
    starts = transmit_times(US, NOW, [SHORT] * 10)
    assert starts[0] == NOW
    assert gaps(starts) == pytest.approx([2.0] * 9)
    assert rate_per_hour(US, SHORT) == pytest.approx(1800)
    assert transmit_times(US, NOW, []) == []


def test_a_text_longer_than_the_gap_holds_the_radio_for_its_airtime() -> None:
    starts = transmit_times(US, NOW, [LONGEST, SHORT, SHORT])
    assert gaps(starts) == pytest.approx([LONGEST, 2.0])
    assert rate_per_hour(US, LONGEST) == pytest.approx(3600 / LONGEST)


def test_eu_868_with_an_empty_bucket_goes_at_the_duty_cycle_rate() -> None:
    assert EU_868.duty_cycle == 0.1
    empty = RadioPace(duty_cycle=0.1, window_s=3600.0, airtime_used_s=360.0)
    starts = transmit_times(empty, NOW, [SHORT] * 50)
    # Each text waits for its cost to refill at 0.1 s of airtime per second.
    assert starts[0] == pytest.approx(NOW + SHORT / 0.1)
    assert gaps(starts) == pytest.approx([SHORT / 0.1] * 49)
    per_hour = 49 / (starts[-1] - starts[0]) * 3600
    assert per_hour == pytest.approx(0.1 * 3600 / SHORT)
    assert rate_per_hour(empty, SHORT) == pytest.approx(per_hour)
    # More used than the capacity, as a bridge may report after a restart: still empty.
    assert transmit_times(RadioPace(duty_cycle=0.1, airtime_used_s=500.0), NOW, [SHORT]) \
        == starts[:1]


def test_eu_868_with_a_full_bucket_goes_at_the_2_s_pace_until_it_drains() -> None:
    costs = [SHORT] * 1000
    starts = transmit_times(EU_868, NOW, costs)
    steps = gaps(starts)
    # Every 2 s the bucket loses SHORT and regains 0.2 s: text k still finds SHORT in it
    # while 360 - k * (SHORT - 0.2) >= SHORT. Then one text waits for part of its cost, and
    # every later one for its whole cost to refill.
    fast = [g for g in steps if g == pytest.approx(2.0)]
    assert len(fast) == int((360 - SHORT) / (SHORT - 0.2))
    assert steps[:len(fast)] == pytest.approx([2.0] * len(fast))
    assert steps[len(fast) + 1:] == pytest.approx([SHORT / 0.1] * (len(steps) - len(fast) - 1))
    # Half used: half as many fast texts.
    half = transmit_times(RadioPace(duty_cycle=0.1, airtime_used_s=180.0), NOW, costs)
    fast_half = [g for g in gaps(half) if g == pytest.approx(2.0)]
    assert len(fast_half) == int((180 - SHORT) / (SHORT - 0.2))


def test_a_text_above_the_whole_bucket_waits_for_a_full_one() -> None:
    tiny = RadioPace(min_gap_s=0.0, duty_cycle=0.01, window_s=100.0)  # holds 1 s
    starts = transmit_times(tiny, NOW, [3.0, 3.0])
    assert starts == pytest.approx([NOW, NOW + 100.0])
    assert rate_per_hour(tiny, 3.0) == pytest.approx(36)


def test_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="duty_cycle"):
        RadioPace(duty_cycle=0.0)
    with pytest.raises(ValueError, match="min_gap_s"):
        RadioPace(min_gap_s=-1.0)
    with pytest.raises(ValueError, match="window_s"):
        RadioPace(window_s=0.0)


paces = st.builds(
    RadioPace,
    min_gap_s=st.floats(0.0, 10.0),
    duty_cycle=st.none() | st.floats(0.01, 1.0),
    window_s=st.floats(10.0, 7200.0),
    airtime_used_s=st.floats(0.0, 1000.0),
)


@settings(max_examples=200, deadline=None)
@given(pace=paces, costs=st.lists(st.floats(0.01, 20.0), max_size=60))
def test_any_schedule_keeps_the_pace(pace: RadioPace, costs: list[float]) -> None:
    starts = transmit_times(pace, NOW, costs)
    assert len(starts) == len(costs)
    if not costs:
        return
    assert starts[0] >= NOW
    for (a, b), cost in zip(pairwise(starts), costs, strict=False):
        assert b - a >= max(pace.min_gap_s, cost) - 1e-6
    if pace.duty_cycle is None or pace.capacity is None:
        assert starts[0] == NOW
        return
    # The bucket's promise: from the start, at most what it held plus what refilled by then;
    # over any stretch of time, at most a full bucket plus what refilled meanwhile.
    duty, capacity = pace.duty_cycle, pace.capacity
    held = min(capacity, max(0.0, capacity - pace.airtime_used_s))
    charged = [min(cost, capacity) for cost in costs]
    for i, start in enumerate(starts):
        assert sum(charged[:i + 1]) <= held + duty * (start - NOW) + 1e-6 * (1 + start - NOW)
        for j in range(i + 1):
            spent = sum(charged[j:i + 1])
            assert spent <= capacity + duty * (start - starts[j]) + 1e-6 * (1 + spent)


@settings(max_examples=200, deadline=None)
@given(pace=paces, cost=st.floats(0.01, 20.0), count=st.integers(0, 40),
       after=st.lists(st.floats(0.01, 20.0), max_size=10))
def test_passing_over_texts_lays_the_next_ones_as_laying_them_would(
        pace: RadioPace, cost: float, count: int, after: list[float]) -> None:
    # Held texts are passed over by count (O(1) without a duty cycle): the texts after them
    # start exactly where laying every held text one by one would put them.
    laid = transmit_times(pace, NOW, [cost] * count + after)[count:]
    passed = lay(pace, pass_over(pace, lane_at(pace, NOW), cost, count), after)[0]
    assert passed == pytest.approx(laid, rel=1e-12, abs=1e-6)
