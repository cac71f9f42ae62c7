"""The bridge daemon against a real broker and the real meshtastic TCPInterface, talking to the
simulated radio (bridge/sim), which runs TS times faster than the wall clock."""

from __future__ import annotations

import itertools
import json
import sqlite3
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
import trio

from bridge.config import BridgeSettings
from bridge.daemon import Bridge, run_bridge
from bridge.radio import Device, Radio, RadioEvent, RoutingResult
from bridge.sim import SimConfig, SimRadio, make_nodes, serve_radio
from bridge.store import DB_NAME, Change, Store
from kosmo.clock import utcnow
from kosmo.config import MqttEndpoint
from kosmo.embedded import Broker
from kosmo.messages import NewMessage
from kosmo.wire import Outbound, outbound_payload, outbound_topic
from tests.mesh import FakeBridgeLink

REPO = Path(__file__).resolve().parent.parent
TS = 20.0  # simulated seconds per real second
NODE = "!a1b2c3d4"  # reachable over one relay: implicit ACK, then the node's ACK and reply
NEIGHBOUR = "!a2b3c4d5"  # a direct neighbour: its own ACK only
UNREACHABLE, SILENT = 0xDEADBEEF, 0xFEEDF00D


class SimRunner:
    """A simulated radio served on TCP; it can be unplugged and plugged in again."""

    def __init__(self, **config: Any) -> None:
        config.setdefault("nodes", make_nodes(3, unreachable=[UNREACHABLE], silent=[SILENT]))
        self.config = SimConfig(**config)
        self.radio = SimRadio(self.config, epoch=time.time())
        self.port = 0
        self._scope = trio.CancelScope()
        self._done = trio.Event()

    async def start(self, nursery: trio.Nursery) -> SimRunner:
        self._scope, self._done = trio.CancelScope(), trio.Event()

        async def serve(task_status: trio.TaskStatus[int]) -> None:
            try:
                with self._scope:
                    await serve_radio(self.radio, self.port, time_scale=TS,
                                      task_status=task_status)
            finally:
                self._done.set()

        self.port = await nursery.start(serve)
        return self

    async def unplug(self) -> None:
        self._scope.cancel()
        await self._done.wait()

    async def plug_in_new_radio(self, nursery: trio.Nursery) -> SimRadio:
        """A fresh radio (an empty queue, as after a reboot) served on the same port."""
        old, self.radio = self.radio, SimRadio(self.config, epoch=time.time())
        await self.start(nursery)
        return old

    def texts_on_air(self, text: str) -> int:
        return self.radio.stats.transmissions_by_text[text]


class BridgeRunner:
    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings
        self.shutdown = trio.Event()
        self.stopped = trio.Event()

    async def start(self, nursery: trio.Nursery) -> Bridge:
        async def run(task_status: trio.TaskStatus[Bridge]) -> None:
            try:
                await run_bridge(self.settings, self.shutdown, task_status=task_status)
            finally:
                self.stopped.set()

        with trio.fail_after(10):
            self.bridge: Bridge = await nursery.start(run)
        return self.bridge

    async def stop(self) -> float:
        """Set the shutdown event; return how long the bridge took to stop."""
        started = trio.current_time()
        self.shutdown.set()
        with trio.fail_after(10):
            await self.stopped.wait()
        return trio.current_time() - started


def make_settings(tmp_path: Path, url: str, root: str, sim: SimRunner,
                  **changes: Any) -> BridgeSettings:
    values: dict[str, Any] = {
        "device": Device("tcp", "127.0.0.1", sim.port), "mqtt_url": MqttEndpoint.from_url(url),
        "mqtt_topic_root": root, "state_dir": tmp_path / "bridge", "time_scale": TS,
        # Each test its own MQTT session: a bridge id shared between tests would share it.
        "bridge_id": f"br-{root}", "result_timeout": 120.0}
    values.update(changes)
    return BridgeSettings(**values)


