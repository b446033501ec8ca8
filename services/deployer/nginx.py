"""The deployer's side of per-site nginx rules: a site's server block rendered from its
template's rule profile (``infra/nginx/profiles/<profile>.conf``), and nginx reloads
coalesced per web host.

Content never needs a reload (the catch-all server follows ``current``); rules do, and only
when they change: the first deployment of a site with a profile, a profile change, the
site's removal. Those reloads are coalesced so a host reloads at most once per window,
however many sites change rules at once (a reload restarts nginx's workers).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import httpx

from services.deployer.health import unverified_tls
from services.deployer.metrics import NGINX_RELOADS
from shared.errors import Permanent, SitefleetError, Transient
from shared.template_packs import NGINX_PROFILES

if TYPE_CHECKING:  # release.py (and target.py through it) import this module
    from services.deployer.release import HostTransport
    from services.deployer.target import Target

log = logging.getLogger(__name__)

# Every profile's server block answers its digest here (see SiteRules).
RULES_CHECK_PATH = "/.well-known/sitefleet-rules"

# nginx `listen` forms ops configure for a host: port, addr:port, [v6]:port.
_LISTEN = re.compile(r"^(?:[0-9a-z.-]+:|\[[0-9a-f:]+\]:)?[0-9]{1,5}$")


def valid_listen(listen: str) -> bool:
    return bool(_LISTEN.match(listen))


class _ConfigTemplate(Template):
    """``@{name}`` placeholders: nginx's own ``$variables`` pass through untouched."""

    delimiter = "@"


@dataclass(frozen=True)
class SiteRules:
    """A site's rendered server block, and the digest it answers at ``RULES_CHECK_PATH``
    once nginx has loaded it (how the deployer knows a reload took effect)."""

    text: str
    digest: str


def tls_listen_for(listen: str | None, https_port: int) -> str | None:
    """The TLS listen address beside an HTTP one: same address, the HTTPS port."""
    if listen is None:
        return None
    address, colon, _ = listen.rpartition(":")
    return f"{address}:{https_port}" if colon else str(https_port)


def tls_rules(tls_listen: str, sites_root: str) -> str:
    """What a profile's server block needs to serve its site as the catch-all does over
    TLS (infra/nginx/*.template): the TLS listener with per-name certificates, the redirect
    of plain HTTP once the name has one (except ACME answers and /.well-known/sitefleet-*),
    and the ACME challenge directory. ``$sitefleet_tls_name``, ``$sitefleet_redirect_name``
    and ``$sitefleet_hsts`` are the catch-all config's maps."""
    port = int(tls_listen.rpartition(":")[2])
    suffix = "" if port == 443 else f":{port}"
    tls = f"{sites_root}/.tls"
    return f"""listen {tls_listen} ssl;
    ssl_certificate {tls}/$sitefleet_tls_name.pem;
    ssl_certificate_key {tls}/$sitefleet_tls_name.pem;
    set $sitefleet_tls_file "";
    if ($https = "") {{
        set $sitefleet_tls_file {tls}/$sitefleet_redirect_name.pem;
    }}
    if ($uri ~ "^/\\.well-known/(acme-challenge/|sitefleet-)") {{
        set $sitefleet_tls_file "";
    }}
    if (-f $sitefleet_tls_file) {{
        return 301 https://$host{suffix}$request_uri;
    }}
    location ~ "^/\\.well-known/acme-challenge/([A-Za-z0-9_-]+)$" {{
        default_type text/plain;
        alias {sites_root}/.acme-challenge/$1;
    }}"""


HSTS_HEADER = "add_header Strict-Transport-Security $sitefleet_hsts always;"


