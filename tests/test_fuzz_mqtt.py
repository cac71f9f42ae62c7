"""Hypothesis-generated MQTT payloads: the parsers and the live consumers never break on them.

- The pure parsers (``kosmo.wire``: the gateway's, and ``parse_outbound`` on the bridge) only
  ever return a usable value or raise their documented error (``BadPayload``, ``BadOutbound``);
  what they return can be stored (PostgreSQL text: no NUL, no lone surrogate) and published.
- The gateway's inbound consumer (``{root}/mesh/status``, ``{root}/mesh/inbound``,
  ``{root}/bridge/+/state``, ``{root}/bridge/+/heard``) takes a batch of generated payloads
  without dying or logging an ERROR, dead-letters exactly the unusable ones, stores a coverage
  row for every (bridge, node) the usable nodes-heard reports name, and still handles a good
  report, reply, bridge state and nodes-heard report afterwards.
- The bridge (its own topic ``{root}/bridge/{bridge_id}/outbound/{node_id}``) takes a batch of
  generated payloads and still puts a good message on the (simulated) air afterwards.

Payloads mix random bytes, invalid UTF-8, JSON of wrong types, nested junk, payloads over
4 KiB and well-shaped JSON with boundary values (huge and negative numbers, NaN and Infinity
literals, long strings, NUL and lone surrogates, far-off times, unknown node and message ids),
on right and wrong topics. Generation is derandomized (no example database), so a CI run
always sends the same wire.
"""

from __future__ import annotations

import json
import math
import re
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import pytest
import trio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from kosmo import wire
from tests.conftest import SANCTUARY, Gateway, db_value
from tests.mesh import FakeBridgeLink
from tests.test_bridge import BridgeRunner, Mesh, SimRunner, make_settings, outbound

T = TypeVar("T")

PURE = settings(max_examples=1500, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])
LIVE_BATCH = 300  # payloads published to the live gateway, and to the live bridge

NODE_ID = re.compile(r"![0-9a-f]{8}")
KNOWN_NODE = "!a1b2c3d4"
STARTED = time.time()  # read once: a drawn example must come out the same when replayed


# --- strategies -------------------------------------------------------------------------------

