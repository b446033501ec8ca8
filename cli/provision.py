"""`sitefleet host bootstrap`: prepares a fresh Debian/Ubuntu web host over SSH and
registers it — nginx and python3 installed (only if missing), an unprivileged deploy user
with /bin/sh and the deployer's key, the sites root, object store and ACME challenge
directory owned by that user, ``<sites_root>/.tls`` owned by it with nginx's workers' group
(2750: the deployer writes keys 0640 that only it and nginx's workers read), the catch-all
nginx config with its TLS listener (infra/nginx/sitefleet-host.conf.template) checked with
``nginx -t`` before it stays, then a probe page fetched through nginx with a Host header,
and the host added as ``sitefleet host add`` does, logging in as the deploy user.

Every step looks before it acts, so a second run changes nothing and says so. Nothing
reaches the remote shell unquoted: commands are argv lists joined with ``shlex.join``;
the steps that need a shell run fixed scripts (``sh -c SCRIPT sh ARG...``) whose arguments
were validated here, and file contents and keys travel on stdin.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from string import Template

import asyncssh
import httpx
from sqlalchemy import select

from cli.devstack.nginx import tls_values
from cli.hosts import connect_pinned, try_login
from services.deployer import hosts
from services.deployer.layout import ACME_CHALLENGES, OBJECTS, RULES, TLS
from services.deployer.settings import DeployerSettings
from shared.db import create_engine, create_sessionmaker
from shared.errors import Conflict, Invalid, Permanent, Transient
from shared.models import WebHost
from shared.settings import PROJECT_ROOT

TEMPLATE = PROJECT_ROOT / "infra" / "nginx" / "sitefleet-host.conf.template"
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
LISTEN = re.compile(r"^(?:(?:[0-9.]+|\[[0-9a-fA-F:]+\]):)?\d{1,5}$")
SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*$")
# A name no site can have (.invalid is no public suffix): the probe page's host.
PROBE_DOMAIN = "sitefleet-bootstrap-check.invalid"
STEPS = (
    "connect",
    "packages",
    "deploy user",
    "deployer key",
    "directories",
    "nginx config",
    "nginx reload",
    "check",
    "register",
)


class ConfigTemplate(Template):
    """``@{name}`` placeholders: nginx's own ``$variables`` pass through untouched."""

    delimiter = "@"