def outbound(node: str = NODE, text: str | None = None, *, ttl: float = 3600,
             message_id: str | None = None) -> dict[str, Any]:
    """An outbound message as the gateway publishes it, as a dict a test can change."""
    now = utcnow()
    message = NewMessage(uuid.UUID(message_id) if message_id else uuid.uuid4(), uuid.UUID(int=0),
                         node, text or f"hello {uuid.uuid4().hex[:6]}", now,
                         now + timedelta(seconds=ttl))
    decoded: dict[str, Any] = json.loads(outbound_payload(message))
    return decoded


class Observer:
    """A plain paho client on its own thread (persistent session) collecting what the bridge
    publishes: status reports, replies and bridge states."""

    def __init__(self, url: str, topics: list[str], *, client_id: str | None = None) -> None:
        endpoint = MqttEndpoint.from_url(url)
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                   client_id=client_id or f"obs-{uuid.uuid4().hex[:8]}",
                                   clean_session=False)
        self._client.reconnect_delay_set(0.05, 0.5)
        self.subscribed = trio.Event()
        token = trio.lowlevel.current_trio_token()

        def on_connect(client: paho.Client, *_: Any) -> None:
            client.subscribe([(topic, 1) for topic in topics])

        def on_subscribe(*_: Any) -> None:
            trio.from_thread.run_sync(self.subscribed.set, trio_token=token)

        def on_message(client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
            self.messages.append((msg.topic, json.loads(msg.payload)))

        self._client.on_connect, self._client.on_subscribe = on_connect, on_subscribe
        self._client.on_message = on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class Mesh:
    """The test's view of MQTT: hand the bridge outbound messages on its own topic, as the
    gateway does, and watch what the bridge publishes."""

    def __init__(self, url: str, root: str, bridge_id: str | None = None) -> None:
        self.root = root
        self.bridge_id = bridge_id or f"br-{root}"  # make_settings' bridge id
        self.link = FakeBridgeLink(url, root)
        self.seen = Observer(url, [f"{root}/mesh/status", f"{root}/mesh/inbound",
                                   f"{root}/bridge/+/state"])

    async def send(self, message: dict[str, Any] | bytes, node: str = NODE) -> None:
        topic = outbound_topic(self.root, self.bridge_id, node)
        await trio.to_thread.run_sync(self.link.publish, topic, message)

    def statuses(self, message_id: str) -> list[dict[str, Any]]:
        return [p for t, p in self.seen.messages
                if t == f"{self.root}/mesh/status" and p["message_id"] == message_id]

    def status_names(self, message_id: str) -> list[str]:
        return [p["status"] for p in self.statuses(message_id)]

    def inbound(self) -> list[dict[str, Any]]:
        return [p for t, p in self.seen.messages if t == f"{self.root}/mesh/inbound"]

    def states(self) -> list[dict[str, Any]]:
        return [p for t, p in self.seen.messages if t.endswith("/state")]

    def close(self) -> None:
        self.link.close()
        self.seen.close()


@pytest.fixture
async def mesh(mqtt_url: str, topic_root: str) -> AsyncIterator[Mesh]:
    view = Mesh(mqtt_url, topic_root)
    with trio.fail_after(10):
        await view.seen.subscribed.wait()
    yield view
    view.close()


@pytest.fixture
async def sim(nursery: trio.Nursery) -> SimRunner:
    return await SimRunner().start(nursery)


@pytest.fixture
async def bridge(nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
                 sim: SimRunner) -> AsyncIterator[Bridge]:
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    yield await runner.start(nursery)
    assert await runner.stop() < 5


async def wait_for(condition: Callable[[], object], timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


def stored(state_dir: Path) -> int:
    with sqlite3.connect(state_dir / DB_NAME) as db:
        return int(db.execute("SELECT count(*) FROM outbound").fetchone()[0])


def sent_at(state_dir: Path) -> list[float]:
    with sqlite3.connect(state_dir / DB_NAME) as db:
        return [r[0] for r in db.execute(
            "SELECT sent_at FROM outbound WHERE sent_at IS NOT NULL ORDER BY sent_at")]


# --- delivery ---------------------------------------------------------------------------------


async def test_text_is_transmitted_delivered_and_answered(mesh: Mesh, sim: SimRunner,
                                                          bridge: Bridge) -> None:
    message = outbound(text="hello mesh")
    await mesh.send(message)
    mid = message["message_id"]
    await wait_for(lambda: mesh.status_names(mid) == ["transmitted", "delivered"])
    transmitted, delivered = mesh.statuses(mid)
    assert transmitted["bridge_id"] == bridge.bridge_id
    assert transmitted["packet_id"] == delivered["packet_id"]
    await wait_for(mesh.inbound)
    [reply] = mesh.inbound()
    assert reply == {"from_node_id": NODE, "text": "ack: hello mesh",
                     "packet_id": reply["packet_id"], "bridge_id": bridge.bridge_id,
                     "rx_time": reply["rx_time"],
                     "reply_to_packet_id": transmitted["packet_id"]}
    assert sim.texts_on_air("hello mesh") == 1


async def test_a_direct_neighbour_acknowledges_without_a_relay(mesh: Mesh, sim: SimRunner,
                                                               bridge: Bridge) -> None:
    message = outbound(NEIGHBOUR)
    await mesh.send(message, NEIGHBOUR)
    await wait_for(lambda: mesh.status_names(message["message_id"]) == ["delivered"])
    assert mesh.statuses(message["message_id"])[0]["packet_id"] > 0


@pytest.mark.parametrize(("node", "expected"), [
    (UNREACHABLE, [("failed", "MAX_RETRANSMIT")]),  # nobody relays: no implicit ACK
    # Relayed, never acknowledged, no NAK either: failed once the result timeout passed.
    (SILENT, [("transmitted", None), ("failed", "no_delivery_ack")]),
])
async def test_failures_report_the_radios_reason(nursery: trio.Nursery, tmp_path: Path,
                                                 mqtt_url: str, topic_root: str, mesh: Mesh,
                                                 node: int, expected: list[Any]) -> None:
    sim = await SimRunner(retry_interval=2.0).start(nursery)
    # Longer than the radio's three retries (about 11 s here), as the default 5 min is.
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim,
                                        result_timeout=30.0))
    await runner.start(nursery)
    target = f"!{node:08x}"
    message = outbound(target)
    sent = trio.current_time()
    await mesh.send(message, target)
    mid = message["message_id"]
    await wait_for(lambda: len(mesh.statuses(mid)) == len(expected))
    if node == SILENT:  # not before the result timeout (30 s of radio time) after the hand-over
        assert trio.current_time() - sent >= 30 / TS
    await trio.sleep(35 / TS)  # past the result timeout: nothing after the final report
    reports = mesh.statuses(mid)
    assert [(p["status"], p.get("reason")) for p in reports] == expected
    assert len({p.get("packet_id") for p in reports}) == 1
    assert sim.texts_on_air(message["text"]) == (4 if node == UNREACHABLE else 1)
    await runner.stop()