def storable(text: str) -> bool:
    """PostgreSQL text takes no NUL; UTF-8 has no lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


def topic_level_ok(text: str) -> bool:
    """What a broker takes in a topic level (MQTT 3.1.1 4.7.3; mosquitto disconnects a client
    that publishes anything else): UTF-8, no wildcard or separator, no control character or
    Unicode non-character."""
    return storable(text) and not any(
        c in "/+#" or unicodedata.category(c) == "Cc" or 0xFDD0 <= ord(c) <= 0xFDEF
        or ord(c) & 0xFFFE == 0xFFFE for c in text)


# Text of any code point, lone surrogates included (JSON can carry them as \ud800 escapes).
any_char = st.characters(exclude_categories=()) | st.characters(categories=["Cs"])
strings = st.one_of(
    st.text(max_size=20), st.text(any_char, max_size=80),
    st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "x\udfff", "é", "\n", "online",
                     "x" * 64, "x" * 65, "é" * 600, "y" * 1025, "🛰" * 257]))
huge_ints = st.sampled_from([-(2**63), -1, 0, 1, 2**31, 2**32 - 1, 2**32, 2**53 + 1, 2**63,
                             2**64, 10**30, 10**400, -(10**400)])
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e300, -1e300, 0.5, -0.0])
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), huge_ints, floats, strings)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)

# Valid values, boundary ones included.
uuids = st.uuids().flatmap(lambda u: st.sampled_from(
    [str(u), str(u).upper(), f"{{{u}}}", f"urn:uuid:{u}", u.hex]))
good_nodes = st.one_of(st.sampled_from([KNOWN_NODE, "!A1B2C3D4", "!00000000", "!ffffffff"]),
                       st.integers(0, 2**32 - 1).map(lambda n: f"!{n:08x}"),
                       st.integers(0, 2**32 - 1).map(lambda n: f"!{n:08X}"))
good_packet_ids = st.integers(0, 2**32 - 1) | st.sampled_from([0, 1, 2**32 - 1])
offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
good_times = st.one_of(
    st.sampled_from(["2026-11-27T14:47:10Z", "2026-11-27T14:47:10.164774+02:00",
                     "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
                     "0001-01-01T00:00:00-01:00", "9999-12-31T23:59:59+01:00"]),
    st.datetimes(timezones=offsets).map(datetime.isoformat),
    st.integers(-62135596800, 253402300799),  # epoch seconds of years 1 to 9999
    st.floats(0, 4e9))
good_texts = st.text(min_size=1, max_size=40).filter(storable) | st.sampled_from(
    ["é" * 512, "x" * 1024, "🛰", "line\nbreak", "\t", " "])
good_bridge_ids = st.text(min_size=1, max_size=64).filter(storable) | st.sampled_from(
    ["x" * 64, "!b0000001", "pi-north", "é"])

# Invalid values: wrong types, out of range, almost right.
bad_ids = json_values | st.sampled_from(["", "not-a-uuid", "8a6e0804-2bd0-4672-b79d-d97358571b1",
                                         " 8a6e0804-2bd0-4672-b79d-d97358571b11\n"])
bad_nodes = json_values | st.from_regex(r"^![0-9a-fA-F]{8}$") | st.sampled_from(
    ["a1b2c3d4", "!a1b2c3d", "!a1b2c3d4e", "!a1b2c3dg", "!a1b2c3d4\n", "!a1b2c3d4 ",
     " !a1b2c3d4", "!\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "!0x1b2c3d", ""])
bad_packet_ids = json_values | huge_ints | floats | st.sampled_from(
    [-1, 2**32, 2**63, 2**64, 10**400, -(10**400), 1.5, True, "7", None])
bad_times = json_values | huge_ints | floats | st.integers() | st.sampled_from(
    ["2026-11-27T14:47:10", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
     "2026-02-30T00:00:00Z", "yesterday", "2026-11-27T14:47:10Z\x00", "\uff11\uff12", "",
     -62135596801, 253402300800, None]) | st.datetimes().map(datetime.isoformat)
bad_texts = json_values | st.sampled_from(["", "\x00", "a\x00b", "\ud800", "x\udfff",
                                           "é" * 513, "y" * 1025])
bad_bridge_ids = json_values | st.sampled_from(["", "x" * 65, "\x00", "a\x00", "\ud800"])
bad_statuses = json_values | st.sampled_from(["pending", "queued", "expired", "TRANSMITTED",
                                              "", " delivered"])

bridge_ids = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1,
                     max_size=70).filter(topic_level_ok)  # for topics


@st.composite
def shaped(draw: st.DrawFn, good: dict[str, st.SearchStrategy[Any]],
           bad: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A JSON object of the contract's fields: valid ones, up to two of them spoilt, maybe
    one missing, maybe extra members."""
    value = draw(st.fixed_dictionaries(good))
    names = draw(st.permutations(sorted(good)))
    spoilt = draw(st.sampled_from([0, 0, 0, 0, 1, 1, 2]))  # most of them valid
    for name in names[:spoilt]:
        value[name] = draw(bad[name])
    if draw(st.sampled_from([False, False, False, True])):
        del value[names[-1]]
    if draw(st.sampled_from([False, False, False, True])):
        value.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return value