@dataclass(frozen=True)
class Plan:
    """What to make of the host. The defaults are a production host's; tests move every
    path into a temp dir and point ``nginx_command`` at their own nginx."""

    admin: hosts.SshSpec  # root, or an account that may `sudo -n`
    admin_key: Path
    deploy_key: Path  # the deployer's private key; its public half is authorized
    name: str
    http: tuple[str, int]  # where the host's nginx answers (the check, health checks)
    public_addresses: list[str]
    deploy_user: str = "sitefleet"
    deploy_home: str | None = None  # None: /home/<deploy_user>
    sites_root: str = "/srv/sitefleet/sites"
    objects_root: str | None = None  # None: <sites_root>/.objects
    listen: str = "80"
    # The TLS listener (certificates per name in <sites_root>/.tls, no reload for new ones)
    # and the HSTS max-age its answers carry (0: none).
    https_listen: str = "443"
    hsts_max_age: int = 0
    # The group nginx's workers run as (Debian: www-data): it may read <sites_root>/.tls.
    nginx_group: str = "www-data"
    nginx_conf: str = "/etc/nginx/conf.d/sitefleet.conf"
    # Debian's stock site also claims `default_server` on port 80: it is disabled (a
    # symlink, removed; its target stays in sites-available).
    nginx_default_site: str = "/etc/nginx/sites-enabled/default"
    nginx_command: tuple[str, ...] = ("nginx",)
    packages: tuple[str, ...] = ("nginx", "python3")
    # How the deployer, as the deploy user, runs nginx for per-site rule profiles
    # (services/deployer/nginx_rules.py), e.g. ("sudo", "-n", "/usr/sbin/nginx") with a
    # sudoers rule for `-t -q` and `-s reload`; None: the host serves plain sites only. The
    # catch-all config includes <sites_root>/.nginx/*.conf either way.
    rules_nginx_command: tuple[str, ...] | None = None

    @property
    def home(self) -> str:
        return self.deploy_home or f"/home/{self.deploy_user}"

    @property
    def objects(self) -> str:
        return self.objects_root or f"{self.sites_root}/{OBJECTS}"

    def validate(self) -> None:
        if not USER_NAME.match(self.deploy_user) or self.deploy_user == "root":
            raise Invalid(f"deploy user {self.deploy_user!r} is not an unprivileged user name")
        if not hosts.HOST_NAME.match(self.name):
            raise Invalid(f"host name {self.name!r} must be lower-case letters, digits and -")
        if not LISTEN.match(self.listen):
            raise Invalid(f"--listen {self.listen!r} is not a port or address:port")
        if not LISTEN.match(self.https_listen) or not 0 < self.https_port < 65536:
            raise Invalid(f"--https-listen {self.https_listen!r} is not a port or address:port")
        if not USER_NAME.match(self.nginx_group):
            raise Invalid(f"--nginx-group {self.nginx_group!r} is not a group name")
        if self.hsts_max_age < 0:
            raise Invalid("the HSTS max-age must be 0 (off) or more seconds")
        if not self.nginx_command:
            raise Invalid("the nginx command is empty")
        paths = [self.home, self.sites_root, self.objects, self.nginx_conf, self.nginx_default_site]
        for path in paths:
            if not SAFE_PATH.match(path) or ".." in PurePosixPath(path).parts:
                raise Invalid(f"{path!r} is not a plain absolute path", code="invalid_path")
        for package in self.packages:
            if not re.match(r"^[a-z0-9][a-z0-9+.-]+$", package):
                raise Invalid(f"{package!r} is not a Debian package name")

    @property
    def https_port(self) -> int:
        return int(self.https_listen.rsplit(":", 1)[-1])

    def nginx_config(self, *, http2: bool) -> str:
        include = f"include {self.sites_root}/{RULES}/*.conf;"
        return ConfigTemplate(TEMPLATE.read_text()).substitute(
            listen=self.listen,
            sites_root=self.sites_root,
            rule_profiles=include,
            **tls_values(
                tls_listen=self.https_listen,
                https_port=self.https_port,
                hsts_max_age=self.hsts_max_age,
                http2=http2,
            ),
        )


@dataclass
class StepResult:
    step: str
    changed: bool
    detail: str


@dataclass
class Outcome:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def changed(self) -> list[StepResult]:
        return [s for s in self.steps if s.changed]


class Remote:
    """Commands on the host: argv lists, quoted; through ``sudo -n`` unless we are root."""

    def __init__(self, conn: asyncssh.SSHClientConnection, *, sudo: bool, timeout: float):
        self.conn = conn
        self.sudo = sudo
        self.timeout = timeout

    async def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        check: bool = True,
        what: str | None = None,
    ) -> asyncssh.SSHCompletedProcess:
        what = what or shlex.join(list(argv))[:200]
        full = ["sudo", "-n", "--", *argv] if self.sudo else list(argv)
        try:
            result = await asyncio.wait_for(
                self.conn.run(shlex.join(full), input=stdin, check=False), self.timeout
            )
        except (OSError, asyncssh.Error, TimeoutError) as exc:
            raise Transient(f"{what} on the host failed: {type(exc).__name__}: {exc}") from exc
        if check and result.exit_status != 0:
            raise Permanent(
                f"{what} failed on the host "
                f"(exit {result.exit_status}): {_text(result.stderr) or _text(result.stdout)}",
                code="bootstrap_step_failed",
            )
        return result

    async def script(
        self, what: str, script: str, *args: str, stdin: str | None = None
    ) -> asyncssh.SSHCompletedProcess:
        """A fixed script with positional arguments (never formatted into its text)."""
        return await self.run(["sh", "-c", script, "sh", *args], stdin=stdin, what=what)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return str(value or "").strip()


AUTHORIZE_KEY = r"""set -eu
user=$1 home=$2
key=$(cat)
file="$home/.ssh/authorized_keys"
if [ -f "$file" ] && grep -qxF -- "$key" "$file"; then echo unchanged; exit 0; fi
mkdir -p -- "$home/.ssh"
printf '%s\n' "$key" >> "$file"
chown -- "$user:" "$home/.ssh" "$file"
chmod 700 "$home/.ssh"
chmod 600 "$file"
echo changed
"""

