"""Inbound benchmark: replies and delivery reports from the mesh, MQTT -> database -> websocket.

What it does, in one run (see bench/README.md for how to read the figures):
1. Creates a fresh database ``bench_<tag>`` (``kosmo migrate``/``seed``), adds ``--users``
   synthetic users (Sanctuary plan), each with a node of its own and outbound messages to it,
   so that every reply from that node is threaded to that user ("most recent sender" rule) and
   every delivery report names an existing message. Starts an MQTT broker of its own with the
   settings ``kosmo up`` uses (or uses ``--mqtt-url``) and the gateway (``kosmo gateway``,
   header auth, a private topic root and client id), one process each. ``--layouts`` says who
   holds the streams: ``one``, that gateway, which also consumes the MQTT messages and writes
   the events; ``two``, a second ``kosmo gateway`` on the same database and broker, started for
   that configuration, with a topic root of its own so that it subscribes only to topics nobody
   publishes and consumes nothing: every event reaches it through PostgreSQL (NOTIFY and its
   event feed), as across the processes of a deployment; ``base``, the same with the second
   gateway running ``--baseline-cmd`` (another checkout: a before/after in one run).
2. Publisher processes (``bench/mesh_publisher.py``, paho, QoS 1) offer load open loop: item i
   of a step is due at t0 + i/rate whatever happened before. First their own ceiling (to a
   topic nobody reads), then, for each number of websocket clients in ``--clients`` (client
   processes ``bench/stream_clients.py``, up to ``--per-process`` streams each, one user per
   stream), a ladder of reply rates (``--rates``) and of delivery-report rates
   (``--status-rates``), ``--seconds`` each, upward until a step is not sustained. The client
   configurations alternate, round after round, so slow drifts of a shared machine hit them
   alike. A backlog that stops draining (the gateway stalls) gets the gateway restarted with
   a fresh MQTT session, so that the remaining steps can run; what was lost is counted.
3. A thread of this process polls the database every ``--poll-ms``: when each reply (by its
   packet id) and each status change became visible. Per step: the persisted rate, how long
   the backlog took to drain, latency from the scheduled publish to visible in the database
   and to received on a websocket (p50/p99), and the CPU of every process involved.
   Gateway RSS is read before and after the clients connect: memory per client.
4. Prints a table per step and medians over rounds, then stops every process, drops the
   database and removes the gateway's MQTT session.

Everything is bounded: each step runs a fixed time, every wait has a timeout, every loop a
deadline, and Ctrl-C or SIGTERM stop the processes and drop the database too.

The modules it is made of: inbound_setup (users, broker, gateway process), inbound_load
(the publishers), inbound_streams (the websocket clients), inbound_poller (the database
side), inbound_measure (the steps and rounds), inbound_figures and inbound_report (the
figures and the printed report), inbound_profile (py-spy summaries).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import secrets
import shlex
import shutil
import threading
import time
from pathlib import Path

import psycopg
import trio
from common import (  # bench/ is on sys.path when run as a script
    log_dir,
    log_problems,
    percentile,
    run_main,
    say,
    source_version,
)
from inbound_measure import Bench
from inbound_poller import Poller
from inbound_report import report
from inbound_setup import GatewayProcess, mqtt_broker, populate
from servers import BIN, bench_database, forget_mqtt_session, free_port, gateway_env


def rates(text: str) -> list[float]:
    """Positive rates, comma-separated; ``none`` (or nothing): no step of that kind."""
    if text.strip().lower() in ("", "none"):
        return []
    values = [float(v) for v in text.split(",") if v.strip()]
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of positive rates")
    return values


def counts(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("a comma-separated list of stream counts")
    return values


LAYOUTS = ("one", "two", "base")


def layouts(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in LAYOUTS for v in values):
        raise argparse.ArgumentTypeError(f"a comma-separated list of {', '.join(LAYOUTS)}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Replies and delivery reports from the mesh: MQTT -> database -> websocket.")
    parser.add_argument("--rates", type=rates, default=rates("500,1000,1500,2000,3000,4000"),
                        help="reply rates offered, msg/s, upward until one is not sustained "
                             "(default 500,1000,1500,2000,3000,4000)")
    parser.add_argument("--status-rates", type=rates, default=rates("500,1000,2000,3000"),
                        help="delivery-report rates offered, msg/s, likewise; 'none': no "
                             "report steps (default 500,1000,2000,3000)")
    parser.add_argument("--clients", type=counts, default=counts("100,1000"),
                        help="websocket streams connected, one configuration per entry, "
                             "alternating (default 100,1000)")
    parser.add_argument("--layouts", type=layouts, default=layouts("one,two"),
                        help="where the streams are held, one configuration per entry, "
                             "alternating: 'one' on the gateway that consumes the MQTT "
                             "messages and writes the events; 'two' on a second gateway "
                             "process on the same database that consumes nothing (events "
                             "reach it through PostgreSQL); 'base' like 'two', the second "
                             "gateway running --baseline-cmd (default one,two)")
    parser.add_argument("--baseline-cmd", default=None,
                        help="the stream-holding gateway of layout 'base', e.g. another "
                             "checkout: 'env PYTHONPATH=/tmp/base .venv/bin/python -m kosmo "
                             "gateway'")
    parser.add_argument("--users", type=int, default=None,
                        help="synthetic users, one node each (default: the largest --clients)")
    parser.add_argument("--per-process", type=int, default=500,
                        help="streams per client process (default 500)")
    parser.add_argument("--publishers", type=int, default=2,
                        help="publisher processes (default 2)")
    parser.add_argument("--seconds", type=float, default=6, help="per step (default 6)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds (default 2)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds, not counted")
    parser.add_argument("--poll-ms", type=float, default=10,
                        help="database poll interval, ms (default 10)")
    parser.add_argument("--drain-timeout", type=float, default=30,
                        help="longest wait for a step's backlog, s (default 30)")
    parser.add_argument("--stall-seconds", type=float, default=10,
                        help="a backlog with no progress this long is a stall: the gateway is "
                             "restarted with a fresh MQTT session (default 10)")
    parser.add_argument("--ceiling-rate", type=float, default=30000,
                        help="offered rate of the publishers' ceiling step (default 30000)")
    parser.add_argument("--pg-url", default=os.environ.get(
        "KOSMO_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="PostgreSQL server (a role that may CREATE DATABASE) [env KOSMO_BENCH_PG_URL]")
    parser.add_argument("--mqtt-url", default=os.environ.get("KOSMO_BENCH_MQTT_URL"),
                        help="use this broker [env KOSMO_BENCH_MQTT_URL]; default: start a "
                             "private mosquitto configured as `kosmo up` does")
    parser.add_argument("--gateway-cmd", default=f"{BIN / 'kosmo'} gateway",
                        help="command that serves the gateway (default: this venv's "
                             "`kosmo gateway`)")
    parser.add_argument("--keep-logs", action="store_true",
                        help="keep the gateway's and the broker's logs (named at the end)")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the last round, one more reply step with the most streams "
                             "under py-spy --gil, into DIR, summarized")
    parser.add_argument("--profile-rate", type=float, default=1000,
                        help="offered rate of the profiled step (default 1000)")
    args = parser.parse_args()
    if args.rounds < 1 or args.seconds < 2 or args.publishers < 1 or args.per_process < 1:
        parser.error("need --rounds >= 1, --seconds >= 2, --publishers >= 1, --per-process >= 1")
    if not args.rates and not args.status_rates:
        parser.error("give --rates or --status-rates")
    if "base" in args.layouts and not args.baseline_cmd:
        parser.error("layout 'base' needs --baseline-cmd")
    args.users = args.users or max(max(args.clients), 1)
    if args.users < max(args.clients):
        parser.error("--users must be at least the largest --clients (one user per stream)")
    if args.profile:
        if not (shutil.which("py-spy") or (BIN / "py-spy").exists()):
            parser.error("--profile needs py-spy (pip install py-spy)")
        args.profile = str(Path(args.profile).resolve())
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    if args.mqtt_url is None and shutil.which("mosquitto") is None:
        parser.error("mosquitto is not installed: give --mqtt-url")
    # A run's whole length, bounded: each helper exits by itself after this.
    steps = len(args.rates) + len(args.status_rates)
    args.max_seconds = 600 + args.rounds * len(args.layouts) * len(args.clients) * steps * (
        args.seconds + args.drain_timeout + 70)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    run_main(lambda: run(args), "processes stopped, database dropped")


def run(args: argparse.Namespace) -> str:
    args.code = source_version()
    args.load_start = os.getloadavg()
    tag = secrets.token_hex(4)
    topic_root, client_id = f"bench{tag}", f"bench-gw-{tag}"
    args.topic_root = topic_root
    with log_dir("kosmo_bench_inbound_", keep=args.keep_logs) as logs, \
            contextlib.ExitStack() as stack:
        say(f"database bench_{tag}, topic root {topic_root}, logs in {logs}")
        mqtt_url, broker_pid = stack.enter_context(mqtt_broker(args.mqtt_url, logs / "mqtt"))
        args.mqtt_url = mqtt_url
        args.broker_label = (f"private mosquitto as `kosmo up` ({mqtt_url}, "
                             "max_inflight_messages 100, max_queued_messages 100000)"
                             if broker_pid else mqtt_url)
        db_url = stack.enter_context(bench_database(args.pg_url, f"bench_{tag}"))
        env = gateway_env(db_url, mqtt_url, topic_root, client_id)
        status_items = sum(int(r * args.seconds) + 1 for r in args.status_rates)
        messages = max(args.users, (args.rounds * len(args.layouts) * len(args.clients)
                                    * status_items
                                    + (int(args.profile_rate * args.seconds) if args.profile
                                       else 0)) // 2 + 16)
        say(f"adding {args.users} users and {messages} outbound messages")
        populate(db_url, args.users, messages)
        port = free_port()
        args.gateway_url = f"http://127.0.0.1:{port}"
        env["KOSMO_HTTP_BIND"] = f"127.0.0.1:{port}"
        stack.callback(forget_mqtt_session, mqtt_url, client_id)
        gateway = GatewayProcess(shlex.split(args.gateway_cmd), env, logs / "gateway.log",
                                 args.gateway_url, mqtt_url, client_id)
        stack.callback(gateway.stop)
        gateway.start()
        streams = {}  # layout -> the second gateway holding the streams, started per config
        for layout in args.layouts:
            if layout == "one":
                continue
            port2, id2 = free_port(), f"{client_id}-{layout}"
            # Its own topic root: it subscribes only to topics nobody publishes, so it
            # consumes no reply and no report; every event reaches it through PostgreSQL.
            env2 = dict(env, KOSMO_HTTP_BIND=f"127.0.0.1:{port2}", KOSMO_MQTT_CLIENT_ID=id2,
                        KOSMO_MQTT_TOPIC_ROOT=f"{topic_root}-{layout}")
            cmd = args.baseline_cmd if layout == "base" else args.gateway_cmd
            streams[layout] = GatewayProcess(shlex.split(cmd), env2,
                                             logs / f"gateway-{layout}.log",
                                             f"http://127.0.0.1:{port2}", mqtt_url, id2)
            stack.callback(forget_mqtt_session, mqtt_url, id2)
            stack.callback(streams[layout].stop)
        poller = Poller(db_url, args.poll_ms / 1000)
        thread = threading.Thread(target=poller.run, args=(
            time.monotonic() + args.max_seconds,), name="db-poller", daemon=True)
        thread.start()
        try:
            results = trio.run(Bench(args, gateway, streams, broker_pid, db_url,
                                          poller).run)
        finally:
            poller.stop.set()
            thread.join(timeout=10)
        took = [1000 * d for d in poller.durations]
        results.poll_ms = (percentile(took, 50), percentile(took, 99), max(took, default=0))
        with psycopg.connect(db_url, autocommit=True, connect_timeout=5) as conn:
            row_ = conn.execute("""
                SELECT count(*) FILTER (WHERE direction = 'inbound'),
                       count(*) FILTER (WHERE direction = 'inbound' AND user_id IS NULL),
                       count(*) FILTER (WHERE status = 'delivered'),
                       (SELECT count(*) FROM dead_letters)
                FROM messages""").fetchone()
            assert row_ is not None
            results.totals = dict(zip(("replies stored", "replies unthreaded",
                                       "messages delivered", "dead letters"), row_,
                                      strict=True))
        args.load_end = os.getloadavg()
        results.log_problems = [problem for log in sorted(logs.glob("gateway*.log"))
                                for problem in log_problems(log)]
        return report(args, results)


if __name__ == "__main__":
    main()
