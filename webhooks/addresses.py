"""Where a webhook may be sent: public addresses only, unless ``WEBHOOKS_ALLOW_PRIVATE``.

A tenant chooses the URL, so without this check Berth would POST to whatever the name resolves
to: its own database, the cloud's metadata service, a node agent. The host is resolved once, every
address checked, and the request then goes to that checked address (``pinned``), so a name that
resolves differently a moment later (DNS rebinding) cannot slip past.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings


class UnsafeURL(ValueError):
    """The URL is not one Berth sends webhooks to; the message says why, for the tenant."""


@dataclass(frozen=True)
class Target:
    url: str  # the URL with the host replaced by the checked address
    host: str  # the original host name, for the Host header and TLS (SNI, certificate)
    host_header: str


def check_syntax(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("Use an http:// or https:// URL.")
    if not parts.hostname:
        raise UnsafeURL("The URL has no host.")
    if parts.username or parts.password:
        raise UnsafeURL("Put no credentials in the URL; check the Berth-Signature header instead.")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise UnsafeURL("The port must be between 1 and 65535.") from None


def _refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


def resolve(url: str) -> Target:
    """Check ``url`` and pin it to one address that may be reached; raises ``UnsafeURL``."""
    check_syntax(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise UnsafeURL(f"{host} does not resolve.") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise UnsafeURL(f"{host} does not resolve.")
    if not settings.WEBHOOKS_ALLOW_PRIVATE:
        refused = [a for a in addresses if _refused(a)]
        if refused:
            raise UnsafeURL(f"{host} resolves to {refused[0]}, a private or reserved address.")
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    host_header = host if parts.port is None else f"{host}:{parts.port}"
    return Target(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")), host, host_header)
