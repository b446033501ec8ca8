"""Template packs on disk (``templates/<name>/<version>/``): loading, checking that a pack
is still the content it was loaded (and published) as, validating a site's params against
a pack's JSON Schema (defaults filled in), and the declarative param migrations a version
declares for the params of older versions.

A manifest's ``param_migrations`` maps an older version to what changes, never code::

    "param_migrations": {
      "1.0.0": {"rename": {"headline": "title"}, "drop": ["old_flag"],
                "defaults": {"cta_label": "Write to us"}}
    }

Applied in that order (rename, drop, then defaults for keys still missing) to the site's
top-level params; the result must then pass the new schema."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from shared.errors import Conflict, Invalid, NotFound

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
# The nginx rule profiles a pack may name: platform-owned server blocks (deployer/nginx.py,
# infra/nginx/profiles/); "static" is the catch-all server with no rules of its own.
NGINX_PROFILES = ("static", "spa")


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True)
class TemplatePack:
    name: str
    version: str
    title: str
    description: str
    params_schema: dict[str, Any]
    preview_params: dict[str, Any]
    nginx_profile: str
    build: list[Any]
    path: Path
    content_hash: str = field(compare=False)
    # Older version -> {"rename": {old: new}, "drop": [key], "defaults": {key: value}}.
    param_migrations: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    @property
    def source_dir(self) -> Path:
        return self.path / "src"

    def check_unchanged(self) -> None:
        """Raises ``Conflict`` when the files on disk are no longer what was loaded: a
        published version is immutable, so an edited pack must not reach a site."""
        if hash_pack(self.path) != self.content_hash:
            raise pack_changed(self.name, self.version)


def pack_changed(name: str, version: str) -> Conflict:
    return Conflict(
        f"template pack {name} {version} changed after it was published; "
        "published versions are immutable: publish the change as a new version",
        code="template_pack_changed",
        details={"template": name, "version": version},
    )


def hash_pack(root: Path) -> str:
    """SHA-256 over every file's relative path and content (``__pycache__`` ignored)."""
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def load_pack(path: Path) -> TemplatePack:
    manifest = json.loads((path / "manifest.json").read_text())
    name, version = manifest["name"], manifest["version"]
    if not _NAME.match(name) or not _VERSION.match(version):
        raise Invalid(f"template pack {path} has a bad name or version")
    if (path.parent.name, path.name) != (name, version):
        raise Invalid(f"template pack {path} must live in templates/{name}/{version}/")
    Draft202012Validator.check_schema(manifest["params_schema"])
    nginx_profile = manifest.get("nginx_profile", "static")
    if nginx_profile not in NGINX_PROFILES:
        raise Invalid(
            f"template pack {path} names nginx profile {nginx_profile!r}; "
            f"known profiles: {', '.join(NGINX_PROFILES)}",
            code="unknown_nginx_profile",
        )
    return TemplatePack(
        name=name,
        version=version,
        title=manifest["title"],
        description=manifest["description"],
        params_schema=manifest["params_schema"],
        preview_params=manifest.get("preview_params", {}),
        nginx_profile=nginx_profile,
        build=manifest.get("build", []),
        path=path,
        content_hash=hash_pack(path),
        param_migrations=_parse_migrations(manifest.get("param_migrations", {}), version, path),
    )


def _parse_migrations(raw: Any, version: str, path: Path) -> dict[str, dict[str, Any]]:
    bad = Invalid(
        f"template pack {path}: param_migrations must map versions to "
        '{"rename": {old: new}, "drop": [key], "defaults": {key: value}}',
        code="invalid_param_migrations",
    )
    if not isinstance(raw, dict):
        raise bad
    out: dict[str, dict[str, Any]] = {}
    for older, rule in raw.items():
        if not isinstance(older, str) or not _VERSION.match(older) or not isinstance(rule, dict):
            raise bad
        if version_key(older) >= version_key(version):
            raise Invalid(
                f"template pack {path}: param_migrations may only name older versions "
                f"({older} is not older than {version})",
                code="invalid_param_migrations",
            )
        rename, drop, defaults = (
            rule.get("rename", {}),
            rule.get("drop", []),
            rule.get("defaults", {}),
        )
        if set(rule) - {"rename", "drop", "defaults"}:
            raise bad
        if not isinstance(rename, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in rename.items()
        ):
            raise bad
        if not isinstance(drop, list) or not all(isinstance(k, str) for k in drop):
            raise bad
        if not isinstance(defaults, dict):
            raise bad
        out[older] = {"rename": rename, "drop": drop, "defaults": defaults}
    return out


