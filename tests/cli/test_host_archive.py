"""A web host's release state taken and put back over SSH (cli/host_archive.py) against the
tests' real sshd: one exec each way; the archive the host checks against the recorded
SHA-256; a host whose interpreter cannot run the helper fails with what it said."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest

from cli.host_archive import HashingFile, HostPlace, export_host, import_host
from services.deployer.layout import list_releases, read_current
from services.deployer.release import LocalHost
from services.deployer.settings import DeployerSettings
from shared.errors import Invalid, SitefleetError
from shared.ids import new_id
from shared.models import WebHost
from tests.fixtures.sshd import Sshd

DOMAIN = "over-ssh.example"


def ssh_place(sshd: Sshd, sites_root: Path) -> HostPlace:
    row = WebHost(
        id=new_id("host"),
        name="web-t",
        kind="ssh",
        ssh_user=sshd.username,
        ssh_address="127.0.0.1",
        ssh_port=sshd.port,
        ssh_key_path=str(sshd.client_key),
        host_key=sshd.host_key,
        sites_root=str(sites_root),
        objects_root=None,
        http_host="127.0.0.1",
        http_port=1,
        public_addresses=[],
        nginx_command=None,
        nginx_listen=None,
        enabled=True,
    )
    return HostPlace.of_row(row, DeployerSettings())


async def test_a_host_s_state_goes_out_and_back_over_ssh(sshd: Sshd, tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    release = new_id("dep")
    build = tmp_path / "build"
    build.mkdir()
    await asyncio.to_thread((build / "index.html").write_text, "<h1>over ssh</h1>")
    host = LocalHost(source)
    await host.upload(DOMAIN, release, build)
    await host.activate(DOMAIN, release)
    settings = DeployerSettings()

    buffer = io.BytesIO()
    out = HashingFile(buffer)
    held = await export_host(ssh_place(sshd, source), settings, out)
    assert held["sites"] == {
        DOMAIN: {"current": release, "releases": [release], "rules": False, "tls": []}
    }
    archive = tmp_path / "web-t.tar.gz"
    await asyncio.to_thread(archive.write_bytes, buffer.getvalue())

    with pytest.raises(Invalid, match="SHA-256"):
        await import_host(
            ssh_place(sshd, target),
            settings,
            archive,
            sha256="0" * 64,
            current={DOMAIN: release},
            force=False,
        )
    # Only verified objects were kept: no release, nothing served.
    assert read_current(target / DOMAIN / "current") is None
    assert list_releases(target / DOMAIN / "releases") == []

    done = await import_host(
        ssh_place(sshd, target),
        settings,
        archive,
        sha256=out.digest.hexdigest(),
        current={DOMAIN: release},
        force=False,
    )
    assert done["activated"] == [DOMAIN] and done["releases_built"] == 1
    page = target / DOMAIN / "current" / "index.html"
    assert await asyncio.to_thread(page.read_text) == "<h1>over ssh</h1>"


async def test_a_host_that_cannot_run_the_helper_says_why(sshd: Sshd, tmp_path: Path) -> None:
    settings = DeployerSettings(ssh_remote_python="/nonexistent/python3")
    with pytest.raises(SitefleetError, match="backup helper ended.*nonexistent"):
        await export_host(ssh_place(sshd, tmp_path), settings, HashingFile(io.BytesIO()))