def status_objects(known_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    known = st.sampled_from(known_ids) if known_ids else uuids
    ids = st.one_of(known, known, uuids)  # most of them about messages the gateway knows
    return shaped(
        {"message_id": ids, "status": st.sampled_from(["transmitted", "delivered", "failed"]),
         "reason": st.none() | good_texts, "bridge_id": good_bridge_ids,
         "packet_id": st.none() | good_packet_ids, "at": good_times},
        {"message_id": bad_ids, "status": bad_statuses,
         "reason": json_values | st.sampled_from(["\x00", "\ud800"]),
         "bridge_id": bad_bridge_ids, "packet_id": bad_packet_ids, "at": bad_times})


inbound_objects = shaped(
    {"from_node_id": good_nodes, "text": good_texts, "packet_id": good_packet_ids,
     "bridge_id": good_bridge_ids, "rx_time": good_times,
     "reply_to_packet_id": st.none() | good_packet_ids},
    {"from_node_id": bad_nodes, "text": bad_texts, "packet_id": bad_packet_ids,
     "bridge_id": bad_bridge_ids, "rx_time": bad_times, "reply_to_packet_id": bad_packet_ids})
state_objects = shaped(
    {"state": st.sampled_from(["online", "offline"]), "version": json_values},
    {"state": json_values | st.sampled_from(["confused", "", "ONLINE"]),
     "version": json_values})

heard_entries = shaped(
    {"node_id": good_nodes, "last_heard": good_times,
     "snr": st.none() | st.floats(-100, 100) | st.sampled_from([1e-300, -5e-324, -100, 100]),
     "hops_away": st.none() | st.integers(0, 7)},
    {"node_id": bad_nodes, "last_heard": bad_times,
     "snr": json_values | floats | huge_ints | st.sampled_from([100.5, -101, True, "5"]),
     "hops_away": bad_packet_ids | st.sampled_from([8, -1, True, 1.0, 2**63])})
heard_objects = st.fixed_dictionaries(
    {"nodes": st.lists(heard_entries, max_size=6) | json_values})


def outbound_objects(node: str) -> st.SearchStrategy[dict[str, Any]]:
    """An outbound message as published on ``.../outbound/{node}``."""
    soon = st.integers(-3600, 36000).map(lambda s: STARTED + s)  # past ones expired
    return shaped(
        {"message_id": uuids, "target_node_id": st.sampled_from([node, node.upper()]),
         "text": good_texts, "created_at": good_times,
         "expires_at": soon | soon.map(lambda t: datetime.fromtimestamp(t, UTC).isoformat())},
        {"message_id": bad_ids, "target_node_id": bad_nodes | good_nodes, "text": bad_texts,
         "created_at": bad_times, "expires_at": bad_times})


@st.composite
def encoded(draw: st.DrawFn, objects: st.SearchStrategy[Any]) -> bytes:
    """An object as bytes: ASCII JSON, raw UTF-8 (invalid where it holds surrogates), padded
    past 4 KiB, or cut short."""
    value = draw(objects)
    how = draw(st.sampled_from(["ascii"] * 4 + ["raw"] * 2 + ["oversize", "truncated"]))
    if how == "oversize" and isinstance(value, dict):
        value = {**value, "pad": "p" * draw(st.integers(4097, 6000))}
    if how == "ascii":
        return json.dumps(value).encode()
    raw = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return raw[:draw(st.integers(0, len(raw)))] if how == "truncated" else raw


junk = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=50).map(lambda b: b"\xff" + b),  # never UTF-8
    st.sampled_from([b"", b"{", b"null", b"[]", b"\"text\"", b"NaN", b"{\"a\": NaN}",
                     b"{\"a\": Infinity}", b"{\"a\": 1e400}", b"\xef\xbb\xbf{}", b"{}\x00",
                     b"\xed\xa0\x80", b"{\"a\": \"\\ud800\"}", b"x" * 4097, b" " * 5000]),
    st.integers(1, 2100).map(lambda n: b"[" * n + b"]" * n),  # nested junk
    st.integers(1, 800).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    encoded(json_values))


@st.composite
def gateway_messages(draw: st.DrawFn, root: str, known_ids: list[str]) -> tuple[str, bytes]:
    """(topic, payload) for the gateway: mostly a payload shaped for its topic, some junk,
    some on topics next to the subscribed ones."""
    kind = draw(st.sampled_from(["status"] * 4 + ["inbound"] * 4 + ["state"] * 2
                                + ["heard"] * 2 + ["near"]))
    if kind == "heard":
        topic, objects = wire.heard_topic(root, draw(bridge_ids)), heard_objects
    elif kind == "status":
        topic, objects = wire.status_topic(root), status_objects(known_ids)
    elif kind == "inbound":
        topic, objects = wire.inbound_topic(root), inbound_objects
    elif kind == "state":
        topic, objects = wire.bridge_state_topic(root, draw(bridge_ids)), state_objects
    else:
        topic, objects = draw(st.sampled_from([
            f"{root}/mesh/status/x", f"{root}/mesh/statusx", f"{root}/mesh",
            f"{root}/mesh/inbound/!a1b2c3d4", f"{root}/bridge/a/b/state",
            f"{root}/bridge/x/stat", f"{root}/bridge//state", f"{root}/bridge/a/b/heard",
            f"{root}/bridge/heard"])), inbound_objects
    if draw(st.sampled_from([True] + [False] * 4)):
        return topic, draw(junk)
    if draw(st.sampled_from([True] + [False] * 7)):  # the shape of another topic
        objects = draw(st.sampled_from([status_objects(known_ids), inbound_objects]))
    return topic, draw(encoded(objects))