async def test_an_expired_message_is_reported_not_sent(mesh: Mesh, sim: SimRunner,
                                                       bridge: Bridge) -> None:
    message = outbound(ttl=-1)
    await mesh.send(message)
    await wait_for(lambda: mesh.statuses(message["message_id"]))
    [report] = mesh.statuses(message["message_id"])
    assert (report["status"], report["reason"]) == ("failed", "expired")
    assert "packet_id" not in report
    assert sim.radio.stats.received == 0


async def test_unusable_payloads_are_dropped_and_never_stop_the_bridge(
        mesh: Mesh, sim: SimRunner, bridge: Bridge) -> None:
    readable_id = str(uuid.uuid4())
    await mesh.send(b"not json")
    await mesh.send({"message_id": readable_id, "target_node_id": NODE, "text": ""})
    await mesh.send(outbound(NEIGHBOUR))  # names another node than its topic
    good = outbound()
    await mesh.send(good)
    await wait_for(lambda: "delivered" in mesh.status_names(good["message_id"]))
    [report] = mesh.statuses(readable_id)
    assert (report["status"], report["reason"]) == ("failed", "invalid_payload")
    assert sim.radio.stats.received == 1


# --- never twice on air -----------------------------------------------------------------------


async def test_a_message_is_sent_once_however_often_it_comes(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim)
    first = BridgeRunner(settings)
    await first.start(nursery)
    message = outbound()
    mid = message["message_id"]
    for _ in range(3):
        await mesh.send(message)
    await wait_for(lambda: mesh.status_names(mid) == ["transmitted", "delivered"])
    assert await first.stop() < 5

    second = BridgeRunner(settings)
    await second.start(nursery)
    await mesh.send(message)
    later = outbound()
    await mesh.send(later)
    await wait_for(lambda: "delivered" in mesh.status_names(later["message_id"]))
    assert sim.texts_on_air(message["text"]) == 1
    assert mesh.status_names(mid) == ["transmitted", "delivered"]
    await second.stop()


