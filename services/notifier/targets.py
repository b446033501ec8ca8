"""SSRF guard: a tenant's webhook may not point into our own network."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from shared.errors import Invalid


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


async def check_target(url: str, *, allow_private: bool) -> None:
    """Raises ``Invalid`` (code ``target_forbidden``) unless every address the host
    resolves to is public. Checked at each send, so a later DNS change is caught too
    (a rebinding between this lookup and httpx's own remains possible)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"not an http(s) URL: {url!r}", code="target_forbidden")
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            parts.hostname,
            parts.port or (443 if parts.scheme == "https" else 80),
            type=socket.SOCK_STREAM,
        )
    except OSError as exc:
        raise Invalid(
            f"cannot resolve {parts.hostname!r}: {exc}", code="target_unresolvable"
        ) from exc
    for info in infos:
        address = str(info[4][0])
        if _forbidden(address):
            raise Invalid(
                f"target {parts.hostname!r} resolves to a non-public address ({address})",
                code="target_forbidden",
            )
