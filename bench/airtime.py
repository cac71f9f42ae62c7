"""Airtime stewardship benchmark: three overlapping simulated radios, one gateway, 20 users.

What it does, in one run (bench/README.md says how to read the figures):
1. A fresh database ``bench_<random>`` (migrated, seeded) with 20 users of its own: one heavy
   user (wanderer, weight 1) and 19 light ones cycling wanderer / guardian / sanctuary (weights
   1, 2, 4; guardians whitelisted for every node), each with an unlimited quota override. The
   gateway runs as ``kosmo gateway`` (its own process, header auth, a private topic root).
2. Per region (US: the 2 s rule, no duty cycle, LONG_FAST; EU_868: 10 % of each rolling hour,
   LONG_MODERATE) and per round, in this process: three simulated radios (bridge/sim, sped up
   by the region's time scale) that overlap — each hears two nodes of its own, one node shared
   with each other radio and one node all three hear — each with the real bridge daemon
   attached (fresh bridge id and state directory).
3. The heavy user sends its backlog to the node all radios hear; once its first text is on
   air, every light user sends ``--light-rounds`` rounds' worth (3 x its weight texts, each
   150-200 bytes) to one node drawn at random, all at once. While the backlog drains, a few of
   the heavy user's waiting messages are canceled (DELETE, timed against a GET of the next
   one, in the same moment) and the next one's place is watched.
4. When every message has ended, the radios' on-air records and the messages' histories give
   the figures (bench/airtime_figures.py); medians of the rounds, percentiles over all of them.

Everything is bounded: every wait has a deadline, and on exit (also Ctrl-C or SIGTERM) the
bridges and the gateway stop, the bridges' retained states and sessions and the gateway's
session leave the broker, the database is dropped and the state directories removed.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pickle
import random
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

# Run as a script or with -m: the repository first (bench/bridge.py would shadow the ``bridge``
# package), then bench/ for the shared helpers.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path[:0] = [str(HERE.parent), str(HERE)]

import httpx  # noqa: E402
import psycopg  # noqa: E402
import trio  # noqa: E402
from airtime_figures import OnAir, RoundData, Sent  # noqa: E402
from airtime_report import report  # noqa: E402
from airtime_setup import (  # noqa: E402
    ALL_HEAR,
    FINAL,
    HEARS,
    HEAVY,
    NODES,
    RADIOS,
    REGIONS,
    Problems,
    Region,
    User,
    create_users,
    forget_at_broker,
    gateway_process,
    users,
)
from common import log_dir, run_main, say, sigterm_interrupts  # noqa: E402
from servers import (  # noqa: E402
    bench_database,
    forget_mqtt_session,
    free_port,
    gateway_env,
    wait_ready,
)

from bridge.config import BridgeSettings  # noqa: E402
from bridge.daemon import run_bridge  # noqa: E402
from bridge.radio import Device  # noqa: E402
from bridge.sender import GAP_MARGIN, GAP_MARGIN_REAL, MIN_GAP  # noqa: E402
from bridge.sim import AirRecord, SimConfig, SimRadio, SimRadioServer, make_nodes  # noqa: E402
from kosmo import airtime  # noqa: E402
from kosmo.config import MqttEndpoint  # noqa: E402

ESTIMATE_EVERY = 0.2  # real seconds between two reads of the waiting rows' estimates


@dataclass
class Cancel:
    """One cancel: its DELETE's and the baseline GET's latency, its status, and whether the
    next message's place moved up."""

    delete_ms: float
    get_ms: float
    status: int
    moved_up: bool


class Run:
    """What a run shares: its settings, the database, the broker and topic root, the cleanups."""

    def __init__(self, args: argparse.Namespace, db_url: str, base_url: str, root: str,
                 everyone: list[User], cleanup: contextlib.ExitStack) -> None:
        self.args, self.db_url, self.base_url, self.root = args, db_url, base_url, root
        self.users, self.cleanup = everyone, cleanup
        self.endpoint = MqttEndpoint.from_url(args.mqtt_url)
        self.tag = secrets.token_hex(3)

    async def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            with psycopg.connect(self.db_url, autocommit=True) as conn:
                return [tuple(r) for r in conn.execute(query, params).fetchall()]
        return await trio.to_thread.run_sync(run)


