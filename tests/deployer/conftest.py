"""Fixtures of the deployer tests: a real nginx serving a sites root, small template packs,
unique domains, and a private RabbitMQ vhost for the tests that run the whole service."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cli.devstack import procs
from cli.devstack.nginx import nginx_command, start_nginx
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.template_packs import TemplateCatalog
from tests.fixtures.isolation import create_vhost, drop_vhost

DEMO_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title"],
    "properties": {
        "title": {"type": "string", "minLength": 1, "maxLength": 200},
        "motto": {"type": "string", "default": "Built by Sitefleet"},
    },
}

# A binary static asset (not valid UTF-8) must arrive byte for byte.
LOGO = bytes(range(256)) * 4

DEMO_FILES = {
    "_layout.html.j2": (
        "<!doctype html>\n<html><head><title>{{ params.title }}</title>\n"
        '<meta name="sitefleet-release" content="{{ release.id }}">\n</head>\n'
        "<body>{% block body %}{% endblock %}\n"
        '{% include "_partials/footer.html.j2" %}</body></html>\n'
    ),
    "_partials/footer.html.j2": (
        '<footer><a href="{{ site.url }}/">{{ site.domain }}</a></footer>\n'
    ),
    "index.html.j2": (
        '{% extends "_layout.html.j2" %}{% block body %}'
        "<h1>{{ params.title }}</h1><p>{{ params.motto }}</p>{% endblock %}"
    ),
    "about/index.html.j2": (
        '{% extends "_layout.html.j2" %}{% block body %}<h1>About {{ params.title }}</h1>'
        "{% endblock %}"
    ),
    "404.html.j2": '{% extends "_layout.html.j2" %}{% block body %}<h1>Not here</h1>{% endblock %}',
    "assets/style.css": "body { color: #333; }\n",
}

# A single-page app: client-side routes, one hashed asset; needs the "spa" nginx profile.
SPA_ASSET = "assets/app.0f1e2d3c4b5a6978.js"
SPA_FILES = {
    "index.html.j2": (
        "<!doctype html>\n<html><head><title>{{ params.title }}</title>\n"
        '<meta name="sitefleet-release" content="{{ release.id }}">\n'
        f'<script src="/{SPA_ASSET}" defer></script></head>\n'
        "<body><h1>{{ params.title }}</h1><div id=app></div></body></html>\n"
    ),
    SPA_ASSET: "document.getElementById('app').textContent = location.pathname;\n",
}

# Renders fine but has no front page: nginx cannot serve "/" for it.
NO_INDEX_FILES = {"about.html.j2": "<h1>{{ params.title }}</h1>\n"}


def write_pack(
    templates_dir: Path,
    name: str,
    files: Mapping[str, str | bytes],
    *,
    version: str = "1.0.0",
    schema: dict[str, object] | None = None,
    nginx_profile: str = "static",
) -> Path:
    root = templates_dir / name / version
    (root / "src").mkdir(parents=True)
    manifest = {
        "name": name,
        "version": version,
        "title": f"{name} test pack",
        "description": "A pack made by the deployer tests.",
        "params_schema": schema or DEMO_SCHEMA,
        "preview_params": {"title": "Preview"},
        "nginx_profile": nginx_profile,
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    for rel, content in files.items():
        path = root / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


@pytest.fixture(scope="session")
def templates_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("templates")
    write_pack(root, "demo", {**DEMO_FILES, "assets/logo.bin": LOGO})
    write_pack(root, "noindex", NO_INDEX_FILES)
    write_pack(root, "app", SPA_FILES, nginx_profile="spa")
    return root


@pytest.fixture(scope="session")
def catalog(templates_dir: Path) -> TemplateCatalog:
    return TemplateCatalog(templates_dir)


@pytest.fixture(scope="session")
def sites_root() -> Iterator[Path]:
    # Not under pytest's tmp dirs: those are 0700 and nginx workers run as `nobody`.
    root = Path(tempfile.mkdtemp(prefix="sitefleet-test-sites-"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class Nginx:
    port: int
    proc: subprocess.Popen[bytes]
    # argv running this nginx, for per-site rules (nginx -t, -s reload).
    command: list[str]
    # Its TLS listener (certificates from <sites_root>/.tls, per handshake).
    https_port: int = 0


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory, sites_root: Path) -> Iterator[Nginx]:
    port, https_port = procs.free_port(), procs.free_port()
    prefix = tmp_path_factory.mktemp("nginx")
    proc = start_nginx(prefix, port=port, sites_root=sites_root, https_port=https_port)
    yield Nginx(port=port, proc=proc, command=nginx_command(prefix), https_port=https_port)
    procs.stop(proc)


Fetch = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def fetch(nginx: Nginx) -> Fetch:
    """GET a path of a site through the real nginx, as a visitor of ``domain`` would."""

    async def get(domain: str, path: str = "/") -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(
                f"http://127.0.0.1:{nginx.port}{path}", headers={"Host": domain}
            )

    return get


@pytest.fixture
def domain(sites_root: Path) -> Iterator[str]:
    name = f"site-{uuid.uuid4().hex[:12]}.example.com"
    yield name
    shutil.rmtree(sites_root / name, ignore_errors=True)
    for served in (name, f"www.{name}", f"proxy.{name}"):  # certificates (test_service.py)
        (sites_root / ".tls" / f"{served}.pem").unlink(missing_ok=True)


@pytest.fixture
def host(sites_root: Path) -> LocalHost:
    return LocalHost(sites_root)


@pytest.fixture
def settings(
    nginx: Nginx, sites_root: Path, templates_dir: Path, tmp_path: Path
) -> DeployerSettings:
    return DeployerSettings(
        sites_root=sites_root,
        http_host="127.0.0.1",
        http_port=nginx.port,
        https_port=nginx.https_port,
        work_root=tmp_path / "work",
        templates_dir=templates_dir,
        keep_releases=3,
        health_check_timeout=5.0,
        # Each phase reported as it starts: the tests follow a deployment step by step.
        progress_report_delay=0,
    )


@pytest.fixture(scope="session")
def deployer_amqp_url(amqp_url: str) -> Iterator[str]:
    """A RabbitMQ vhost of our own: the queues the whole deployer consumes and the events it
    emits are not shared with any other test's consumers."""
    vhost, url = create_vhost(f"sitefleet-test-deployer-{uuid.uuid4().hex[:10]}")
    yield url
    drop_vhost(vhost)
