"""No server-side request forgery: webhook deliveries connect only to public addresses.

Rules:
- An address is public when Python's ``ipaddress`` calls it global and none of loopback,
  private, link-local, multicast, reserved, unspecified or (IPv6) site-local, and in none of
  the special-purpose ranges listed here (``_ALWAYS_REFUSED``: shared 100.64.0.0/10,
  documentation, benchmarking, IETF protocol assignments ...), so the answer does not depend
  on the Python version's tables. An IPv6 address that embeds an IPv4 one (IPv4-mapped
  ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``) is public only when the
  embedded address is too.
- The check is made on the address actually connected to: ``CheckedBackend`` (an httpcore
  network backend) resolves the host itself, refuses the connection when *any* resolved address
  is not public (so a name that resolves to both cannot be steered), then connects to a checked
  address. TLS (SNI, certificate) and the ``Host`` header still use the URL's host name, which
  httpcore passes on. A DNS answer that changes between a check and a connection cannot
  matter: there is no second lookup.
- ``allow_private`` (development only) skips the check.
- TLS is always verified (certificate chain and host name, ``ssl.create_default_context``):
  ``tls_context`` trusts the system's CAs and certifi's, as httpcore does by default, plus
  those of an extra CA file (``KOSMO_WEBHOOK_CA_FILE``). Nothing here turns verification off.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Iterable
from typing import Any

import certifi
import httpcore
import trio

IP = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never public, whatever the Python version's tables say (they have grown over versions).
_ALWAYS_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
    "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/3",
    "::/96", "::ffff:0:0/96", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7", "fe80::/10",
    "fec0::/10", "ff00::/8"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class BlockedAddress(httpcore.ConnectError):
    """The host resolves to an address that is not public."""


def is_public(ip: IP) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public(embedded)
        if ip.is_site_local:
            return False
    if any(ip in network for network in _ALWAYS_REFUSED):
        return False
    return ip.is_global and not (ip.is_loopback or ip.is_private or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified)


def refused(addresses: Iterable[IP]) -> list[IP]:
    """The addresses among ``addresses`` that a delivery may not connect to."""
    return [ip for ip in addresses if not is_public(ip)]


async def resolve(host: str, port: int) -> list[IP]:
    """Every address ``host`` resolves to (a literal address is itself), in resolver order."""
    try:
        return [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        pass
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    found: list[IP] = []
    for *_, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
        if ip not in found:
            found.append(ip)
    return found


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """The TLS context of deliveries: httpcore's default trust, plus the CAs in ``ca_file``."""
    context = ssl.create_default_context()
    context.load_verify_locations(certifi.where())
    if ca_file is not None:
        context.load_verify_locations(ca_file)
    return context


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's Trio backend, connecting only to checked addresses."""

    def __init__(self, *, allow_private: bool = False) -> None:
        self._inner = httpcore.TrioBackend()
        self._allow_private = allow_private

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None
                          ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve(host, port)
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} has no address")
        if not self._allow_private and (bad := refused(addresses)):
            raise BlockedAddress(f"{host!r} resolves to a non-public address ({bad[0]})")
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(str(ip), port, timeout, local_address,
                                                     socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109
                                  socket_options: Iterable[Any] | None = None
                                  ) -> httpcore.AsyncNetworkStream:
        raise BlockedAddress("webhooks do not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
