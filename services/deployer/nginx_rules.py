"""A web host's per-site nginx rules, host side: the files ``<sites_root>/.nginx/<domain>.conf``
that the catch-all config includes, each changed only if ``nginx -t`` accepts the result,
and nginx reloaded to load them. Stdlib only: imported by ``LocalHost`` and shipped with the
SSH host agent, so both sides change the same files the same way.

A plain site has no rules file (the catch-all server serves it, nothing to reload). A site
whose template names a rule profile other than ``static`` gets one server block, rendered
by the deployer (``nginx.py``) from a platform profile; customer input never reaches it
except the normalized domain.

Every change holds an exclusive lock on ``.nginx/.lock`` from writing the file to the
verdict of ``nginx -t``, so a refused file is never seen by another site's test or reload:
a bad config is put back as it was and never affects other sites.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from services.deployer.layout import RULES, make_dirs

_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")
FILE_MODE = 0o644
# Seconds `nginx -t` or `nginx -s reload` may take.
COMMAND_TIMEOUT = 60
# Bytes of nginx's complaint kept for the error message.
COMPLAINT_LIMIT = 2000


class RulesRefused(Exception):
    """``nginx -t`` refused the config with the new rules; the old ones are back."""


def rules_path(sites_root: Path, domain: str) -> Path:
    if not _DOMAIN.match(domain):
        raise ValueError(f"domain {domain!r} is not a plain host name")
    return sites_root / RULES / f"{domain}.conf"


def read_rules(sites_root: Path, domain: str) -> str | None:
    try:
        return rules_path(sites_root, domain).read_text()
    except FileNotFoundError:
        return None


def write_rules(
    sites_root: Path, domain: str, text: str | None, nginx_command: Sequence[str]
) -> tuple[bool, str | None]:
    """Make ``domain``'s rules ``text`` (None: no rules file), tested with ``nginx -t``.

    Returns (changed, the previous rules); nothing is written (and nginx
    not run) when the rules are already ``text``. Raises ``RulesRefused`` with nginx's
    complaint if the test fails, after putting the previous rules back."""
    path = rules_path(sites_root, domain)
    with _locked(sites_root):
        previous = read_rules(sites_root, domain)
        if previous == text:
            return False, previous
        _replace(path, text)
        try:
            _run(nginx_command, "-t", "-q")
        except BaseException:  # refused, or nginx could not even be run
            _replace(path, previous)
            raise
    return True, previous


def replace_rules(
    sites_root: Path, wanted: Mapping[str, str | None], nginx_command: Sequence[str] | None
) -> list[str]:
    """Make each domain's rules ``wanted[domain]`` (None: no file) in one step, for a
    restore: every file is written under the lock, then one ``nginx -t`` judges them all;
    if it refuses, every file is put back and ``RulesRefused`` raised. Returns the domains
    whose file changed. Without an nginx command the files are written untested (nginx
    loads them at its next start or reload)."""
    changed: dict[str, str | None] = {}
    with _locked(sites_root):
        for domain, text in wanted.items():
            previous = read_rules(sites_root, domain)
            if previous != text:
                changed[domain] = previous
        try:
            for domain in changed:
                _replace(rules_path(sites_root, domain), wanted[domain])
            if changed and nginx_command:
                _run(nginx_command, "-t", "-q")
        except BaseException:
            for domain, previous in changed.items():
                _replace(rules_path(sites_root, domain), previous)
            raise
    return sorted(changed)


def reload_nginx(sites_root: Path, nginx_command: Sequence[str]) -> None:
    """Tell nginx to load its config (the rules files as they are now); the old workers
    finish their requests. Under the lock: never in the middle of another site's test."""
    with _locked(sites_root):
        _run(nginx_command, "-s", "reload")


def _replace(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.chmod(tmp, FILE_MODE)
    os.rename(tmp, path)


def _run(nginx_command: Sequence[str], *args: str) -> None:
    if not nginx_command:
        raise ValueError("no nginx command is configured for this web host")
    try:
        done = subprocess.run(
            [*nginx_command, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise OSError(f"{nginx_command[0]} {' '.join(args)} took over {exc.timeout} s") from exc
    if done.returncode != 0:
        complaint = (done.stderr or done.stdout).strip()[-COMPLAINT_LIMIT:]
        if args[0] == "-t":
            raise RulesRefused(f"nginx -t refused the config: {complaint}")
        raise OSError(f"nginx {' '.join(args)} failed ({done.returncode}): {complaint}")


@contextmanager
def _locked(sites_root: Path) -> Iterator[None]:
    rules_dir = sites_root / RULES
    make_dirs(rules_dir)
    fd = os.open(rules_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
