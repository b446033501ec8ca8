"""Published template versions are immutable: ``sitefleet templates publish`` installs a
validated pack and records its content hash; a different pack under a published version
is refused by the CLI, by the API (409) and by the deployer (the deployment fails)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import select

from services.api.template_registry import register_catalog, resolve_pack
from services.deployer.packs import PublishedPacks
from shared.db import SessionMaker, create_engine, create_sessionmaker
from shared.errors import Conflict
from shared.models import TemplateVersion
from shared.settings import PROJECT_ROOT
from shared.template_packs import TemplateCatalog, hash_pack, load_pack

PROBE = PROJECT_ROOT / "tests" / "rollouts" / "packs" / "probe" / "1.0.0"


def probe_copy(root: Path, name: str, version: str = "1.0.0") -> Path:
    target = root / name / version
    shutil.copytree(PROBE, target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(
        json.dumps({**manifest, "name": name, "version": version})
    )
    return target


def publish(path: Path, templates_dir: Path, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITEFLEET_")}
    env |= {"SITEFLEET_DATABASE_URL": database_url, "SITEFLEET_TEMPLATES_DIR": str(templates_dir)}
    return subprocess.run(
        [str(PROJECT_ROOT / ".venv" / "bin" / "sitefleet"), "templates", "publish", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
async def sessionmaker(database_url: str) -> AsyncIterator[SessionMaker]:
    engine = create_engine(database_url, application_name="tests", pool_size=2)
    yield create_sessionmaker(engine)
    await engine.dispose()


async def published_hash(sessionmaker: SessionMaker, name: str) -> str | None:
    async with sessionmaker.begin() as session:
        return await session.scalar(
            select(TemplateVersion.content_hash).where(TemplateVersion.name == name)
        )


async def test_publish_installs_the_pack_and_records_its_hash(
    tmp_path: Path, database_url: str, sessionmaker: SessionMaker
) -> None:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    source = probe_copy(tmp_path / "src", name)
    templates = tmp_path / "templates"

    first = publish(source, templates, database_url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "published:" in first.stdout
    installed = templates / name / "1.0.0"
    assert hash_pack(installed) == hash_pack(source)
    assert await published_hash(sessionmaker, name) == hash_pack(source)

    again = publish(source, templates, database_url)
    assert again.returncode == 0, again.stderr
    assert "already published" in again.stdout


async def test_a_changed_pack_under_a_published_version_is_refused(
    tmp_path: Path, database_url: str, sessionmaker: SessionMaker
) -> None:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    source = probe_copy(tmp_path / "src", name)
    templates = tmp_path / "templates"
    assert publish(source, templates, database_url).returncode == 0
    original = hash_pack(templates / name / "1.0.0")

    page = source / "src" / "index.html.j2"
    page.write_text(page.read_text().replace("probe 1.0.0", "probe 1.0.0, quietly changed"))
    refused = publish(source, templates, database_url)
    assert refused.returncode == 1
    assert "changed after it was published" in refused.stderr
    assert hash_pack(templates / name / "1.0.0") == original
    assert await published_hash(sessionmaker, name) == original


async def test_an_invalid_pack_is_not_published(
    tmp_path: Path, database_url: str, sessionmaker: SessionMaker
) -> None:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    source = probe_copy(tmp_path / "src", name)
    manifest = json.loads((source / "manifest.json").read_text())
    manifest["preview_params"] = {"title": 7}
    (source / "manifest.json").write_text(json.dumps(manifest))
    templates = tmp_path / "templates"

    result = publish(source, templates, database_url)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert not (templates / name).exists()
    assert await published_hash(sessionmaker, name) is None


async def test_the_api_refuses_a_pack_changed_since_it_was_published(
    tmp_path: Path, sessionmaker: SessionMaker
) -> None:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    pack_dir = probe_copy(tmp_path, name)
    async with sessionmaker.begin() as session:
        assert await register_catalog(session, TemplateCatalog(tmp_path)) == []

    (pack_dir / "src" / "extra.txt").write_text("a file added after publishing")
    restarted = TemplateCatalog(tmp_path)  # the API starting again over the changed dir
    async with sessionmaker.begin() as session:
        assert await register_catalog(session, restarted) == [f"{name} 1.0.0"]
    async with sessionmaker.begin() as session:
        with pytest.raises(Conflict) as refused:
            await resolve_pack(session, restarted, name, "1.0.0")
    assert refused.value.code == "template_pack_changed"

    # A version that appears after start-up is published the first time it is asked for.
    newer = probe_copy(tmp_path, name, "1.0.1")
    async with sessionmaker.begin() as session:
        pack = await resolve_pack(session, restarted, name, None)
    assert pack.version == "1.0.1"
    async with sessionmaker.begin() as session:
        row = await session.get(TemplateVersion, (name, "1.0.1"))
    assert row is not None and row.content_hash == hash_pack(newer)


async def test_the_deployer_refuses_a_pack_edited_after_it_was_loaded(
    tmp_path: Path, sessionmaker: SessionMaker, database_url: str
) -> None:
    name = f"pub-{uuid.uuid4().hex[:8]}"
    pack_dir = probe_copy(tmp_path, name)
    async with sessionmaker.begin() as session:
        await register_catalog(session, TemplateCatalog(tmp_path))
    engine = create_engine(database_url, application_name="tests", pool_size=1)
    try:
        guard = PublishedPacks(engine)
        pack = load_pack(pack_dir)
        await guard.check(pack)  # published content: fine

        page = pack_dir / "src" / "index.html.j2"
        page.write_text(page.read_text() + "<!-- edited in place -->")
        with pytest.raises(Conflict) as edited:
            await guard.check(pack)
        assert edited.value.code == "template_pack_changed"
        with pytest.raises(Conflict):  # loaded afresh: no longer the published content
            await PublishedPacks(engine).check(load_pack(pack_dir))
    finally:
        await engine.dispose()