MAKE_DIRS = r"""set -eu
user=$1; shift
for d in "$@"; do
  if [ -d "$d" ] && [ ! -L "$d" ] && [ "$(stat -c '%U %a' -- "$d")" = "$user 755" ]; then
    continue
  fi
  mkdir -p -- "$d"
  chown -- "$user:" "$d"
  chmod 755 -- "$d"
  echo "$d"
done
"""

# <sites_root>/.tls: the deploy user writes, nginx's workers' group reads (set-group-id, so
# every key file gets that group). Args: user, group, dir.
MAKE_TLS_DIR = r"""set -eu
user=$1 group=$2 d=$3
if [ -d "$d" ] && [ ! -L "$d" ] && [ "$(stat -c '%U %G %a' -- "$d")" = "$user $group 2750" ]; then
  exit 0
fi
mkdir -p -- "$d"
chown -- "$user:$group" "$d"
chmod 2750 -- "$d"
echo "$d"
"""

# Replaces the config only if it differs, and keeps it only if `nginx -t` accepts it (the
# old config and the default site come back otherwise). Args: conf, default site, nginx argv.
INSTALL_CONFIG = r"""set -eu
conf=$1 default_site=$2; shift 2
new="$conf.sitefleet-new"
mkdir -p -- "$(dirname -- "$conf")"
cat > "$new"
chmod 644 "$new"
if [ -f "$conf" ] && cmp -s "$new" "$conf" && [ ! -e "$default_site" ] && [ ! -L "$default_site" ]
then
  rm -f -- "$new"; echo unchanged; exit 0
fi
default_target=""
if [ -L "$default_site" ]; then
  default_target=$(readlink -- "$default_site"); rm -f -- "$default_site"
elif [ -e "$default_site" ]; then
  rm -f -- "$new"; echo "$default_site is not a symlink: disable that site by hand" >&2; exit 3
fi
had_old=0
if [ -f "$conf" ]; then cp -p -- "$conf" "$conf.sitefleet-old"; had_old=1; fi
mv -f -- "$new" "$conf"
if ! out=$("$@" -t 2>&1); then
  if [ "$had_old" = 1 ]; then mv -f -- "$conf.sitefleet-old" "$conf"; else rm -f -- "$conf"; fi
  if [ -n "$default_target" ]; then ln -s -- "$default_target" "$default_site"; fi
  printf '%s\n' "$out" >&2; exit 4
fi
rm -f -- "$conf.sitefleet-old"
echo changed
"""

# Reload a running nginx, or start it (a fresh install in a container may not run it).
RELOAD = r"""set -eu
"$@" -s reload 2>/dev/null || "$@"
"""

WRITE_PROBE = r"""set -eu
dir="$1/$2"
mkdir -p -- "$dir/current"
cat > "$dir/current/index.html"
chmod 755 -- "$dir" "$dir/current"
chmod 644 -- "$dir/current/index.html"
"""

REMOVE_PROBE = r"""set -eu
rm -rf -- "$1/$2"
"""