def migrate_params(pack: TemplatePack, from_version: str, params: dict[str, Any]) -> dict[str, Any]:
    """A site's params of ``from_version`` as ``pack`` takes them: the pack's declared
    migration for that version (if any) applied, then validated against its schema with
    defaults filled in. ``Invalid`` (naming each bad field) when they cannot be migrated."""
    rule = pack.param_migrations.get(from_version)
    migrated = dict(params)
    if rule is not None:
        for old, new in rule["rename"].items():
            if old in migrated:
                migrated[new] = migrated.pop(old)
        for key in rule["drop"]:
            migrated.pop(key, None)
        for key, value in rule["defaults"].items():
            migrated.setdefault(key, json.loads(json.dumps(value)))
    return validate_params(pack, migrated)


class TemplateCatalog:
    """The packs under a templates directory: those present at start are loaded at once, a
    version published later is loaded the first time it is asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packs: dict[tuple[str, str], TemplatePack] = {}
        # Versions refused because their content no longer matches the published hash.
        self.refused: set[tuple[str, str]] = set()
        # Versions whose load-time hash was checked against the published one (by the API).
        self.published: set[tuple[str, str]] = set()
        for manifest in sorted(root.glob("*/*/manifest.json")):
            pack = load_pack(manifest.parent)
            self.packs[(pack.name, pack.version)] = pack

    def refuse(self, name: str, version: str) -> None:
        self.refused.add((name, version))

    def load_new(self, name: str, version: str) -> TemplatePack | None:
        """Load a version published since the catalog was read; None if there is none."""
        if not _NAME.match(name) or not _VERSION.match(version):
            return None
        path = self.root / name / version
        if (name, version) in self.packs or not (path / "manifest.json").is_file():
            return self.packs.get((name, version))
        pack = load_pack(path)
        self.packs[(name, version)] = pack
        return pack

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.packs})

    def versions(self, name: str) -> list[str]:
        return sorted((v for n, v in self.packs if n == name), key=version_key)

    def get(self, name: str, version: str | None = None) -> TemplatePack:
        if version is None and _NAME.match(name):
            for manifest in self.root.glob(f"{name}/*/manifest.json"):
                self.load_new(name, manifest.parent.name)  # the latest may be new
        elif version is not None:
            self.load_new(name, version)
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"template {name!r} does not exist", code="template_not_found")
        version = version or versions[-1]
        if (name, version) in self.refused:
            raise pack_changed(name, version)
        pack = self.packs.get((name, version))
        if pack is None:
            raise NotFound(
                f"template {name!r} has no version {version!r}",
                code="template_version_not_found",
                details={"versions": versions},
            )
        return pack


def _fill_defaults(schema: dict[str, Any], value: Any) -> Any:
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        for key, sub in schema.get("properties", {}).items():
            if key not in out and "default" in sub:
                out[key] = json.loads(json.dumps(sub["default"]))
            if key in out:
                out[key] = _fill_defaults(sub, out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_fill_defaults(schema["items"], item) for item in value]
    return value


def validate_params(pack: TemplatePack, params: Any) -> dict[str, Any]:
    """Params checked against the pack's schema, with defaults filled in; else ``Invalid``
    whose details name each bad field (``params.sections[0].heading``)."""
    validator = Draft202012Validator(pack.params_schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(e.absolute_path))
    if errors:
        fields = []
        for err in errors[:50]:
            path = "params" + "".join(
                f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
            )
            fields.append({"field": path, "message": err.message[:300]})
        raise Invalid(
            f"params do not match the schema of {pack.name} {pack.version}",
            details={"fields": fields},
        )
    filled: dict[str, Any] = _fill_defaults(pack.params_schema, params)
    return filled
