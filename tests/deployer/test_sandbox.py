"""Build steps under the real bubblewrap: what a hostile step can and cannot do."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from services.deployer.build import build_sandbox
from services.deployer.output_check import check_output
from services.deployer.sandbox import BuildSandbox, BuildStep, StepResult, parse_build_steps
from services.deployer.settings import DeployerSettings
from shared.errors import Permanent, Transient

MAX_PROCESSES = 16
MAX_FILE_BYTES = 1024 * 1024
OUTPUT_LIMIT = 4096
MAX_SITE_FILES = 300
MAX_SITE_BYTES = 4 * 1024 * 1024


@pytest.fixture
def sandbox() -> BuildSandbox:
    # The real wiring from settings, with limits small enough for a fast test.
    return build_sandbox(
        DeployerSettings(
            build_timeout=10,
            build_memory_bytes=256 * 1024 * 1024,
            build_max_processes=MAX_PROCESSES,
            build_max_file_bytes=MAX_FILE_BYTES,
            build_cpu_seconds=5,
            build_output_limit=OUTPUT_LIMIT,
            max_release_files=MAX_SITE_FILES,
            max_release_bytes=MAX_SITE_BYTES,
            build_watch_interval=0.05,
        )
    )


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>rendered</h1>\n")
    return site


@pytest.fixture
def src(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "pages.txt").write_text("home\nabout\n")
    return src


async def run(
    sandbox: BuildSandbox, site: Path, src: Path, *argv: str, time_limit: float = 10
) -> StepResult:
    return await sandbox.run(argv, site_dir=site, src_dir=src, time_limit=time_limit)


def processes_with(marker: str) -> list[int]:
    """Pids (of this machine, any namespace) whose command line contains ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                cmdline = Path(entry.path, "cmdline").read_bytes()
                state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker.encode() in cmdline and state != "Z":
                found.append(int(entry.name))
    return found


async def wait_for(predicate: Any, what: str) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def sleep_marker() -> str:
    """A `sleep` argument unique to this test, findable in /proc (sleep 1000.<digits>)."""
    return f"1000.{uuid.uuid4().int % 10**12:012d}"


# --- what a step can do --------------------------------------------------------------------


