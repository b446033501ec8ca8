"""README screenshots of the template packs: each pack built with its preview params (the
real render, its build steps in the real sandbox), served over local HTTPS, and rendered by
headless Chromium (Debian ``chromium``) to ``docs/images/<template>.png``.

A dev tool, not part of ``make test``: ``make screenshots`` (or
``.venv/bin/python infra/dev/screenshots.py [NAME ...]``). Needs root for the build sandbox,
and ``chromium`` and ``openssl`` (``apt-get install -y chromium``).

The built HTML is exactly what a deployment serves. Chromium's host resolver maps the
preview domain and ``media.<domain>`` to the local server, so absolute links and the
portfolio's ``https://media.<domain>/...`` images load unchanged; the media host (a CDN,
not reachable here) is stood in for by the drawn illustrations of ``infra/dev/sample-media``. The
server answers like the site's nginx profile: files, ``<path>/index.html``, ``<path>.html``;
under ``spa`` any other path gets ``index.html`` (history fallback); else ``404.html``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import http.server
import mimetypes
import posixpath
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cli.templates import PREVIEW_DOMAIN, VALIDATE_LIMITS  # noqa: E402
from services.deployer.build import build_sandbox  # noqa: E402
from services.deployer.render import render_site  # noqa: E402
from services.deployer.sandbox import parse_build_steps  # noqa: E402
from services.deployer.settings import DeployerSettings  # noqa: E402
from shared.ids import new_id  # noqa: E402
from shared.template_packs import TemplateCatalog, TemplatePack  # noqa: E402

TEMPLATES = ("landing", "blog", "portfolio", "spa")


async def build(pack: TemplatePack, out: Path) -> None:
    settings = DeployerSettings().model_copy(update=VALIDATE_LIMITS)
    await asyncio.to_thread(
        render_site,
        pack,
        pack.preview_params,
        domain=PREVIEW_DOMAIN,
        release_id=new_id("dep"),
        out_dir=out,
    )
    steps = parse_build_steps(pack.build)
    if steps:
        await build_sandbox(settings).run_steps(
            steps, site_dir=out, src_dir=pack.source_dir.resolve()
        )


class Handler(http.server.BaseHTTPRequestHandler):
    """One built site on ``PREVIEW_DOMAIN``, sample images on ``media.PREVIEW_DOMAIN``."""

    site: Path
    profile: str

    def do_GET(self) -> None:  # noqa: N802 -- the stdlib's name
        path = unquote(urlsplit(self.path).path)
        if self.headers.get("Host", "").split(":")[0] == f"media.{PREVIEW_DOMAIN}":
            self.reply(200, "image/svg+xml", sample_image(path))
            return
        file = self.resolve(path)
        if file is not None:
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self.reply(200, kind, file.read_bytes())
        elif self.profile == "spa" and not path.startswith("/assets/"):
            self.reply(200, "text/html", (self.site / "index.html").read_bytes())
        else:
            missing = self.site / "404.html"
            self.reply(404, "text/html", missing.read_bytes() if missing.is_file() else b"")

    def resolve(self, path: str) -> Path | None:
        rel = posixpath.normpath("/" + path).lstrip("/")  # never above the site
        candidates = [rel, posixpath.join(rel, "index.html")] + ([f"{rel}.html"] if rel else [])
        for candidate in candidates:
            file = self.site / candidate
            if file.is_file():
                return file
        return None

    def reply(self, status: int, kind: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(site: Path, profile: str, cert_dir: Path) -> http.server.ThreadingHTTPServer:
    handler = type("SiteHandler", (Handler,), {"site": site, "profile": profile})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir / "cert.pem", cert_dir / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def make_cert(cert_dir: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", f"/CN={PREVIEW_DOMAIN}",
         "-keyout", str(cert_dir / "key.pem"), "-out", str(cert_dir / "cert.pem")],
        check=True,
        capture_output=True,
    )  # fmt: skip


def screenshot(port: int, target: Path, *, width: int, height: int, path: str = "/") -> None:
    rules = f"MAP {PREVIEW_DOMAIN} 127.0.0.1:{port}, MAP media.{PREVIEW_DOMAIN} 127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="sitefleet-chromium-") as profile:
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--mute-audio", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "--force-device-scale-factor=1",
             f"--host-resolver-rules={rules}", "--ignore-certificate-errors",
             "--virtual-time-budget=5000", f"--screenshot={target}",
             f"https://{PREVIEW_DOMAIN}{path}"],
            check=True,
            capture_output=True,
            timeout=120,
        )  # fmt: skip


# Stand-ins for the media host's images: drawn sample illustrations (infra/dev/sample-media),
# chosen by the first file name stem that occurs in the image's path. Not photographs: the
# screenshot shows the template's layout with images in place.
SAMPLE_MEDIA = Path(__file__).resolve().parent / "sample-media"


def sample_image(path: str) -> bytes:
    name = posixpath.basename(path)
    for sample in sorted(SAMPLE_MEDIA.glob("*.svg")):
        if sample.stem in name:
            return sample.read_bytes()
    # Any other path: a plain two-tone landscape in colours of its own.
    hue = int(hashlib.sha256(path.encode()).hexdigest()[:4], 16) % 360
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 800 600" width="800" '
        'height="600" preserveAspectRatio="xMidYMid slice">'
        f'<rect width="800" height="600" fill="hsl({hue} 45% 80%)"/>'
        f'<path d="M0 380q200-90 400 0t400 0v220H0z" fill="hsl({hue} 35% 45%)"/></svg>'
    ).encode()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("templates", nargs="*", default=list(TEMPLATES))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        print("chromium is not installed: apt-get install -y chromium", file=sys.stderr)
        return 1
    catalog = TemplateCatalog(ROOT / "templates")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sitefleet-screenshots-") as tmp:
        work = Path(tmp)
        make_cert(work)
        for name in args.templates:
            pack = catalog.get(name)
            site = work / name
            await build(pack, site)
            server = serve(site, pack.nginx_profile, work)
            try:
                target = args.out / f"{name}.png"
                port = server.server_address[1]
                screenshot(port, target, width=args.width, height=args.height)
            finally:
                server.shutdown()
                server.server_close()
            print(f"{name} {pack.version}: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
