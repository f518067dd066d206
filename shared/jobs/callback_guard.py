"""Where a completion callback may go: no server-side request forgery through ``callback_url``.

A caller chooses ``callback_url``; the worker POSTs to it from inside the cloud network. Left
unchecked, that reaches the instance metadata endpoint (169.254.169.254), loopback and
private services. So the host is resolved and **every** address it resolves to must be
public (``ipaddress``'s ``is_global``, and not multicast); otherwise the URL is refused,
unless ``INFER_CALLBACK_ALLOW`` lists it:

    INFER_CALLBACK_ALLOW="10.20.0.0/16, hooks.internal.example, 127.0.0.1/32"

Each comma-separated entry is a CIDR (the resolved addresses must all fall in allowed
networks or be public) or a host name (that host is allowed whatever it resolves to).

The check runs when the job is submitted (a 400 names ``callback_url``) and again when the
callback is sent. At send time the connection goes to the address that was just checked
(the URL's host stays in ``Host`` and in TLS SNI/certificate checks), so a DNS answer that
changes between check and connect (DNS rebinding) cannot redirect it.

``redact(url)`` is what logs show: scheme, host, port and path; never the query string
(callback URLs often carry a token there) or user info.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Sequence[str]]


class CallbackRefused(ValueError):
    """The callback URL is not allowed (or cannot be resolved)."""


@dataclass(frozen=True)
class CallbackAllow:
    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str | None) -> CallbackAllow:
        networks: list[Network] = []
        hosts: set[str] = set()
        for raw in (text or "").split(","):
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allows(self, address: Address) -> bool:
        return any(address in net for net in self.networks if net.version == address.version)


@dataclass(frozen=True)
class Target:
    """Where to send: ``url`` with the checked address in place of the host name."""

    url: str
    host_header: str | None = None
    sni_hostname: str | None = None


def redact(url: str) -> str:
    """The URL without query string, fragment or user info (safe to log)."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "<unparseable url>"


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPAT = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries and reaches: IPv4-mapped, NAT64
    (``64:ff9b::/96``, ``64:ff9b:1::/48``), 6to4 (``2002::/16``), IPv4-compatible
    (``::a.b.c.d``) and Teredo (server and client)."""
    out: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        out.append(address.ipv4_mapped)
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if any(address in net for net in _NAT64):
        out.append(low32)
    if address.sixtofour is not None:
        out.append(address.sixtofour)
    if address in _COMPAT and int(address) > 1:  # not :: nor ::1
        out.append(low32)
    if address.teredo is not None:
        out.extend(address.teredo)
    return out


def _public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner:  # reachable through it: every embedded address must be public too
            return all(_public(v4) for v4 in inner)
    return address.is_global and not address.is_multicast


#: The longest a callback host may take to resolve (a slow resolver is a refusal).
RESOLVE_TIMEOUT_S = 2.0


async def checked(
    url: str, allow: CallbackAllow, resolver: Resolver | None = None, timeout_s: float = 2.0
) -> Target:
    """:func:`check` off the event loop, its resolution bounded by ``timeout_s``."""
    import asyncio

    from shared.blocking import run_blocking

    try:
        async with asyncio.timeout(max(timeout_s, 0.01)):
            return await run_blocking(check, url, allow, resolver)
    except TimeoutError:
        raise CallbackRefused(f"callback_url host did not resolve within {timeout_s:g}s") from None


def check(url: str, allow: CallbackAllow, resolver: Resolver | None = None) -> Target:
    """Resolve ``url``'s host and check every address; the ``Target`` to connect to.

    ``CallbackRefused`` when the URL is malformed, does not resolve, or any address is not
    public and not allowed.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise CallbackRefused(f"callback_url is not a valid URL: {exc}") from None
    host = (parts.hostname or "").lower().rstrip(".")
    if parts.scheme not in ("http", "https") or not host:
        raise CallbackRefused("callback_url must be an http(s) URL with a host")
    if host in allow.hosts:
        return Target(url)
    try:
        literal: Address | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = (resolver or _resolve)(host, port)
        except (OSError, UnicodeError) as exc:
            raise CallbackRefused(f"callback_url host {host!r} does not resolve: {exc}") from None
        addresses = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
            except ValueError:
                raise CallbackRefused(f"callback_url host {host!r} resolved to {text!r}") from None
        if not addresses:
            raise CallbackRefused(f"callback_url host {host!r} does not resolve")
    for address in addresses:
        if not _public(address) and not allow.allows(address):
            raise CallbackRefused(
                f"callback_url host {host!r} resolves to {address}, a non-public address "
                "(loopback, private, link-local or reserved); list it in "
                "INFER_CALLBACK_ALLOW to allow it"
            )
    if literal is not None:
        return Target(url)
    pinned = addresses[0]
    ip = f"[{pinned}]" if pinned.version == 6 else str(pinned)
    netloc = ip if parts.port is None else f"{ip}:{parts.port}"
    pinned_url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    host_header = parts.hostname if parts.port is None else f"{parts.hostname}:{parts.port}"
    return Target(
        pinned_url,
        host_header=host_header,
        sni_hostname=parts.hostname if parts.scheme == "https" else None,
    )
