"""A web host's release state written as an archive and put back (state_archive.py,
state_restore.py), on plain directories: the restored host has the same releases
(hardlinks into its own store, modes and upload order kept), the same ``current``, rules
and certificate files; a second restore changes nothing; a damaged or truncated archive
switches nothing; a site served differently is only switched with force. The whole path
through the CLI, nginx and SSH is tests/cli/test_backup.py."""

from __future__ import annotations

import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from services.deployer.layout import list_releases, read_current, write_certificates
from services.deployer.nginx_rules import read_rules, replace_rules
from services.deployer.release import LocalHost
from services.deployer.state_archive import BadArchive, export_state
from services.deployer.state_restore import import_state
from shared.ids import new_id

RULES = "server { listen 127.0.0.1:1; server_name spa.example; }\n"
PEM = b"-----BEGIN PRIVATE KEY-----\n(a key and its chain)\n"


async def build_host(root: Path, tmp_path: Path) -> tuple[LocalHost, dict[str, list[str]]]:
    host = LocalHost(root)
    releases: dict[str, list[str]] = {}
    shared_css = "body { color: #123; }\n"
    for domain in ("plain.example", "spa.example"):
        for n in range(2):
            release = new_id("dep")
            src = tmp_path / "src" / release
            (src / "assets").mkdir(parents=True)
            (src / "index.html").write_text(f"<h1>{domain} {n}</h1>")
            (src / "assets" / "style.css").write_text(shared_css)  # one object for all
            (src / "tool.sh").write_text("#!/bin/sh\n")
            (src / "tool.sh").chmod(0o755)
            await host.upload(domain, release, src)
            releases.setdefault(domain, []).append(release)
        await host.activate(domain, releases[domain][0])  # a rollback: not the newest
    replace_rules(root, {"spa.example": RULES}, None)
    write_certificates(root, ["spa.example", "www.spa.example"], PEM)
    return host, releases


def archive_of(root: Path) -> tuple[bytes, dict[str, Any]]:
    out = io.BytesIO()
    summary = export_state(root, None, out)
    return out.getvalue(), summary


def restore(root: Path, data: bytes, **kwargs: Any) -> dict[str, Any]:
    args: dict[str, Any] = {"sha256": None, "current": None, "nginx_command": None, "force": False}
    args.update(kwargs)
    return import_state(root, None, io.BytesIO(data), max_links=65_000, **args)


async def test_an_archive_puts_the_same_releases_current_and_rules_back(tmp_path: Path) -> None:
    source = tmp_path / "a"
    _, releases = await build_host(source, tmp_path)
    data, summary = archive_of(source)
    assert summary["sites"]["spa.example"] == {
        "current": releases["spa.example"][0],
        "releases": releases["spa.example"],
        "rules": True,
        "tls": ["spa.example", "www.spa.example"],
    }
    # index.html x4, style.css once, tool.sh once (same bytes and mode everywhere).
    assert summary["objects"] == 6

    target = tmp_path / "b"
    done = restore(target, data)
    assert done["objects_stored"] == 6 and done["releases_built"] == 4
    assert sorted(done["activated"]) == ["plain.example", "spa.example"]
    for domain, ids in releases.items():
        assert list_releases(target / domain / "releases") == ids  # upload order kept
        assert read_current(target / domain / "current") == ids[0]
        for release in ids:
            for rel in ("index.html", "assets/style.css", "tool.sh"):
                old = source / domain / "releases" / release / rel
                new = target / domain / "releases" / release / rel
                assert new.read_bytes() == old.read_bytes()
                assert stat.S_IMODE(new.stat().st_mode) == stat.S_IMODE(old.stat().st_mode)
    css = target / "plain.example" / "releases" / releases["plain.example"][0] / "assets/style.css"
    assert css.stat().st_nlink == 1 + 4  # the store's link and one per release: deduplicated
    assert read_rules(target, "spa.example") == RULES
    assert done["certificates"] == ["spa.example", "www.spa.example"]
    for name in done["certificates"]:
        pem = target / ".tls" / f"{name}.pem"
        assert pem.read_bytes() == PEM and stat.S_IMODE(pem.stat().st_mode) == 0o600

    again = restore(target, data)
    assert (again["objects_stored"], again["objects_present"]) == (0, 6)
    assert (again["releases_built"], again["releases_present"]) == (0, 4)
    assert again["activated"] == [] and again["rules_changed"] == []
    assert again["certificates"] == []


async def test_a_damaged_archive_switches_nothing(tmp_path: Path) -> None:
    source = tmp_path / "a"
    _, releases = await build_host(source, tmp_path)
    data, _ = archive_of(source)
    target = tmp_path / "b"

    for cut in range(1, 8):  # wherever the stream is cut, even between tar members
        with pytest.raises(BadArchive):
            restore(target, data[: len(data) * cut // 8])
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0xFF
    with pytest.raises(BadArchive):  # a bad object, a bad stream, or else the checksum
        restore(target, bytes(damaged), sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(BadArchive, match="SHA-256"):
        restore(target, data, sha256="0" * 64)
    for domain in releases:  # only verified objects may have been kept
        assert not (target / domain / "current").exists()
        assert list_releases(target / domain / "releases") == []
    assert read_rules(target, "spa.example") is None
    assert not (target / ".tls").exists()


async def test_the_database_s_release_wins_and_another_served_release_needs_force(
    tmp_path: Path,
) -> None:
    source = tmp_path / "a"
    _, releases = await build_host(source, tmp_path)
    data, _ = archive_of(source)
    target = tmp_path / "b"
    newest = releases["plain.example"][1]

    # Only the sites the database names are served, with the database's release.
    done = restore(target, data, current={"plain.example": newest})
    assert done["plan"] == {"plain.example": newest}
    assert read_current(target / "plain.example" / "current") == newest
    assert not (target / "spa.example" / "current").exists()

    older = releases["plain.example"][0]
    done = restore(target, data, current={"plain.example": older})
    assert done["conflicts"] == {"plain.example": newest} and done["activated"] == []
    assert read_current(target / "plain.example" / "current") == newest
    done = restore(target, data, current={"plain.example": older}, force=True)
    assert done["activated"] == ["plain.example"]
    assert os.readlink(target / "plain.example" / "current") == f"releases/{older}"