async def test_a_transmitted_message_found_at_start_fails_without_a_delivery_ack(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim, result_timeout=40.0)
    # What a bridge killed after the implicit ACK leaves: a row reported transmitted whose
    # delivery ACK went to the dead process.
    store = Store(settings.state_dir)
    now = time.time()
    store.accept([Outbound("m-transmitted", NODE, "three", now + 60)], [], now,
                 lambda *a: ("unused", b""))
    store.begin_send("m-transmitted", 4343, now, 0.5)
    store.handed("m-transmitted", 4343)
    store.apply([Change("m-transmitted", "transmitted")])
    store.close()

    runner = BridgeRunner(settings)
    started = trio.current_time()
    await runner.start(nursery)
    await wait_for(lambda: mesh.statuses("m-transmitted"), timeout=40 / TS + 5)
    assert trio.current_time() - started >= 40 / TS  # it waited the result timeout first
    [final] = mesh.statuses("m-transmitted")
    assert (final["status"], final["reason"], final["packet_id"]) == (
        "failed", "no_delivery_ack", 4343)
    assert sim.radio.stats.received == 0
    await runner.stop()


async def test_after_a_crash_a_possibly_sent_message_is_failed_never_resent(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim, result_timeout=40.0)
    # What bridges killed mid-hand-over leave: one row marked sending as packet 4141 (the radio
    # may or may not have it; this one does not), one marked sending by an older bridge (no
    # packet id kept), one handed as packet 4242 whose result never came.
    store = Store(settings.state_dir)
    now = time.time()
    store.accept([Outbound("m-sending", NODE, "one", now + 60),
                  Outbound("m-old", NODE, "old", now + 60),
                  Outbound("m-handed", NODE, "two", now + 60)], [], now,
                 lambda *a: ("unused", b""))
    store.begin_send("m-sending", 4141, now, 0.5)
    store.begin_send("m-old", 4040, now, 0.5)
    store.begin_send("m-handed", 4242, now, 0.5)
    store.handed("m-handed", 4242)
    store.close()
    with sqlite3.connect(settings.state_dir / DB_NAME) as db:
        db.execute("UPDATE outbound SET packet_id = NULL WHERE message_id = 'm-old'")

    runner = BridgeRunner(settings)
    await runner.start(nursery)
    await wait_for(lambda: mesh.statuses("m-old"))
    assert [(p["status"], p["reason"]) for p in mesh.statuses("m-old")] == [
        ("failed", "unknown_after_restart")]
    # The radio may still report on the others, for a while.
    assert mesh.statuses("m-sending") == mesh.statuses("m-handed") == []
    await wait_for(lambda: mesh.statuses("m-sending") and mesh.statuses("m-handed"),
                   timeout=40 / TS + 5)
    for mid, packet_id in (("m-sending", 4141), ("m-handed", 4242)):
        [late] = mesh.statuses(mid)
        assert (late["status"], late["reason"], late["packet_id"]) == (
            "failed", "unknown_after_restart", packet_id)
    assert sim.radio.stats.received == 0
    await runner.stop()


