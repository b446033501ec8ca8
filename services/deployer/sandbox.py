"""A template pack's build steps, and running them under bubblewrap.

Manifest format: ``"build"`` is a list (empty or absent: no build) of steps run in order
after the Jinja render, each ``{"run": ["argv0", "arg", ...], "timeout": seconds}``:

- ``run``: a non-empty list of non-empty strings without NUL; ``argv0`` is found on
  ``PATH=/usr/bin:/bin`` inside the sandbox (``sh``, ``python3``, ``awk``, ...).
- ``timeout`` (optional): wall-clock seconds, a positive number; capped by the
  ``build_timeout`` setting, which is also the default.

Anything else (unknown keys included) fails the deployment with ``build_invalid``.

What a step sees: ``/site`` (its working directory) is the rendered output, read-write;
``/src`` is the pack's ``src/``, read-only; ``/usr`` (and the ``/bin``, ``/lib``, ``/lib64``
links into it, ``/etc/alternatives``, ``/etc/ld.so.cache``) read-only; a private ``/proc``,
a minimal ``/dev``, an empty ``/tmp`` (tmpfs of at most ``build_max_file_bytes``); nothing
else of the machine. Environment: only ``PATH``, ``HOME=/tmp``, ``LANG=C.UTF-8``. No
network (its own network namespace holds only a loopback), its own PID, IPC and UTS
namespaces.

The step runs as an unprivileged uid of its own (claimed from ``build_uid_base`` ..
``+build_uid_count`` with a lock file, so concurrent builds never share one), with no
capabilities and ``no_new_privs``. The uid matters: the kernel never applies
RLIMIT_NPROC to root, so a fork bomb is stopped by RLIMIT_NPROC counted for that uid.
Other limits: RLIMIT_AS (memory), RLIMIT_FSIZE (largest file), RLIMIT_CPU, RLIMIT_CORE=0,
the wall-clock timeout, stdout+stderr kept to the last ``build_output_limit`` bytes, and
``/site`` itself watched while the step runs: once it holds more than the release limits
(files or bytes) the step is killed with ``release_too_large``.

bwrap is the leader of a process group of its own and the step is PID 1's child in a PID
namespace: SIGKILL to the group kills bwrap, whose sandbox init dies with it
(``--die-with-parent``), and the kernel then kills everything left in the namespace. After
every step, whatever still runs as the build uid is killed too, and the output goes back
to root ownership. Cancelling the task that runs a step does the same.

Errors (``Permanent`` unless noted): ``build_invalid``, ``build_timeout``,
``build_failed`` (details: ``exit_code``, ``output_tail``), ``build_file_too_large``
(SIGXFSZ), ``build_cpu_exceeded`` (SIGXCPU); ``Transient`` ``sandbox_unavailable`` when
bwrap cannot be started and ``build_slots_busy`` when every build uid is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import os
import signal
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.deployer.output_check import output_exceeds, too_large
from shared.errors import Permanent, Transient

log = logging.getLogger(__name__)

SITE_MOUNT = "/site"
SRC_MOUNT = "/src"
STEP_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8"}  # noqa: S108
_STEP_KEYS = {"run", "timeout"}


@dataclass(frozen=True)
class BuildStep:
    argv: tuple[str, ...]
    timeout: float | None = None


@dataclass(frozen=True)
class SandboxLimits:
    timeout: float = 60  # wall-clock seconds per step (the most a manifest may ask)
    memory_bytes: int = 1024 * 1024 * 1024  # RLIMIT_AS
    max_processes: int = 64  # RLIMIT_NPROC of the build uid
    max_file_bytes: int = 200 * 1024 * 1024  # RLIMIT_FSIZE
    cpu_seconds: int = 60  # RLIMIT_CPU (soft; SIGKILL one second later)
    output_limit: int = 64 * 1024  # bytes of stdout+stderr kept (the tail)
    # The step's site may not grow past the release limits, checked every `watch_interval`
    # seconds while it runs (RLIMIT_FSIZE bounds one file, not how many it writes).
    max_site_files: int = 10_000
    max_site_bytes: int = 200 * 1024 * 1024
    watch_interval: float = 0.5


@dataclass(frozen=True)
class StepResult:
    exit_code: int
    output: bytes  # the last ``output_limit`` bytes of stdout+stderr
    dropped: int  # bytes of output not kept


def parse_build_steps(raw: Any) -> list[BuildStep]:
    """The steps of a manifest's ``build`` value, or ``Permanent(build_invalid)``."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _invalid("build must be a list of steps")
    steps = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or set(item) - _STEP_KEYS or "run" not in item:
            raise _invalid(f"build[{n}] must be an object with 'run' and optional 'timeout'")
        argv = item["run"]
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) and "\0" not in a for a in argv)
            or not argv[0]
        ):
            raise _invalid(f"build[{n}].run must be a non-empty list of strings without NUL")
        timeout = item.get("timeout")
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise _invalid(f"build[{n}].timeout must be a positive number of seconds")
        steps.append(BuildStep(argv=tuple(argv), timeout=timeout))
    return steps