def render_rules(
    profile: str,
    *,
    domain: str,
    root: str,
    listen: str | None,
    profiles_dir: Path,
    tls_listen: str | None = None,
    sites_root: str | None = None,
) -> SiteRules | None:
    """The server block of ``domain`` under ``profile``, or None for ``static`` (no rules:
    the catch-all server). ``domain`` is normalized (``release.check_domain``) and
    ``root``/``listen`` come from the host's configuration, never from a customer; with
    ``tls_listen`` (and the host's ``sites_root``) the block also serves HTTPS like the
    catch-all (``tls_rules``): profiles place the ``tls`` placeholder in the server block
    and ``hsts`` in every location that adds headers of its own (those hide the server's)."""
    if profile not in NGINX_PROFILES:
        raise Permanent(f"nginx profile {profile!r} is unknown", code="unknown_nginx_profile")
    if profile == "static":
        return None
    if listen is None or not valid_listen(listen):
        raise Permanent(
            f"the site's template needs nginx rules (profile {profile!r}) but its web host has "
            f"no usable nginx listen address ({listen!r}): set one for the host",
            code="nginx_rules_unsupported",
        )
    source = (profiles_dir / f"{profile}.conf").read_text()
    if "@{digest}" not in source:
        raise Permanent(
            f"nginx profile {profile!r} lacks the {RULES_CHECK_PATH} location answering "
            "@{digest}",
            code="nginx_profile_invalid",
        )
    values = {
        "domain": domain,
        "root": root,
        "listen": listen,
        "tls": tls_rules(tls_listen, sites_root) if tls_listen and sites_root else "",
        "hsts": HSTS_HEADER if tls_listen and sites_root else "",
    }
    digest = hashlib.sha256(json.dumps([source, values]).encode()).hexdigest()[:16]
    return SiteRules(_ConfigTemplate(source).substitute(values, digest=digest), digest)


async def serves_rules(
    target: Target, domain: str, digest: str, client: httpx.AsyncClient
) -> str | None:
    """None if the host's nginx answers ``digest`` for ``domain``, else what it answered."""
    url = f"http://{target.http_host}:{target.http_port}{RULES_CHECK_PATH}"
    try:
        response = await client.get(url, headers={"Host": domain})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if response.status_code == 200 and response.text.strip() == digest:
        return None
    return f"{response.status_code} {response.text.strip()[:40]!r}"


def plain_http_client(timeout: float, limits: httpx.Limits | None = None) -> httpx.AsyncClient:
    """A client for the plain-HTTP checks of our own web hosts. Unverified because no TLS
    is spoken (httpx otherwise loads the CA bundle for every client: ~40 ms of CPU, a large
    share of a deployment's); no proxies from the environment for our own hosts."""
    return httpx.AsyncClient(
        timeout=timeout,
        verify=unverified_tls(),
        trust_env=False,
        limits=limits or httpx.Limits(),
    )


async def wait_until_loaded(
    target: Target,
    domain: str,
    digest: str,
    *,
    within: float,
    interval: float = 0.05,
    confirmations: int = 3,
) -> None:
    """Return once the host's nginx answers ``digest`` for ``domain`` (``nginx -s reload``
    only signals the master; its new workers start a moment later) on ``confirmations``
    fresh connections in a row: an old worker that has not yet handled its QUIT may still
    accept a new connection just after a new worker first answered."""
    seen: str | None = "nothing"
    in_a_row = 0
    fresh = httpx.Limits(max_keepalive_connections=0)
    async with plain_http_client(interval * 20, limits=fresh) as client:
        try:
            async with asyncio.timeout(within):
                while True:
                    seen = await serves_rules(target, domain, digest, client)
                    in_a_row = in_a_row + 1 if seen is None else 0
                    if in_a_row >= confirmations:
                        return
                    await asyncio.sleep(interval)
        except TimeoutError:
            raise Transient(
                f"web host {target.name}: nginx did not load the new rules of {domain} within "
                f"{within} s (last answer: {seen})",
                code="nginx_reload_not_seen",
            ) from None


