"""Webhooks over HTTPS: a real TLS receiver on 127.0.0.1, with a certificate for a host name.

The certificates come from a test CA made here (``trustme``); the gateway trusts it through
``KOSMO_WEBHOOK_CA_FILE``. The host names resolve to 127.0.0.1 through Trio's own hook for
name resolution (``trio.socket.set_custom_hostname_resolver``, for this test's run only), so
the address check of ``kosmo.ssrf`` resolves them as it would any name; allow-private lets it
connect to loopback.

What this proves:
- A delivery to ``https://<name>:<port>/hook`` arrives over TLS with SNI = the name and
  ``Host`` = the name (and port), although the connection goes to the checked address; the
  signature verifies with ``standardwebhooks``.
- A certificate for another name, from the trusted CA, is refused: each attempt is recorded
  with a certificate error and nothing is delivered.
- Without the CA file, the same receiver is refused: verification is never off.
- An unreadable CA file is a configuration error.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
import trio
import trustme

from kosmo.config import ConfigError, Settings, load
from tests.conftest import SANCTUARY, Gateway, db_value, start_gateway
from tests.receiver import Received
from tests.test_reports import wait_for

NAME = "hooks.kosmo.test"
OTHER = "elsewhere.kosmo.test"


class MappedNames(trio.abc.HostnameResolver):
    """``NAME`` and ``OTHER`` are 127.0.0.1; any other name resolves as the system says."""

    async def getaddrinfo(self, host: bytes | None, port: bytes | str | int | None,
                          family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
                          ) -> list[Any]:
        if host in (NAME.encode(), OTHER.encode()):
            number = int(port.decode() if isinstance(port, bytes) else port or 0)
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "",
                     ("127.0.0.1", number))]
        return await trio.to_thread.run_sync(socket.getaddrinfo, host, port, family, type,
                                             proto, flags)

    async def getnameinfo(self, sockaddr: tuple[Any, ...], flags: int) -> tuple[str, str]:
        return await trio.to_thread.run_sync(socket.getnameinfo, sockaddr, flags)


class TLSReceiver:
    """An HTTPS server on 127.0.0.1 in its own thread, serving ``cert``; answers 204.

    ``server_names`` records the SNI of every handshake begun (refused ones too)."""

    def __init__(self, cert: trustme.LeafCert) -> None:
        self.received: list[Received] = []
        self.server_names: list[str | None] = []
        self.versions: list[str | None] = []
        receiver = self
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        context.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                assert isinstance(self.connection, ssl.SSLSocket)
                receiver.versions.append(self.connection.version())
                receiver.received.append(Received(
                    {k.lower(): v for k, v in self.headers.items()}, body, 0.0))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # Handshakes happen on accept; one that fails is dropped there (an OSError).
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def tls_receiver(cert: trustme.LeafCert) -> Iterator[TLSReceiver]:
    receiver = TLSReceiver(cert)
    try:
        yield receiver
    finally:
        receiver.close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
async def names() -> AsyncIterator[None]:
    # Requested as an argument: pytest-trio runs an async fixture only when a test (or a
    # fixture) takes it as one, not through autouse or usefixtures.
    previous = trio.socket.set_custom_hostname_resolver(MappedNames())
    yield
    trio.socket.set_custom_hostname_resolver(previous)


@pytest.fixture
def settings(settings: Settings, ca_file: str) -> Settings:
    return settings.replace(webhook_allow_private=True, webhook_retry_schedule=(0.1,),
                            webhook_ca_file=ca_file)


async def canceled_event(gateway: Gateway, url: str) -> dict[str, Any]:
    """Register a webhook for ``url``, then cause one event for it (a canceled message)."""
    headers = {"X-User-ID": str(SANCTUARY)}
    created = await gateway.client.post("/api/v1/webhooks", headers=headers,
                                        json={"url": url, "events": ["message.canceled"]})
    assert created.status_code == 201, created.text
    sent = await gateway.send(SANCTUARY, "!a1b2c3d4", "over tls")
    assert sent.status_code == 201, sent.text
    canceled = await gateway.client.delete(f"/api/v1/messages/{sent.json()['message_id']}",
                                           headers=headers)
    assert canceled.status_code == 200, canceled.text
    return created.json()  # type: ignore[no-any-return]


async def given_up_errors(gateway: Gateway, sql, hook: dict[str, Any]) -> list[str]:
    """The errors of the event's attempts, once it is given up (two attempts)."""
    await wait_for(lambda: db_value(
        sql, "SELECT count(*) FROM webhook_deliveries WHERE state = 'given_up'") == 1)
    path = f"/api/v1/webhooks/{hook['webhook_id']}/deliveries"
    attempts = (await gateway.get(path, SANCTUARY)).json()["deliveries"]
    assert [a["outcome"] for a in attempts] == ["given_up", "retrying"]
    assert all(a["status_code"] is None for a in attempts)
    return [a["error"] for a in attempts]


async def test_a_delivery_arrives_over_tls_with_the_name_as_sni_and_host(
        names: None, gateway: Gateway, ca: trustme.CA, sql):
    with tls_receiver(ca.issue_cert(NAME)) as receiver:
        hook = await canceled_event(gateway, f"https://{NAME}:{receiver.port}/hook")
        await wait_for(lambda: len(receiver.received) == 1)
        [delivery] = receiver.received
        assert receiver.server_names == [NAME]
        assert receiver.versions[0] in ("TLSv1.2", "TLSv1.3")
        assert delivery.headers["host"] == f"{NAME}:{receiver.port}"
        event = standardwebhooks.Webhook(hook["secret"]).verify(delivery.body, delivery.headers)
        assert event["type"] == "message.canceled"
        await wait_for(lambda: db_value(
            sql, "SELECT count(*) FROM webhook_deliveries WHERE state = 'delivered'") == 1)


async def test_a_certificate_for_another_name_is_refused(names: None, gateway: Gateway,
                                                         ca: trustme.CA, sql):
    with tls_receiver(ca.issue_cert(OTHER)) as receiver:
        hook = await canceled_event(gateway, f"https://{NAME}:{receiver.port}/hook")
        errors = await given_up_errors(gateway, sql, hook)
        assert receiver.received == []
        assert receiver.server_names == [NAME, NAME]  # it was asked for NAME, twice
    for error in errors:
        assert "certificate verify failed: Hostname mismatch" in error, error
        assert f"not valid for {NAME!r}" in error, error


async def test_without_the_ca_file_the_certificate_is_refused(names: None, nursery,
                                                              settings: Settings,
                                                              ca: trustme.CA, sql):
    with tls_receiver(ca.issue_cert(NAME)) as receiver:
        async with start_gateway(nursery, settings.replace(webhook_ca_file=None)) as gateway:
            hook = await canceled_event(gateway, f"https://{NAME}:{receiver.port}/hook")
            errors = await given_up_errors(gateway, sql, hook)
        assert receiver.received == []
    for error in errors:
        assert "certificate verify failed: unable to get local issuer" in error, error


def test_an_unreadable_ca_file_is_a_configuration_error(tmp_path: Path):
    environ = {"KOSMO_DATABASE_URL": "postgresql://kosmo@127.0.0.1/kosmo"}
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    for path in (str(tmp_path / "missing.pem"), str(not_pem)):
        with pytest.raises(ConfigError, match="KOSMO_WEBHOOK_CA_FILE is invalid"):
            load({**environ, "KOSMO_WEBHOOK_CA_FILE": path})
