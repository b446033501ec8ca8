"""Template packs on disk (``templates/<name>/<version>/``): loading, and validating a
site's params against a pack's JSON Schema (defaults filled in)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

from shared.errors import Invalid, NotFound

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

    @property
    def source_dir(self) -> Path:
        return self.path / "src"


def _hash_tree(root: Path) -> str:
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
        content_hash=_hash_tree(path),
    )


class TemplateCatalog:
    """All packs found under a templates directory, loaded once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.packs: dict[tuple[str, str], TemplatePack] = {}
        for manifest in sorted(root.glob("*/*/manifest.json")):
            pack = load_pack(manifest.parent)
            self.packs[(pack.name, pack.version)] = pack

    def names(self) -> list[str]:
        return sorted({name for name, _ in self.packs})

    def versions(self, name: str) -> list[str]:
        return sorted((v for n, v in self.packs if n == name), key=version_key)

    def get(self, name: str, version: str | None = None) -> TemplatePack:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"template {name!r} does not exist", code="template_not_found")
        version = version or versions[-1]
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
