"""The bridge's pure parts: airtime, pacing, routing results, payloads, settings and the store."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import BridgeSettings, add_arguments, load
from bridge.pacing import Pacer, PacingRules
from bridge.radio import Device, next_packet_id, send_as
from bridge.rows import IllegalMove, RowState, applies
from bridge.sender import restored
from bridge.store import DB_NAME, Change, Row, Store, StoreLocked
from bridge.tracking import Flight, Next, Outcome, Phase, Tracker
from kosmo import airtime
from kosmo.config import ConfigError
from kosmo.wire import BadOutbound, Outbound, parse_outbound, status_payload

ME, DEST, RELAY = 0x0A0A0A0A, 0xA1B2C3D4, 0x12345678

# --- airtime ----------------------------------------------------------------------------------


def test_airtime_matches_the_semtech_formula() -> None:
    # Known values: SF7/125 kHz/4-5, 8-symbol preamble, 10 bytes: 41.216 ms (Semtech calculator)
    sf7 = airtime.LoraParams(7, 125e3, 5, preamble=8)
    assert airtime.packet_airtime(sf7, 10) == pytest.approx(0.041216)
    # SF12/125 kHz needs low data rate optimisation: 8 preamble, 20 bytes -> 1318.9 ms
    sf12 = airtime.LoraParams(12, 125e3, 5, preamble=8)
    assert airtime.packet_airtime(sf12, 20) == pytest.approx(1.318912)


def test_a_long_text_on_long_fast_takes_about_two_seconds() -> None:
    long_fast = airtime.preset_params("LONG_FAST")
    assert 1.8 < airtime.text_airtime(long_fast, 200) < 2.1
    # EU_868 allows 360 s an hour: about three such texts a minute.
    per_hour = 0.1 * 3600 / airtime.text_airtime(long_fast, 200)
    assert 170 < per_hour < 200


def test_unknown_presets_and_regions_err_on_the_side_of_less() -> None:
    assert airtime.preset_params("NEW_PRESET") == airtime.preset_params("LONG_SLOW")
    assert airtime.duty_cycle("EU_868") == pytest.approx(0.1)
    assert airtime.duty_cycle("US") is None
    assert airtime.duty_cycle("SOMEWHERE_NEW") == pytest.approx(0.1)
    assert airtime.preset_params("LONG_FAST", wide=True).bandwidth_hz == 812.5e3


# --- pacing -----------------------------------------------------------------------------------


def test_gap_of_two_seconds_between_hand_overs() -> None:
    pacer = Pacer(PacingRules(min_gap=2.0))
    assert pacer.ready_at(100.0, 1.0, 0) == 100.0
    pacer.started(100.0, 1.0)
    pacer.finished(100.3)  # the write took 0.3 s: the gap counts from its end
    assert pacer.ready_at(101.0, 1.0, 0) == pytest.approx(102.3)
    assert pacer.ready_at(105.0, 1.0, 0) == 105.0


def test_no_more_than_the_radio_queue_in_flight() -> None:
    pacer = Pacer(PacingRules(max_in_flight=16))
    assert pacer.ready_at(0.0, 1.0, 15) == 0.0
    assert pacer.ready_at(0.0, 1.0, 16) is None


def test_airtime_budget_waits_for_the_oldest_send_to_leave_the_window() -> None:
    pacer = Pacer(PacingRules(min_gap=2.0, duty_cycle=0.1, window=100.0))  # 10 s per 100 s
    for at in (0.0, 2.0, 4.0, 6.0):
        assert pacer.ready_at(at, 2.5, 0) == at
        pacer.started(at, 2.5)
        pacer.finished(at)
    # 10 s used: the next 2.5 s fit once the send at 0 left the window, at 100 exactly.
    assert pacer.ready_at(8.0, 2.5, 0) == pytest.approx(100.0)
    assert pacer.used(8.0) == pytest.approx(10.0)
    assert pacer.used(100.0) == pytest.approx(7.5)


def test_estimate_is_the_time_the_backlog_needs_at_the_limit() -> None:
    pacer = Pacer(PacingRules(min_gap=2.0))
    assert pacer.estimate(0.0, []) == 0.0
    assert pacer.estimate(0.0, [1.0] * 5) == pytest.approx(8.0)
    limited = Pacer(PacingRules(min_gap=2.0, duty_cycle=0.1, window=100.0))
    # 10 s an hour of 2.5 s texts: four now, four more when the first four leave the window.
    assert limited.estimate(0.0, [2.5] * 8) == pytest.approx(106.0)


def test_hold_stops_everything_for_a_while() -> None:
    pacer = Pacer(PacingRules(min_gap=2.0))
    pacer.hold(60.0)
    assert pacer.ready_at(10.0, 1.0, 0) == 60.0
    assert pacer.estimate(10.0, [1.0, 1.0]) == pytest.approx(52.0)
    assert pacer.ready_at(70.0, 1.0, 0) == 70.0


def test_restore_charges_the_sends_of_an_earlier_run() -> None:
    pacer = Pacer(PacingRules(min_gap=2.0, duty_cycle=0.1, window=100.0))
    pacer.restore([(-50.0, 5.0), (-10.0, 5.0)])
    assert pacer.ready_at(0.0, 1.0, 0) == pytest.approx(50.0)


@settings(max_examples=200, deadline=None)
@given(airtimes=st.lists(st.floats(0.05, 6.0), min_size=1, max_size=40),
       duty=st.sampled_from([None, 0.01, 0.1, 0.5]),
       writes=st.lists(st.floats(0.0, 0.5), min_size=40, max_size=40))
def test_sending_at_ready_at_keeps_every_rule_and_is_never_late(
        airtimes: list[float], duty: float | None, writes: list[float]) -> None:
    rules = PacingRules(min_gap=2.0, duty_cycle=duty, window=300.0)
    pacer = Pacer(rules)
    now, sends, ends = 0.0, [], []
    for air, write in zip(airtimes, writes, strict=False):
        at = pacer.ready_at(now, air, 0)
        assert at is not None
        assert at >= now
        # Not below the limit: a moment earlier would break the gap or the budget.
        if at > now:
            too_early = at - 1e-5
            gap_broken = bool(ends) and too_early < ends[-1] + rules.min_gap
            in_window = sum(a for t, a in sends if t > too_early - rules.window)
            budget_broken = duty is not None and in_window + air > duty * rules.window + 1e-6
            assert gap_broken or budget_broken
        pacer.started(at, air)
        sends.append((at, air))
        pacer.finished(at + write)
        ends.append(at + write)
        now = at + write
    for (t1, _a), end in zip(sends[1:], ends, strict=False):
        assert t1 >= end + rules.min_gap - 1e-9
    if duty is not None:
        for t, _a in sends:  # every window ending at a send stays within the budget
            in_window = sum(a for s, a in sends if t - rules.window < s <= t)
            assert in_window <= max(duty * rules.window, max(airtimes)) + 1e-6


# --- routing results --------------------------------------------------------------------------


def _tracker() -> Tracker:
    tracker = Tracker(own_node=ME)
    tracker.add(Flight("m1", 7, DEST, deadline=100.0, attempts=1, link=1), now=0.0)
    return tracker


def test_implicit_ack_then_delivery() -> None:
    tracker = _tracker()
    [first] = tracker.result(7, ME, "NONE", 1.0)
    assert (first.status, first.next) == ("transmitted", Next.TRANSMITTED)
    assert tracker.result(7, ME, "NONE", 1.5) == []  # a repeated implicit ACK
    [second] = tracker.result(7, DEST, "NONE", 2.0)
    assert (second.status, second.next) == ("delivered", Next.DONE)
    assert tracker.result(7, DEST, "NONE", 3.0) == []  # late: the flight has ended
    assert len(tracker) == 0


@pytest.mark.parametrize(("sender", "error", "status", "reason"), [
    (ME, "MAX_RETRANSMIT", "failed", "MAX_RETRANSMIT"),
    (ME, "TOO_LARGE", "failed", "TOO_LARGE"),
    (ME, "PKI_SEND_FAIL_PUBLIC_KEY", "failed", "no_public_key"),  # refused before the air
    (DEST, "NONE", "delivered", None),
])
def test_results_from_each_kind_of_node(sender: int, error: str, status: str,
                                        reason: str | None) -> None:
    [outcome] = _tracker().result(7, sender, error, 1.0)
    assert (outcome.status, outcome.reason, outcome.next) == (status, reason, Next.DONE)


@pytest.mark.parametrize(("sender", "error", "reason"), [
    (DEST, "PKI_UNKNOWN_PUBKEY", "no_public_key"),  # the destination lacks our key
    (DEST, "NO_CHANNEL", "NO_CHANNEL"),
    (RELAY, "NO_ROUTE", "NO_ROUTE"),
])
def test_an_error_from_another_node_follows_transmitted_as_it_was_on_air(
        sender: int, error: str, reason: str) -> None:
    first, last = _tracker().result(7, sender, error, 1.0)
    assert (first.status, first.next) == ("transmitted", Next.TRANSMITTED)
    assert (last.status, last.reason, last.next) == ("failed", reason, Next.DONE)
    tracker = _tracker()
    tracker.result(7, ME, "NONE", 1.0)  # the implicit ACK came first: reported once
    [only] = tracker.result(7, sender, error, 2.0)
    assert (only.status, only.reason) == ("failed", reason)


def test_a_local_refusal_before_transmission_requeues_a_few_times() -> None:
    tracker = Tracker(own_node=ME, max_attempts=2)
    tracker.add(Flight("m1", 7, DEST, deadline=100.0, attempts=1, link=1), now=0.0)
    [again] = tracker.result(7, ME, "RATE_LIMIT_EXCEEDED", 1.0)
    assert (again.next, again.status) == (Next.REQUEUE, None)
    tracker.add(Flight("m1", 8, DEST, deadline=100.0, attempts=2, link=1), now=2.0)
    [failed] = tracker.result(8, ME, "DUTY_CYCLE_LIMIT", 3.0)
    assert (failed.next, failed.status, failed.reason) == (Next.DONE, "failed",
                                                          "DUTY_CYCLE_LIMIT")


def test_a_result_before_the_packet_id_is_known_is_applied_when_it_is() -> None:
    tracker = Tracker(own_node=ME)
    assert tracker.result(9, ME, "NONE", 0.0) == []
    [outcome] = tracker.add(Flight("m2", 9, DEST, deadline=100.0, attempts=1, link=1), 0.1)
    assert outcome.status == "transmitted"


def test_deadlines_and_what_counts_as_in_flight() -> None:
    tracker = Tracker(own_node=ME)
    tracker.add(Flight("old", 1, DEST, deadline=10.0, attempts=1, link=0), 0.0)
    tracker.add(Flight("new", 2, DEST, deadline=20.0, attempts=1, link=3), 0.0)
    tracker.add(Flight("sent", 3, DEST, deadline=10.0, attempts=1, link=3,
                       phase=Phase.TRANSMITTED), 0.0)
    assert tracker.in_flight(3) == 1
    assert tracker.next_deadline() == 10.0
    expired = {o.message_id: (o.status, o.reason) for o in tracker.expire(15.0)}
    assert expired == {"old": ("failed", "unknown_after_restart"),
                       "sent": ("failed", "no_delivery_ack")}
    [late] = tracker.expire(25.0)
    assert (late.status, late.reason) == ("failed", "no_routing_result")


def test_a_transmitted_flight_without_delivery_ack_fails_once_at_its_deadline() -> None:
    tracker = _tracker()  # handed at 0, deadline 100
    [transmitted] = tracker.result(7, RELAY, "NONE", 1.0)
    assert (transmitted.status, transmitted.next) == ("transmitted", Next.TRANSMITTED)
    assert tracker.expire(99.9) == []  # still waiting for the destination's ACK
    assert tracker.next_deadline() == 100.0
    [final] = tracker.expire(100.0)
    assert (final.message_id, final.packet_id, final.next, final.status, final.reason) == (
        "m1", 7, Next.DONE, "failed", "no_delivery_ack")
    assert len(tracker) == 0
    assert tracker.next_deadline() is None
    assert tracker.expire(200.0) == []  # one final report, never a second
    # The delivery ACK arrives after all: forward only, nothing changes.
    assert tracker.result(7, DEST, "NONE", 101.0) == []
    assert tracker.result(7, ME, "MAX_RETRANSMIT", 102.0) == []
    assert tracker.expire(300.0) == []


def test_a_delivery_ack_before_the_deadline_leaves_nothing_to_expire() -> None:
    tracker = _tracker()
    tracker.result(7, ME, "NONE", 1.0)
    [delivered] = tracker.result(7, DEST, "NONE", 99.0)
    assert (delivered.status, delivered.next) == ("delivered", Next.DONE)
    assert tracker.expire(100.0) == []


@pytest.mark.parametrize(("phase", "reason"), [
    (Phase.TRANSMITTED, "no_delivery_ack"), (Phase.HANDED, "unknown_after_restart")])
def test_a_flight_restored_after_a_restart_waits_then_fails(phase: Phase, reason: str) -> None:
    # What Sender.restore makes of a row found transmitted (or handed): deadline = start +
    # result_timeout, link 0 (an earlier run's).
    tracker = Tracker(own_node=ME)
    assert tracker.add(Flight("m9", 9, DEST, deadline=50.0 + 300.0, attempts=1, link=0,
                              phase=phase), now=50.0) == []
    assert tracker.in_flight(1) == 0
    assert tracker.expire(349.0) == []
    [final] = tracker.expire(350.0)
    assert (final.next, final.status, final.reason) == (Next.DONE, "failed", reason)
    assert tracker.result(9, DEST, "NONE", 351.0) == []


def test_a_restored_transmitted_flight_can_still_be_delivered() -> None:
    tracker = Tracker(own_node=ME)
    tracker.add(Flight("m9", 9, DEST, deadline=350.0, attempts=1, link=0,
                       phase=Phase.TRANSMITTED), now=50.0)
    assert tracker.result(9, RELAY, "NONE", 60.0) == []  # already reported transmitted
    [delivered] = tracker.result(9, DEST, "NONE", 70.0)
    assert (delivered.status, delivered.next) == ("delivered", Next.DONE)
    assert tracker.expire(400.0) == []


@pytest.mark.parametrize(("state", "packet_id", "phase"), [
    ("sending", 77, Phase.HANDED),  # killed mid-hand-over: the radio may have packet 77
    ("handed", 77, Phase.HANDED),
    ("transmitted", 77, Phase.TRANSMITTED),
])
def test_a_row_left_open_with_a_packet_id_waits_for_that_packets_results(
        state: str, packet_id: int, phase: Phase) -> None:
    row = Row("m9", "!a1b2c3d4", "hi", 0.0, state, 1, packet_id)
    flight = restored(row, 50.0, 300.0)
    assert flight == Flight("m9", 77, DEST, deadline=350.0, attempts=1, link=0, phase=phase)


def test_a_row_left_sending_without_a_packet_id_fails_at_once() -> None:
    # Written by an older bridge, which learnt the packet id only after the hand-over.
    row = Row("m9", "!a1b2c3d4", "hi", 0.0, "sending", 1, None)
    assert restored(row, 50.0, 300.0) == Outcome("m9", 0, Next.DONE, "failed",
                                                 "unknown_after_restart")


def test_a_text_restored_from_sending_is_reported_by_what_the_radio_says() -> None:
    tracker = Tracker(own_node=ME)
    row = Row("m9", "!a1b2c3d4", "hi", 0.0, "sending", 1, 77)
    flight = restored(row, 50.0, 300.0)
    assert isinstance(flight, Flight)
    # The radio kept the results of packet 77 for its next client: they arrive after the start.
    assert tracker.add(flight, now=50.0) == []
    [transmitted] = tracker.result(77, RELAY, "NONE", 51.0)
    assert (transmitted.status, transmitted.packet_id) == ("transmitted", 77)
    [delivered] = tracker.result(77, DEST, "NONE", 52.0)
    assert (delivered.message_id, delivered.next, delivered.status) == (
        "m9", Next.DONE, "delivered")
    assert tracker.expire(400.0) == []  # one final report


def test_a_text_restored_from_sending_that_the_radio_never_took_fails_at_its_deadline() -> None:
    tracker = Tracker(own_node=ME)
    flight = restored(Row("m9", "!a1b2c3d4", "hi", 0.0, "sending", 1, 77), 50.0, 300.0)
    assert isinstance(flight, Flight)
    tracker.add(flight, now=50.0)
    assert tracker.expire(349.9) == []
    [final] = tracker.expire(350.0)
    assert (final.status, final.reason, final.packet_id) == ("failed", "unknown_after_restart",
                                                             77)


# --- the packet id, chosen before the hand-over --------------------------------------------


def test_the_library_sends_a_text_as_the_packet_id_drawn_before() -> None:
    # The real meshtastic interface without a device (noProto): sendText builds the packet and
    # returns it without writing. A library upgrade that changes how sendData takes its packet
    # id fails here.
    from meshtastic.mesh_interface import MeshInterface

    iface = MeshInterface(noProto=True)
    try:
        chosen = next_packet_id(iface)
        assert chosen != 0
        assert chosen == iface.currentPacketId  # the library's own generator and id scheme
        assert send_as(iface, chosen, "!a1b2c3d4", "hello") == chosen
        assert "_generatePacketId" not in vars(iface)  # the override was for that call only
        assert iface._generatePacketId() != chosen
        with pytest.raises(MeshInterface.MeshInterfaceError):
            send_as(iface, 4242, "!a1b2c3d4", "x" * 300)  # the library refuses it
        assert "_generatePacketId" not in vars(iface)
        assert iface._generatePacketId() != 4242
    finally:
        iface.close()


def test_the_library_packet_carries_the_chosen_id_to_the_radio() -> None:
    from meshtastic.mesh_interface import MeshInterface

    written: list[int] = []

    class Recording(MeshInterface):  # writes nowhere: records the packets it would write
        def _sendToRadioImpl(self, toRadio: Any) -> None:
            if toRadio.HasField("packet"):
                written.append(int(toRadio.packet.id))

    iface = Recording(noProto=False)
    try:
        chosen = next_packet_id(iface)
        assert send_as(iface, chosen, "!a1b2c3d4", "hello") == chosen
        assert written == [chosen]
    finally:
        iface.close()


# --- payloads ---------------------------------------------------------------------------------


def _outbound(**changes: object) -> bytes:
    body = {"message_id": str(uuid.uuid4()), "target_node_id": "!A1B2C3D4", "text": "héllo",
            "created_at": "2026-11-27T14:47:08Z", "expires_at": "2026-11-28T00:47:08.5Z"}
    body.update(changes)
    return json.dumps(body).encode()


def test_parse_outbound() -> None:
    message = parse_outbound("k/bridge/br/outbound/!a1b2c3d4", _outbound())
    assert message.target == "!a1b2c3d4"
    assert message.text == "héllo"
    assert message.expires_at == pytest.approx(1795826828.5)
    epoch = parse_outbound("k/bridge/br/outbound/!a1b2c3d4", _outbound(expires_at=1795826828))
    assert epoch.expires_at == 1795826828


@pytest.mark.parametrize(("payload", "with_id"), [
    (b"\xff", False), (b"[]", False), (_outbound(message_id="nope"), False),
    (_outbound(text=""), True), (_outbound(target_node_id="!zz"), True),
    (_outbound(target_node_id="!a1b2c3d5"), True), (_outbound(expires_at="tomorrow"), True),
    (_outbound(expires_at="2026-11-28T00:47:08"), True), (b"x" * 5000, False),
])
def test_unusable_outbound_payloads(payload: bytes, with_id: bool) -> None:
    with pytest.raises(BadOutbound) as caught:
        parse_outbound("k/bridge/br/outbound/!a1b2c3d4", payload)
    assert (caught.value.message_id is not None) == with_id


def test_status_payload_fits_the_gateway() -> None:
    from datetime import UTC, datetime

    from kosmo.wire import parse_status

    payload = status_payload(str(uuid.uuid4()), "failed", bridge_id="!0a0a0a0a",
                             at=datetime.now(UTC), packet_id=4294967295, reason="x" * 100)
    report = parse_status(payload)
    assert report.packet_id == 4294967295
    assert report.bridge_id == "!0a0a0a0a"


# --- settings ---------------------------------------------------------------------------------


def test_settings_from_environment_and_flags() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--device", "tcp:10.0.0.5", "--region", "eu_868", "--credit", "5"])
    s = load({"KOSMO_RADIO": "serial:/dev/ttyUSB0", "KOSMO_MQTT_TOPIC_ROOT": "mesh1",
              "KOSMO_BRIDGE_TIME_SCALE": "20"}, args)
    assert s.device == Device("tcp", host="10.0.0.5", port=4403)
    assert (s.region, s.mqtt_topic_root, s.time_scale) == ("EU_868", "mesh1", 20.0)
    assert s.credit == 5
    assert load({"KOSMO_BRIDGE_CREDIT": "64"}).credit == 64
    assert load({}) == BridgeSettings()
    assert BridgeSettings().credit == 2
    assert Device.parse("tcp:[::1]:4500") == Device("tcp", host="::1", port=4500)
    assert Device.parse("serial:auto") == Device("serial")


@pytest.mark.parametrize(("environ", "named"), [
    ({"KOSMO_RADIO": "usb"}, "KOSMO_RADIO"),
    ({"KOSMO_RADIO": "tcp:"}, "KOSMO_RADIO"),
    ({"KOSMO_BRIDGE_REGION": "MARS"}, "KOSMO_BRIDGE_REGION"),
    ({"KOSMO_BRIDGE_ID": "a/b"}, "KOSMO_BRIDGE_ID"),
    ({"KOSMO_MQTT_URL": "http://x"}, "KOSMO_MQTT_URL"),
    ({"KOSMO_BRIDGE_RESULT_TIMEOUT": "0"}, "KOSMO_BRIDGE_RESULT_TIMEOUT"),
    ({"KOSMO_BRIDGE_TIME_SCALE": "-1"}, "KOSMO_BRIDGE_TIME_SCALE"),
    ({"KOSMO_BRIDGE_CREDIT": "0"}, "KOSMO_BRIDGE_CREDIT"),
    ({"KOSMO_BRIDGE_CREDIT": "65"}, "KOSMO_BRIDGE_CREDIT"),
    ({"KOSMO_BRIDGE_CREDIT": "2.5"}, "KOSMO_BRIDGE_CREDIT"),
])
def test_bad_settings_are_one_line(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(environ)
    assert str(caught.value).startswith(named)
    assert "\n" not in str(caught.value)


# --- the store --------------------------------------------------------------------------------


def _report(message_id: str, status: str, reason: str | None,
            packet_id: int | None) -> tuple[str, bytes]:
    return ("status", json.dumps([message_id, status, reason, packet_id]).encode())


def test_store_keeps_each_message_once_and_never_requeues_a_handed_one(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    m = Outbound("m1", "!a1b2c3d4", "hi", now + 60)
    assert store.accept([m, m], [], now, _report) == 1
    assert store.accept([m], [], now, _report) == 0
    row = store.next_queued()
    assert row is not None
    assert row.message_id == "m1"
    store.begin_send("m1", 1234, now, 0.5)
    assert store.next_queued() is None
    with pytest.raises(RuntimeError):
        store.begin_send("m1", 1235, now, 0.5)  # never handed twice
    store.handed("m1", 1234)
    store.apply([Change("m1", "done", "delivered", (("status", b"x"),))])
    assert store.accept([m], [], now, _report) == 0  # still known once finished
    assert store.outbox_size() == 1
    store.close()


def test_store_answers_expired_too_long_and_unreadable_messages_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    queued = store.accept([Outbound("old", "!a1b2c3d4", "hi", now - 1),
                           Outbound("big", "!a1b2c3d4", "x" * 234, now + 60)],
                          [("bad", "text must be a non-empty string")], now, _report)
    assert queued == 0
    reports = [json.loads(p) for _i, _t, p in store.outbox_head(10)]
    assert reports == [["old", "failed", "expired", None], ["big", "failed", "TOO_LARGE", None],
                       ["bad", "failed", "invalid_payload", None]]
    store.accept([Outbound("soon", "!a1b2c3d4", "hi", now + 1)], [], now, _report)
    assert store.expire_queued(now + 2, _report) == 1
    store.outbox_done([i for i, _t, _p in store.outbox_head(10)])
    assert store.outbox_size() == 0
    assert store.prune(now + 2 * 86400) == 4
    store.close()


def test_store_writes_no_report_for_a_finished_message(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    store.accept([Outbound("m1", "!a1b2c3d4", "hi", now + 60)], [], now, _report)
    store.begin_send("m1", 1234, now, 0.5)
    store.handed("m1", 1234)
    store.apply([Change("m1", "transmitted", None, (_report("m1", "transmitted", None, 1234),))])
    store.apply([Change("m1", "done", "failed: no_delivery_ack",
                        (_report("m1", "failed", "no_delivery_ack", 1234),))])
    assert store.open_flights() == []
    # Anything after the final report (a late delivery, a second failure) changes nothing.
    store.apply([Change("m1", "done", "delivered", (_report("m1", "delivered", None, 1234),)),
                 Change("unknown", "done", "delivered", (_report("unknown", "delivered", None,
                                                                 1),))])
    reports = [json.loads(p) for _i, _t, p in store.outbox_head(10)]
    assert reports == [["m1", "transmitted", None, 1234], ["m1", "failed", "no_delivery_ack", 1234]]
    store.close()


def test_store_commits_the_packet_id_with_the_sending_mark(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    store.accept([Outbound("m1", "!a1b2c3d4", "hi", now + 60)], [], now, _report)
    store.begin_send("m1", 4242, now, 0.5)
    store.close()  # what a kill right after the commit leaves on disk
    store = Store(tmp_path)
    [row] = store.open_flights()
    assert (row.state, row.packet_id, row.attempts) == ("sending", 4242, 1)
    store.handed("m1", 4242)
    [row] = store.open_flights()
    assert (row.state, row.packet_id) == ("handed", 4242)
    # Refused by our own radio without going on air: queued again, a new id at the next try.
    store.apply([Change("m1", "queued")])
    store.begin_send("m1", 5151, now, 0.5)
    [row] = store.open_flights()
    assert (row.state, row.packet_id, row.attempts) == ("sending", 5151, 2)
    store.close()


def test_one_bridge_per_state_directory(tmp_path: Path) -> None:
    store = Store(tmp_path)
    with pytest.raises(StoreLocked):
        Store(tmp_path)
    store.close()
    Store(tmp_path).close()


# --- the row lifecycle ------------------------------------------------------------------------

# The moves bridge/README.md and bridge/rows.py describe, written out once more.
LEGAL_MOVES = {
    ("queued", "sending"),  # the only way to the radio
    ("queued", "done"),  # expired while waiting
    ("sending", "handed"),
    ("sending", "transmitted"),  # left sending by a stopped bridge: its packet's results
    ("sending", "done"),
    ("sending", "queued"),  # refused by our own radio without going on air
    ("handed", "transmitted"),
    ("handed", "done"),
    ("handed", "queued"),  # refused by our own radio without going on air
    ("transmitted", "done"),
}


@pytest.mark.parametrize("before", list(RowState))
@pytest.mark.parametrize("after", list(RowState))
def test_a_row_moves_only_forward(before: RowState, after: RowState) -> None:
    if before is RowState.DONE:
        assert not applies(before, after)  # final: a later change changes nothing
    elif (before, after) in LEGAL_MOVES:
        assert applies(before, after)
    else:
        with pytest.raises(IllegalMove):
            applies(before, after)


def test_row_states_are_stored_as_an_earlier_bridge_wrote_them(tmp_path: Path) -> None:
    assert [str(s) for s in RowState] == ["queued", "sending", "handed", "transmitted", "done"]
    store = Store(tmp_path)
    now = time.time()
    store.accept([Outbound("m1", "!a1b2c3d4", "hi", now + 60),
                  Outbound("m2", "!a1b2c3d4", "hi", now + 60)], [], now, _report)
    store.begin_send("m1", 4242, now, 0.5)
    store.close()
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT message_id, state FROM outbound ORDER BY rowid").fetchall() == [
            ("m1", "sending"), ("m2", "queued")]
        # What an earlier bridge left: plain strings, read as the lifecycle's states.
        db.execute("UPDATE outbound SET state = 'transmitted' WHERE message_id = 'm1'")
    db.close()
    store = Store(tmp_path)
    [row] = store.open_flights()
    assert (row.message_id, row.state) == ("m1", RowState.TRANSMITTED)
    queued = store.next_queued()
    assert queued is not None
    assert queued.state is RowState.QUEUED
    store.close()


def test_the_store_refuses_a_move_the_lifecycle_does_not_allow(tmp_path: Path) -> None:
    store = Store(tmp_path)
    now = time.time()
    store.accept([Outbound("m1", "!a1b2c3d4", "hi", now + 60)], [], now, _report)
    store.begin_send("m1", 1234, now, 0.5)
    store.handed("m1", 1234)
    store.apply([Change("m1", "transmitted", None, (_report("m1", "transmitted", None, 1234),))])
    # It went on air: nothing sends it back to the queue, and the change writes nothing.
    with pytest.raises(IllegalMove):
        store.apply([Change("m1", "queued", None, (_report("m1", "queued", None, 1234),))])
    [row] = store.open_flights()
    assert row.state is RowState.TRANSMITTED
    assert store.next_queued() is None
    assert [json.loads(p) for _i, _t, p in store.outbox_head(10)] == [
        ["m1", "transmitted", None, 1234]]
    store.close()