@st.composite
def outbound_messages(draw: st.DrawFn, root: str, bridge_id: str = "br") -> tuple[str, bytes]:
    """(topic, payload) for the bridge ``bridge_id``: mostly a node's topic of its own with a
    message for that node; a few on topics it does not subscribe to (another bridge's, the
    old shared one), which the broker never gives it."""
    if draw(st.sampled_from([True] + [False] * 4)):
        node = draw(bad_nodes.filter(lambda n: isinstance(n, str) and n and topic_level_ok(n)))
    else:
        node = draw(good_nodes)
    mine = wire.outbound_topic(root, bridge_id, "")
    topic = draw(st.sampled_from([mine + node] * 12 + [
        mine + KNOWN_NODE, mine + "x/y", mine.rstrip("/"), mine,
        wire.outbound_topic(root, "other", KNOWN_NODE), f"{root}/mesh/outbound/{node}"]))
    if draw(st.sampled_from([True] + [False] * 4)):
        return topic, draw(junk)
    return topic, draw(encoded(outbound_objects(node)))


def draw_batch(strategy: st.SearchStrategy[T], count: int) -> list[T]:
    """``count`` examples of ``strategy``, the same ones on every run (derandomized)."""
    drawn: list[T] = []

    @settings(max_examples=count, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: T) -> None:
        drawn.append(example)

    collect()
    return drawn


# --- what a parsed value must be --------------------------------------------------------------

def packet_id_ok(value: object, *, optional: bool) -> bool:
    if value is None:
        return optional
    return type(value) is int and 0 <= value <= 2**32 - 1


def assert_report_ok(report: Any) -> None:
    assert isinstance(report.message_id, uuid.UUID)
    assert report.report.status.value in ("transmitted", "delivered", "failed")
    reason = report.report.reason
    assert reason is None or (isinstance(reason, str) and len(reason) <= 64 and storable(reason))
    assert report.at.tzinfo is not None
    assert report.at <= datetime.now(UTC)
    assert packet_id_ok(report.packet_id, optional=True)
    assert isinstance(report.bridge_id, str)
    assert 1 <= len(report.bridge_id) <= 64
    assert storable(report.bridge_id)


def assert_packet_ok(packet: wire.InboundPacket) -> None:
    assert NODE_ID.fullmatch(packet.from_node_id), packet.from_node_id
    assert packet.text
    assert storable(packet.text)
    assert len(packet.text.encode()) <= wire.MAX_INBOUND_TEXT
    assert packet_id_ok(packet.packet_id, optional=False)
    assert packet_id_ok(packet.reply_to_packet_id, optional=True)
    assert 1 <= len(packet.bridge_id) <= 64
    assert storable(packet.bridge_id)
    assert packet.rx_time.tzinfo is not None


def strict_json(value: Any) -> str:
    """JSON as browsers read it: no NaN or Infinity."""
    return json.dumps(value, allow_nan=False)


# --- the pure parsers -------------------------------------------------------------------------

heard_topics = st.one_of(
    bridge_ids.map(lambda b: f"kosmo/bridge/{b}/heard"),
    st.text(any_char, max_size=70).map(lambda b: f"kosmo/bridge/{b}/heard"),
    st.sampled_from(["kosmo/bridge//heard", "kosmo/bridge/x/state", "heard", ""]))
state_topics = st.one_of(
    bridge_ids.map(lambda b: f"kosmo/bridge/{b}/state"), st.text(max_size=70).map(
        lambda b: f"kosmo/bridge/{b}/state"),
    st.text(any_char, max_size=40),
    st.sampled_from(["kosmo/bridge//state", "kosmo/bridge/x/stat", "kosmo/bridge/state",
                     "state", "", "/", "kosmo/mesh/status"]))


def outcome(parse: Callable[..., T], *args: Any, error: type[Exception]) -> T | Exception:
    """What ``parse`` returned, or the documented error it raised (any other one propagates)."""
    try:
        return parse(*args)
    except error as exc:
        return exc