async def test_a_step_builds_pages_from_the_pack_sources(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    script = (
        "import pathlib\n"
        "for name in pathlib.Path('/src/pages.txt').read_text().split():\n"
        "    pathlib.Path(name + '.html').write_text(f'<p>{name}</p>')\n"
        "print('built', sorted(p.name for p in pathlib.Path('.').iterdir()))\n"
    )
    result = await run(sandbox, site, src, "python3", "-c", script)

    assert result.exit_code == 0, result.output
    assert b"built ['about.html', 'home.html', 'index.html']" in result.output
    assert (site / "about.html").read_text() == "<p>about</p>"
    # The step ran as its own uid; the output is root's again afterwards.
    for path in [site, *site.iterdir()]:
        assert (path.stat().st_uid, path.stat().st_gid) == (0, 0), path


async def test_a_step_sees_a_clean_environment_and_no_privileges(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    result = await run(
        sandbox, site, src, "sh", "-c", "id -u; env | sort; grep CapEff /proc/self/status; ls /"
    )

    lines = result.output.decode().splitlines()
    assert int(lines[0]) >= sandbox.uids.start
    assert "HOME=/tmp" in lines and "PATH=/usr/bin:/bin" in lines
    assert not any(line.startswith(("SITEFLEET_", "VIRTUAL_ENV", "PYTHON")) for line in lines)
    assert "CapEff:\t0000000000000000" in lines
    assert not {"root", "work", "home", "var"} & set(lines)


# --- what it cannot do ---------------------------------------------------------------------


@pytest.fixture
async def listener() -> AsyncIterator[tuple[int, list[object]]]:
    """A TCP server on every address of this machine, recording who connects."""
    arrived: list[object] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        arrived.append(writer.get_extra_info("peername"))
        writer.close()

    server = await asyncio.start_server(accept, "0.0.0.0", 0)
    yield server.sockets[0].getsockname()[1], arrived
    server.close()
    await server.wait_closed()


def outside_address() -> str | None:
    """This machine's address on its default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


async def test_a_step_cannot_reach_the_network(
    sandbox: BuildSandbox, site: Path, src: Path, listener: tuple[int, list[object]]
) -> None:
    port, arrived = listener
    addresses = ["127.0.0.1"] + [a for a in [outside_address()] if a]
    script = (
        "import socket, sys\n"
        "ok = 0\n"
        f"for addr in {addresses!r}:\n"
        "    try:\n"
        f"        socket.create_connection((addr, {port}), timeout=2).close(); ok += 1\n"
        "    except OSError as exc:\n"
        "        print(addr, type(exc).__name__)\n"
        "try:\n"
        "    socket.getaddrinfo('example.com', 80); ok += 1\n"
        "except OSError as exc:\n"
        "    print('dns', type(exc).__name__)\n"
        "sys.exit(3 if ok else 0)\n"
    )
    # Proof the listener works: the same connection from outside the sandbox arrives.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()
    await wait_for(lambda: len(arrived) == 1, "the control connection")

    result = await run(sandbox, site, src, "python3", "-c", script)

    # Exit 3 would mean something got through.
    assert result.exit_code == 0, result.output
    report = result.output.decode()
    assert all(f"{addr} " in report for addr in addresses)
    assert "dns " in report
    await asyncio.sleep(0.1)
    assert len(arrived) == 1


async def test_a_step_cannot_reach_the_network_even_quietly(
    sandbox: BuildSandbox, site: Path, src: Path, listener: tuple[int, list[object]]
) -> None:
    port, arrived = listener
    result = await run(
        sandbox, site, src, "python3", "-c",
        f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)",
    )  # fmt: skip

    assert result.exit_code == 1
    assert b"ConnectionRefusedError" in result.output
    assert arrived == []


async def test_a_step_cannot_write_outside_its_site(
    sandbox: BuildSandbox, site: Path, src: Path, tmp_path: Path
) -> None:
    name = f"sitefleet-escape-{uuid.uuid4().hex[:8]}"
    repo = Path(__file__).resolve().parents[2]
    targets = [
        f"/usr/{name}",
        f"/etc/{name}",
        f"/src/{name}",
        f"/{name}",
        f"/proc/{name}",
        f"/dev/{name}",
        f"{repo}/{name}",
        f"{tmp_path}/{name}",
        f"/site/../{name}",
    ]
    script = "; ".join(f"(echo x > {t}) 2>/dev/null && echo WROTE {t}" for t in targets)

    result = await run(sandbox, site, src, "sh", "-c", script + "; true")

    assert result.exit_code == 0
    assert b"WROTE" not in result.output
    for outside in [Path("/usr"), Path("/etc"), src, Path("/"), repo, tmp_path]:
        assert not (outside / name).exists()
    assert sorted(p.name for p in site.iterdir()) == ["index.html"]


async def test_a_step_cannot_change_the_pack_sources(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    result = await run(
        sandbox, site, src, "sh", "-c", "rm -f /src/pages.txt; echo x >> /src/pages.txt"
    )

    assert result.exit_code != 0
    assert b"Read-only file system" in result.output
    assert (src / "pages.txt").read_text() == "home\nabout\n"


async def test_a_fork_bomb_is_stopped_by_the_process_limit(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    marker = sleep_marker()
    # Forks sleepers until the kernel refuses, then reports how many it got.
    script = (
        "import os, sys\n"
        "n = 0\n"
        "while n < 10000:\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as exc:\n"
        "        print('refused after', n, type(exc).__name__); break\n"
        "    if pid == 0:\n"
        f"        os.execv('/usr/bin/sleep', ['sleep', '{marker}'])\n"
        "    n += 1\n"
    )

    result = await run(sandbox, site, src, "python3", "-c", script)

    words = result.output.decode().split()
    assert words[:2] == ["refused", "after"], result.output
    assert 0 < int(words[2]) < MAX_PROCESSES
    assert words[3] == "BlockingIOError"  # EAGAIN: RLIMIT_NPROC
    # The sleepers went down with the sandbox.
    assert processes_with(marker) == []


async def test_a_shell_fork_bomb_is_contained_and_cleaned_up(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    marker = f"forkbomb-{uuid.uuid4().hex[:8]}"
    # `exec sleep` needs no fork: the step ends at the timeout whatever the bomb left.

    with pytest.raises(Permanent) as info:
        await sandbox.run(
            ["sh", "-c", "bomb() { bomb | bomb & }; bomb; exec sleep 1000", marker],
            site_dir=site,
            src_dir=src,
            time_limit=1.5,
        )

    assert info.value.code == "build_timeout"
    assert processes_with(marker) == []
    # The machine can still start processes.
    assert subprocess.run(["true"], check=False).returncode == 0


async def test_a_step_that_runs_forever_is_killed_at_the_timeout(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    marker = sleep_marker()
    step = BuildStep(("sh", "-c", f"echo starting; sleep {marker} & sleep {marker}"), timeout=0.5)

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([step], site_dir=site, src_dir=src)

    assert info.value.code == "build_timeout"
    assert "starting" in info.value.details["output_tail"]
    assert processes_with(marker) == []


async def test_a_manifest_cannot_ask_for_more_time_than_the_setting(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    sandbox.limits = replace(sandbox.limits, timeout=0.5)
    step = BuildStep(("sleep", sleep_marker()), timeout=1000)

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([step], site_dir=site, src_dir=src)

    assert info.value.code == "build_timeout"
    assert "0.5 s" in info.value.message


async def test_cancelling_a_build_kills_it(sandbox: BuildSandbox, site: Path, src: Path) -> None:
    marker = sleep_marker()
    task = asyncio.create_task(run(sandbox, site, src, "sh", "-c", f"sleep {marker}; echo done"))
    await wait_for(lambda: processes_with(marker), "the step to start")

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert processes_with(marker) == []
    assert site.stat().st_uid == 0


async def test_a_huge_file_is_stopped_by_the_file_size_limit(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    step = BuildStep(("sh", "-c", "head -c 1000000000 /dev/zero > huge.bin"))

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([step], site_dir=site, src_dir=src)

    assert info.value.code == "build_file_too_large"
    assert (site / "huge.bin").stat().st_size <= MAX_FILE_BYTES


@pytest.mark.parametrize(
    "script",
    [
        # Files under the size limit, forever: only the site watch stops this one.
        "i=0; while :; do head -c 500000 /dev/zero > f$i; i=$((i+1)); done",
        "i=0; while :; do : > empty$i; i=$((i+1)); done",
        "i=0; while :; do mkdir -p d$i/a/b; i=$((i+1)); done",
    ],
)
async def test_a_step_filling_the_disk_is_stopped_at_the_release_limits(
    sandbox: BuildSandbox, site: Path, src: Path, script: str
) -> None:
    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([BuildStep(("sh", "-c", script))], site_dir=site, src_dir=src)

    assert info.value.code == "release_too_large"
    assert site.stat().st_uid == 0


async def test_memory_is_limited(sandbox: BuildSandbox, site: Path, src: Path) -> None:
    step = BuildStep(("python3", "-c", "x = bytearray(512 * 1024 * 1024)"))

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([step], site_dir=site, src_dir=src)

    assert info.value.code == "build_failed"
    assert "MemoryError" in info.value.details["output_tail"]


async def test_cpu_time_is_limited(sandbox: BuildSandbox, site: Path, src: Path) -> None:
    sandbox.limits = replace(sandbox.limits, cpu_seconds=1)
    step = BuildStep(("python3", "-c", "while True: pass"))

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([step], site_dir=site, src_dir=src)

    assert info.value.code == "build_cpu_exceeded"


async def test_output_is_kept_to_its_tail(sandbox: BuildSandbox, site: Path, src: Path) -> None:
    # 10 MB of output: read and dropped as it comes, only the last OUTPUT_LIMIT bytes kept.
    result = await run(
        sandbox, site, src, "sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x; echo; echo END"
    )

    assert result.exit_code == 0
    assert len(result.output) == OUTPUT_LIMIT
    assert result.output.endswith(b"x\nEND\n")
    assert result.dropped == 10_000_005 - OUTPUT_LIMIT


async def test_a_failing_step_stops_the_build_and_reports_its_output(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    steps = [
        BuildStep(("sh", "-c", "echo first > first.txt")),
        BuildStep(("sh", "-c", "echo 'no such thing' >&2; exit 7")),
        BuildStep(("sh", "-c", "echo third > third.txt")),
    ]

    with pytest.raises(Permanent) as info:
        await sandbox.run_steps(steps, site_dir=site, src_dir=src)

    assert info.value.code == "build_failed"
    assert info.value.details == {"exit_code": 7, "output_tail": "no such thing\n"}
    assert "step 1" in info.value.message and "no such thing" in info.value.message
    assert (site / "first.txt").exists() and not (site / "third.txt").exists()


async def test_an_unknown_command_fails_the_build(
    sandbox: BuildSandbox, site: Path, src: Path
) -> None:
    with pytest.raises(Permanent) as info:
        await sandbox.run_steps([BuildStep(("no-such-tool",))], site_dir=site, src_dir=src)
    assert info.value.code == "build_failed"
    assert "no-such-tool" in info.value.details["output_tail"]


# --- the manifest format -------------------------------------------------------------------


def test_build_steps_are_parsed() -> None:
    assert parse_build_steps(None) == []
    assert parse_build_steps([]) == []
    assert parse_build_steps(
        [{"run": ["sh", "-c", "echo hi"]}, {"run": ["python3", "gen.py"], "timeout": 2.5}]
    ) == [BuildStep(("sh", "-c", "echo hi")), BuildStep(("python3", "gen.py"), timeout=2.5)]


@pytest.mark.parametrize(
    "build",
    [
        {"run": ["sh"]},
        ["sh -c 'echo'"],
        [{"run": []}],
        [{"run": "sh -c echo"}],
        [{"run": ["sh", 1]}],
        [{"run": [""]}],
        [{"run": ["sh", "-c", "echo\0hi"]}],
        [{"timeout": 5}],
        [{"run": ["sh"], "timeout": 0}],
        [{"run": ["sh"], "timeout": -1}],
        [{"run": ["sh"], "timeout": "5"}],
        [{"run": ["sh"], "timeout": True}],
        [{"run": ["sh"], "timeout": float("nan")}],
        [{"run": ["sh"], "env": {"A": "1"}}],
    ],
)
def test_bad_build_steps_are_refused(build: Any) -> None:
    with pytest.raises(Permanent) as info:
        parse_build_steps(build)
    assert info.value.code == "build_invalid"


# --- checking the output -------------------------------------------------------------------


def check(root: Path, max_files: int = 100, max_bytes: int = 10_000) -> None:
    check_output(root, max_files=max_files, max_bytes=max_bytes)


def test_regular_files_and_directories_pass(site: Path) -> None:
    (site / "a" / "b").mkdir(parents=True)
    (site / "a" / "b" / "page.html").write_text("x" * 100)
    check(site)


@pytest.mark.parametrize(
    ("link", "target", "code"),
    [
        ("passwd", "/etc/passwd", "output_symlink_escape"),
        ("index2.html", "/site/index.html", "output_symlink_escape"),
        ("up", "../outside", "output_symlink_escape"),
        ("a/up", "../../outside", "output_symlink_escape"),
        ("a/sneaky", "b/../../../x", "output_symlink_escape"),
        ("a/home", "../index.html", "output_symlink"),
        ("alias.html", "index.html", "output_symlink"),
        ("dangling", "nowhere", "output_symlink"),
    ],
)
def test_symlinks_are_refused(site: Path, link: str, target: str, code: str) -> None:
    (site / "a" / "b").mkdir(parents=True)
    (site / link).symlink_to(target)

    with pytest.raises(Permanent) as info:
        check(site)

    assert info.value.code == code
    assert info.value.details == {"path": link, "target": target}


def test_special_files_are_refused(site: Path) -> None:
    os.mkfifo(site / "pipe")
    with pytest.raises(Permanent) as info:
        check(site)
    assert info.value.code == "output_special_file"
    assert "FIFO" in info.value.message

    (site / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(site / "sock"))
        with pytest.raises(Permanent) as info:
            check(site)
    assert info.value.code == "output_special_file"

    (site / "sock").unlink()
    os.mknod(site / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    with pytest.raises(Permanent) as info:
        check(site)
    assert info.value.code == "output_special_file"


@pytest.mark.parametrize(("files", "size"), [(101, 1), (3, 4000)])
def test_too_large_outputs_are_refused(site: Path, files: int, size: int) -> None:
    for n in range(files):
        (site / f"f{n}").write_bytes(b"x" * size)

    with pytest.raises(Permanent) as info:
        check(site)

    assert info.value.code == "release_too_large"


def test_too_many_directories_are_refused(site: Path) -> None:
    for n in range(101):
        (site / f"d{n}").mkdir()
    with pytest.raises(Permanent) as info:
        check(site)
    assert info.value.code == "release_too_large"


# --- the sandbox itself --------------------------------------------------------------------


async def test_a_missing_bwrap_is_a_transient_failure(
    sandbox: BuildSandbox, site: Path, src: Path, tmp_path: Path
) -> None:
    sandbox.bwrap = tmp_path / "no-bwrap-here"

    with pytest.raises(Transient) as info:
        await run(sandbox, site, src, "true")

    assert info.value.code == "sandbox_unavailable"
    assert site.stat().st_uid == 0


async def test_concurrent_steps_never_share_a_uid(
    sandbox: BuildSandbox, site: Path, src: Path, tmp_path: Path
) -> None:
    # A range of one uid, private to this test: the second step finds it taken.
    sandbox.uids = range(sandbox.uids.stop + 1000, sandbox.uids.stop + 1001)
    sandbox.lock_dir = tmp_path / "locks"
    marker = sleep_marker()
    first = asyncio.create_task(run(sandbox, site, src, "sleep", marker))
    await wait_for(lambda: processes_with(marker), "the first step to start")

    with pytest.raises(Transient) as info:
        await run(sandbox, site, src, "true")

    assert info.value.code == "build_slots_busy"
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert (await run(sandbox, site, src, "true")).exit_code == 0