async def until(check: Callable[[], Awaitable[bool]], interval: float) -> None:
    """Poll ``check`` until it holds: what it looks at lives in another process (the database,
    the gateway) or is a plain list a radio appends to, with nothing to wait on."""
    while not await check():  # noqa: ASYNC110
        await trio.sleep(interval)


def _ts(text: str | None) -> float | None:
    return None if text is None else datetime.fromisoformat(text).timestamp()


async def send(client: httpx.AsyncClient, user: User, target: str, text: str, cost: float,
               *, light: bool, first: bool) -> Sent | None:
    answer = await client.post("/api/v1/messages", headers={"X-User-ID": str(user.id)},
                               json={"target_node_id": target, "text": text})
    if answer.status_code != 201:
        say(f"send refused: {answer.status_code} {answer.text[:200]}")
        return None
    body = answer.json()
    return Sent(body["message_id"], str(user.id), user.weight, text, cost,
                _ts(body["created_at"]) or time.time(), _ts(body.get("estimated_transmit_at")),
                light, first, target, body.get("queue_position"))


async def cancel_some(run: Run, client: httpx.AsyncClient, heavy: list[Sent], count: int,
                      canceled: set[str]) -> list[Cancel]:
    """Cancel ``count`` of the heavy user's waiting messages, every other one from the middle
    of what still waits; time each DELETE against a GET of the next one, and watch whether the
    next one's place moves up (beyond what the radio took meanwhile)."""
    ids = [s.message_id for s in heavy]
    waiting = [str(r[0]) for r in await run.sql(
        "SELECT id FROM messages WHERE id = ANY(%s::uuid[]) AND status = 'pending'"
        " AND handed_at IS NULL ORDER BY created_at", ids)]
    picks = waiting[len(waiting) // 3::2][:count]
    header = {"X-User-ID": str(HEAVY)}
    out = []
    for victim in picks:
        nxt = waiting[waiting.index(victim) + 1] if victim != waiting[-1] else None

        async def place(message_id: str | None) -> tuple[int | None, int]:
            rows = await run.sql(
                "SELECT (SELECT queue_position FROM messages WHERE id = %s::uuid),"
                " (SELECT count(*) FROM messages WHERE handed_at IS NOT NULL AND bridge_id ="
                "  (SELECT bridge_id FROM messages WHERE user_id = %s AND bridge_id IS NOT NULL"
                "   LIMIT 1))", message_id, HEAVY)
            return rows[0][0], int(rows[0][1])

        before = await place(nxt)
        t0 = time.perf_counter()
        got = await client.get(f"/api/v1/messages/{nxt or victim}", headers=header)
        t1 = time.perf_counter()
        gone = await client.delete(f"/api/v1/messages/{victim}", headers=header)
        t2 = time.perf_counter()
        got.raise_for_status()
        if gone.status_code == 200:
            canceled.add(victim)
        moved = False
        with trio.move_on_after(3):
            while nxt is not None and before[0] is not None and gone.status_code == 200:
                after = await place(nxt)
                if after[0] is not None and (before[0] - after[0]) - (after[1] - before[1]) >= 1:
                    moved = True
                    break
                await trio.sleep(0.05)
        out.append(Cancel((t2 - t1) * 1000, (t1 - t0) * 1000, gone.status_code, moved))
    return out


async def run_round(run: Run, region: Region, number: int,
                    problems: Problems) -> tuple[RoundData, list[Cancel]]:
    args = run.args
    on_air: list[OnAir] = []
    rng = random.Random(number)
    sims: dict[str, SimRadio] = {}
    ids = {r: f"bench-{run.tag}-{region.name}-{number}-{r}" for r in RADIOS}
    params = airtime.preset_params(region.preset)
    cost = partial(airtime.text_airtime, params)

    def hook(radio: str, epoch: float) -> Any:
        def on(record: AirRecord) -> None:
            on_air.append(OnAir(radio, record.packet_id, record.text, record.at - epoch,
                                time.time()))
        return on

    sent: list[Sent] = []
    canceled: set[str] = set()
    samples: dict[str, list[tuple[float, float]]] = {}

    async def read_estimates() -> None:
        """Every few tenths of a second, the estimates of the waiting rows."""
        while True:
            ids = [s.message_id for s in sent]
            rows = await run.sql(
                "SELECT id, estimated_transmit_at FROM messages WHERE id = ANY(%s::uuid[])"
                " AND status = 'pending' AND handed_at IS NULL"
                " AND estimated_transmit_at IS NOT NULL", ids)
            now = time.time()
            for message_id, at in rows:
                samples.setdefault(str(message_id), []).append((now, at.timestamp()))
            await trio.sleep(ESTIMATE_EVERY)

    async with trio.open_nursery() as nursery:
        shutdowns, stopped = [], []
        for i, r in enumerate(RADIOS):
            epoch = time.time()
            sims[r] = SimRadio(SimConfig(
                nodes=make_nodes(0, hears=[int(n[1:], 16) for n in HEARS[r]], auto_reply=False),
                my_node_num=0x0B0B0B01 + i, region=region.name, modem_preset=region.preset,
                latency=0.5, auto_reply=False, seed=number * 10 + i),
                epoch=epoch, on_air=hook(r, epoch))
            port = await nursery.start(partial(SimRadioServer(
                sims[r], time_scale=region.time_scale).run, 0))
            state = Path(tempfile.mkdtemp(prefix="kosmo_bench_airtime_"))
            run.cleanup.callback(shutil.rmtree, state, ignore_errors=True)
            run.cleanup.callback(forget_at_broker, run.endpoint, f"kosmo-bridge-{ids[r]}",
                                 f"{run.root}/bridge/{ids[r]}/state")
            settings = BridgeSettings(
                device=Device("tcp", "127.0.0.1", port), bridge_id=ids[r],
                mqtt_url=run.endpoint, mqtt_topic_root=run.root, state_dir=state,
                time_scale=region.time_scale, result_timeout=600.0, credit=args.credit)
            shutdown, done = trio.Event(), trio.Event()

            async def serve(s: BridgeSettings = settings, stop: trio.Event = shutdown,
                            finished: trio.Event = done, *,
                            task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                            ) -> None:
                try:
                    await run_bridge(s, stop, task_status=task_status)
                finally:
                    finished.set()

            with trio.fail_after(30):
                await nursery.start(serve)
            shutdowns.append(shutdown)
            stopped.append(done)
        async def covered() -> bool:
            return len(await run.sql("SELECT DISTINCT bridge_id FROM coverage"
                                     " WHERE bridge_id = ANY(%s)", list(ids.values()))) == 3

        with trio.fail_after(30):
            await until(covered, 0.1)
        await trio.sleep(2.5)  # the dispatcher reads the bridges' states and coverage

        nursery.start_soon(read_estimates)
        async with httpx.AsyncClient(base_url=run.base_url, timeout=30,
                                     trust_env=False) as client:
            heavy_user, lights = run.users[0], run.users[1:]
            for k in range(args.heavy):
                text = f"h{number}-{k:03d} " + "x" * rng.randint(140, 185)
                if s := await send(client, heavy_user, ALL_HEAR, text, cost(len(text)),
                                   light=False, first=k == 0):
                    sent.append(s)
            async def first_on_air() -> bool:
                return bool(on_air)

            with trio.fail_after(30):
                await until(first_on_air, 0.02)

            async def light(user: User) -> None:
                target = rng.choice(NODES)
                for k in range(args.light_rounds * user.weight):
                    text = f"l{number}-{user.id.hex[-4:]}-{k:02d} " + "y" * rng.randint(140, 185)
                    if s := await send(client, user, target, text, cost(len(text)),
                                       light=True, first=k == 0):
                        sent.append(s)

            async with trio.open_nursery() as senders:
                for user in lights:
                    senders.start_soon(light, user)
            cancels = await cancel_some(run, client, [s for s in sent if not s.light],
                                        args.cancels, canceled)

        ids_sent = [s.message_id for s in sent]
        async def all_ended() -> bool:
            return not (await run.sql("SELECT count(*) FROM messages WHERE id = ANY(%s::uuid[])"
                                      " AND status <> ALL(%s)", ids_sent, list(FINAL)))[0][0]

        with trio.move_on_after(region.deadline) as waited:
            await until(all_ended, 0.25)
        if waited.cancelled_caught:
            say(f"round {number} of {region.name}: not every message ended in "
                f"{region.deadline:.0f} s; figures from what did")
        for shutdown in shutdowns:
            shutdown.set()
        with trio.fail_after(20):
            for done in stopped:
                await done.wait()
        nursery.cancel_scope.cancel()

    transmitted = {str(m): at.timestamp() for m, at in await run.sql(
        "SELECT message_id, min(at) FROM message_status_history WHERE status = 'transmitted'"
        " AND message_id = ANY(%s::uuid[]) GROUP BY message_id", ids_sent)}
    naks = sum((sim.stats.naks for sim in sims.values()), start=type(sims["A"].stats.naks)())
    data = RoundData(
        sent, on_air, transmitted, canceled, credit=args.credit,
        quantum=airtime.text_airtime(params, airtime.MAX_TEXT_BYTES),
        duty=airtime.duty_cycle(region.name),
        bridge_gap=MIN_GAP + GAP_MARGIN + GAP_MARGIN_REAL * region.time_scale, naks=naks,
        samples=samples)
    return data, cancels


async def measure(run: Run, problems: Problems) -> dict[str, list[tuple[RoundData,
                                                                          list[Cancel]]]]:
    out: dict[str, list[tuple[RoundData, list[Cancel]]]] = {}
    async with sigterm_interrupts():
        for name in run.args.regions:
            region = REGIONS[name]
            for number in range(1, run.args.rounds + 1):
                say(f"{name}: round {number} of {run.args.rounds} (time scale "
                    f"{region.time_scale:g})")
                started = time.monotonic()
                out.setdefault(name, []).append(await run_round(run, region, number, problems))
                say(f"{name}: round {number} took {time.monotonic() - started:.0f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--regions", nargs="+", default=list(REGIONS), choices=list(REGIONS))
    parser.add_argument("--heavy", type=int, default=60, help="the heavy user's backlog")
    parser.add_argument("--light-users", type=int, default=19)
    parser.add_argument("--light-rounds", type=int, default=3,
                        help="each light user sends this many rounds' worth: this x its weight")
    parser.add_argument("--cancels", type=int, default=5, help="cancels per round")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--mqtt-url", default=os.environ.get(
        "KOSMO_BENCH_MQTT_URL", "mqtt://127.0.0.1:1883"))
    parser.add_argument("--credit", type=int, default=2, help="each bridge's credit")
    parser.add_argument("--time-scale", action="append", default=[], metavar="REGION=X",
                        help="radio seconds per real second in REGION (US 10, EU_868 300)")
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument("--dump", type=Path, help="write what the rounds recorded (pickle)")
    args = parser.parse_args()
    for item in args.time_scale:
        name, _, value = item.partition("=")
        try:
            REGIONS[name] = replace(REGIONS[name], time_scale=float(value))
        except (KeyError, ValueError):
            parser.error(f"--time-scale {item!r}: REGION=X with REGION one of {list(REGIONS)}")
    if args.rounds < 1 or args.heavy < 2 or args.light_users < 1:
        parser.error("at least one round, two heavy texts and one light user")
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problems = Problems()
    logging.getLogger().addHandler(problems)

    def body() -> str:
        tag = secrets.token_hex(4)
        root, client_id = f"benchair{tag}", f"benchair-gw-{tag}"
        port = free_port()
        with contextlib.ExitStack() as cleanup, log_dir("kosmo_bench_airtime_",
                                                        keep=args.keep_logs) as logs:
            db_url = cleanup.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
            env = gateway_env(db_url, args.mqtt_url, root, client_id)
            env["KOSMO_HTTP_BIND"] = f"127.0.0.1:{port}"
            everyone = users(args.light_users)
            create_users(db_url, everyone)
            cleanup.callback(forget_mqtt_session, args.mqtt_url, client_id)
            gateway = cleanup.enter_context(gateway_process(env, logs / "gateway.log"))
            base = f"http://127.0.0.1:{port}"
            wait_ready("gateway", gateway, base + "/readyz", logs / "gateway.log",
                       any_answer=False)
            run = Run(args, db_url, base, root, everyone, cleanup)
            results = trio.run(measure, run, problems)
            if args.dump:
                args.dump.write_bytes(pickle.dumps(results))
            gateway_log = (logs / "gateway.log").read_text(errors="replace").splitlines()
            return report(args, results, problems.lines,
                          [ln for ln in gateway_log if " WARNING " in ln or " ERROR " in ln])
        raise AssertionError("unreachable")

    run_main(body, "bridges and gateway stopped, database dropped")


if __name__ == "__main__":
    main()
