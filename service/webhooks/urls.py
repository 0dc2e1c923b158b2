"""Receiver URLs and the addresses a delivery may connect to (no server-side request forgery).

A URL must be http or https, at most 2048 characters, carry no credentials and name a host.
Unless private receivers are allowed (`TELEMETRY_WEBHOOK_ALLOW_PRIVATE`), every address its
host resolves to must be globally routable: loopback, private, link-local (cloud metadata
169.254.169.254 among them), carrier-grade NAT, multicast and reserved ranges are refused.
`GuardedResolver` (and `literal_refused`, for IP literals) applies the same rule when a
delivery connects, so a name that resolved to a
public address at subscription time cannot be pointed at an internal one later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

MAX_URL = 2048
# A subscription request waits at most this long for its host to resolve (then it is refused).
RESOLVE_TIMEOUT = 5.0


class UrlRefused(ValueError):
    """The URL may not be a receiver; the message says why (and never quotes credentials)."""


def routable(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def check_form(url: str) -> tuple[str, int]:
    """(host, port) of a well-formed receiver URL; `UrlRefused` otherwise."""
    if len(url) > MAX_URL:
        raise UrlRefused(f"url must be at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("url is not a valid URL") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("url must be http or https")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("url must not carry credentials")
    if not parts.hostname:
        raise UrlRefused("url must name a host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_url(url: str, *, allow_private: bool) -> None:
    """Refuse `url` (`UrlRefused`) unless it is well formed and, when private receivers are not
    allowed, every address of its host is globally routable."""
    host, port = check_form(url)
    if allow_private:
        return
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError, UnicodeError):
        raise UrlRefused("url's host does not resolve") from None
    if not infos or not all(routable(str(info[4][0])) for info in infos):
        raise UrlRefused("url resolves to a loopback, private, link-local or reserved address")


def literal_refused(host: str, *, allow_private: bool) -> bool:
    """Whether `host` is an IP address a delivery may not reach. aiohttp does not resolve IP
    literals, so `GuardedResolver` never sees them: the sender asks this first."""
    try:
        ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False  # a name: the resolver decides
    return not allow_private and not routable(host.strip("[]"))


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, keeping only routable addresses (unless private ones are allowed)."""

    def __init__(self, *, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._allow_private:
            return results
        allowed = [r for r in results if routable(r["host"])]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses webhooks may not reach")
        return allowed

    async def close(self) -> None:
        await self._inner.close()