async def test_a_text_the_radio_took_before_a_crash_is_delivered_not_failed(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The mesh answers 20 radio seconds (1 s) after each step: the first bridge is gone by then,
    # and the radio keeps the answers for its next client.
    sim = await SimRunner(latency=20.0).start(nursery)
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim)
    message = outbound(text="taken before the crash")
    mid, text = message["message_id"], message["text"]

    class Killed(Exception):
        pass

    returned: list[int] = []

    def killed_before_the_record(store: Store, message_id: str, packet_id: int) -> None:
        returned.append(packet_id)  # the id the library's send returned
        raise Killed  # the bridge dies once the radio took the text, before recording that

    crashed = trio.Event()

    async def run_until_killed(task_status: trio.TaskStatus[Bridge]) -> None:
        try:
            await run_bridge(settings, trio.Event(), task_status=task_status)
        except* Killed:
            crashed.set()

    with monkeypatch.context() as patch:
        patch.setattr(Store, "handed", killed_before_the_record)
        with trio.fail_after(10):
            await nursery.start(run_until_killed)
        await mesh.send(message)
        with trio.fail_after(10):
            await crashed.wait()
    with sqlite3.connect(settings.state_dir / DB_NAME) as db:
        [(state, packet_id)] = db.execute("SELECT state, packet_id FROM outbound").fetchall()
    # The row says sending, with the packet id chosen before the hand-over; the radio took the
    # text as exactly that packet, and the mesh delivered it while no bridge was connected.
    assert (state, returned) == ("sending", [packet_id])
    await wait_for(lambda: sim.radio.stats.delivered_by_text[text] == 1, timeout=10)
    assert sim.radio.stats.transmissions[packet_id] == 1
    assert mesh.statuses(mid) == []

    runner = BridgeRunner(settings)
    await runner.start(nursery)
    await wait_for(lambda: mesh.status_names(mid) == ["transmitted", "delivered"])
    assert {p["packet_id"] for p in mesh.statuses(mid)} == {packet_id}
    await wait_for(lambda: mesh.inbound())  # the reply, linked to our packet
    assert [p["reply_to_packet_id"] for p in mesh.inbound()] == [packet_id]
    # Handed over once, on air once.
    assert sim.radio.stats.accepted_by_text[text] == 1
    assert sim.radio.stats.received == 1
    assert sim.texts_on_air(text) == 1
    await runner.stop()


async def test_the_radio_sends_a_text_as_the_packet_id_chosen_before(
        sim: SimRunner) -> None:
    # The one place the bridge reaches into the meshtastic library (bridge/radio.py): a library
    # upgrade that ignores the chosen id fails here.
    events_send, events = trio.open_memory_channel[RadioEvent](64)
    radio = Radio(Device("tcp", "127.0.0.1", sim.port), events_send, close_timeout=2.0)
    async with trio.open_nursery() as inner:
        with trio.fail_after(10):
            await inner.start(radio.run)
        link = await radio.wait_link()
        chosen = await radio.new_packet_id(link)
        assert await radio.send_text(link, NODE, "as chosen", chosen) == chosen
        with trio.fail_after(10):
            async for event in events:
                if isinstance(event, RoutingResult) and event.from_node == 0xA1B2C3D4:
                    break
        assert event.packet_id == chosen  # the destination acknowledged our packet
        inner.cancel_scope.cancel()
    assert sim.radio.stats.transmissions[chosen] == 1
    assert sim.radio.stats.received == 1


# --- pacing -----------------------------------------------------------------------------------