def _invalid(message: str) -> Permanent:
    return Permanent(f"invalid build steps: {message}", code="build_invalid")


class BuildSandbox:
    """Runs commands under bubblewrap with ``/site`` and ``/src`` mounted (see module doc)."""

    def __init__(
        self,
        *,
        limits: SandboxLimits,
        uid_base: int,
        uid_count: int,
        lock_dir: Path,
        bwrap: Path = Path("/usr/bin/bwrap"),
    ) -> None:
        if uid_base <= 0 or uid_count <= 0:
            raise ValueError("build uids must be unprivileged (> 0)")
        self.limits = limits
        self.uids = range(uid_base, uid_base + uid_count)
        self.lock_dir = lock_dir
        self.bwrap = bwrap

    async def run_steps(self, steps: Sequence[BuildStep], *, site_dir: Path, src_dir: Path) -> None:
        """Run every step in order; the first that does not exit 0 fails the build."""
        for n, step in enumerate(steps):
            timeout = min(step.timeout or self.limits.timeout, self.limits.timeout)
            result = await self.run(
                step.argv, site_dir=site_dir, src_dir=src_dir, time_limit=timeout
            )
            if result.exit_code != 0:
                raise _step_failed(n, step, result)

    async def run(
        self, argv: Sequence[str], *, site_dir: Path, src_dir: Path, time_limit: float
    ) -> StepResult:
        """Run one command; ``Permanent(build_timeout)`` when it outlives ``time_limit`` s.

        On return, on any error and on cancellation, nothing the command started is left
        running, and ``site_dir`` is owned by root again.
        """
        with _claim_uid(self.lock_dir, self.uids) as uid:
            await asyncio.to_thread(_kill_uid, uid)  # nothing from an earlier holder survives
            await asyncio.to_thread(_chown_tree, site_dir, uid)
            try:
                return await self._run_as(uid, argv, site_dir, src_dir, time_limit)
            finally:
                await asyncio.to_thread(_kill_uid, uid)
                await asyncio.to_thread(_chown_tree, site_dir, 0)

    async def _run_as(
        self, uid: int, argv: Sequence[str], site_dir: Path, src_dir: Path, time_limit: float
    ) -> StepResult:
        output = _Tail(self.limits.output_limit)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(uid, argv, site_dir=site_dir, src_dir=src_dir),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # bwrap leads a process group we can kill whole
                env={"PATH": STEP_ENV["PATH"]},
            )
        except OSError as exc:
            raise Transient(
                f"cannot start the build sandbox ({self.bwrap}): {exc}", code="sandbox_unavailable"
            ) from exc
        watchdog = asyncio.create_task(self._watch_site(site_dir, proc))
        try:
            async with asyncio.timeout(time_limit):
                assert proc.stdout is not None
                while chunk := await proc.stdout.read(65536):
                    output.feed(chunk)
                exit_code = await proc.wait()
            # The watchdog returns right after its kill: done by the time the death is seen.
            if watchdog.done() and watchdog.result():
                raise too_large(self.limits.max_site_files, self.limits.max_site_bytes)
        except TimeoutError:
            raise Permanent(
                f"build step {argv[0]!r} ran longer than {time_limit:g} s and was killed",
                code="build_timeout",
                details={"output_tail": output.text()},
            ) from None
        finally:
            watchdog.cancel()
            if proc.returncode is None:
                # Sent before any await: even a second cancellation cannot skip the kill.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        return StepResult(exit_code=exit_code, output=bytes(output.buf), dropped=output.dropped)

    async def _watch_site(self, site_dir: Path, proc: asyncio.subprocess.Process) -> bool:
        """Kill the step (and return True) once its site passes the release limits."""
        lim = self.limits
        while True:
            await asyncio.sleep(lim.watch_interval)
            if await asyncio.to_thread(
                output_exceeds, site_dir, max_files=lim.max_site_files, max_bytes=lim.max_site_bytes
            ):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return True

    def command(self, uid: int, argv: Sequence[str], *, site_dir: Path, src_dir: Path) -> list[str]:
        """The full command line: bwrap, then rlimits, then the drop to ``uid``."""
        lim = self.limits
        sandbox = [
            str(self.bwrap),
            # No --unshare-all: as root that adds a user namespace mapping only uid 0, and
            # the step could then not become `uid`.
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent", "--new-session",
            "--hostname", "sitefleet-build",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/bin", "/bin",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--ro-bind-try", "/etc/alternatives", "/etc/alternatives",
            "--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache",
            "--proc", "/proc",
            "--dev", "/dev",
            # A sticky world-writable /tmp, in memory: at most one file's worth of it.
            "--perms", "1777", "--size", str(lim.max_file_bytes), "--tmpfs", "/tmp",  # noqa: S108
            "--ro-bind", str(src_dir), SRC_MOUNT,
            "--bind", str(site_dir), SITE_MOUNT,
            "--chdir", SITE_MOUNT,
            "--clearenv",
        ]  # fmt: skip
        for name, value in STEP_ENV.items():
            sandbox += ["--setenv", name, value]
        limits = [
            "/usr/bin/prlimit",
            f"--as={lim.memory_bytes}",
            f"--nproc={lim.max_processes}",
            f"--fsize={lim.max_file_bytes}",
            f"--cpu={lim.cpu_seconds}:{lim.cpu_seconds + 1}",
            "--core=0",
            "--",
        ]
        drop = [
            "/usr/bin/setpriv",
            f"--reuid={uid}",
            f"--regid={uid}",
            "--clear-groups",
            "--no-new-privs",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ]
        return [*sandbox, "--", *limits, *drop, *argv]


