"""Who is calling, by address: the connection's peer, or the client a trusted proxy names.

``X-Forwarded-For`` is believed only when the connection comes from one of
``AGORA_TRUSTED_PROXIES``: the list is read from the right (each proxy appends the address it
saw), skipping trusted proxies, and the first address that is not one of them is the client.
Anyone else can write any ``X-Forwarded-For`` they like, so from them it is ignored.

For rate limits an IPv6 client is its /64 (one customer's network: a host can take any
address in it) and an IPv4-mapped IPv6 address is the IPv4 address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

from agora.server import keys

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
CLIENT_KEY: web.RequestKey[str] = web.RequestKey("client_address")
UNKNOWN = "unknown"


def _parse(raw: str | None) -> Address | None:
    if not raw:
        return None
    raw = raw.strip()
    if raw.startswith("["):  # "[v6]:port"
        raw = raw[1 : raw.find("]")] if "]" in raw else raw
    elif raw.count(":") == 1:  # "v4:port"
        raw = raw.split(":", 1)[0]
    raw = raw.split("%", 1)[0]  # a zone index
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, proxies: Sequence[Network]) -> bool:
    return any(address in net for net in proxies if net.version == address.version)


def client_ip(
    peer: str | None, forwarded: str | None, proxies: Sequence[Network]
) -> Address | None:
    """The client's address: ``peer`` unless it is a trusted proxy that forwarded someone."""
    address = _parse(peer)
    if address is None or not proxies or not forwarded or not _trusted(address, proxies):
        return address
    for hop in reversed(forwarded.split(",")):
        hop_address = _parse(hop)
        if hop_address is None:  # a garbled entry: trust nothing beyond it
            return address
        address = hop_address
        if not _trusted(address, proxies):
            return address
    return address  # every hop was a trusted proxy: the leftmost is the best we know


def group(address: Address | None) -> str:
    """The subject of per-address limits: the IPv4 address, or the IPv6 /64."""
    if address is None:
        return UNKNOWN
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def client_address(request: web.Request) -> str:
    """The request's client as a rate-limit subject (computed once per request)."""
    if CLIENT_KEY in request:
        return request[CLIENT_KEY]
    proxies = request.app[keys.CONFIG].limits.trusted_proxies
    subject = group(client_ip(request.remote, request.headers.get("X-Forwarded-For"), proxies))
    request[CLIENT_KEY] = subject
    return subject


def is_loopback(request: web.Request) -> bool:
    """The client (as above, so a proxy on this host does not make the world loopback)."""
    proxies = request.app[keys.CONFIG].limits.trusted_proxies
    address = client_ip(request.remote, request.headers.get("X-Forwarded-For"), proxies)
    return address is not None and address.is_loopback


def is_https(request: web.Request) -> bool:
    """Whether the client reached us over TLS: directly, or through a trusted proxy that says
    so in ``X-Forwarded-Proto`` (anyone else's header is ignored, as for the address)."""
    if request.secure:
        return True
    proxies = request.app[keys.CONFIG].limits.trusted_proxies
    peer = _parse(request.remote)
    if peer is None or not proxies or not _trusted(peer, proxies):
        return False
    proto = request.headers.get("X-Forwarded-Proto", "")
    return proto.split(",")[0].strip().lower() == "https"
