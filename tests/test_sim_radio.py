"""The simulated radio: its state machine alone, then through the real meshtastic library and CLI.

The sans-IO tests drive ``SimRadio`` as a client would and read its frames back. The TCP tests
connect the library's own ``TCPInterface`` (built in a worker thread: its constructor blocks
until the config download completes) and run the stock ``meshtastic`` command. Simulated time
runs fast (``time_scale``) so a 2 s firmware rule takes milliseconds of wall time.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from meshtastic.protobuf import mesh_pb2, portnums_pb2
from meshtastic.tcp_interface import TCPInterface
from pubsub import pub

from bridge.sim import (
    Reach,
    SimConfig,
    SimNode,
    SimRadio,
    make_nodes,
    serve_radio,
    serve_sim_radio,
)
from bridge.sim.protocol import START1, FrameDecoder, encode_frame, parse_node_id
from kosmo.airtime import PRESETS, retransmission_delay
from kosmo.airtime import data_airtime as packet_airtime

ROOT = Path(__file__).resolve().parents[1]
MESHTASTIC = str(Path(sys.executable).with_name("meshtastic"))
# The CLI's --info asks PyPI for a newer version: send that to a closed port instead.
CLI_ENV = {**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
ME = 0x0A0A0A0A
A = 0xA1B2C3D4  # one hop away: implicit ACK, then the node's ACK
DIRECT = 0xA2B3C4D5  # a direct neighbour: only the node's ACK
GHOST = 0xDEADBEEF  # known, unreachable
SHY = 0x5EE0F00D  # known, silent: relayed, never answers
TEXT = portnums_pb2.PortNum.TEXT_MESSAGE_APP
ROUTING = portnums_pb2.PortNum.ROUTING_APP
Err = mesh_pb2.Routing.Error
FAST = 50.0  # time scale for the TCP tests


def config(**kw: Any) -> SimConfig:
    nodes = make_nodes(3, unreachable=[GHOST], silent=[SHY])
    return SimConfig(**{"nodes": nodes, "seed": 7, **kw})


# -- driving the state machine directly --------------------------------------------------------


class Phone:
    """A client of a ``SimRadio``: ToRadio frames in, FromRadio messages out."""

    def __init__(self, radio: SimRadio, now: float = 0.0, *, handshake: bool = True) -> None:
        self.radio = radio
        self.decoder = FrameDecoder()
        self.next_id = 1000
        radio.connect(now)
        if handshake:  # packets flow only after the config download
            self.send(now, want_config_id=1)
            self.take()

    def send(self, now: float, **fields: Any) -> None:
        self.radio.receive(mesh_pb2.ToRadio(**fields).SerializeToString(), now)

    def text(self, now: float, text: str = "hello", to: int = A, *, want_ack: bool = True,
             reply_id: int = 0) -> int:
        self.next_id += 1
        pkt = mesh_pb2.MeshPacket(id=self.next_id, to=to, want_ack=want_ack, hop_limit=3)
        pkt.decoded.portnum = TEXT
        pkt.decoded.payload = text.encode()
        if reply_id:
            pkt.decoded.reply_id = reply_id
        self.send(now, packet=pkt)
        return self.next_id

    def take(self) -> list[Any]:
        msgs = []
        for payload in self.decoder.feed(self.radio.take_outgoing()):
            msg = mesh_pb2.FromRadio()
            msg.ParseFromString(payload)
            msgs.append(msg)
        return msgs

    def run_until(self, now: float) -> list[Any]:
        self.radio.advance(now)
        return self.take()


def routing(msgs: list[Any], request_id: int) -> list[tuple[int, str]]:
    """(sender, error name) of each routing packet about ``request_id``."""
    out = []
    for m in msgs:
        if m.HasField("packet") and m.packet.decoded.portnum == ROUTING \
                and m.packet.decoded.request_id == request_id:
            r = mesh_pb2.Routing()
            r.ParseFromString(m.packet.decoded.payload)
            assert r.HasField("error_reason")  # present even for NONE: clients index it
            out.append((getattr(m.packet, "from"), Err.Name(r.error_reason)))
    return out


def statuses(msgs: list[Any], packet_id: int) -> list[int]:
    return [m.queueStatus.res for m in msgs
            if m.HasField("queueStatus") and m.queueStatus.mesh_packet_id == packet_id]


def test_config_dump_follows_the_firmware_order():
    phone = Phone(SimRadio(config()), handshake=False)
    phone.send(0.0, want_config_id=4242)
    msgs = phone.take()
    kinds = [m.WhichOneof("payload_variant") for m in msgs]
    assert kinds[:3] == ["my_info", "node_info", "metadata"]
    assert kinds[3:11] == ["channel"] * 8
    assert kinds[-1] == "config_complete_id"
    assert msgs[-1].config_complete_id == 4242
    assert [m.id for m in msgs] == list(range(1, len(msgs) + 1))
    lora = next(m.config.lora for m in msgs if m.config.HasField("lora"))
    assert (lora.hop_limit, lora.region, lora.modem_preset) == (3, 3, 0)  # EU_868 LONG_FAST
    nums = [m.node_info.num for m in msgs if m.HasField("node_info")]
    assert nums == [ME, A, DIRECT, 0xA3B4C5D6, GHOST, SHY]
    phone.send(1.0, want_config_id=69420)  # the library's noNodes: our node only
    assert [m.node_info.num for m in phone.take() if m.HasField("node_info")] == [ME]


def test_delivery_to_a_node_behind_a_relay():
    radio = SimRadio(config(latency=2.0))
    phone = Phone(radio)
    pid = phone.text(0.0, "hi there")
    assert statuses(phone.take(), pid) == [0]
    airtime = packet_airtime(2 + 2 + 8 + 2, PRESETS["LONG_FAST"])
    assert radio.next_deadline() == pytest.approx(airtime)
    msgs = phone.run_until(airtime + 1.99)
    assert routing(msgs, pid) == []  # the rebroadcast is heard after the latency
    msgs = phone.run_until(airtime + 6.0)
    assert routing(msgs, pid) == [(ME, "NONE"), (A, "NONE")]
    reply = next(m.packet for m in msgs if m.packet.decoded.portnum == TEXT)
    assert (getattr(reply, "from"), reply.to, reply.decoded.reply_id) == (A, ME, pid)
    assert reply.decoded.payload == b"ack: hi there"
    assert radio.stats.transmissions[pid] == 1
    assert radio.stats.transmissions_by_text["hi there"] == 1
    assert radio.stats.accepted_by_text == {"hi there": 1}
    assert radio.stats.delivered_by_text == {"hi there": 1}
    assert radio.stats.acks == {"implicit": 1, "delivered": 1}


def test_a_text_handed_over_twice_counts_twice_a_retransmission_does_not():
    radio = SimRadio(config())
    phone = Phone(radio)
    phone.text(0.0, "again")
    phone.text(3.0, "again")  # a new packet: the same text sent a second time
    phone.text(6.0, "lost", to=GHOST)
    phone.run_until(600.0)
    assert radio.stats.accepted_by_text == {"again": 2, "lost": 1}
    assert radio.stats.transmissions_by_text["lost"] == 4
    assert radio.stats.heard_by_text == {"again": 2}
    assert radio.stats.delivered_by_text == {"again": 2}


def test_direct_neighbour_sends_only_its_own_ack():
    phone = Phone(SimRadio(config(auto_reply=False)))
    pid = phone.text(0.0, to=DIRECT)
    assert routing(phone.run_until(60.0), pid) == [(DIRECT, "NONE")]


def test_unreachable_node_is_retried_then_nakked():
    radio = SimRadio(config())
    phone = Phone(radio)
    pid = phone.text(0.0, to=GHOST)
    size = 2 + 2 + 5 + 2
    step = packet_airtime(size, PRESETS["LONG_FAST"]) + retransmission_delay(
        size, PRESETS["LONG_FAST"])
    assert routing(phone.run_until(4 * step - 0.01), pid) == []
    assert routing(phone.run_until(4 * step + 0.01), pid) == [(ME, "MAX_RETRANSMIT")]
    assert radio.stats.transmissions[pid] == 4  # the first try and 3 retries
    assert radio.stats.naks == {"MAX_RETRANSMIT": 1}


def test_silent_node_gets_an_implicit_ack_and_then_nothing():
    radio = SimRadio(config())
    phone = Phone(radio)
    pid = phone.text(0.0, to=SHY)
    assert routing(phone.run_until(600.0), pid) == [(ME, "NONE")]
    assert radio.stats.transmissions[pid] == 1
    assert not radio.stats.naks


def test_text_limits():
    radio = SimRadio(config())
    phone = Phone(radio)
    fits = phone.text(0.0, "x" * 232)
    assert statuses(phone.take(), fits) == [0]
    too_big = phone.text(3.0, "x" * 233)  # 233 + the firmware's bitfield > 255 - 16
    msgs = phone.take()
    assert statuses(msgs, too_big) == [Err.TOO_LARGE]
    assert routing(msgs, too_big) == [(ME, "TOO_LARGE")]
    soon = phone.text(4.9, "again")  # 1.9 s after the last accepted text
    msgs = phone.take()
    assert statuses(msgs, soon) == [0]  # res 0: the queue status alone does not tell
    assert routing(msgs, soon) == [(ME, "RATE_LIMIT_EXCEEDED")]
    later = phone.text(5.0, "again")
    assert statuses(phone.take(), later) == [0]
    assert radio.stats.naks == {"TOO_LARGE": 1, "RATE_LIMIT_EXCEEDED": 1}
    dup = mesh_pb2.MeshPacket(id=later, to=A)  # a resent id: dropped without an answer
    dup.decoded.portnum = TEXT
    phone.send(5.5, packet=dup)
    assert phone.take() == []
    assert radio.stats.duplicates == 1


def test_duty_cycle_limit():
    radio = SimRadio(config(duty_cycle=0.01))  # 0.36 s of airtime per hour
    phone = Phone(radio)
    first = phone.text(0.0, "one")
    phone.run_until(10.0)
    second = phone.text(10.0, "two")
    msgs = phone.take()
    assert statuses(msgs, second) == [Err.DUTY_CYCLE_LIMIT]
    assert routing(msgs, second) == [(ME, "DUTY_CYCLE_LIMIT")]
    note = next(m.clientNotification for m in msgs if m.HasField("clientNotification"))
    assert note.reply_id == second
    assert "Duty cycle" in note.message
    phone.run_until(3700.0)  # an hour later the first transmission no longer counts
    third = phone.text(3700.0, "three")
    assert statuses(phone.take(), third) == [0]
    assert radio.stats.transmissions[first] == 1
    assert second not in radio.stats.transmissions


def test_full_tx_queue_rejects_then_reports_free_space():
    radio = SimRadio(config())
    phone = Phone(radio)
    ids = []
    for i in range(18):  # PRIVATE_APP is not rate limited
        pkt = mesh_pb2.MeshPacket(id=500 + i, to=A)
        pkt.decoded.portnum = portnums_pb2.PortNum.PRIVATE_APP
        pkt.decoded.payload = b"x"
        phone.send(0.0, packet=pkt)
        ids.append(500 + i)
    msgs = phone.take()
    # The first goes on air at once, 16 wait in the queue, the 18th is refused.
    assert [statuses(msgs, i) for i in ids[:17]] == [[0]] * 17
    free = [m.queueStatus.free for m in msgs if m.HasField("queueStatus")]
    assert free[:3] == [15, 15, 14]
    assert free[16:] == [0, 0]
    assert statuses(msgs, ids[17]) == [32]
    assert radio.stats.queue_rejects == 1
    msgs = phone.run_until(1.0)  # the first is sent: a status says a slot came free
    assert [(m.queueStatus.free, m.queueStatus.mesh_packet_id) for m in msgs
            if m.HasField("queueStatus")] == [(1, 0)]


def test_packets_wait_for_a_client_that_finished_its_config():
    radio = SimRadio(config(latency=1.0))
    phone = Phone(radio)
    pid = phone.text(0.0)
    radio.disconnect(0.5)
    radio.advance(30.0)  # ACKs and the reply happen while nobody listens
    again = Phone(radio, 31.0, handshake=False)
    assert again.take() == []
    again.send(31.0, want_config_id=1)
    msgs = again.take()
    done = next(i for i, m in enumerate(msgs) if m.HasField("config_complete_id"))
    late = msgs[done + 1:]
    assert routing(late, pid) == [(ME, "NONE"), (A, "NONE")]
    assert sum(m.packet.decoded.portnum == TEXT for m in late) == 1


def test_garbage_never_raises():
    radio = SimRadio(config())
    phone = Phone(radio)
    radio.receive(b"\xff\xff\xff", 0.0)
    phone.send(0.0, packet=mesh_pb2.MeshPacket(id=9, to=A, encrypted=b"??"))
    phone.send(0.0, mqttClientProxyMessage=mesh_pb2.MqttClientProxyMessage(topic="t"))
    pkt = mesh_pb2.MeshPacket(id=10, to=ME)  # admin and other requests for our node
    pkt.decoded.portnum = portnums_pb2.PortNum.ADMIN_APP
    phone.send(0.0, packet=pkt)
    assert statuses(phone.take(), 10) == [35]
    assert (radio.stats.malformed, radio.stats.ignored) == (1, 3)


@settings(max_examples=40, deadline=None)
@given(
    sends=st.lists(st.tuples(st.floats(0.0, 5.0), st.sampled_from([A, DIRECT, GHOST, SHY]),
                             st.integers(1, 240)), min_size=1, max_size=12),
    loss=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 3))
def test_every_text_ends_once_as_the_firmware_would(sends, loss, seed):
    radio = SimRadio(config(loss=loss, seed=seed, auto_reply=False))
    phone = Phone(radio)
    now, last_accepted, msgs, sent = 0.0, None, [], []
    for gap, dest, size in sends:
        now += gap
        sent.append((phone.text(now, "y" * size, to=dest), dest, size, now, last_accepted))
        if last_accepted is None or now - last_accepted >= 2.0:
            last_accepted = now
        msgs += phone.take()
    msgs += phone.run_until(now + 3600.0)
    assert radio.next_deadline() is None
    for pid, dest, size, at, previous in sent:
        answers, tx = routing(msgs, pid), radio.stats.transmissions[pid]
        node = radio.config.node(dest)
        assert node is not None
        if previous is not None and at - previous < 2.0:
            assert (answers, tx) == ([(ME, "RATE_LIMIT_EXCEEDED")], 0)
        elif size > 232:
            assert (answers, tx) == ([(ME, "TOO_LARGE")], 0)
        elif answers and answers[-1] == (ME, "MAX_RETRANSMIT"):
            assert (answers, tx) == ([(ME, "MAX_RETRANSMIT")], 4)
            assert node.reach is Reach.UNREACHABLE or loss > 0
        else:
            assert node.reach is not Reach.UNREACHABLE
            assert 1 <= tx <= 4
            relayed = [(ME, "NONE")] * (node.hops_away > 0 or node.reach is Reach.SILENT)
            delivered = [(dest, "NONE")] * (node.reach is Reach.REACHABLE)
            assert answers == relayed + delivered


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.binary(max_size=512), max_size=6),
       noise=st.binary(max_size=40).map(lambda b: b.replace(bytes([START1]), b"")),
       cuts=st.lists(st.integers(0, 4000), max_size=8))
def test_frame_decoder_survives_any_chunking(payloads, noise, cuts):
    stream = bytes([0xC3] * 32) + b"".join(noise + encode_frame(p) for p in payloads) + noise
    decoder, out, start = FrameDecoder(), [], 0
    for cut in [*sorted(c % (len(stream) + 1) for c in cuts), len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = max(start, cut)
    assert out == payloads


def test_node_ids():
    assert parse_node_id("!a1b2c3d4") == parse_node_id("0xA1B2C3D4") == A
    with pytest.raises(ValueError, match="not a node id"):
        parse_node_id("!xyz")
    with pytest.raises(ValueError, match="unique"):
        SimConfig(nodes=(SimNode(A, "a", "a"), SimNode(A, "b", "b")))


# -- through TCP, the real library and the stock CLI ---------------------------------------------


async def start_sim(nursery: trio.Nursery, *, time_scale: float = FAST,
                    **kw: Any) -> tuple[SimRadio, int]:
    radio = SimRadio(config(**kw))
    port: int = await nursery.start(partial(serve_radio, radio, 0, time_scale=time_scale))
    return radio, port


@asynccontextmanager
async def connected(radio: SimRadio, port: int) -> AsyncIterator[Any]:
    heartbeats = radio.stats.heartbeats
    iface = await trio.to_thread.run_sync(
        partial(TCPInterface, "127.0.0.1", portNumber=port, timeout=10))
    try:
        # The constructor returns when the connection is up, just before the reader thread
        # sends the first heartbeat: closing in between makes the library log send ERRORs.
        with trio.fail_after(5):
            while radio.stats.heartbeats == heartbeats:
                await trio.sleep(0.005)
        yield iface
    finally:
        await trio.to_thread.run_sync(iface.close)


class Heard:
    """What the library publishes on ``topic`` for one interface. pypubsub holds listeners
    weakly: this object holds the bound method for as long as it lives."""

    def __init__(self, topic: str, iface: Any) -> None:
        self.topic, self.iface = topic, iface
        self.packets: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        pub.subscribe(self.on_packet, topic)

    def on_packet(self, packet: dict[str, Any], interface: Any) -> None:
        if interface is self.iface:
            with self._lock:
                self.packets.append(packet)

    async def wait_for(self, count: int, match: Callable[[dict[str, Any]], bool],
                       timeout: float = 10) -> list[dict[str, Any]]:
        with trio.fail_after(timeout):
            while len(found := self.matching(match)) < count:
                await trio.sleep(0.01)
        return found

    def matching(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._lock:
            return [p for p in self.packets if match(p)]

    def close(self) -> None:
        pub.unsubscribe(self.on_packet, self.topic)


@asynccontextmanager
async def listening(topic: str, iface: Any) -> AsyncIterator[Heard]:
    heard = Heard(topic, iface)
    try:
        yield heard
    finally:
        heard.close()


def about(packet_id: int) -> Callable[[dict[str, Any]], bool]:
    return lambda p: p["decoded"].get("requestId") == packet_id


def errors(packets: list[dict[str, Any]]) -> list[tuple[str | None, str]]:
    return [(p["fromId"], p["decoded"]["routing"]["errorReason"]) for p in packets]


async def send_text(iface: Any, *texts: str, dest: str = "!a1b2c3d4") -> list[int]:
    """Send ``texts`` back to back (from one worker thread); their packet ids."""
    def send() -> list[int]:
        return [int(iface.sendText(t, destinationId=dest, wantAck=True).id) for t in texts]
    return await trio.to_thread.run_sync(send)


async def test_library_connects_and_sees_the_mesh(nursery):
    radio, port = await start_sim(nursery)
    async with connected(radio, port) as iface:
        assert iface.myInfo.my_node_num == ME
        assert {"!0a0a0a0a", "!a1b2c3d4", "!a2b3c4d5", "!deadbeef"} <= set(iface.nodes)
        assert iface.nodes["!a1b2c3d4"]["hopsAway"] == 1
        assert iface.localNode.localConfig.lora.hop_limit == 3
        assert iface.localNode.channels[0].role == 1  # PRIMARY


async def test_library_text_is_acked_delivered_and_answered(nursery):
    radio, port = await start_sim(nursery)
    async with connected(radio, port) as iface, \
            listening("meshtastic.receive.routing", iface) as acks, \
            listening("meshtastic.receive.text", iface) as texts:
        [pid] = await send_text(iface, "hello mesh")
        assert errors(await acks.wait_for(2, about(pid))) == [("!0a0a0a0a", "NONE"),
                                                              ("!a1b2c3d4", "NONE")]
        [reply] = await texts.wait_for(1, lambda p: p["decoded"].get("replyId") == pid)
        assert (reply["fromId"], reply["decoded"]["text"]) == ("!a1b2c3d4", "ack: hello mesh")
        assert radio.stats.transmissions[pid] == 1


async def test_library_unreachable_node_gets_max_retransmit(nursery):
    radio, port = await start_sim(nursery, time_scale=200)
    async with connected(radio, port) as iface, \
            listening("meshtastic.receive.routing", iface) as acks:
        [pid] = await send_text(iface, "anyone?", dest="!deadbeef")
        assert errors(await acks.wait_for(1, about(pid))) == [("!0a0a0a0a", "MAX_RETRANSMIT")]
        assert radio.stats.transmissions[pid] == 4


async def test_library_too_large_and_rate_limited(nursery):
    radio, port = await start_sim(nursery, time_scale=5)  # 2 s of rate limit = 0.4 s of wall time
    async with connected(radio, port) as iface, \
            listening("meshtastic.receive.routing", iface) as acks:
        # The library allows 233 bytes, the firmware does not; the second text is too soon.
        big, quick = await send_text(iface, "z" * 233, "too soon")
        assert errors(await acks.wait_for(1, about(big))) == [("!0a0a0a0a", "TOO_LARGE")]
        assert errors(await acks.wait_for(1, about(quick))) == [
            ("!0a0a0a0a", "RATE_LIMIT_EXCEEDED")]


async def test_stock_cli_info_and_sendtext_with_ack(nursery):
    radio, port = await start_sim(nursery)
    host = ["--host", f"127.0.0.1:{port}"]  # --port is the serial port; TCP takes HOST:PORT
    info = await run_cli(*host, "--info")
    assert "Owner: KosmoConnect Gateway" in info
    assert '"!a1b2c3d4"' in info
    sent = await run_cli(*host, "--sendtext", "hi", "--dest", "!a1b2c3d4", "--ack")
    assert "Received an implicit ACK" in sent
    assert radio.stats.transmissions_by_text["hi"] == 1


async def test_standalone_command_serves_the_cli_and_stops_on_ctrl_c(nursery):
    proc = await nursery.start(partial(
        trio.run_process, [sys.executable, "-m", "bridge.sim", "--port", "0", "--nodes", "5",
                           "--time-scale", "50", "--unreachable", "!deadbeef"],
        stdout=subprocess.PIPE, check=False, cwd=ROOT))
    with trio.fail_after(15):
        line = await read_line(proc.stdout)
    assert line.startswith("sim-radio: listening on 127.0.0.1:"), line
    assert "!deadbeef (unreachable)" in line
    port = line.split("127.0.0.1:")[1].split()[0]
    nodes = await run_cli("--host", f"127.0.0.1:{port}", "--nodes")
    assert all(f"!a{i}b{i + 1}c{i + 2}d{i + 3}" in nodes for i in range(1, 6))
    proc.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await proc.wait() == 0
    assert "sim-radio: stopped" in await read_line(proc.stdout)


async def test_raw_client_in_odd_chunks_and_a_second_client_replaces_the_first(nursery):
    port = await nursery.start(partial(serve_sim_radio, 0, nodes=2, time_scale=FAST))
    first = await trio.open_tcp_stream("127.0.0.1", port)
    request = bytes([0xC3] * 32) + encode_frame(
        mesh_pb2.ToRadio(want_config_id=77).SerializeToString())
    for i in range(0, len(request), 5):
        await first.send_all(request[i:i + 5])
    decoder, frames = FrameDecoder(), []
    with trio.fail_after(5):
        while not frames or not mesh_pb2.FromRadio.FromString(frames[-1]).config_complete_id:
            frames += decoder.feed(await first.receive_some(4096))
    assert mesh_pb2.FromRadio.FromString(frames[-1]).config_complete_id == 77
    async with await trio.open_tcp_stream("127.0.0.1", port):
        with trio.fail_after(5):
            assert await first.receive_some(4096) == b""  # replaced: closed by the radio
    await first.aclose()


async def run_cli(*args: str) -> str:
    with trio.fail_after(30):
        result = await trio.run_process([MESHTASTIC, *args], capture_stdout=True,
                                        capture_stderr=True, check=False, env=CLI_ENV)
    out = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, out
    return out


async def read_line(stream: Any) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = await stream.receive_some(1)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()