async def test_a_backlog_goes_out_at_the_rate_limit_not_below(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    settings = make_settings(tmp_path, mqtt_url, topic_root, sim)
    runner = BridgeRunner(settings)
    bridge = await runner.start(nursery)
    messages = [outbound(text=f"paced {i}") for i in range(10)]
    for message in messages:
        await mesh.send(message)
    await wait_for(lambda: stored(settings.state_dir) == len(messages))
    state = await bridge.state()
    assert state["queue_depth"] >= 4
    # The queue needs one gap (2.15 s of radio time) per message, less what already passed.
    assert state["estimated_wait_s"] * TS == pytest.approx(2.15 * state["queue_depth"], abs=2.2)
    for message in messages:
        await wait_for(lambda m=message: "delivered" in mesh.status_names(m["message_id"]))
    assert sim.radio.stats.naks == {}  # in particular no RATE_LIMIT_EXCEEDED
    times = [t * TS for t in sent_at(settings.state_dir)]  # simulated seconds
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 2.0
    assert times[-1] - times[0] >= 2.0 * (len(messages) - 1)
    assert sum(gaps) / len(gaps) < 2.6  # at the limit, not below it
    await runner.stop()


# --- resilience -------------------------------------------------------------------------------


async def test_a_broker_restart_loses_nothing(nursery: trio.Nursery, tmp_path: Path,
                                              private_broker: Broker, topic_root: str,
                                              sim: SimRunner) -> None:
    mesh = Mesh(private_broker.url, topic_root)
    with trio.fail_after(10):
        await mesh.seen.subscribed.wait()
    runner = BridgeRunner(make_settings(tmp_path, private_broker.url, topic_root, sim))
    await runner.start(nursery)
    messages = [outbound(text=f"outage {i}") for i in range(6)]
    for message in messages:
        await mesh.send(message)
    await wait_for(lambda: mesh.status_names(messages[0]["message_id"]))
    await trio.to_thread.run_sync(private_broker.stop)
    await trio.sleep(1.5)  # the radio goes on: the rest is sent, answered and kept
    await trio.to_thread.run_sync(private_broker.start)
    for message in messages:
        await wait_for(lambda m=message: mesh.status_names(m["message_id"])[-1:] == [
            "delivered"], timeout=20)
    await wait_for(lambda: len({p["packet_id"] for p in mesh.inbound()}) == 6, timeout=20)
    assert {p["reply_to_packet_id"] for p in mesh.inbound()} == {
        mesh.statuses(m["message_id"])[-1]["packet_id"] for m in messages}
    assert all(sim.texts_on_air(m["text"]) == 1 for m in messages)
    await runner.stop()
    mesh.close()


@pytest.mark.allow_error_logs  # the meshtastic library logs the lost socket as an ERROR
async def test_an_unplugged_radio_is_reconnected_and_the_queue_kept(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    bridge = await runner.start(nursery)
    await sim.unplug()
    assert bridge.radio is not None
    await wait_for(lambda: bridge.radio is not None and bridge.radio.link is None)
    message = outbound()
    await mesh.send(message)
    await wait_for(lambda: any(s.get("radio") == "disconnected" and s.get("queue_depth") == 1
                               for s in mesh.states()), timeout=10)
    old = await sim.plug_in_new_radio(nursery)
    await wait_for(lambda: "delivered" in mesh.status_names(message["message_id"]),
                   timeout=30)
    assert sim.texts_on_air(message["text"]) == 1
    assert old.stats.received == 0
    assert await runner.stop() < 5


async def test_the_retained_state_says_online_then_offline(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh,
        sim: SimRunner) -> None:
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    bridge = await runner.start(nursery)
    topic = f"{topic_root}/bridge/{bridge.bridge_id}/state"
    await wait_for(lambda: any("node_id" in s for s in mesh.states()))

    async def retained() -> dict[str, Any]:
        late = Observer(mqtt_url, [topic])  # subscribes after the fact: gets the retained one
        try:
            await wait_for(lambda: late.messages)
            return late.messages[-1][1]
        finally:
            late.close()

    state = await retained()
    assert state["state"] == "online"
    assert state["node_id"] == "!0a0a0a0a"
    assert (state["region"], state["modem_preset"]) == ("EU_868", "LONG_FAST")
    assert (state["queue_depth"], state["estimated_wait_s"]) == (0, 0.0)
    assert state["duty_cycle_percent"] == 10.0
    assert await runner.stop() < 5
    assert await retained() == {"state": "offline"}


# --- end to end -------------------------------------------------------------------------------


async def test_end_to_end_through_the_gateway(nursery: trio.Nursery, tmp_path: Path,
                                              mqtt_url: str, topic_root: str, sim: SimRunner,
                                              gateway: Any) -> None:
    from tests.conftest import WANDERER

    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim))
    await runner.start(nursery)
    sent = await gateway.send(WANDERER, NODE, "hello from the web")
    assert sent.status_code == 201, sent.text
    mid = sent.json()["message_id"]

    async def status() -> str:
        return str((await gateway.get(f"/api/v1/messages/{mid}", WANDERER)).json()["status"])

    with trio.fail_after(15):
        while await status() != "delivered":
            await trio.sleep(0.05)
    with trio.fail_after(15):
        while True:
            page = (await gateway.get(f"/api/v1/messages/conversations/{NODE}", WANDERER)).json()
            texts = [(m["direction"], m["text"]) for m in page["messages"]]
            if ("inbound", "ack: hello from the web") in texts:
                break
            await trio.sleep(0.05)
    assert texts.index(("outbound", "hello from the web")) < texts.index(
        ("inbound", "ack: hello from the web"))
    await runner.stop()


