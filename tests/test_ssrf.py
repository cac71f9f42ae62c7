"""The address rules of webhook deliveries (kosmo.ssrf), as units and through the gateway.

What this proves:
- Every kind of non-public address is refused, IPv4 and IPv6: loopback, private, shared
  (100.64/10), link-local (the cloud metadata address), multicast, reserved, unspecified,
  broadcast, documentation ranges, IPv6 site-local and unique-local, and IPv4 addresses
  embedded in IPv6 (mapped, NAT64, 6to4) when the embedded one is not public; public
  addresses of both families pass.
- The check is made on what a name resolves to, at connection time: ``localhost`` is refused
  by the backend, and a webhook whose URL names it (written past the API's own check) gets a
  recorded ``refused`` attempt and no request, while ``allow_private`` connects.
"""

from __future__ import annotations

import ipaddress

import pytest

from kosmo.config import Settings
from kosmo.ssrf import BlockedAddress, CheckedBackend, is_public, resolve
from tests.conftest import SANCTUARY, db_value, start_gateway
from tests.receiver import receiving
from tests.test_reports import status_of, wait_for

NOT_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "172.31.255.255",
    "192.168.1.1", "100.64.0.1", "100.127.255.254", "169.254.169.254", "224.0.0.1",
    "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.51.100.7",
    "203.0.113.9", "198.18.0.1", "192.0.0.8",
    "::1", "::", "fe80::1", "fec0::1", "fc00::1", "fd12:3456::1", "ff02::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::7f00:1",
    "64:ff9b::a00:1", "2002:7f00:1::1", "2002:a00:1::", "::127.0.0.1", "100::1",
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
          "2a00:1450:4001:81c::200e", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", NOT_PUBLIC)
def test_non_public_addresses_are_refused(address: str):
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str):
    assert is_public(ipaddress.ip_address(address))


async def test_a_literal_resolves_to_itself():
    assert await resolve("[::1]", 443) == [ipaddress.ip_address("::1")]
    assert await resolve("10.0.0.1", 443) == [ipaddress.ip_address("10.0.0.1")]


async def test_a_name_resolving_to_loopback_is_refused_at_connection():
    backend = CheckedBackend()
    with pytest.raises(BlockedAddress, match="non-public"):
        await backend.connect_tcp("localhost", 9)
    with pytest.raises(BlockedAddress):
        await backend.connect_tcp("127.0.0.1", 9)
    with pytest.raises(BlockedAddress):
        await backend.connect_unix_socket("/tmp/x")


async def test_allow_private_connects_to_loopback():
    with receiving() as receiver:
        port = int(receiver.url.split(":")[2].split("/")[0])
        stream = await CheckedBackend(allow_private=True).connect_tcp("localhost", port)
        await stream.aclose()


@pytest.mark.usefixtures("online_bridge")
async def test_a_webhook_naming_loopback_gets_a_refused_attempt(nursery, settings: Settings, sql):
    settings = settings.replace(webhook_allow_private=False, webhook_retry_schedule=(0.1,))
    with receiving() as receiver:
        port = receiver.url.split(":")[2]
        async with start_gateway(nursery, settings) as gateway:
            # Past the API's check (which refuses ``localhost`` by name), as a DNS name that
            # resolves to loopback would be.
            sql.execute("INSERT INTO webhooks (id, user_id, url, events, secret, created_at)"
                        " VALUES (gen_random_uuid(), %s, %s, '{*}', 'whsec_AAAA', now())",
                        (SANCTUARY, f"http://localhost:{port}"))
            sent = await gateway.send(SANCTUARY, "!a1b2c3d4", "hi")
            message_id = sent.json()["message_id"]
            await wait_for(lambda: status_of(sql, message_id) == "queued")
            await wait_for(lambda: db_value(
                sql, "SELECT count(*) FROM webhook_deliveries WHERE state = 'given_up'") == 1)
        errors = [r[0] for r in sql.execute("SELECT error FROM webhook_attempts").fetchall()]
        assert len(errors) == 2
        assert all(e.startswith("refused:") and "non-public" in e for e in errors)
        assert receiver.received == []