async def bootstrap(
    plan: Plan, settings: DeployerSettings, on_step: Callable[[StepResult], None]
) -> Outcome:
    plan.validate()
    for key in (plan.admin_key, plan.deploy_key):
        if not os.path.isabs(key) or not key.is_file():
            raise Invalid(f"no key file at {key} (give an absolute path)", code="invalid_path")
    public_key = _public_key(plan.deploy_key)
    outcome = Outcome()

    def done(step: str, changed: bool, detail: str) -> None:
        result = StepResult(step, changed, detail)
        outcome.steps.append(result)
        on_step(result)

    host_key = await hosts.fetch_host_key(
        plan.admin.address, plan.admin.port, connect_timeout=settings.ssh_connect_timeout
    )
    pinned = await _pinned_host_key(plan, settings)
    if pinned is not None and pinned != host_key:
        raise Conflict(
            f"the host key of {plan.name!r} is not the one pinned at registration",
            code="host_key_changed",
        )
    conn = await connect_pinned(plan.admin, plan.admin_key, host_key, settings.ssh_connect_timeout)
    async with conn:
        remote = Remote(conn, sudo=plan.admin.user != "root", timeout=600)
        fingerprint = asyncssh.import_public_key(host_key).get_fingerprint()
        login = f"{plan.admin.user}@{plan.admin.address}:{plan.admin.port}"
        done("connect", False, f"{login}, host key {fingerprint}")
        done("packages", *await _packages(remote, plan))
        done("deploy user", *await _deploy_user(remote, plan))
        authorized = await remote.script(
            "authorizing the deployer key",
            AUTHORIZE_KEY,
            plan.deploy_user,
            plan.home,
            stdin=public_key,
        )
        changed = _text(authorized.stdout) == "changed"
        label = asyncssh.import_public_key(public_key).get_fingerprint()
        done(
            "deployer key", changed, ("authorized " if changed else "already authorized: ") + label
        )
        challenges = f"{plan.sites_root}/{ACME_CHALLENGES}"
        made = await remote.script(
            "making the directories",
            MAKE_DIRS,
            plan.deploy_user,
            plan.sites_root,
            plan.objects,
            challenges,
        )
        tls = await remote.script(
            "making the certificates directory",
            MAKE_TLS_DIR,
            plan.deploy_user,
            plan.nginx_group,
            f"{plan.sites_root}/{TLS}",
        )
        dirs = _text(made.stdout).split() + _text(tls.stdout).split()
        done(
            "directories",
            bool(dirs),
            f"made {', '.join(dirs)}"
            if dirs
            else f"{plan.sites_root} (with {ACME_CHALLENGES}, {TLS}) and {plan.objects} in place",
        )
        version = await remote.run([*plan.nginx_command, "-V"], check=False)
        http2 = "--with-http_v2_module" in _text(version.stderr) + _text(version.stdout)
        installed = await remote.script(
            "installing the nginx config",
            INSTALL_CONFIG,
            plan.nginx_conf,
            plan.nginx_default_site,
            *plan.nginx_command,
            stdin=plan.nginx_config(http2=http2),
        )
        config_changed = _text(installed.stdout) == "changed"
        done(
            "nginx config",
            config_changed,
            f"wrote {plan.nginx_conf} (nginx -t passed)"
            if config_changed
            else f"{plan.nginx_conf} up to date",
        )
        if config_changed:
            await remote.script("reloading nginx", RELOAD, *plan.nginx_command)
        done("nginx reload", config_changed, "reloaded" if config_changed else "not needed")
        await remote.run([*plan.nginx_command, "-t"])
        done("check", False, await _probe(remote, plan))
    done("register", *await _register(plan, settings))
    return outcome


async def _pinned_host_key(plan: Plan, settings: DeployerSettings) -> str | None:
    """The key pinned when this host was registered (a re-run trusts no other)."""
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine)() as session:
            return await session.scalar(
                select(WebHost.host_key).where(
                    WebHost.name == plan.name, WebHost.ssh_address == plan.admin.address
                )
            )
    finally:
        await engine.dispose()


def _public_key(private: Path) -> str:
    try:
        key = asyncssh.read_private_key(private)
    except (OSError, asyncssh.KeyImportError) as exc:
        raise Invalid(f"cannot read the private key {private}: {exc}") from exc
    # "<type> <base64>": no comment, so nothing of the key file's text reaches the host.
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


async def _packages(remote: Remote, plan: Plan) -> tuple[bool, str]:
    query = await remote.run(
        ["dpkg-query", "-W", "-f=${Package} ${Status}\\n", *plan.packages], check=False
    )
    installed = {
        line.split()[0]
        for line in _text(query.stdout).splitlines()
        if line.endswith(" install ok installed")
    }
    missing = [p for p in plan.packages if p not in installed]
    if not missing:
        return False, f"{', '.join(plan.packages)} already installed"
    await remote.run(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "update", "-q"])
    await remote.run(
        [
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "apt-get",
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            *missing,
        ]
    )
    return True, f"installed {', '.join(missing)}"


async def _deploy_user(remote: Remote, plan: Plan) -> tuple[bool, str]:
    found = await remote.run(["getent", "passwd", plan.deploy_user], check=False)
    if found.exit_status == 0:
        fields = _text(found.stdout).split(":")
        if fields[2] == "0":
            raise Invalid(f"user {plan.deploy_user!r} has uid 0: not an unprivileged user")
        if fields[5] != plan.home:
            raise Conflict(
                f"user {plan.deploy_user!r} exists with home {fields[5]}, not {plan.home}",
                code="deploy_user_differs",
            )
        if fields[6] == "/bin/sh":
            return False, f"{plan.deploy_user} exists (uid {fields[2]}, /bin/sh)"
        await remote.run(["usermod", "--shell", "/bin/sh", plan.deploy_user])
        return True, f"{plan.deploy_user}: shell set to /bin/sh"
    await remote.run(
        [
            "useradd",
            "--create-home",
            "--home-dir",
            plan.home,
            "--shell",
            "/bin/sh",
            "--user-group",
            "--comment",
            "Sitefleet deployer",
            # '*': no password, but not a locked account (sshd without PAM refuses those
            # even with a valid key).
            "--password",
            "*",
            plan.deploy_user,
        ]
    )
    return True, f"created {plan.deploy_user} (home {plan.home}, /bin/sh)"


