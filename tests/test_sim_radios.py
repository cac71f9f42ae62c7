"""Several simulated radios: each with its own node id and exactly the nodes it hears, some
shared; the air log each keeps of the texts it puts on air; and the public-key refusal of
firmware 2.7. The state machine alone, the command line's flags, the real meshtastic library
and the standalone command."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from bridge.sim import AirLog, Reach, SimConfig, SimRadio, make_nodes, serve_radio
from bridge.sim.cli import add_arguments, config_from_args
from bridge.sim.protocol import node_id
from tests.test_sim_radio import (
    FAST,
    ROOT,
    Phone,
    about,
    connected,
    errors,
    listening,
    read_line,
    routing,
    run_cli,
    send_text,
    statuses,
)

NORTH, SOUTH = 0x0B0B0B0B, 0x0C0C0C0C  # two radios' own nodes
ONLY_NORTH, SHARED, ONLY_SOUTH = 0xA1B2C3D4, 0xCAFE0001, 0xCAFE0002
STRANGER = 0xBADC0FFE  # no radio knows it
KEYLESS = 0xCAFE0003  # heard, but its NodeInfo (with its public key) never came
EPOCH = 1_750_000_000.0


def radio(me: int, hears: list[int], **kw: Any) -> SimRadio:
    return SimRadio(SimConfig(nodes=make_nodes(0, hears=hears), my_node_num=me, seed=3),
                    epoch=EPOCH, **kw)


def parse(*argv: str) -> SimConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


# -- overlapping radios --------------------------------------------------------------------------


def test_two_radios_reach_exactly_what_they_hear_and_share_a_node() -> None:
    north = Phone(radio(NORTH, [ONLY_NORTH, SHARED]))
    south = Phone(radio(SOUTH, [SHARED, ONLY_SOUTH]))
    for phone, me, own, other in [(north, NORTH, ONLY_NORTH, ONLY_SOUTH),
                                  (south, SOUTH, ONLY_SOUTH, ONLY_NORTH)]:
        to_shared = phone.text(0.0, "to shared", to=SHARED)
        to_own = phone.text(3.0, "mine", to=own)
        to_other = phone.text(6.0, "not mine", to=other)
        out = phone.run_until(600.0)
        assert routing(out, to_shared)[-1] == (SHARED, "NONE")  # delivered by the shared node
        assert routing(out, to_own)[-1] == (own, "NONE")
        assert routing(out, to_other) == [(me, "MAX_RETRANSMIT")]  # out of this radio's reach
        assert {m.packet.to for m in out if m.HasField("packet")} == {me}  # all for this radio
        assert phone.radio.stats.delivered_by_text == {"to shared": 1, "mine": 1}
        assert phone.radio.stats.transmissions_by_text["not mine"] == 4  # the try, 3 retries


def test_hears_lists_exactly_the_nodes_reached_and_marks_still_apply() -> None:
    nodes = make_nodes(5, hears=[SHARED, ONLY_NORTH, SHARED], unreachable=[STRANGER],
                       silent=[ONLY_NORTH], no_key=[KEYLESS])
    assert [(n.num, n.reach, n.has_key) for n in nodes] == [
        (SHARED, Reach.REACHABLE, True), (ONLY_NORTH, Reach.SILENT, True),
        (STRANGER, Reach.UNREACHABLE, True), (KEYLESS, Reach.REACHABLE, False)]
    assert [n.hops_away for n in nodes[:2]] == [1, 0]  # shapes as for generated nodes
    with pytest.raises(ValueError, match="both heard and unreachable"):
        make_nodes(0, hears=[SHARED], unreachable=[SHARED])


def test_command_line_flags_build_overlapping_radios() -> None:
    default = parse()
    assert default.my_node_num == 0x0A0A0A0A
    assert [n.id for n in default.nodes] == ["!a1b2c3d4", "!a2b3c4d5", "!a3b4c5d6"]
    assert [n.id for n in parse("--nodes", "5", "--unreachable", "!deadbeef").nodes] == [
        "!a1b2c3d4", "!a2b3c4d5", "!a3b4c5d6", "!a4b5c6d7", "!a5b6c7d8", "!deadbeef"]
    north = parse("--node-id", "!0b0b0b0b", "--hears", "!a1b2c3d4", "!cafe0001")
    south = parse("--node-id", "!0c0c0c0c", "--hears", "!cafe0001", "--hears", "!cafe0002",
                  "--no-key", "!cafe0003")
    assert (north.my_node_num, south.my_node_num) == (NORTH, SOUTH)
    assert [n.id for n in north.nodes] == ["!a1b2c3d4", "!cafe0001"]
    assert [(n.id, n.has_key) for n in south.nodes] == [
        ("!cafe0001", True), ("!cafe0002", True), ("!cafe0003", False)]
    assert {n.num for n in north.nodes} & {n.num for n in south.nodes} == {SHARED}
    for argv, why in [(["--hears", "!cafe0001", "--nodes", "2"], "not both"),
                      (["--hears", "!cafe0001", "--unreachable", "!cafe0001"], "unreachable"),
                      (["--node-id", "!cafe0001", "--hears", "!cafe0001"], "our own")]:
        with pytest.raises(ValueError, match=why):
            parse(*argv)


# -- the air log -----------------------------------------------------------------------------------


def test_the_air_log_has_a_line_per_text_on_air_and_a_retry_keeps_its_packet_id(
        tmp_path: Path) -> None:
    path = tmp_path / "air.jsonl"
    path.write_text('{"earlier": "run"}\n')  # appended to, never truncated
    log = AirLog(path)
    sim = radio(NORTH, [SHARED], on_air=log.write)
    phone = Phone(sim)
    delivered = phone.text(0.0, "héllo", to=SHARED)
    lost = phone.text(5.0, "anyone?", to=STRANGER)
    phone.text(8.0, "no ack wanted", to=SHARED, want_ack=False)
    # Written as each text goes on air, not later: the first line is there before its ACK.
    assert len(path.read_text().splitlines()) == 1 + 3
    phone.run_until(600.0)
    log.close()
    earlier, *lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert earlier == {"earlier": "run"}
    assert lines[0] == {"at": _iso(EPOCH + 0.0), "packet_id": delivered, "to": "!cafe0001",
                        "bytes": 6, "text": "héllo"}
    tries = [line for line in lines if line["text"] == "anyone?"]
    assert [t["packet_id"] for t in tries] == [lost] * 4  # retransmissions keep the packet id
    assert all(t["to"] == node_id(STRANGER) for t in tries)
    assert [t["at"] for t in tries] == sorted(t["at"] for t in tries)
    assert len(lines) == 1 + 4 + 1 == sum(sim.stats.transmissions.values())


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")


# -- firmware 2.7 refuses a direct message without the node's public key ---------------------------


def test_a_node_without_a_public_key_is_refused_before_the_air(tmp_path: Path) -> None:
    aired: list[Any] = []
    sim = SimRadio(SimConfig(nodes=make_nodes(1, no_key=[KEYLESS]), seed=1), on_air=aired.append)
    phone = Phone(sim)
    pid = phone.text(0.0, "secret", to=KEYLESS)
    out = phone.run_until(600.0)
    assert statuses(out, pid) == [39]  # PKI_SEND_FAIL_PUBLIC_KEY, as MeshService reports it
    assert routing(out, pid) == [(0x0A0A0A0A, "PKI_SEND_FAIL_PUBLIC_KEY")]
    assert (sim.stats.transmissions[pid], aired, sim.stats.airtime) == (0, [], 0.0)
    sent = phone.text(603.0, "with a key", to=0xA1B2C3D4)  # the others are reached as before
    assert routing(phone.run_until(900.0), sent)[-1] == (0xA1B2C3D4, "NONE")


# -- through the meshtastic library and the standalone command ------------------------------


async def test_the_library_sees_the_radios_own_id_and_the_nodes_it_hears(nursery: Any) -> None:
    sim = SimRadio(SimConfig(nodes=make_nodes(0, hears=[ONLY_NORTH, SHARED], no_key=[KEYLESS]),
                             my_node_num=NORTH, seed=5))
    port: int = await nursery.start(partial(serve_radio, sim, 0, time_scale=FAST))
    async with connected(sim, port) as iface, \
            listening("meshtastic.receive.routing", iface) as results:
        assert iface.myInfo.my_node_num == NORTH
        assert iface.getMyNodeInfo()["user"]["id"] == "!0b0b0b0b"
        assert set(iface.nodes) == {"!0b0b0b0b", "!a1b2c3d4", "!cafe0001", "!cafe0003"}
        keyed = {n for n, info in iface.nodes.items() if info["user"].get("publicKey")}
        assert keyed == {"!0b0b0b0b", "!a1b2c3d4", "!cafe0001"}  # not the node without a key
        [refused] = await send_text(iface, "secret", dest="!cafe0003")
        assert errors(await results.wait_for(1, about(refused))) == [
            ("!0b0b0b0b", "PKI_SEND_FAIL_PUBLIC_KEY")]
        await trio.sleep(3 / FAST)  # past the firmware's 2 s between texts
        [shared] = await send_text(iface, "to shared", dest="!cafe0001")
        # The second node heard is a direct neighbour: its own ACK, no relay's.
        assert errors(await results.wait_for(1, about(shared))) == [("!cafe0001", "NONE")]
    assert sim.stats.transmissions_by_text == {"to shared": 1}


async def test_the_command_serves_its_own_id_and_keeps_an_air_log(nursery: Any,
                                                                  tmp_path: Path) -> None:
    air = tmp_path / "air.jsonl"
    proc = await nursery.start(partial(
        trio.run_process, [sys.executable, "-m", "bridge.sim", "--port", "0", "--time-scale",
                           "50", "--node-id", "!0b0b0b0b", "--hears", "!cafe0001", "!a1b2c3d4",
                           "--no-key", "!cafe0003", "--air-log", str(air)],
        stdout=subprocess.PIPE, check=False, cwd=ROOT))
    with trio.fail_after(15):
        line = await read_line(proc.stdout)
    assert "node !0b0b0b0b" in line, line
    assert "!cafe0003 (no key)" in line, line
    port = line.split("127.0.0.1:")[1].split()[0]
    info = await run_cli("--host", f"127.0.0.1:{port}", "--info")
    assert '"myNodeNum": 185273099' in info  # 0x0b0b0b0b
    await run_cli("--host", f"127.0.0.1:{port}", "--sendtext", "hi", "--dest", "!cafe0001",
                  "--ack")
    [entry] = [json.loads(x) for x in air.read_text().splitlines()]
    assert (entry["to"], entry["text"], entry["bytes"]) == ("!cafe0001", "hi", 2)
    proc.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await proc.wait() == 0
