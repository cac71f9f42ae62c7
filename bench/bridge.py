"""Bridge pacing benchmark: how fast a backlog drains through the real bridge to a radio.

What it does, in one run (see bench/README.md for how to read the figures):
1. Per round, in this process: a simulated radio (bridge/sim, ``SimRadioServer`` on a free TCP
   port, sped up by ``time_scale``) and the real bridge daemon (``bridge.daemon.run_bridge``,
   the meshtastic library's TCP client, a fresh SQLite state directory), connected to the MQTT
   broker with a private topic root and bridge id.
2. Publishes a backlog of outbound messages on the bridge's own topic
   ``{root}/bridge/{bridge_id}/outbound/!a1b2c3d4`` (QoS 1, the JSON of docs/mqtt.md), all at
   once, after the bridge subscribed: beyond its credit, as a gateway that predates late
   binding would, so the bridge's own pace is measured, not the gateway's schedule.
3. The radio notes, in radio seconds, when each text reaches it and whether it refused it;
   its counters give the NAKs by reason. Nothing is converted by hand: radio time is the
   simulated radio's own clock, so the figures are per minute of radio time.
4. Two scenarios:
   ``rate``: region US (no duty cycle), short texts; the limit is the firmware's one text per
   2 s (30 a minute). Sustained rate = texts after the first few, over their time span. Run at
   each of ``--rate-time-scales`` (default 1 and 30): the bridge's gap carries a margin of a
   few real milliseconds, and each hand-over costs a few more (SQLite commit, the library's
   write), which a time scale of X turns into X times as many radio milliseconds. At 1x the
   figure is what a real radio gets; at 30x it is a lower bound.
   ``duty``: region EU_868 (10 % of each rolling hour), LONG_FAST, 200-byte texts; the limit
   is 360 s of airtime an hour divided by one text's airtime (kosmo/airtime.py). The bridge
   spends the first hour's budget in a burst, then sends as old sends leave the window, so
   only a window that starts an hour or more after the first send is a steady state: the
   figure is the count in the second hour (and the range over sliding one-hour windows that
   start in it). Each round simulates a bit more than two hours of radio time (at 60x, a
   little over two minutes).
5. Prints a table per scenario with the median of rounds.

Everything is bounded: each round stops at a radio-time target or a wall-clock deadline, every
wait has a timeout, and on exit (also Ctrl-C or SIGTERM) the bridges are stopped, their MQTT
sessions and retained state topics removed from the broker and their state directories
deleted.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import json
import logging
import math
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import trio
from common import (  # bench/ is on sys.path when run as a script
    BenchError,
    run_main,
    say,
    sigterm_interrupts,
    source_version,
)
from google.protobuf.message import DecodeError
from meshtastic.protobuf import mesh_pb2, portnums_pb2
from paho.mqtt.client import Client, MQTTMessage
from paho.mqtt.enums import CallbackAPIVersion

# Run as a script, this file's folder comes first on sys.path, and this file is named like the
# ``bridge`` package: put the repository first instead.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from bridge.config import BridgeSettings  # noqa: E402
from bridge.daemon import Bridge, run_bridge  # noqa: E402
from bridge.radio import Device  # noqa: E402
from bridge.sim import SimConfig, SimRadio, SimRadioServer, make_nodes  # noqa: E402
from kosmo import airtime, wire  # noqa: E402
from kosmo.config import MqttEndpoint  # noqa: E402

NODE = "!a1b2c3d4"  # the simulated mesh's first node: one relay away, it acknowledges
FIRMWARE_GAP = 2.0  # radio seconds: firmware 2.7 refuses a text sooner after the previous one
RATE_LIMIT_PER_MIN = 60 / FIRMWARE_GAP
RATE_SKIP = 5  # hand-overs left out of the sustained rate (intake of the backlog, first link)
TARGET_RATIO = 0.95
REFUSALS = ("RATE_LIMIT_EXCEEDED", "DUTY_CYCLE_LIMIT")
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class Scenario:
    name: str
    region: str
    preset: str
    text_bytes: int
    time_scale: float
    radio_seconds: float  # run this long in radio time, from the first hand-over
    backlog: int

    @property
    def params(self) -> airtime.LoraParams:
        return airtime.preset_params(self.preset)

    @property
    def text_airtime(self) -> float:
        """What the bridge charges per text (its own formula, kosmo/airtime.py)."""
        return airtime.text_airtime(self.params, self.text_bytes)

    @property
    def limit_per_min(self) -> float:
        share = airtime.duty_cycle(self.region)
        if share is None:
            return RATE_LIMIT_PER_MIN
        by_duty = share * airtime.DUTY_WINDOW / self.text_airtime / (airtime.DUTY_WINDOW / 60)
        return min(by_duty, RATE_LIMIT_PER_MIN)


@dataclass
class Round:
    scenario: Scenario
    number: int
    accepted: list[float]  # radio seconds at which the radio took a text
    refused: list[float]  # ... and at which it refused one
    naks: Counter[str]
    queue_rejects: int
    transmissions: int
    sim_airtime: float
    end: float  # radio seconds when the round stopped
    min_gap_rule: float  # the bridge's pacing gap, radio seconds
    reports: Counter[str]
    problems: list[str]
    real_seconds: float
    finished: bool  # reached its radio-time target (not the wall-clock deadline)
    drained: bool  # the backlog ran out before that (it is sized so that it does not)

    # --- derived figures --------------------------------------------------------------------

    @property
    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.accepted, self.accepted[1:], strict=False)]

    def sustained_rate(self) -> tuple[float, int, float]:
        """(texts per radio minute, texts counted, span in radio seconds) after the first few."""
        steady = self.accepted[RATE_SKIP:]
        if len(steady) < 2:
            return math.nan, len(steady), 0.0
        span = steady[-1] - steady[0]
        return 60 * (len(steady) - 1) / span, len(steady), span

    def hour_counts(self) -> tuple[int, int, int, int]:
        """Steady state of the rolling hour: (texts in the second hour, min and max over
        one-hour windows starting at each send of the second hour that end before the round
        did, the most texts in any one-hour window of the round)."""
        sends, hour = self.accepted, airtime.DUTY_WINDOW
        if not sends:
            return 0, 0, 0, 0
        t0 = sends[0]

        def count(start: float) -> int:
            return bisect.bisect_left(sends, start + hour) - bisect.bisect_left(sends, start)

        second = count(t0 + hour)
        starts = [s for s in sends if t0 + hour <= s <= self.end - hour]
        counts = [count(s) for s in starts] or [second]
        peak = max(count(s) for s in sends)
        return second, min(counts), max(counts), peak

    def over_budget(self) -> float:
        """Radio seconds during which some one-hour window at the radio held more texts than
        the budget pays for (the longest such stretch; 0 when none)."""
        fit = math.floor(0.1 * airtime.DUTY_WINDOW / self.scenario.text_airtime + 1e-9)
        sends = self.accepted
        return max([airtime.DUTY_WINDOW - (b - a) for a, b in zip(sends, sends[fit:],
                                                                    strict=False)] + [0.0])

    def burst_rate(self, minutes: float = 10) -> float:
        """Texts per minute over the first ``minutes`` of radio time: what a short run sees."""
        if not self.accepted:
            return math.nan
        t0 = self.accepted[0]
        return bisect.bisect_left(self.accepted, t0 + 60 * minutes) / minutes


# --- the simulated radio, counting ------------------------------------------------------------


class CountingRadio(SimRadio):
    """The simulated radio, noting when each text reaches it (radio seconds) and whether it
    took it. The rest is the simulator's own behaviour."""

    def __init__(self, config: SimConfig) -> None:
        super().__init__(config, epoch=time.time())
        self.accepted: list[float] = []
        self.refused: list[float] = []

    def _refusals(self) -> int:
        return sum(self.stats.naks.values()) + self.stats.queue_rejects + self.stats.duplicates

    def receive(self, payload: bytes, now: float) -> None:
        msg = mesh_pb2.ToRadio()
        try:
            msg.ParseFromString(payload)
        except DecodeError:
            super().receive(payload, now)
            return
        if not (msg.WhichOneof("payload_variant") == "packet"
                and msg.packet.decoded.portnum == portnums_pb2.TEXT_MESSAGE_APP):
            super().receive(payload, now)
            return
        self.advance(now)  # what was due already happened: only this text's answer counts
        before = self._refusals()
        super().receive(payload, now)
        (self.refused if self._refusals() > before else self.accepted).append(now)


