"""Samples, summaries and the one markdown table the harness writes to docs/benchmarks.md."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


def pct(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"


def spread(samples: list[float]) -> str:
    """'p50 / p99 / max' of durations in seconds."""
    return f"{ms(pct(samples, 50))} / {ms(pct(samples, 99))} / {ms(max(samples))}"


@dataclass
class Row:
    scenario: str
    ours: str
    baseline: str
    ratio: str
    target: str
    met: str
    notes: list[str] = field(default_factory=list)


def not_measured(scenario: str, target: str, why: str = "not measured yet") -> Row:
    return Row(scenario, why, "—", "—", target, "not measured")


def verdict(*checks: bool, **named: bool) -> str:
    """'yes', or 'no' with the named parts that are missed."""
    missed = [name.replace("_", " ") for name, ok in named.items() if not ok]
    if all(checks) and not missed:
        return "yes"
    return "no" + (f" ({', '.join(missed)})" if missed else "")


def _version(argv: list[str], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    match = re.search(pattern, done.stdout + done.stderr)
    return match.group(1) if match else "unknown"


def machine() -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cores (nproc)": str(os.cpu_count()),
        "memory": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "load average at start (1/5/15 min)": load,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "nginx": _version(["nginx", "-v"]),
        "OpenSSH": _version(["ssh", "-V"], r"OpenSSH_([\w.]+)"),
        "rsync": _version(["rsync", "--version"]),
        "rabbitmq": _version(["rabbitmqctl", "version"]),
        "postgres": _version(["psql", "--version"]),
    }


# Why a target marked "no" is missed: what the profiles (bench/README.md, "Where the time
# goes") and the floors of BENCH.md say. Shown under the table for each scenario that has a
# row not met; the figures behind them are in that row and its notes.
WHY: dict[str, str] = {
    "S1": "our deploy path is the upload (read and SHA-256 every file, store what is new, "
    "hardlink 60 names, rename) plus `activate` and the first GET through nginx; the upload "
    "takes most of the p50 (see the note). Its dearest step is creating the new pages' "
    "objects: creating a file costs this VM's kernel 40–250 µs, varying from minute to "
    "minute (bench/README.md), so a run at a bad minute misses 10 ms. Nothing on the path "
    "grows with the number of sites (one directory per site, one symlink swap).",
    "S2": "we upload exactly the changed files (met). The byte ratio is missed because "
    "rsync's delta transfer sends at most the changed pages too (about as many bytes as "
    "ours in one run; with pages that differ only by a release id, far fewer), so 10× "
    "fewer bytes than rsync is not reachable by sending whole changed files: it would "
    "take deltas of our own.",
    "S3": "each file becomes one object created in the host's content store (hashed from "
    "the SSH stream straight into it) and linked into the release, over one SSH connection. "
    "Creating a file costs this VM's kernel 40–250 µs (bench/README.md), most of the "
    "agent's time per file, so 5× asyncssh's `put` (which also creates each file, over "
    "SFTP) asks for a per-file cost near that floor; what is ours on top of it is one "
    "Python process reading the stream, hashing, and two links per file.",
    "S4": "the CPU per site of all processes together (the row's note) caps two cores at "
    "2,000 ÷ (ms per site) sites/s before any waiting; 200 sites/s needs ≤ 10 ms per site, "
    "while every site costs each service a transaction and each message a confirmed "
    "publish. That needs work batched across sites (one transaction and one message for "
    "many), not tuning; what tuning removed is listed in bench/README.md.",
    "S5": "each job is one persistent, confirmed publish into a quorum queue and one ack, "
    "framed by aio-pika in Python on both ends (publisher and consumer share this process, "
    "with 200 confirms in flight); we are ahead of Celery and Dramatiq in the same run. "
    "5,000 jobs/s leaves 0.4 ms of CPU per job on two cores, broker included, and our "
    "process alone spends about that (a `send` syscall per frame is its largest share): it "
    "needs several jobs per message or batched acks. Dispatch p50 includes the quorum "
    "queue's replicated log write before delivery (the baselines use classic queues); "
    "durability across a broker restart is why our queues are quorum queues.",
    "S7": "creating a zone in PowerDNS (sqlite3 backend) is one HTTP POST on a new TCP "
    "connection (PowerDNS closes every one) that PowerDNS commits per zone; writes are "
    "serialized (sqlite3 refuses a second writer), and about half the time per zone is our "
    "client's CPU, mostly connection setup. The re-sync target is met from the running "
    "service (serials unchanged: one listing call); a fresh process reads every zone once.",
    "S8": "a POST runs five SQL statements (note) through SQLAlchemy and asyncpg plus "
    "FastAPI's dependency solving, 25–35× the CPU of the hello-world route on the same "
    "server (the note gives both); one API process serves on one core, and 2,000 req/s on "
    "two cores leaves 1 ms per request for everything.",
}


def render(
    rows: list[Row],
    info: dict[str, str],
    *,
    quick: bool,
    reps: str,
    elapsed: float,
    kept_from: str | None = None,
) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick (`make bench-quick`)" if quick else "full (`make bench`)"
    lines = [
        "# Benchmarks",
        "",
        "Generated by `python -m bench` — do not edit by hand; the scenarios, baselines and "
        "targets are those of `shared/BENCH.md` (beside the project). Every baseline ran in "
        "the same run on the same machine. Durations are p50 / p99 / max; the ratio is "
        "baseline p50 ÷ ours p50 (higher is better for us) unless the row says otherwise.",
        "",
        f"- date: {now}; mode: {mode}; repetitions: {reps}; wall time {elapsed:.0f} s",
        "- machine: " + "; ".join(f"{k} {v}" for k, v in info.items()),
        *(
            [
                "- rows of scenarios not run this time (`--only`) are kept from the run of "
                + kept_from
            ]
            if kept_from
            else []
        ),
        "",
        "| # | scenario | ours p50 / p99 / max (or figure) | baseline p50 | ratio | target "
        "| met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, row in enumerate(rows, 1):
        cells = [row.scenario, row.ours, row.baseline, row.ratio, row.target, row.met]
        lines.append(f"| {n} | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    missed = [
        key for key in WHY if any(_key(r.scenario) == key and r.met.startswith("no") for r in rows)
    ]
    if missed:
        lines += ["", "## Why the targets marked no are missed", ""]
        lines += [f"- **{key}**: {WHY[key]}" for key in missed]
    notes = [(row.scenario, note) for row in rows for note in row.notes]
    if notes:
        lines += ["", "## Notes from this run", ""]
        lines += [f"- **{scenario}**: {note}" for scenario, note in notes]
    return "\n".join(lines) + "\n"


def write(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


NOT_RUN = "not run (--only)"
_CELL = re.compile(r"(?<!\\)\|")


def _key(scenario: str) -> str:
    return scenario.split(" ", 1)[0]


def previous_rows(path: Path) -> tuple[dict[str, list[Row]], str | None]:
    """The rows of the last written table, by scenario key ("S1"), and that run's date."""
    if not path.exists():
        return {}, None
    found: dict[str, list[Row]] = {}
    by_name: dict[str, Row] = {}
    date = None
    for line in path.read_text().splitlines():
        if line.startswith("- date: "):
            fields = line[len("- date: ") :].split("; ")
            date = fields[0]
            mode = next((f[len("mode: ") :] for f in fields if f.startswith("mode: ")), "")
            if mode:  # "full (`make bench`)" -> "2026-… UTC, full mode"
                date += f", {mode.split(' ', 1)[0]} mode"
        elif line.startswith("| ") and not line.startswith("| #"):
            cells = [c.strip().replace("\\|", "|") for c in _CELL.split(line)[1:-1]]
            if len(cells) == 7 and cells[0].isdigit():
                scenario, ours, baseline, ratio, target, met = cells[1:]
                row = Row(scenario, ours, baseline, ratio, target, met)
                found.setdefault(_key(row.scenario), []).append(row)
                by_name[row.scenario] = row
        elif line.startswith("- **") and "**: " in line:
            name, _, note = line[4:].partition("**: ")
            if name in by_name:
                by_name[name].notes.append(note)
    return found, date


def keep_previous(rows: list[Row], path: Path) -> tuple[list[Row], str | None]:
    """Rows of scenarios not run this time (``--only``) replaced by those of the previous
    table, when it has them; also returns the previous run's date and mode with the keys
    kept (None if none kept)."""
    previous, date = previous_rows(path)
    out: list[Row] = []
    kept: set[str] = set()
    for row in rows:
        key = _key(row.scenario)
        if key in kept:
            continue  # a scenario of several rows (S4): its old rows are all in already
        old = previous.pop(key, None) if row.ours == NOT_RUN else None
        if old and all(r.ours != NOT_RUN for r in old):
            out += old
            kept.add(key)
        else:
            out.append(row)
    return out, f"{date} ({', '.join(sorted(kept, key=lambda k: int(k[1:])))})" if kept else None
