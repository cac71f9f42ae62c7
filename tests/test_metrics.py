"""Metrics, JSON logs and starts that explain themselves.

The gateway's families exist with the documented names and types on their own address, counters
move by exactly the work done, gauges are read live; the bridge's families on a simulated radio;
JSON log lines parse and carry the ids; the one-line start errors."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from actors.metrics import dead_letter_reason
from bridge.daemon import Bridge
from kosmo import logs, migrate
from kosmo.config import Settings
from kosmo.embedded import free_port
from tests.conftest import FREE, WANDERER, Gateway, db_value, fresh_database, start_gateway
from tests.mesh import FakeBridgeLink
from tests.test_bridge import (
    UNREACHABLE,
    BridgeRunner,
    Mesh,
    SimRunner,
    make_settings,
    mesh,  # noqa: F401  (a fixture)
    outbound,
    sim,  # noqa: F401  (a fixture)
)

pytestmark = pytest.mark.usefixtures("online_bridge")

GATEWAY_FAMILIES = {
    "kosmo_messages_accepted": "counter", "kosmo_messages_rejected": "counter",
    "kosmo_message_status": "counter", "kosmo_refunds": "counter",
    "kosmo_dead_letters": "counter", "kosmo_pending_messages": "gauge",
    "kosmo_node_actors": "gauge", "kosmo_streams": "gauge", "kosmo_bridges": "gauge",
    "kosmo_mqtt_connected": "gauge", "kosmo_mqtt_reconnects": "counter",
    "kosmo_database_up": "gauge", "kosmo_accept_seconds": "histogram",
    "kosmo_accept_to_publish_seconds": "histogram",
    "kosmo_publish_to_transmitted_seconds": "histogram",
    "kosmo_transmitted_to_delivered_seconds": "histogram",
    "kosmo_waiting_messages": "gauge", "kosmo_bridge_credit_held": "gauge",
}
BRIDGE_FAMILIES = {
    "kosmo_bridge_queue_depth": "gauge", "kosmo_bridge_texts_on_air": "counter",
    "kosmo_bridge_naks": "counter", "kosmo_bridge_airtime_used_ratio": "gauge",
    "kosmo_bridge_radio_connected": "gauge",
}


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; 0 when absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


async def scrape(url: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return response.text


async def wait_for(condition: Any, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not await condition():
            await trio.sleep(0.02)


@pytest.fixture
async def gateway(nursery: trio.Nursery, settings: Settings) -> AsyncIterator[Gateway]:
    async with start_gateway(nursery, settings.replace(metrics_bind=("127.0.0.1", 0))) as gw:
        yield gw


@pytest.fixture
def metrics_url(gateway: Gateway) -> str:
    [url] = gateway.running.metrics_binds
    return url


async def test_every_family_is_served_with_its_type(gateway: Gateway, metrics_url: str):
    found = families(await scrape(metrics_url))
    for name, kind in GATEWAY_FAMILIES.items():
        assert name in found, name
        assert found[name].type == kind, name
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(metrics_url.replace("/metrics", "/"))).status_code == 404
        assert (await client.post(metrics_url)).status_code == 405


async def test_counters_move_by_exactly_the_work_done(
        gateway: Gateway, metrics_url: str, online_bridge: FakeBridgeLink, sql):
    before = await scrape(metrics_url)
    sent = await gateway.send(WANDERER, text="one")
    assert sent.status_code == 201
    mid = sent.json()["message_id"]
    refused = await gateway.send(FREE, text="free plan")  # receive-only: 403
    assert refused.status_code == 403
    reason = refused.json()["type"].rsplit("/", 1)[-1]

    async def queued() -> bool:
        return bool(value(await scrape(metrics_url), "kosmo_message_status_total",
                          status="queued"))
    await wait_for(queued)
    online_bridge.status(mid, "failed", reason="NO_CHANNEL")  # before the air: refunded

    async def failed() -> bool:
        return bool(value(await scrape(metrics_url), "kosmo_refunds_total"))
    await wait_for(failed)
    after = await scrape(metrics_url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("kosmo_messages_accepted_total") == 1
    assert moved("kosmo_messages_rejected_total", reason=reason) == 1
    assert sum(moved("kosmo_messages_rejected_total", reason=r) for r in (
        "subscription-inactive", "receive-only", "node-not-whitelisted", "quota-exceeded",
        "mesh-congested", "idempotency-key-in-flight")) == 1
    assert moved("kosmo_refunds_total") == 1
    assert moved("kosmo_message_status_total", status="queued") == 1
    assert moved("kosmo_message_status_total", status="failed") == 1
    assert moved("kosmo_accept_seconds_count") == 1
    assert moved("kosmo_accept_to_publish_seconds_count") == 1
    assert db_value(sql, "SELECT charged FROM messages WHERE id = %s", mid) is False


async def test_latency_histograms_follow_a_message_to_delivered(
        gateway: Gateway, metrics_url: str, online_bridge: FakeBridgeLink):
    mid = (await gateway.send(WANDERER, text="timed")).json()["message_id"]

    async def at(status: str) -> bool:
        return bool(value(await scrape(metrics_url), "kosmo_message_status_total",
                          status=status))
    await wait_for(lambda: at("queued"))
    online_bridge.status(mid, "transmitted", packet_id=5)
    await wait_for(lambda: at("transmitted"))
    online_bridge.status(mid, "delivered", packet_id=5)
    await wait_for(lambda: at("delivered"))
    text = await scrape(metrics_url)
    for name in ("kosmo_accept_to_publish_seconds", "kosmo_publish_to_transmitted_seconds",
                 "kosmo_transmitted_to_delivered_seconds"):
        assert value(text, f"{name}_count") == 1, name
        assert value(text, f"{name}_sum") >= 0, name


async def test_gauges_are_read_live(gateway: Gateway, metrics_url: str, topic_root: str,
                                    online_bridge: FakeBridgeLink):
    text = await scrape(metrics_url)
    assert value(text, "kosmo_mqtt_connected") == 1
    assert value(text, "kosmo_database_up") == 1
    assert value(text, "kosmo_bridges", state="online") == 1  # the online_bridge fixture
    assert value(text, "kosmo_streams") == 0
    online_bridge.publish(f"{topic_root}/bridge/b-off/state", b'{"state": "offline"}')

    async def offline_seen() -> bool:
        return value(await scrape(metrics_url), "kosmo_bridges", state="offline") == 1
    await wait_for(offline_seen)
    await gateway.send(WANDERER, text="to a node")

    async def node_actor() -> bool:
        return value(await scrape(metrics_url), "kosmo_node_actors") >= 1
    await wait_for(node_actor)


async def test_dead_letters_are_counted_by_a_stable_reason(
        gateway: Gateway, metrics_url: str, online_bridge: FakeBridgeLink, topic_root: str):
    online_bridge.publish(f"{topic_root}/mesh/status", b"{not json")
    online_bridge.publish(f"{topic_root}/mesh/status", b"x" * 5000)

    async def counted() -> bool:
        text = await scrape(metrics_url)
        return (value(text, "kosmo_dead_letters_total", reason="not_json") == 1
                and value(text, "kosmo_dead_letters_total", reason="too_large") == 1)
    await wait_for(counted)


@pytest.mark.parametrize(("reason", "label"), [
    ("unknown message id 8a6e0804-2bd0-4672-b79d-d97358571b11", "unknown_message"),
    ("payload of 5000 bytes is over 4096", "too_large"),
    ("payload is not UTF-8", "not_utf8"),
    ("payload is not JSON", "not_json"),
    ("payload is not a JSON object", "not_json"),
    ("not a bridge state topic", "bad_topic"),
    ("message_id must be a UUID", "bad_fields"),
])
def test_dead_letter_reasons_fall_in_a_few_buckets(reason: str, label: str):
    assert dead_letter_reason(reason) == label


async def test_two_gateways_in_one_process_count_apart(nursery: trio.Nursery, settings: Settings):
    async with start_gateway(nursery, settings) as one, \
            start_gateway(nursery, settings.replace(mqtt_client_id="gw-two")) as two:
        assert (await one.send(WANDERER)).status_code == 201
        assert one.running.metrics.accepted._value.get() == 1
        assert two.running.metrics.accepted._value.get() == 0
        assert one.running.metrics_binds == []  # no address asked for: nothing served


# --- the bridge ---------------------------------------------------------------------------------

@pytest.fixture
async def bridge(nursery: trio.Nursery, tmp_path: Path, mqtt_url: str, topic_root: str,
                 sim: SimRunner) -> AsyncIterator[Bridge]:  # noqa: F811
    runner = BridgeRunner(make_settings(tmp_path, mqtt_url, topic_root, sim,
                                        metrics_bind=("127.0.0.1", 0)))
    yield await runner.start(nursery)
    await runner.stop()


async def test_bridge_metrics_on_a_simulated_radio(mesh: Mesh, bridge: Bridge):  # noqa: F811
    [url] = bridge.metrics_binds
    text = await scrape(url)
    found = families(text)
    for name, kind in BRIDGE_FAMILIES.items():
        assert found[name].type == kind, name
    assert value(text, "kosmo_bridge_radio_connected") == 1
    assert value(text, "kosmo_bridge_texts_on_air_total") == 0
    good, lost = outbound(text="metered"), outbound(f"!{UNREACHABLE:08x}", "lost")
    await mesh.send(good)
    await mesh.send(lost, node=f"!{UNREACHABLE:08x}")

    async def done() -> bool:
        return ("delivered" in mesh.status_names(good["message_id"])
                and "failed" in mesh.status_names(lost["message_id"]))
    await wait_for(done, timeout=30)
    text = await scrape(url)
    assert value(text, "kosmo_bridge_texts_on_air_total") == 2
    assert value(text, "kosmo_bridge_naks_total", reason="MAX_RETRANSMIT") == 1
    assert value(text, "kosmo_bridge_queue_depth") == 0
    assert 0 < value(text, "kosmo_bridge_airtime_used_ratio") <= 1


# --- logs -----------------------------------------------------------------------------------------

def test_json_log_lines_parse_and_carry_the_ids():
    record = logging.LogRecord("actors.dispatcher", logging.INFO, __file__, 1,
                               "message %s handed", ("m-1",), None)
    record.message_id, record.node_id, record.bridge_id = "m-1", "!a1b2c3d4", "!0a0a0a0a"
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["level"] == "INFO"
    assert line["logger"] == "actors.dispatcher"
    assert line["message"] == "message m-1 handed"
    assert (line["message_id"], line["node_id"], line["bridge_id"]) == (
        "m-1", "!a1b2c3d4", "!0a0a0a0a")
    assert line["time"].endswith("+00:00")
    plain = json.loads(logs.JsonFormatter().format(logging.LogRecord(
        "kosmo", logging.WARNING, __file__, 1, "no ids", (), None)))
    assert "message_id" not in plain


async def test_the_key_log_sites_carry_the_ids(gateway: Gateway, online_bridge: FakeBridgeLink,
                                              caplog: pytest.LogCaptureFixture):
    mid = (await gateway.send(WANDERER, text="logged")).json()["message_id"]

    async def handed() -> bool:
        return any(getattr(r, "message_id", None) == mid and getattr(r, "bridge_id", None)
                   for r in caplog.records)
    await wait_for(handed)
    online_bridge.status(mid, "transmitted")

    async def reported() -> bool:
        return any(r.name == "actors.inbound" and getattr(r, "message_id", None) == mid
                   for r in caplog.records)
    await wait_for(reported)
    lines = [json.loads(logs.JsonFormatter().format(r)) for r in caplog.records
             if getattr(r, "message_id", None) == mid]
    assert {line["logger"] for line in lines} >= {
        "actors.http.app", "actors.dispatcher", "actors.inbound"}
    assert all(line["node_id"] == "!a1b2c3d4" for line in lines)


async def test_bridge_online_is_logged_only_when_it_changes(
        gateway: Gateway, online_bridge: FakeBridgeLink, topic_root: str,
        caplog: pytest.LogCaptureFixture):
    topic = f"{topic_root}/bridge/b-twice/state"
    for payload in (b'{"state": "online"}', b'{"state": "online"}', b'{"state": "offline"}',
                    b'{"state": "offline"}', b'{"state": "online"}'):
        online_bridge.publish(topic, payload)

    async def seen() -> bool:
        return gateway.running.consumer.states().get("b-twice") == "online" and sum(
            "bridge b-twice is" in r.getMessage() for r in caplog.records
            if r.name == "actors.inbound") == 3
    await wait_for(seen)
    lines = [r.getMessage() for r in caplog.records if r.name == "actors.inbound"
             and "bridge b-twice is" in r.getMessage()]
    assert lines == ["bridge b-twice is online", "bridge b-twice is offline",
                     "bridge b-twice is online"]


# --- starts that explain themselves ---------------------------------------------------------------

def kosmo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KOSMO_")}
    return subprocess.run([sys.executable, "-m", "kosmo", *args], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str], code: int, expected: str) -> None:
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("kosmo: error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_short_jwt_secret_is_refused_in_one_line(database_url: str):
    result = kosmo("gateway", env={"KOSMO_DATABASE_URL": database_url,
                                   "KOSMO_JWT_SECRET": "short-secret"})
    one_line_error(result, 2, "KOSMO_JWT_SECRET is too short")


@pytest.mark.parametrize("up_to", [None, 1])
def test_a_database_without_the_current_schema_asks_for_migrate(pg_admin_url: str, mqtt_url: str,
                                                                 up_to: int | None):
    with fresh_database(pg_admin_url) as url:
        if up_to is not None:
            migrate.migrate(url, up_to=up_to)
        result = kosmo("gateway", env={"KOSMO_DATABASE_URL": url, "KOSMO_AUTH_MODE": "header",
                                       "KOSMO_MQTT_URL": mqtt_url,
                                       "KOSMO_HTTP_BIND": f"127.0.0.1:{free_port()}"})
        one_line_error(result, 1, "run `kosmo migrate`")
        with psycopg.connect(url) as conn:  # nothing was created by the attempt
            assert conn.execute("SELECT to_regclass('messages')").fetchone()[0] == (
                None if up_to is None else "messages")


def test_json_log_format_from_the_command_line():
    result = kosmo("--log-format", "json", "gateway", env={
        "KOSMO_DATABASE_URL": "postgresql://u@127.0.0.1:1/db", "KOSMO_AUTH_MODE": "header",
        "KOSMO_START_TIMEOUT": "1s"})
    assert result.returncode == 1
    logged = [json.loads(line) for line in result.stderr.splitlines()
              if line.startswith("{")]
    assert logged
    assert all({"time", "level", "logger", "message"} <= set(x) for x in logged)
    bad = kosmo("--log-format", "xml", "gateway", env={})
    assert bad.returncode == 2


# --- docs and dashboard ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def documented() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text()
    return {name.removesuffix("_total") for name in re.findall(r"^\| `(kosmo_\w+)`", text, re.M)}


def test_every_family_is_documented():
    assert documented() == set(GATEWAY_FAMILIES) | set(BRIDGE_FAMILIES)


def test_the_dashboard_uses_documented_families_only():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(total|bucket|sum|count)$", "", name)
            for expr in exprs for name in re.findall(r"kosmo_\w+", expr)}
    assert used == documented()