async def _probe(remote: Remote, plan: Plan) -> str:
    """A page only this run knows, served by the catch-all server for its Host header."""
    token = secrets.token_hex(16)
    await remote.script(
        "writing the probe page",
        WRITE_PROBE,
        plan.sites_root,
        PROBE_DOMAIN,
        stdin=f"sitefleet {token}\n",
    )
    address, port = plan.http
    url = f"http://{'[' + address + ']' if ':' in address else address}:{port}/"
    last = ""
    try:
        async with httpx.AsyncClient(timeout=5, trust_env=False) as http:
            for _ in range(50):  # a reload takes a moment to reach the workers
                try:
                    page = await http.get(url, headers={"Host": PROBE_DOMAIN})
                    if page.status_code == 200 and token in page.text:
                        return f"nginx -t passed; {url} served the probe page for its Host header"
                    last = f"HTTP {page.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.2)
    finally:
        await remote.script("removing the probe page", REMOVE_PROBE, plan.sites_root, PROBE_DOMAIN)
    raise Permanent(
        f"nginx at {url} did not serve the probe page (Host: {PROBE_DOMAIN}): {last}",
        code="bootstrap_check_failed",
    )


async def _register(plan: Plan, settings: DeployerSettings) -> tuple[bool, str]:
    deploy = hosts.SshSpec(plan.deploy_user, plan.admin.address, plan.admin.port)
    host_key = await hosts.fetch_host_key(
        deploy.address, deploy.port, connect_timeout=settings.ssh_connect_timeout
    )
    await try_login(deploy, plan.deploy_key, host_key, settings.ssh_connect_timeout)
    engine = create_engine(settings.database_url, application_name="sitefleet-cli", pool_size=1)
    try:
        async with create_sessionmaker(engine).begin() as session:
            row = await session.scalar(select(WebHost).where(WebHost.name == plan.name))
            if row is not None:
                same = (
                    row.kind == "ssh"
                    and (row.ssh_user, row.ssh_address, row.ssh_port)
                    == (deploy.user, deploy.address, deploy.port)
                    and row.sites_root == plan.sites_root
                    and (row.objects_root or f"{row.sites_root}/{OBJECTS}") == plan.objects
                )
                if not same:
                    raise Conflict(
                        f"web host {plan.name!r} is registered with other settings; "
                        "pick another --name or `sitefleet host remove` it first",
                        code="host_exists",
                    )
                if row.host_key != host_key:
                    raise Conflict(
                        f"the host key of {plan.name!r} is not the one pinned at registration",
                        code="host_key_changed",
                    )
                if (row.nginx_listen, row.https_port) != (plan.listen, plan.https_port):
                    # The config just installed listens there now (e.g. a host registered
                    # before HTTPS, bootstrapped again): the deployer must check it there.
                    row.nginx_listen, row.https_port = plan.listen, plan.https_port
                    return True, (
                        f"{plan.name} now listens on {plan.listen}, TLS on port {plan.https_port}"
                    )
                return False, f"{plan.name} already registered as {deploy.user}@{deploy.address}"
            await hosts.add_host(
                session,
                plan.name,
                ssh=deploy,
                key_path=plan.deploy_key,
                host_key=host_key,
                sites_root=plan.sites_root,
                objects_root=plan.objects_root,
                http=plan.http,
                public_addresses=plan.public_addresses,
                nginx_command=plan.rules_nginx_command,
                nginx_listen=plan.listen,
                https_port=plan.https_port,
            )
    finally:
        await engine.dispose()
    return (
        True,
        f"added {plan.name} ({deploy.user}@{deploy.address}:{deploy.port}), host key pinned",
    )


def default_name(address: str) -> str:
    """A host name from an address: 203.0.113.5 -> 203-0-113-5."""
    name = re.sub(r"[^a-z0-9-]+", "-", address.lower()).strip("-")[:63]
    return name or "web"