@PURE
@given(gateway_messages("kosmo", []) | st.tuples(state_topics, junk))
def test_gateway_parsers_return_usable_values_or_raise_bad_payload(
        published: tuple[str, bytes]):
    topic, payload = published
    report = outcome(wire.parse_status, payload, error=wire.BadPayload)
    if isinstance(report, wire.BadPayload):
        assert str(report)
    else:
        assert_report_ok(report)
    packet = outcome(wire.parse_inbound, payload, error=wire.BadPayload)
    if isinstance(packet, wire.BadPayload):
        assert str(packet)
    else:
        assert_packet_ok(packet)
    state = outcome(wire.parse_bridge_state, topic, payload, error=wire.BadPayload)
    if isinstance(state, wire.BadPayload):
        assert str(state)
    else:
        assert state.bridge_id
        assert state.state in ("online", "offline")
        strict_json(state.info)  # shown as it is in GET /healthz


@PURE
@given(st.tuples(heard_topics, encoded(heard_objects) | junk))
def test_parse_heard_returns_storable_nodes_or_raises_bad_payload(
        published: tuple[str, bytes]):
    topic, payload = published
    report = outcome(wire.parse_heard, topic, payload, error=wire.BadPayload)
    if isinstance(report, wire.BadPayload):
        assert str(report)
        return
    assert 1 <= len(report.bridge_id) <= 64
    assert storable(report.bridge_id)
    for node in report.nodes:
        assert NODE_ID.fullmatch(node.node_id), node.node_id
        assert node.last_heard.tzinfo is not None
        assert node.last_heard <= datetime.now(UTC)
        assert node.snr is None or (type(node.snr) is float and -100 <= node.snr <= 100
                                    and node.snr == round(node.snr, 2))
        assert node.hops_away is None or (type(node.hops_away) is int
                                          and 0 <= node.hops_away <= 7)
    # What the gateway read, the bridge's encoder writes again, and it reads the same.
    again = [n for p in wire.heard_payloads(report.nodes)
             for n in wire.parse_heard(topic, p).nodes]
    assert again == list(report.nodes)


@PURE
@given(outbound_messages("kosmo") | st.tuples(st.text(any_char, max_size=40), junk))
def test_parse_outbound_returns_a_sendable_message_or_raises_bad_outbound(
        published: tuple[str, bytes]):
    message = outcome(wire.parse_outbound, *published, error=wire.BadOutbound)
    if isinstance(message, wire.BadOutbound):
        assert str(message)
        # The id it carries (to report the message failed) is a UUID in canonical form.
        assert message.message_id is None or uuid.UUID(message.message_id).urn[9:] == \
            message.message_id
        return
    assert isinstance(message, wire.Outbound)
    assert uuid.UUID(message.message_id).urn[9:] == message.message_id
    assert NODE_ID.fullmatch(message.target), message.target
    assert message.text
    assert storable(message.text.replace("\x00", ""))  # NUL is fine on the air
    assert math.isfinite(message.expires_at)
    # What was read is what a well-formed payload with those values reads as.
    again = wire.parse_outbound(wire.outbound_topic("kosmo", "br", message.target), json.dumps({
        "message_id": message.message_id, "target_node_id": message.target,
        "text": message.text, "expires_at": message.expires_at}).encode())
    assert again == message


# --- the live gateway -------------------------------------------------------------------------

def expected_dead_letter(root: str, topic: str, payload: bytes, known: set[uuid.UUID]) -> bool:
    """Whether the design says the gateway keeps this message as a dead letter."""
    try:
        if topic == wire.status_topic(root):
            return wire.parse_status(payload).message_id not in known
        if topic == wire.inbound_topic(root):
            wire.parse_inbound(payload)
            return False
        parts = topic.split("/")
        if len(parts) == 4 and parts[1] == "bridge" and parts[3] == "heard":  # subscribed
            wire.parse_heard(topic, payload)
            return False
        if len(parts) == 4 and parts[1] == "bridge" and parts[3] == "state":  # subscribed
            if payload:
                wire.parse_bridge_state(topic, payload)
            else:
                wire.parse_bridge_id(topic)
        return False  # any other topic is not subscribed: never delivered
    except wire.BadPayload:
        return True