# --- MQTT ------------------------------------------------------------------------------------


def mqtt_client(endpoint: MqttEndpoint, client_id: str) -> Client:
    client = Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    if endpoint.username is not None:
        client.username_pw_set(endpoint.username, endpoint.password)
    if endpoint.tls:
        client.tls_set()
    return client


class Gateway:
    """Hands one bridge outbound messages on its own topic and counts the bridge's reports."""

    def __init__(self, endpoint: MqttEndpoint, root: str, bridge_id: str,
                 client_id: str) -> None:
        self.root, self.bridge_id = root, bridge_id
        self.reports: Counter[str] = Counter()
        self._client = mqtt_client(endpoint, client_id)
        self._subscribed = False

        def on_connect(client: Client, *_: Any) -> None:
            client.subscribe(f"{root}/mesh/status", qos=1)

        def on_subscribe(*_: Any) -> None:
            self._subscribed = True

        def on_message(client: Client, userdata: Any, msg: MQTTMessage) -> None:
            try:
                body = json.loads(msg.payload)
                key = body["status"] + (f": {body['reason']}" if body.get("reason") else "")
            except (ValueError, KeyError, TypeError):
                key = "unreadable"
            self.reports[key] += 1

        self._client.on_connect, self._client.on_subscribe = on_connect, on_subscribe
        self._client.on_message = on_message
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()
        deadline = time.monotonic() + 10
        while not self._subscribed:
            if time.monotonic() > deadline:
                self.close()
                raise BenchError(f"no subscription at the broker {endpoint.redacted()} in 10 s")
            time.sleep(0.02)

    def publish_backlog(self, count: int, text_bytes: int, ttl: float) -> None:
        topic = wire.outbound_topic(self.root, self.bridge_id, NODE)
        now = time.time()
        created = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        expires = datetime.fromtimestamp(now + ttl, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        sent = []
        for i in range(count):
            head = f"bench {i:05d} "
            body = {"message_id": str(uuid.uuid4()), "target_node_id": NODE,
                    "text": head + "x" * (text_bytes - len(head)),
                    "created_at": created, "expires_at": expires}
            sent.append(self._client.publish(topic, json.dumps(body).encode(), qos=1))
        deadline = time.monotonic() + 30
        for info in sent:
            info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise BenchError("the broker did not acknowledge the backlog within 30 s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def forget_at_broker(endpoint: MqttEndpoint, client_id: str, retained: str) -> None:
    """Drop a bridge's persistent session (a clean-session connect with its client id) and
    clear its retained state topic."""
    client = mqtt_client(endpoint, client_id)
    try:
        client.connect(endpoint.host, endpoint.port)
        client.loop_start()
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        client.publish(retained, b"", qos=1, retain=True).wait_for_publish(timeout=5)
        client.disconnect()
        client.loop_stop()
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"could not clean up {client_id!r} at the broker: {exc}", file=sys.stderr)


# --- one round -------------------------------------------------------------------------------


class Problems(logging.Handler):
    """Warnings and errors logged during a round (the bridge's and the library's)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


async def run_round(sc: Scenario, number: int, endpoint: MqttEndpoint, tag: str,
                    cleanup: contextlib.ExitStack, problems: Problems) -> Round:
    root = f"benchbr{tag}r{number}{sc.name}"
    bridge_id = f"bench-{tag}-{sc.name}-{number}"
    state_dir = Path(tempfile.mkdtemp(prefix="kosmo_bench_bridge_"))
    cleanup.callback(shutil.rmtree, state_dir, ignore_errors=True)
    cleanup.callback(forget_at_broker, endpoint, f"kosmo-bridge-{bridge_id}",
                     f"{root}/bridge/{bridge_id}/state")
    problems.lines.clear()
    radio = CountingRadio(SimConfig(nodes=make_nodes(1, auto_reply=False), auto_reply=False,
                                    region=sc.region, modem_preset=sc.preset, seed=number))
    server = SimRadioServer(radio, time_scale=sc.time_scale)
    shutdown, stopped = trio.Event(), trio.Event()
    real_start = trio.current_time()
    # Radio time to the end: to the first hand-over (a few seconds), then the scenario.
    deadline = real_start + 60 + 1.5 * sc.radio_seconds / sc.time_scale
    finished = drained = False
    async with trio.open_nursery() as nursery:
        port = await nursery.start(partial(server.run, 0))
        settings = BridgeSettings(
            device=Device("tcp", "127.0.0.1", port), bridge_id=bridge_id, mqtt_url=endpoint,
            mqtt_topic_root=root, state_dir=state_dir, time_scale=sc.time_scale,
            result_timeout=300.0)

        async def serve_bridge(task_status: trio.TaskStatus[Bridge]) -> None:
            try:
                await run_bridge(settings, shutdown, task_status=task_status)
            finally:
                stopped.set()

        with trio.fail_after(30):
            bridge = await nursery.start(serve_bridge)
        gateway = await trio.to_thread.run_sync(Gateway, endpoint, root, bridge_id,
                                                f"bench-gw-{tag}")
        try:
            await trio.to_thread.run_sync(
                gateway.publish_backlog, sc.backlog, sc.text_bytes,
                max(86400.0, 3 * sc.radio_seconds / sc.time_scale))
            say(f"{sc.name} round {number}: {sc.backlog} messages published, radio at "
                f"{sc.time_scale:g}x, running {sc.radio_seconds / 60:.0f} radio minutes "
                f"(~{sc.radio_seconds / sc.time_scale:.0f} s)")
            next_note = trio.current_time() + 30
            while trio.current_time() < deadline:
                sends = radio.accepted
                if sends and server.now() >= sends[0] + sc.radio_seconds:
                    finished = True
                    break
                if len(sends) >= sc.backlog:
                    finished = drained = True  # should not happen: the backlog is sized
                    break
                if trio.current_time() >= next_note:
                    next_note += 30
                    say(f"  radio minute {server.now() / 60:.1f}: {len(sends)} texts taken, "
                        f"NAKs {dict(radio.stats.naks) or 0}")
                await trio.sleep(0.25)
            end = server.now()
            min_gap = bridge.sender.pacer.rules.min_gap
            shutdown.set()
            with trio.fail_after(15):
                await stopped.wait()
            await trio.sleep(0.5)  # the last reports reach the counting subscriber
        finally:
            gateway.close()
        nursery.cancel_scope.cancel()
    stats = radio.stats
    return Round(sc, number, list(radio.accepted), list(radio.refused), Counter(stats.naks),
                 stats.queue_rejects, sum(stats.transmissions.values()), stats.airtime, end,
                 min_gap, Counter(gateway.reports), list(problems.lines),
                 trio.current_time() - real_start, finished, drained)


async def measure(args: argparse.Namespace, scenarios: list[Scenario], tag: str,
                  cleanup: contextlib.ExitStack, problems: Problems) -> list[Round]:
    endpoint = MqttEndpoint.from_url(args.mqtt_url)
    rounds: list[Round] = []
    async with sigterm_interrupts():
        for sc in scenarios:
            for n in range(1, args.rounds + 1):
                rounds.append(await run_round(sc, n, endpoint, tag, cleanup, problems))
    return rounds


# --- report ----------------------------------------------------------------------------------





def nak_text(naks: Counter[str]) -> tuple[int, int, int]:
    other = sum(v for k, v in naks.items() if k not in REFUSALS)
    return naks["RATE_LIMIT_EXCEEDED"], naks["DUTY_CYCLE_LIMIT"], other


def failed_reports(r: Round) -> int:
    return sum(v for k, v in r.reports.items() if k.startswith("failed"))


def verdict(ratio: float, rounds: list[Round]) -> str:
    refusals = sum(r.naks[k] for r in rounds for k in REFUSALS)
    ok = (ratio >= TARGET_RATIO and refusals == 0
          and all(r.finished and not r.drained for r in rounds))
    return (f"target >= {TARGET_RATIO:.0%} of the limit and no {' or '.join(REFUSALS)} "
            f"NAKs: {'MET' if ok else 'NOT MET'}")


def report(args: argparse.Namespace, rounds: list[Round]) -> str:
    out: list[str] = []
    w = out.append
    med = statistics.median
    w(f"KosmoConnect bridge pacing benchmark, {datetime.now():%Y-%m-%d %H:%M}, Python "
      f"{sys.version.split()[0]}, code {args.code}; figures in radio time")
    for sc in dict.fromkeys(r.scenario for r in rounds):
        rs = [r for r in rounds if r.scenario == sc]
        name = sc.name
        w("")
        if name == "rate":
            w(f"rate: region {sc.region} (no duty cycle), {sc.preset}, {sc.text_bytes}-byte "
              f"texts ({sc.text_airtime:.3f} s on air), radio at {sc.time_scale:g}x; limit "
              f"{sc.limit_per_min:.1f} texts/min (one per {FIRMWARE_GAP:g} s)")
        else:
            w(f"duty: region {sc.region} (10 % of each rolling hour = "
              f"{0.1 * airtime.DUTY_WINDOW:.0f} s), {sc.preset}, {sc.text_bytes}-byte texts "
              f"({sc.text_airtime:.3f} s on air by kosmo/airtime.py), radio at "
              f"{sc.time_scale:g}x; limit {sc.limit_per_min:.3f} texts/min "
              f"({60 * sc.limit_per_min:.1f}/h)")
        w(f"{'round':<7}{'texts':>6}{'span min':>9}{'texts/min':>10}{'ratio':>7}"
          f"{'gap p50':>8}{'gap min':>8}{'rule':>7}{'NAK rate':>9}{'NAK duty':>9}"
          f"{'NAK other':>10}{'q.rej':>6}{'failed':>7}{'warn':>5}{'real s':>7}")
        ratios = []
        for r in rs:
            if name == "rate":
                rate, texts, span = r.sustained_rate()
            else:
                second, _lo, _hi, _peak = r.hour_counts()
                rate, texts, span = second / 60, second, airtime.DUTY_WINDOW
            ratios.append(rate / sc.limit_per_min)
            gaps = r.gaps or [math.nan]
            rl, dc, other = nak_text(r.naks)
            w(f"{r.number:<7}{texts:>6}{span / 60:>9.1f}{rate:>10.3f}{ratios[-1]:>7.3f}"
              f"{med(gaps):>8.3f}{min(gaps):>8.3f}{r.min_gap_rule:>7.3f}{rl:>9}{dc:>9}"
              f"{other:>10}{r.queue_rejects:>6}{failed_reports(r):>7}{len(r.problems):>5}"
              f"{r.real_seconds:>7.0f}" + ("" if r.finished else "  (deadline: incomplete)")
              + ("  (backlog ran out)" if r.drained else ""))
        ratio = med(ratios)
        w(f"{'median':<7}{'':>6}{'':>9}{ratio * sc.limit_per_min:>10.3f}{ratio:>7.3f}")
        if name == "duty":
            w("")
            w(f"{'round':<7}{'2nd hour':>9}{'1-h windows':>13}{'peak 1-h':>9}"
              f"{'peak airtime':>13}{'over for':>9}{'first 10 min':>13}{'sim s/text':>11}"
              f"{'sim peak %':>11}")
            budget = 0.1 * airtime.DUTY_WINDOW
            for r in rs:
                second, lo, hi, peak = r.hour_counts()
                per_tx = r.sim_airtime / r.transmissions if r.transmissions else math.nan
                w(f"{r.number:<7}{second:>9}{f'{lo}-{hi}':>13}{peak:>9}"
                  f"{f'{peak * sc.text_airtime:.1f}/{budget:.0f} s':>13}"
                  f"{f'{r.over_budget():.3f} s':>9}"
                  f"{r.burst_rate():>9.1f}/min{per_tx:>11.3f}"
                  f"{100 * peak * per_tx / airtime.DUTY_WINDOW:>11.2f}")
        w(f"{name} at {sc.time_scale:g}x: achieved / limit (median of {len(rs)} "
          f"round{'s' * (len(rs) != 1)}): "
          f"{ratio:.3f}   {verdict(ratio, rs)}")
        for r in rs:
            if r.reports:
                w(f"  round {r.number} reports: " + ", ".join(
                    f"{k} {v}" for k, v in sorted(r.reports.items())))
            for line in r.problems[:MAX_PROBLEMS_SHOWN]:
                w(f"  round {r.number} log: {line}")
    w("")
    w("columns: texts counted and their span (rate: after the first "
      f"{RATE_SKIP}; duty: the second hour); gap p50/min between hand-overs the radio took; "
      "rule = the bridge's pacing gap; NAKs from the radio; q.rej = refused for a full TX "
      "queue; failed = failed reports; warn = warnings logged")
    if any(r.scenario.name == "duty" for r in rounds):
        w("duty: 2nd hour = texts the radio took in the hour after the first send's hour; 1-h "
          "windows = range over one-hour windows starting at each send of that hour; peak 1-h "
          "= most texts in any one-hour window of the round, and their airtime by the "
          "bridge's formula against the budget; over for = how long (radio s) a window held "
          "more than the budget pays for; first 10 min = what a short run would see; sim = "
          "the simulated radio's own airtime per text and its peak hourly utilization")
    return "\n".join(out)


# --- main ------------------------------------------------------------------------------------


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out = []
    if args.scenario in ("rate", "both"):
        radio_seconds = args.rate_minutes * 60
        for scale in args.rate_time_scales:
            out.append(Scenario("rate", "US", "LONG_FAST", args.rate_bytes, scale,
                                radio_seconds, math.ceil(radio_seconds / FIRMWARE_GAP) + 50))
    if args.scenario in ("duty", "both"):
        radio_seconds = 2 * airtime.DUTY_WINDOW + args.duty_tail_minutes * 60
        probe = Scenario("duty", "EU_868", "LONG_FAST", args.duty_bytes, args.duty_time_scale,
                         radio_seconds, 0)
        # The budget of each hour goes out in a burst at the start of that hour: one hour's
        # worth for every hour begun, plus a margin.
        per_hour = math.ceil(60 * probe.limit_per_min)
        backlog = per_hour * math.ceil(radio_seconds / airtime.DUTY_WINDOW + 1) + 50
        out.append(Scenario("duty", "EU_868", "LONG_FAST", args.duty_bytes,
                            args.duty_time_scale, radio_seconds, backlog))
    return out


def _scales(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of numbers") from None


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Backlog drain rate through the bridge and a simulated radio, against the "
                    "firmware's rate limit and the EU_868 duty cycle.")
    parser.add_argument("--scenario", choices=("rate", "duty", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per scenario (default 3)")
    parser.add_argument("--rate-minutes", type=float, default=3,
                        help="radio minutes of each rate round (default 3)")
    parser.add_argument("--rate-time-scales", type=_scales, default=[1.0, 30.0],
                        metavar="X[,X...]",
                        help="radio seconds per real second, one rate scenario each "
                             "(default 1,30)")
    parser.add_argument("--rate-bytes", type=int, default=50,
                        help="text size, rate scenario (default 50)")
    parser.add_argument("--duty-time-scale", type=float, default=60,
                        help="radio seconds per real second, duty scenario (default 60)")
    parser.add_argument("--duty-bytes", type=int, default=200,
                        help="text size, duty scenario (default 200)")
    parser.add_argument("--duty-tail-minutes", type=float, default=15,
                        help="radio minutes after the second hour, for sliding windows "
                             "(default 15)")
    parser.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883",
                        help="MQTT broker (default mqtt://127.0.0.1:1883)")
    parser.add_argument("--log-level", default="WARNING",
                        help="log level of the bridge on stderr (default WARNING)")
    args = parser.parse_args()
    if args.rounds < 1 or args.rate_minutes < 1 or args.duty_tail_minutes < 0:
        parser.error("need --rounds >= 1, --rate-minutes >= 1, --duty-tail-minutes >= 0")
    for scale in (*args.rate_time_scales, args.duty_time_scale):
        if not 0 < scale <= 1000:
            parser.error("time scales must be above 0 and at most 1000 (as the bridge's)")
    for size in (args.rate_bytes, args.duty_bytes):
        if not 20 <= size <= 200:
            parser.error("text sizes must be 20..200 bytes (the gateway's default maximum)")
    try:
        MqttEndpoint.from_url(args.mqtt_url)
    except ValueError as exc:
        parser.error(str(exc))
    args.code = source_version()

    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problems = Problems()
    logging.getLogger().addHandler(problems)

    tag = secrets.token_hex(4)

    def body() -> str:
        with contextlib.ExitStack() as cleanup:
            rounds = trio.run(measure, args, scenarios(args), tag, cleanup, problems)
        return report(args, rounds)

    run_main(body, "bridges stopped, broker sessions and state removed")


if __name__ == "__main__":
    main()
