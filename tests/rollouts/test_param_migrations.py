"""Param migrations are declarative (rename, drop, defaults) and end in the new schema:
params that cannot be migrated are refused with the fields that fail, never half-applied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from shared.errors import Invalid
from shared.template_packs import load_pack, migrate_params

PACKS = Path(__file__).parent / "packs"


def test_declared_renames_and_defaults_carry_old_params_over() -> None:
    pack = load_pack(PACKS / "probe" / "1.1.0")
    migrated = migrate_params(pack, "1.0.0", {"title": "Bakery", "flavor": "cursed"})
    assert migrated == {"heading": "Bakery", "motto": "Still here", "flavor": "cursed"}


def test_a_value_already_set_is_not_overwritten_by_a_default() -> None:
    pack = load_pack(PACKS / "probe" / "1.1.0")
    migrated = migrate_params(pack, "1.0.0", {"title": "Bakery", "motto": "Mine"})
    assert migrated["motto"] == "Mine"


def test_params_that_do_not_fit_the_new_schema_name_the_field() -> None:
    pack = load_pack(PACKS / "probe" / "1.1.0")
    with pytest.raises(Invalid) as refused:
        migrate_params(pack, "1.0.0", {"title": "x" * 41})
    assert [f["field"] for f in refused.value.details["fields"]] == ["params.heading"]


def test_without_a_declared_migration_params_must_already_fit() -> None:
    pack = load_pack(PACKS / "probe" / "1.1.0")
    with pytest.raises(Invalid):
        migrate_params(pack, "0.9.0", {"title": "Bakery"})


def pack_with_migrations(tmp_path: Path, migrations: object) -> Path:
    target = tmp_path / "probe" / "1.1.0"
    shutil.copytree(PACKS / "probe" / "1.1.0", target)
    manifest = json.loads((target / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({**manifest, "param_migrations": migrations}))
    return target


def test_drop_removes_params_the_new_version_no_longer_has(tmp_path: Path) -> None:
    pack = load_pack(
        pack_with_migrations(
            tmp_path, {"1.0.0": {"rename": {"title": "heading"}, "drop": ["legacy"]}}
        )
    )
    migrated = migrate_params(pack, "1.0.0", {"title": "Shop", "legacy": 1, "motto": "m"})
    assert migrated == {"heading": "Shop", "motto": "m", "flavor": "plain"}


@pytest.mark.parametrize(
    "migrations",
    [
        {"1.0.0": {"run": "import os"}},  # code is never a migration
        {"1.0.0": {"rename": {"title": 3}}},
        {"1.0.0": {"drop": "title"}},
        {"latest": {"drop": ["title"]}},
        {"2.0.0": {"drop": ["title"]}},  # only older versions migrate forward
        ["rename"],
    ],
)
def test_a_bad_migration_declaration_is_refused_at_load(tmp_path: Path, migrations: object) -> None:
    with pytest.raises(Invalid):
        load_pack(pack_with_migrations(tmp_path, migrations))