def gateway_regressions(root: str, known_id: str) -> list[tuple[str, bytes]]:
    """Payloads that once stopped the gateway or leaked into its answers, sent every run."""
    at = "2026-11-27T14:47:10Z"
    report = {"message_id": known_id, "status": "failed", "bridge_id": "b", "at": at}
    reply = {"from_node_id": KNOWN_NODE, "text": "hi", "packet_id": 9, "bridge_id": "b",
             "rx_time": at}
    status, inbound = wire.status_topic(root), wire.inbound_topic(root)
    return [(topic, json.dumps(value).encode()) for topic, value in [
        (status, {**report, "status": []}),  # unhashable: a TypeError
        (status, {**report, "reason": "a\x00b"}),  # NUL: PostgreSQL refuses the text
        (status, {**report, "bridge_id": "\ud800"}),  # not UTF-8
        (status, {**report, "at": "0001-01-01T00:00:00+01:00"}),  # before year 1 in UTC
        (inbound, {**reply, "bridge_id": "b\x00"}),
        (inbound, {**reply, "rx_time": "9999-12-31T23:59:59-01:00"}),  # after year 9999
        (inbound, {**reply, "from_node_id": "!a1b2c3d4\n"}),  # one node under two ids
        (wire.bridge_state_topic(root, "nan"), {"state": "online", "load": math.nan}),
        (wire.bridge_state_topic(root, "inf"), {"state": "online", "load": math.inf}),
    ]] + [(wire.bridge_state_topic(root, "big"), b'{"state": "online", "load": 1e400}')]


async def wait_for(condition: Callable[[], object], timeout: float = 15) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


@pytest.fixture
async def link(mqtt_url: str, topic_root: str) -> AsyncIterator[FakeBridgeLink]:
    fake = FakeBridgeLink(mqtt_url, topic_root)
    yield fake
    fake.close()


async def queued(gateway: Gateway, sql: Any, text: str) -> str:
    response = await gateway.send(SANCTUARY, KNOWN_NODE, text)
    assert response.status_code == 201, response.text
    message_id: str = response.json()["message_id"]
    await wait_for(lambda: db_value(sql, "SELECT status FROM messages WHERE id = %s",
                                    message_id) == "queued")
    return message_id


@pytest.mark.usefixtures("online_bridge")  # messages are handed to a bridge while one is online
async def test_gateway_survives_generated_payloads(gateway: Gateway, link: FakeBridgeLink, sql,
                                                   topic_root: str):
    known = [await queued(gateway, sql, f"known {i}") for i in range(3)]
    batch = draw_batch(gateway_messages(topic_root, known), LIVE_BATCH) + \
        gateway_regressions(topic_root, known[0])
    known_ids = {uuid.UUID(k) for k in known}
    dead = sum(expected_dead_letter(topic_root, t, p, known_ids) for t, p in batch)
    replies = set()
    covered: set[tuple[str, str]] = set()
    for topic, payload in batch:
        if topic == wire.inbound_topic(topic_root):
            try:
                packet = wire.parse_inbound(payload)
            except wire.BadPayload:
                continue
            replies.add((packet.from_node_id, packet.packet_id))
        elif wire.is_heard_topic(topic) and not expected_dead_letter(topic_root, topic, payload,
                                                                     known_ids):
            report = wire.parse_heard(topic, payload)
            covered |= {(report.bridge_id, n.node_id) for n in report.nodes}

    def publish_all() -> None:
        for topic, payload in batch:
            link.publish(topic, payload)

    await trio.to_thread.run_sync(publish_all)

    # Still alive: a good report, reply and bridge state are handled after the batch.
    marker = await queued(gateway, sql, "after the fuzz")
    link.status(marker, "transmitted", packet_id=4_000_000_001)
    link.reply("!0badf00d", "still here", 4_000_000_002)
    link.state("online", bridge_id="!b00000ff", retain=False)
    link.publish(wire.heard_topic(topic_root, "!b00000ff"), wire.heard_payloads(
        [wire.Heard("!0badf00d", datetime.now(UTC), 1.25, 2)])[0])
    await wait_for(lambda: db_value(sql, "SELECT status FROM messages WHERE id = %s",
                                    marker) == "transmitted")
    await wait_for(lambda: db_value(sql, "SELECT count(*) FROM messages WHERE direction ="
                                         " 'inbound' AND packet_id = 4000000002") == 1)

    async def healthz() -> dict[str, Any]:
        response = await gateway.client.get("/healthz")
        assert response.status_code == 200
        body: dict[str, Any] = response.json()
        strict_json(body)  # readable by a browser: no NaN or Infinity from a bridge state
        return body

    with trio.fail_after(15):
        while "!b00000ff" not in [b["bridge_id"] for b in (await healthz())["bridges"]]:
            await trio.sleep(0.02)
    # The unusable ones, and only those, are dead letters (the marker's are all handled).
    await wait_for(lambda: db_value(sql, "SELECT count(*) FROM dead_letters") == dead)
    assert gateway.running.consumer.dead_letters == dead
    assert db_value(sql, "SELECT max(length(payload)) FROM dead_letters") <= wire.MAX_PAYLOAD
    inbound = db_value(sql, "SELECT count(*) FROM messages WHERE direction = 'inbound'")
    assert inbound == len(replies | {("!0badf00d", 4_000_000_002)})
    coverage = {(b, n) for b, n in sql.execute("SELECT bridge_id, node_id FROM coverage")}
    assert coverage == covered | {("!b00000ff", "!0badf00d")}
    assert (await gateway.client.get("/readyz")).status_code == 200


