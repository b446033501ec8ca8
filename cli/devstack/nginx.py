"""A private nginx instance serving the local web host's sites, over HTTP and HTTPS."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from string import Template

from cli.devstack import procs
from services.deployer.layout import ACME_CHALLENGES, TLS, make_dirs
from shared.settings import PROJECT_ROOT


class ConfigTemplate(Template):
    """``@{name}`` placeholders: nginx's own ``$variables`` pass through untouched."""

    delimiter = "@"


TEMPLATE = PROJECT_ROOT / "infra" / "nginx" / "nginx.conf.template"
# The user nginx's workers run as when it is started as root (Debian's build: no `user`
# directive in the template, so the compiled-in default). Started as anyone else, nginx
# runs as that user, and so does the deployer that writes the keys.
WORKER_USER = "nobody"


def supports_http2(nginx: str = "nginx") -> bool:
    """Whether this nginx build has the HTTP/2 module (``nginx -V`` lists it)."""
    done = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
    return "--with-http_v2_module" in done.stderr + done.stdout


def tls_values(
    *, tls_listen: str, https_port: int, hsts_max_age: int, http2: bool
) -> dict[str, str]:
    """The TLS placeholders of a catch-all template (this one and the hosts' one)."""
    return {
        "tls_listen": tls_listen,
        "http2": " http2" if http2 else "",
        # Visitors are sent to the port the listener has; 443 goes without saying.
        "https_redirect_port": "" if https_port == 443 else f":{https_port}",
        "hsts": f"max-age={hsts_max_age}" if hsts_max_age > 0 else "",
    }


def prepare_tls_dirs(sites_root: Path) -> None:
    """``.tls`` readable by nginx's workers only (layout.py: the directory's owner is who
    reads the keys), ``.acme-challenge`` world-readable."""
    make_dirs(sites_root / ACME_CHALLENGES)
    tls = sites_root / TLS
    tls.mkdir(mode=0o700, exist_ok=True)
    if os.geteuid() == 0:
        worker = pwd.getpwnam(WORKER_USER)
        os.chown(tls, worker.pw_uid, worker.pw_gid)
    os.chmod(tls, 0o700)


def write_config(
    prefix: Path,
    *,
    listen: str,
    sites_root: Path,
    tls_listen: str,
    https_port: int,
    hsts_max_age: int = 0,
) -> Path:
    for sub in ("logs", "tmp", "conf"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = ConfigTemplate(TEMPLATE.read_text()).substitute(
        prefix=prefix,
        listen=listen,
        sites_root=sites_root,
        mime_types="/etc/nginx/mime.types",
        **tls_values(
            tls_listen=tls_listen,
            https_port=https_port,
            hsts_max_age=hsts_max_age,
            http2=supports_http2(),
        ),
    )
    path = prefix / "conf" / "nginx.conf"
    path.write_text(conf)
    subprocess.run(["nginx", "-t", "-q", "-p", str(prefix), "-c", str(path)], check=True)
    return path


def nginx_command(prefix: Path) -> list[str]:
    """argv that runs this private nginx (the deployer appends ``-t -q`` / ``-s reload``)."""
    return ["nginx", "-p", str(prefix), "-c", str(prefix / "conf" / "nginx.conf")]


def start_nginx(
    prefix: Path, *, port: int, sites_root: Path, https_port: int, hsts_max_age: int = 0
) -> subprocess.Popen[bytes]:
    """nginx on 127.0.0.1: ``port`` (HTTP) and ``https_port`` (TLS, certificates from
    ``<sites_root>/.tls``)."""
    sites_root.mkdir(parents=True, exist_ok=True)
    prepare_tls_dirs(sites_root)
    conf = write_config(
        prefix,
        listen=f"127.0.0.1:{port}",
        sites_root=sites_root,
        tls_listen=f"127.0.0.1:{https_port}",
        https_port=https_port,
        hsts_max_age=hsts_max_age,
    )
    proc = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        log=prefix / "logs" / "stdout.log",
    )
    procs.wait_for_port(port, proc=proc)
    procs.wait_for_port(https_port, proc=proc)
    return proc