class ReloadCoalescer:
    """Reloads of one host's nginx, at most one per ``window`` seconds: requests made while
    a reload waits its turn share it; a request made while a reload runs (whose config may
    predate the request) gets the next one. Each requester sees its reload's error."""

    def __init__(
        self,
        reload: Callable[[], Awaitable[None]],
        *,
        host: str,
        window: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reload = reload
        self.host, self.window, self._clock = host, window, clock
        self._next: asyncio.Future[None] | None = None
        self._turn = asyncio.Lock()
        self._last_start = -math.inf
        self._tasks: set[asyncio.Task[None]] = set()
        self.reloads = 0

    async def request(self) -> None:
        """Return once a reload that started after this call has finished."""
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._run(self._next))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # A cancelled requester leaves the reload to the others.
        await asyncio.shield(self._next)

    async def _run(self, done: asyncio.Future[None]) -> None:
        async with self._turn:
            wait = self._last_start + self.window - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next = None  # later requests need a reload that starts after now
            self._last_start = self._clock()
            self.reloads += 1
            NGINX_RELOADS.labels(host=self.host).inc()
            try:
                await self._reload()
            except BaseException as exc:
                done.set_exception(exc)
                done.exception()  # retrieved, whether or not a requester still waits
                if not isinstance(exc, Exception):
                    raise
            else:
                done.set_result(None)


class StagedRules:
    """A deployment's rules on its hosts: which files it changed (and how to undo that),
    and the digest each host must answer once its nginx serves them."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.previous: dict[str, tuple[Target, str | None]] = {}
        self.expected: dict[str, tuple[Target, str | None]] = {}

    def record(
        self, target: Target, changed: bool, previous: str | None, rules: SiteRules | None
    ) -> None:
        if changed:
            self.previous[target.name] = (target, previous)
        if changed or rules is not None:
            self.expected[target.name] = (target, rules.digest if rules else None)

    async def hosts_to_reload(self) -> list[Target]:
        """Hosts whose rules changed, and hosts whose unchanged rules their nginx does not
        serve (a retry after a reload that was not seen: the file is already in place)."""
        stale = [target for name, (target, _) in self.expected.items() if name in self.previous]
        unchanged = [
            (target, digest)
            for name, (target, digest) in self.expected.items()
            if name not in self.previous and digest is not None
        ]
        if unchanged:  # most deployments: no rules at all, nothing to ask nginx
            async with plain_http_client(5) as client:
                for target, digest in unchanged:
                    if await serves_rules(target, self.domain, digest, client):
                        stale.append(target)
        return stale

    async def go_live(self, hosts: list[Target], within: float) -> None:
        """Reload those hosts' nginx (coalesced) and wait until each serves the rules."""

        async def on(target: Target) -> None:
            await target.host.reloads.request()
            _, digest = self.expected[target.name]
            if digest is not None:
                await wait_until_loaded(target, self.domain, digest, within=within)

        results = await asyncio.gather(*(on(target) for target in hosts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def put_back(self) -> None:
        """Each changed host gets its old rules back, live at its next reload. Best effort:
        the deployment is failing already, and old rules only ever point at ``current``."""
        for target, rules in self.previous.values():
            try:
                await target.host.set_rules(self.domain, rules)
                await target.host.reloads.request()
            except SitefleetError as exc:
                log.warning(
                    "putting the old nginx rules back failed",
                    extra={"domain": self.domain, "host": target.name, "error": exc.message},
                )


async def remove_rules(host: HostTransport, domain: str) -> None:
    """The removed site's rules, if it had any, gone from the host and from its nginx."""
    if not host.nginx_command:
        return
    change = await host.set_rules(domain, None)
    if change.changed:
        await host.reloads.request()


# More changed URL paths than this: the CDN purges the whole site instead.
MAX_PURGE_PATHS = 500


def served_paths(files: list[str] | None) -> list[str] | None:
    """The URL paths at which nginx serves ``files`` (release paths): ``blog/index.html``
    is also ``/blog/`` and ``/blog``, ``about.html`` also ``/about`` (the catch-all's
    ``$uri/`` and ``$uri.html``). None (everything) when unknown or too many."""
    if files is None:
        return None
    paths: set[str] = set()
    for file in files:
        paths.add(f"/{file}")
        if file == "index.html" or file.endswith("/index.html"):
            directory = "/" + file.removesuffix("index.html")
            paths.update({directory, directory.rstrip("/") or "/"})
        elif file.endswith(".html"):
            paths.add("/" + file.removesuffix(".html"))
    if len(paths) > MAX_PURGE_PATHS:
        return None
    return sorted(paths)