async def test_a_silent_node_ends_failed_through_the_gateway_not_refunded(
        nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str, sim: SimRunner,
        gateway: Any) -> None:
    from tests.conftest import WANDERER

    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim,
                                        result_timeout=30.0))
    await runner.start(nursery)
    target = f"!{SILENT:08x}"
    sent = await gateway.send(WANDERER, target, "hello silence")
    assert sent.status_code == 201, sent.text
    mid, used = sent.json()["message_id"], sent.json()["quota"]["used"]

    async def message() -> dict[str, Any]:
        return dict((await gateway.get(f"/api/v1/messages/{mid}", WANDERER)).json())

    with trio.fail_after(15):
        while (body := await message())["status"] != "failed":
            await trio.sleep(0.05)
    assert body["reason"] == "no_delivery_ack"
    assert [(e["status"], e["reason"]) for e in body["status_history"]][-2:] == [
        ("transmitted", None), ("failed", "no_delivery_ack")]
    after = await gateway.send(WANDERER, NODE, "and hello again")
    assert after.json()["quota"]["used"] == used + 1  # the failed one went on air: no refund
    await runner.stop()


# --- a real process: kill -9, restart, SIGTERM ---------------------------------------------


async def test_kill_9_then_restart_sends_nothing_twice_and_sigterm_stops_cleanly(
        tmp_path: Path, mqtt_url: str, topic_root: str, mesh: Mesh, sim: SimRunner) -> None:
    argv = [sys.executable, "-m", "bridge", "--device", f"tcp:127.0.0.1:{sim.port}",
            "--mqtt-url", mqtt_url, "--mqtt-topic-root", topic_root,
            "--state-dir", str(tmp_path / "bridge"), "--time-scale", str(TS),
            "--bridge-id", f"br-{topic_root}", "--result-timeout", "60s"]
    log = (tmp_path / "bridge.log").open("ab")
    processes: list[trio.Process] = []

    async def spawn() -> trio.Process:
        processes.append(await trio.lowlevel.open_process(argv, cwd=REPO, stdout=log,
                                                          stderr=log))
        return processes[-1]

    try:
        await _crash_and_restart(spawn, mesh, sim)
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
        log.close()


async def _crash_and_restart(spawn: Callable[[], Awaitable[trio.Process]], mesh: Mesh,
                             sim: SimRunner) -> None:
    def last_state() -> dict[str, Any]:
        return mesh.states()[-1] if mesh.states() else {}

    first = await spawn()
    # Its first connection creates the session: what was published before is not for it.
    await wait_for(lambda: last_state().get("radio") == "connected")
    messages = [outbound(text=f"crash {i}") for i in range(6)]
    for message in messages:
        await mesh.send(message)
    await wait_for(lambda: any(mesh.statuses(m["message_id"]) for m in messages), timeout=20)
    first.kill()  # SIGKILL, mid-way through the queue
    await first.wait()
    await wait_for(lambda: last_state() == {"state": "offline"})  # the will

    second = await spawn()

    def final(message: dict[str, Any]) -> bool:
        return any(p["status"] in ("delivered", "failed") for p in mesh.statuses(
            message["message_id"]))

    await wait_for(lambda: all(final(m) for m in messages), timeout=20)
    for message in messages:
        on_air = sim.texts_on_air(message["text"])
        assert on_air <= 1
        reports = mesh.statuses(message["message_id"])
        # On air: delivered, or failed for want of the delivery ACK (it went to the killed one);
        # one the killed bridge was handing over is reported by its packet's result too.
        reached = [p for p in reports if p["status"] == "delivered"
                   or p.get("reason") == "no_delivery_ack"]
        assert bool(reached) == (on_air == 1)
    await wait_for(lambda: last_state().get("state") == "online")
    stopping = trio.current_time()
    second.terminate()  # SIGTERM
    with trio.fail_after(10):
        assert await second.wait() == 0
    assert trio.current_time() - stopping < 5
    await wait_for(lambda: last_state() == {"state": "offline"})
