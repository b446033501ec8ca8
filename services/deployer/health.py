"""The post-activation health check: fetch the site's front page through nginx, as a
visitor's request would arrive (the site's ``Host`` header), and prove it is the new release.

A site with a certificate answers plain HTTP with a redirect to HTTPS: the check follows it,
as a visitor would, to the host's TLS listener (SNI and ``Host`` = the site), so what it
proves is what visitors are served. It does not judge the certificate (the certs service
checks each host's with its own handshake): a release is healthy or not whatever its
certificate's state.
"""

from __future__ import annotations

import functools
import ssl
from html.parser import HTMLParser

import httpx

from shared.errors import Transient

RELEASE_META = "sitefleet-release"
# The release marker sits in <head>; no need to read a whole large page to find it.
MAX_BODY_BYTES = 1024 * 1024


@functools.cache
def unverified_tls() -> ssl.SSLContext:
    """The one TLS context of the checks of our own web hosts, which judge what is served,
    not certificates. Shared: httpx builds a context per client otherwise (~0.2 ms each)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def check_release(
    domain: str,
    release_id: str,
    *,
    http_host: str,
    http_port: int,
    request_timeout: float,
    https_port: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str | None:
    """None if the web host serves ``release_id`` for ``domain``, else what is wrong.

    Healthy: status 200 and, if the page carries ``<meta name="sitefleet-release">``, its
    content is ``release_id``. A redirect to ``https://<domain>...`` is followed to
    ``https_port`` on ``http_host`` (when given). Raises ``Transient`` when nginx does not
    answer at all (that says nothing about the release).
    """
    address = f"[{http_host}]" if ":" in http_host else http_host
    # Unverified: the certificate is not what this check judges (module docstring).
    async with httpx.AsyncClient(
        timeout=request_timeout,
        transport=transport,
        verify=unverified_tls(),
        trust_env=False,
    ) as client:
        url = f"http://{address}:{http_port}/"
        response, body = await _fetch(client, url, domain)
        location = response.headers.get("location", "")
        if (
            response.status_code in (301, 302, 307, 308)
            and https_port is not None
            and httpx.URL(location).scheme == "https"
            and httpx.URL(location).host == domain
        ):
            url = f"https://{address}:{https_port}/"
            response, body = await _fetch(client, url, domain)
    if response.status_code != 200:
        return f"GET / with Host {domain} answered HTTP {response.status_code}, expected 200"
    served = release_marker(body.decode(response.encoding or "utf-8", errors="replace"))
    if served is not None and served != release_id:
        return f"the web host serves release {served!r} for {domain}, expected {release_id!r}"
    return None


async def _fetch(
    client: httpx.AsyncClient, url: str, domain: str
) -> tuple[httpx.Response, bytearray]:
    try:
        async with client.stream(
            "GET", url, headers={"Host": domain}, extensions={"sni_hostname": domain}
        ) as response:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= MAX_BODY_BYTES:
                    break
    except httpx.TransportError as exc:
        raise Transient(
            f"the web host at {url} did not answer for {domain}: {type(exc).__name__}: {exc}",
            code="web_host_unreachable",
        ) from exc
    return response, body


def release_marker(html: str) -> str | None:
    """The content of the first ``<meta name="sitefleet-release">``, or None."""
    parser = _ReleaseMetaParser()
    parser.feed(html)
    parser.close()
    return parser.release


class _ReleaseMetaParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.release: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta" or self.release is not None:
            return
        values = dict(attrs)
        if (values.get("name") or "").lower() == RELEASE_META:
            self.release = (values.get("content") or "").strip()
