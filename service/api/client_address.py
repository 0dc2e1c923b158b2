"""Which address a request comes from, for throttling and the enrollment audit.

The peer address is the client, unless the peer is one of the trusted proxies
(`TELEMETRY_TRUSTED_PROXIES`, none by default): then `X-Forwarded-For` is read from the right,
skipping trusted proxies, and the right-most address that is not a trusted proxy is the client.
Entries to its left were written by the client itself and are never believed. A malformed entry
stops the walk at the last proxy that handed it over, so garbage cannot pick the key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from aiohttp import web

from service.settings import IPNetwork

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[v6]:port"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "v4:port"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


def client_address(peer: str | None, forwarded_for: Iterable[str], proxies: Sequence[IPNetwork]) -> str:
    """The client's address given the peer, every `X-Forwarded-For` header value in order,
    and the trusted proxies."""
    if peer is None:
        return "unknown"
    current = _parse(peer)
    if current is None or not proxies:
        return peer
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    while _trusted(current, proxies) and hops:
        previous = _parse(hops.pop())
        if previous is None:
            break
        current = previous
    return str(current)


def request_client(request: web.Request, proxies: Sequence[IPNetwork]) -> str:
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), proxies)