def _step_failed(n: int, step: BuildStep, result: StepResult) -> Permanent:
    output_tail = _decode(result.output[-4096:])
    details: dict[str, object] = {"exit_code": result.exit_code, "output_tail": output_tail}
    # bwrap exits 128+N when the step died of signal N.
    if result.exit_code == 128 + signal.SIGXFSZ:
        return Permanent(
            f"build step {n} ({step.argv[0]}) wrote a file over the size limit",
            code="build_file_too_large",
            details=details,
        )
    if result.exit_code == 128 + signal.SIGXCPU:
        return Permanent(
            f"build step {n} ({step.argv[0]}) used up its CPU time",
            code="build_cpu_exceeded",
            details=details,
        )
    tail = output_tail[-500:].strip()
    return Permanent(
        f"build step {n} ({step.argv[0]}) exited with status {result.exit_code}"
        + (f"; output ends with: {tail}" if tail else ""),
        code="build_failed",
        details=details,
    )


class _Tail:
    """The last ``limit`` bytes of a stream, however long it runs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()
        self.dropped = 0

    def feed(self, chunk: bytes) -> None:
        self.buf += chunk
        excess = len(self.buf) - self.limit
        if excess > 0:
            del self.buf[:excess]
            self.dropped += excess

    def text(self) -> str:
        return _decode(bytes(self.buf[-4096:]))


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@contextlib.contextmanager
def _claim_uid(lock_dir: Path, uids: range) -> Iterator[int]:
    """Hold one build uid for the duration (an flock: released even if the process dies)."""
    lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for uid in uids:
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise Transient(
        f"all {len(uids)} build uids are in use; try again later", code="build_slots_busy"
    )


def _uid_pids(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            found.append(int(entry.name))
    return found


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` until none is left (forks race the scan: repeat)."""
    for _ in range(1000):
        pids = _uid_pids(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)  # let the killed exit before the next scan
    log.error("processes of build uid %d survive SIGKILL", uid)


def _chown_tree(root: Path, uid: int) -> None:
    """Give the tree to ``uid`` (and its group) without following any symlink."""
    os.lchown(root, uid, uid)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
