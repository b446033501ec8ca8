"""A private nginx instance serving the local web host's sites."""

from __future__ import annotations

import subprocess
from pathlib import Path
from string import Template

from cli.devstack import procs
from shared.settings import PROJECT_ROOT


class ConfigTemplate(Template):
    """``@{name}`` placeholders: nginx's own ``$variables`` pass through untouched."""

    delimiter = "@"


TEMPLATE = PROJECT_ROOT / "infra" / "nginx" / "nginx.conf.template"


def write_config(prefix: Path, *, listen: str, sites_root: Path) -> Path:
    for sub in ("logs", "tmp", "conf"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    conf = ConfigTemplate(TEMPLATE.read_text()).substitute(
        prefix=prefix,
        listen=listen,
        sites_root=sites_root,
        mime_types="/etc/nginx/mime.types",
    )
    path = prefix / "conf" / "nginx.conf"
    path.write_text(conf)
    subprocess.run(["nginx", "-t", "-q", "-p", str(prefix), "-c", str(path)], check=True)
    return path


def nginx_command(prefix: Path) -> list[str]:
    """argv that runs this private nginx (the deployer appends ``-t -q`` / ``-s reload``)."""
    return ["nginx", "-p", str(prefix), "-c", str(prefix / "conf" / "nginx.conf")]


def start_nginx(prefix: Path, *, port: int, sites_root: Path) -> subprocess.Popen[bytes]:
    sites_root.mkdir(parents=True, exist_ok=True)
    conf = write_config(prefix, listen=f"127.0.0.1:{port}", sites_root=sites_root)
    proc = procs.start(
        ["nginx", "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        log=prefix / "logs" / "stdout.log",
    )
    procs.wait_for_port(port, proc=proc)
    return proc