# --- the live bridge --------------------------------------------------------------------------

def bridge_regressions(root: str, bridge_id: str) -> list[tuple[str, bytes]]:
    """Payloads that once stopped the bridge, sent every run."""
    topic = wire.outbound_topic(root, bridge_id, KNOWN_NODE)
    return [(topic, json.dumps({**outbound(KNOWN_NODE), "expires_at": expires}).encode())
            for expires in (math.nan, math.inf, -math.inf, 10**400)]


def readable_rejects(root: str, bridge_id: str, batch: list[tuple[str, bytes]]) -> set[str]:
    """Ids of the messages the bridge receives, cannot use, but can name: each must be reported
    ``failed``/``invalid_payload`` (ids seen more than once are left out: which copy counts
    depends on how the bridge batches them)."""
    prefix = wire.outbound_topic(root, bridge_id, "")
    seen: Counter[str] = Counter()
    rejected = set()
    for topic, payload in batch:
        if not topic.startswith(prefix) or "/" in topic[len(prefix):]:
            continue  # not under the bridge's subscription
        message = outcome(wire.parse_outbound, topic, payload, error=wire.BadOutbound)
        if isinstance(message, wire.Outbound):
            seen[message.message_id] += 1
        elif isinstance(message, wire.BadOutbound) and message.message_id is not None:
            seen[message.message_id] += 1
            rejected.add(message.message_id)
    return {m for m in rejected if seen[m] == 1}


async def test_bridge_survives_generated_payloads(nursery: trio.Nursery, tmp_path: Path,
                                                  mqtt_url: str, topic_root: str):
    mesh = Mesh(mqtt_url, topic_root)
    try:
        with trio.fail_after(10):
            await mesh.seen.subscribed.wait()
        sim = await SimRunner().start(nursery)
        runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
        await runner.start(nursery)
        regressions = bridge_regressions(topic_root, mesh.bridge_id)
        batch = draw_batch(outbound_messages(topic_root, mesh.bridge_id), LIVE_BATCH) + \
            regressions

        def publish_all() -> None:
            for topic, payload in batch:
                mesh.link.publish(topic, payload)

        await trio.to_thread.run_sync(publish_all)
        # The unusable ones it can name are answered failed, once each.
        rejects = readable_rejects(topic_root, mesh.bridge_id, batch)
        assert len(rejects) >= len(regressions)
        await wait_for(lambda: all(mesh.statuses(m) for m in rejects))
        assert {(m, tuple(mesh.status_names(m))) for m in rejects} == {
            (m, ("failed",)) for m in rejects}
        assert {mesh.statuses(m)[0]["reason"] for m in rejects} == {"invalid_payload"}

        good = outbound(KNOWN_NODE, "after the fuzz")
        await mesh.send(good)
        await wait_for(lambda: "delivered" in mesh.status_names(good["message_id"]), 25)
        assert sim.texts_on_air("after the fuzz") == 1
        assert runner.bridge.ready
        assert await runner.stop() < 5
    finally:
        mesh.close()
