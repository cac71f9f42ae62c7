"""The MQTT contract (kosmo.wire) as properties, and against docs/mqtt.md.

- Round trips: for each payload, what one side writes the other reads back as the same value,
  over generated valid values (node ids, UUIDs, texts within the limits with non-ASCII, times
  to the microsecond, packet ids, optional fields left out or present). The bridge reads an
  outbound message as ``Outbound`` (``expires_at`` in epoch seconds; ``created_at`` is not
  read), so that round trip ends in the ``Outbound`` the gateway's message stands for. Nodes
  heard, any number of them, come back in order from chunks that each fit the limit.
- Bytes: every payload is compact JSON with non-ASCII as is (what old gateways and bridges
  write and read).
- The docs: the first example under each topic's heading in docs/mqtt.md is exactly what the
  encoder writes for the same value, and the decoder reads it.
"""

from __future__ import annotations

import itertools
import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kosmo import wire
from kosmo.config import Settings
from kosmo.delivery import Report, Status
from kosmo.domain import text_problem
from kosmo.messages import NewMessage, StatusReport
from kosmo.wire import (
    MAX_HOPS,
    MAX_INBOUND_TEXT,
    MAX_PAYLOAD,
    MAX_REASON,
    MAX_SNR,
    BridgeState,
    Heard,
    InboundPacket,
    Outbound,
    bridge_state_topic,
    heard_payloads,
    heard_topic,
    inbound_payload,
    inbound_text_ok,
    inbound_topic,
    outbound_payload,
    outbound_topic,
    parse_bridge_state,
    parse_heard,
    parse_inbound,
    parse_outbound,
    parse_status,
    state_payload,
    status_payload,
    status_topic,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "mqtt.md"
PROPS = settings(max_examples=400, derandomize=True, database=None, deadline=None)
MAX_TEXT = Settings("").max_text_bytes  # the default of what a web user may send

# --- strategies -------------------------------------------------------------------------------

roots = st.sampled_from(["kosmo", "mesh1", "site/north"])
node_ids = st.integers(0, 2**32 - 1).map(lambda n: f"!{n:08x}")
packet_ids = st.integers(0, 2**32 - 1) | st.sampled_from([0, 2**32 - 1])
# The wire's times: aware, UTC, to the microsecond, years 1 to 9999 (the fraction is written
# only when it is not zero: whole seconds are drawn too).
def times_until(last: datetime) -> st.SearchStrategy[datetime]:
    at = st.datetimes(datetime(1, 1, 1), last, timezones=st.just(UTC))
    return at | at.map(lambda t: t.replace(microsecond=0))


wire_times = times_until(datetime(9999, 12, 31, 23, 59, 59, 999999))
# A report's time is never later than its arrival: the gateway records a later one as now.
report_times = times_until(datetime(2025, 12, 31, 23, 59, 59, 999999))
no_surrogate = st.characters(exclude_categories=("Cs",))
# A web user's text: no control characters but newline and tab, MAX_TEXT bytes at most.
outbound_texts = st.one_of(
    st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t"),
            min_size=1, max_size=MAX_TEXT),
    st.sampled_from(["é" * (MAX_TEXT // 2), "x" * MAX_TEXT, "🛰", "Hello mesh"]),
).filter(lambda text: text_problem(text, MAX_TEXT) is None)
# A reply: no NUL, MAX_INBOUND_TEXT bytes at most. Control characters other than newline and
# tab are left out: JSON writes each as six bytes, so 1024 of them would not fit in a payload
# (a radio text is at most 233 bytes, so a bridge never meets this).
inbound_texts = st.one_of(
    st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from("\n\t\r"),
            min_size=1, max_size=MAX_INBOUND_TEXT),
    st.sampled_from(["é" * (MAX_INBOUND_TEXT // 2), "x" * MAX_INBOUND_TEXT,
                     "🛰" * (MAX_INBOUND_TEXT // 4), '"\\' * (MAX_INBOUND_TEXT // 2)]),
).filter(inbound_text_ok)
bridge_ids = st.text(no_surrogate.filter(lambda c: c != "\x00"), min_size=1, max_size=64)
reasons = st.none() | st.text(no_surrogate.filter(lambda c: c != "\x00"), min_size=1,
                              max_size=MAX_REASON)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(no_surrogate, max_size=20))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(no_surrogate, max_size=8), children,
                                             max_size=3), max_leaves=8)
infos = st.dictionaries(st.text(no_surrogate, max_size=12).filter(lambda k: k != "state"),
                        json_values, max_size=5)
topic_levels = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="/"),
                       min_size=1, max_size=30)

new_messages = st.builds(NewMessage, st.uuids(), st.uuids(), node_ids, outbound_texts,
                         wire_times, wire_times)
status_reports = st.builds(
    StatusReport, st.uuids(),
    st.builds(Report, st.sampled_from([Status.TRANSMITTED, Status.DELIVERED, Status.FAILED]),
              reasons),
    report_times, st.none() | packet_ids, bridge_ids)
inbound_packets = st.builds(InboundPacket, node_ids, inbound_texts, packet_ids, bridge_ids,
                            wire_times, st.none() | st.integers(1, 2**32 - 1))
bridge_states = st.builds(BridgeState, topic_levels, st.sampled_from(["online", "offline"]),
                          infos)
# A node heard: its time is never later than its arrival (a later one is read as now).
heard_nodes = st.builds(Heard, node_ids, report_times,
                        st.none() | st.integers(-400, 400).map(lambda q: q / 4)
                        | st.sampled_from([-MAX_SNR, MAX_SNR, 0.01, -0.0]),
                        st.none() | st.integers(0, MAX_HOPS))
heard_bridge_ids = st.text(st.characters(exclude_categories=("Cs",),
                                         exclude_characters="/\x00"), min_size=1, max_size=64)


# --- how each side writes -----------------------------------------------------------------------

def write_status(report: StatusReport) -> bytes:
    """A report as the bridge writes it."""
    assert report.bridge_id is not None
    return status_payload(str(report.message_id), report.report.status.value,
                          bridge_id=report.bridge_id, at=report.at, packet_id=report.packet_id,
                          reason=report.report.reason)


def write_inbound(packet: InboundPacket) -> bytes:
    """A reply as the bridge writes it."""
    return inbound_payload(packet.from_node_id, packet.text, packet_id=packet.packet_id,
                           bridge_id=packet.bridge_id, rx_time=packet.rx_time,
                           reply_to=packet.reply_to_packet_id)


def as_read_by_the_bridge(message: NewMessage) -> Outbound:
    return Outbound(str(message.message_id), message.node_id, message.text,
                    message.expires_at.timestamp())


def assert_compact(payload: bytes) -> None:
    """Compact UTF-8 JSON, non-ASCII as is, within the size limit."""
    assert len(payload) <= MAX_PAYLOAD
    assert payload == json.dumps(json.loads(payload), ensure_ascii=False,
                                 separators=(",", ":")).encode()


# --- round trips ------------------------------------------------------------------------------

@PROPS
@given(roots, new_messages)
def test_outbound_message_round_trip(root: str, message: NewMessage) -> None:
    payload = outbound_payload(message)
    assert_compact(payload)
    topic = outbound_topic(root, "!0b0b0b0b", message.node_id)
    assert parse_outbound(topic, payload) == as_read_by_the_bridge(message)
    assert datetime.fromisoformat(json.loads(payload)["created_at"]) == message.created_at


@PROPS
@given(status_reports)
def test_status_report_round_trip(report: StatusReport) -> None:
    payload = write_status(report)
    assert_compact(payload)
    assert parse_status(payload) == report


@PROPS
@given(inbound_packets)
def test_inbound_text_round_trip(packet: InboundPacket) -> None:
    payload = write_inbound(packet)
    assert_compact(payload)
    assert parse_inbound(payload) == packet


@PROPS
@given(roots, bridge_states)
def test_bridge_state_round_trip(root: str, state: BridgeState) -> None:
    payload = state_payload(state.state, state.info)
    assert_compact(payload)
    assert parse_bridge_state(bridge_state_topic(root, state.bridge_id), payload) == state


@PROPS
@given(roots, heard_bridge_ids, st.lists(heard_nodes, max_size=150))
def test_nodes_heard_round_trip_in_chunks_that_fit(root: str, bridge_id: str,
                                                    nodes: list[Heard]) -> None:
    payloads = heard_payloads(nodes)
    read: list[Heard] = []
    for payload in payloads:
        assert_compact(payload)
        report = parse_heard(heard_topic(root, bridge_id), payload)
        assert report.bridge_id == bridge_id
        assert report.nodes
        read += report.nodes
    assert read == nodes
    # As few chunks as fit: no two neighbours would fit in one payload together.
    for first, second in itertools.pairwise(payloads):
        assert len(first) + len(second) - len(b'{"nodes":[]}') + 1 > MAX_PAYLOAD


def test_hundreds_of_nodes_take_a_few_payloads() -> None:
    at = datetime(2026, 11, 27, 14, 47, 12, 123456, tzinfo=UTC)
    payloads = heard_payloads(Heard(f"!{n:08x}", at, -12.75, 7) for n in range(500))
    assert 10 <= len(payloads) <= 12
    assert all(len(p) <= MAX_PAYLOAD for p in payloads)


def test_optional_fields_are_left_out_not_null() -> None:
    at = datetime(2026, 11, 27, 14, 47, 10, tzinfo=UTC)
    bare = json.loads(status_payload(str(uuid.uuid4()), "delivered", bridge_id="b", at=at))
    assert list(bare) == ["message_id", "status", "bridge_id", "at"]
    reply = json.loads(inbound_payload("!a1b2c3d4", "x", packet_id=1, bridge_id="b", rx_time=at,
                                       reply_to=None))
    assert "reply_to_packet_id" not in reply
    # 0 is the radio's "not a reply": left out like None, so it reads back as None.
    zero = inbound_payload("!a1b2c3d4", "x", packet_id=1, bridge_id="b", rx_time=at,
                           reply_to=0)
    assert parse_inbound(zero).reply_to_packet_id is None
    heard = json.loads(heard_payloads([Heard("!a1b2c3d4", at)])[0])
    assert heard == {"nodes": [{"node_id": "!a1b2c3d4", "last_heard": "2026-11-27T14:47:10Z"}]}
    # A reason is cut to what the gateway keeps.
    long = status_payload(str(uuid.uuid4()), "failed", bridge_id="b", at=at, reason="r" * 100)
    assert parse_status(long).report.reason == "r" * MAX_REASON


# --- docs/mqtt.md -----------------------------------------------------------------------------

TOPIC_HEADING = re.compile(r"## `(\{root\}/[^`]+)`")


def doc_examples() -> dict[str, tuple[str | None, bytes]]:
    """{topic heading: (the example's topic line or None, payload)}: the first fenced block
    under each topic's heading (later ones show other things, such as GET /healthz)."""
    examples: dict[str, tuple[str | None, bytes]] = {}
    heading: str | None = None
    block: list[str] | None = None
    for line in DOC.read_text().splitlines():
        if block is not None:
            if line.startswith("```"):
                if heading is not None and heading not in examples:
                    fields = dict(item.split(":", 1) for item in block if ":" in item
                                  and item.split(":", 1)[0] in ("topic", "payload"))
                    topic = fields["topic"].strip() if "topic" in fields else None
                    payload = fields["payload"].strip() if "payload" in fields else \
                        "\n".join(block).strip()
                    examples[heading] = (topic, payload.encode())
                block = None
            else:
                block.append(line)
        elif line.startswith("```"):
            block = []
        elif line.startswith("## "):
            match = TOPIC_HEADING.fullmatch(line.strip())
            heading = match.group(1) if match else None
    return examples


EXAMPLES = doc_examples()
OUTBOUND = outbound_topic("{root}", "{bridge_id}", "{node_id}")
STATUS = status_topic("{root}")
INBOUND = inbound_topic("{root}")
STATE = bridge_state_topic("{root}", "{bridge_id}")
HEARD = heard_topic("{root}", "{bridge_id}")


def test_the_docs_show_one_example_per_topic() -> None:
    assert set(EXAMPLES) == {OUTBOUND, STATUS, INBOUND, STATE, HEARD}


def assert_written_as_shown(written: bytes, shown: bytes) -> None:
    """The same keys in the same order, with the same JSON types and values; and the bytes."""
    ours, theirs = json.loads(written), json.loads(shown)
    assert list(ours) == list(theirs)
    assert [type(v) for v in ours.values()] == [type(v) for v in theirs.values()]
    assert ours == theirs
    assert written == shown


def test_outbound_example() -> None:
    topic, shown = EXAMPLES[OUTBOUND]
    fields: dict[str, Any] = json.loads(shown)
    assert topic == outbound_topic("kosmo", topic.split("/")[2], fields["target_node_id"])
    message = NewMessage(uuid.UUID(fields["message_id"]), uuid.uuid4(), fields["target_node_id"],
                         fields["text"], datetime.fromisoformat(fields["created_at"]),
                         datetime.fromisoformat(fields["expires_at"]))
    assert_written_as_shown(outbound_payload(message), shown)
    assert parse_outbound(topic, shown) == as_read_by_the_bridge(message)


def test_status_example() -> None:
    topic, shown = EXAMPLES[STATUS]
    assert topic in (None, status_topic("kosmo"))
    report = parse_status(shown)
    assert_written_as_shown(write_status(report), shown)


def test_inbound_example() -> None:
    topic, shown = EXAMPLES[INBOUND]
    assert topic in (None, inbound_topic("kosmo"))
    packet = parse_inbound(shown)
    assert_written_as_shown(write_inbound(packet), shown)


def test_bridge_state_example() -> None:
    topic, shown = EXAMPLES[STATE]
    assert topic in (None, bridge_state_topic("kosmo", "pi-north"))
    state = parse_bridge_state(bridge_state_topic("kosmo", "pi-north"), shown)
    assert state.bridge_id == "pi-north"
    assert_written_as_shown(state_payload(state.state, state.info), shown)


def test_nodes_heard_example() -> None:
    topic, shown = EXAMPLES[HEARD]
    assert topic == heard_topic("kosmo", "pi-north")
    report = parse_heard(topic, shown)
    assert report.bridge_id == "pi-north"
    assert [shown] == heard_payloads(report.nodes)
    assert_written_as_shown(heard_payloads(report.nodes)[0], shown)


# --- a bridge's pace ----------------------------------------------------------------------------

def test_pace_takes_its_defaults_from_an_older_bridge_and_refuses_nonsense() -> None:
    assert wire.parse_pace({}) == wire.Pace()
    pace = wire.parse_pace({"credit": 3, "min_gap_s": 0.1, "duty_cycle_percent": 10,
                            "window_s": 3600, "airtime_used_s": 12.5, "estimated_wait_s": 4,
                            "region": "EU_868", "modem_preset": "LONG_FAST", "time_scale": 20})
    assert pace.time_scale == 20.0
    assert (pace.credit, pace.min_gap_s, pace.duty_cycle, pace.airtime_used_s, pace.busy_s) == (
        3, 0.1, 0.1, 12.5, 4.0)
    for bad in [{"credit": 0}, {"credit": True}, {"credit": 1.5}, {"min_gap_s": -1},
                {"duty_cycle_percent": 0}, {"duty_cycle_percent": 101}, {"window_s": "x"},
                {"airtime_used_s": float("nan")}, {"region": 7}, {"time_scale": 0}]:
        with pytest.raises(wire.BadPayload):
            wire.parse_pace(bad)
