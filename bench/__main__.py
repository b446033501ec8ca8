"""``python -m bench [--quick] [--only S1,S2]``: run the scenarios with their baselines,
print the table and write it to docs/benchmarks.md."""

from __future__ import annotations

import argparse
import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from bench import (
    report,
    s1_new_site,
    s2_s3_ssh,
    s4_burst,
    s5_queue,
    s6_atomicity,
    s7_dns,
    s8_ingress,
    s9_disk,
    s10_alerts,
)
from bench.report import Row, not_measured
from bench.stack import Stack
from shared.settings import PROJECT_ROOT

OUT = PROJECT_ROOT / "docs" / "benchmarks.md"
Scenario = Callable[..., Awaitable[list[Row]]]

# (key, runner or None, rows to show when it is not run: (scenario, target))
S1_T = "p50 ≤ 10 ms; ≥ 10× / 50× B0; 0 reloads"
S2_T = "p50 ≤ 60 ms; ≥ 5× faster, ≥ 10× fewer bytes"
S3_T = "≤ 0.3 ms/file; ≥ 5× asyncssh put, ≥ 2× sftp -b"
S4_T = "≥ 200 sites/s; p99 time-to-live ≤ 2 s; ≥ 10× Celery+B0"
S5_T = "≥ 5,000 jobs/s; p50 ≤ 1 ms, p99 ≤ 5 ms; ≥ 2× Celery, ≥ Dramatiq"
S7_T = "0 errors; ≥ 300 zones/s; re-sync ≤ 2 s; vs octoDNS"
S8_T = "≥ 2,000 req/s, p99 ≤ 20 ms; ≤ 4× hello-world"
S9_T = "bytes ≤ 1.05 × unique; inodes ≈ objects + dirs"
S10_T = "≤ 1 notification per group per interval; vs Alertmanager"
# (key, runner or None, rows to show when it is not run: (scenario, target))
SCENARIOS: list[tuple[str, Scenario | None, list[tuple[str, str]]]] = [
    ("S1", s1_new_site.run, [("S1 new 60-file site, 1k / 10k existing sites", S1_T)]),
    ("S2", s2_s3_ssh.run_s2, [("S2 redeploy over SSH, only HTML changed", S2_T)]),
    ("S3", s2_s3_ssh.run_s3, [("S3 cold push of 2,000 × 4 KiB over SSH", S3_T)]),
    (
        "S4",
        s4_burst.run,
        [("S4 burst of 1,000 site creations", S4_T), ("S4 scale: 100 → 10,000 sites", "figure")],
    ),
    ("S5", s5_queue.run, [("S5 queue overhead, no-op jobs", S5_T)]),
    ("S6", s6_atomicity.run, [("S6 atomicity under load, 100 switches", "0 mixed/errors/stale")]),
    ("S7", s7_dns.run, [("S7 DNS: 1,000 zones into PowerDNS", S7_T)]),
    ("S8", s8_ingress.run, [("S8 API ingress POST /v1/sites", S8_T)]),
    ("S9", s9_disk.run, [("S9 disk, 1,000 sites from one template", S9_T)]),
    ("S10", s10_alerts.run, [("S10 alert storm", S10_T)]),
]


async def main(quick: bool, only: set[str] | None, out: Path = OUT) -> int:
    reps, warmup = (10, 2) if quick else (30, 3)
    started = time.perf_counter()
    info = report.machine()
    rows: list[Row] = []
    failed = 0
    for key, runner, placeholders in SCENARIOS:
        if runner is None or (only is not None and key not in only):
            why = "not measured yet" if runner is None else report.NOT_RUN
            rows += [not_measured(name, target, why) for name, target in placeholders]
            continue
        print(f"== {key} …", flush=True)
        stack = Stack()
        t0 = time.perf_counter()
        try:
            rows += await runner(stack, quick=quick, reps=reps, warmup=warmup)
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            rows += [
                not_measured(name, target, f"failed: {type(exc).__name__}: {exc}"[:200])
                for name, target in placeholders
            ]
        finally:
            stack.close()
        print(f"   {key} took {time.perf_counter() - t0:.0f} s", flush=True)
    reps_text = f"{reps} after {warmup} warm-up" + (
        " (quick mode: fewer than the ≥ 30 of BENCH.md; S3 fewer still)" if quick else ""
    )
    kept_from = None
    if only is not None:  # keep the other scenarios' last results in the document
        rows, kept_from = report.keep_previous(rows, out)
    text = report.render(
        rows,
        info,
        quick=quick,
        reps=reps_text,
        elapsed=time.perf_counter() - started,
        kept_from=kept_from,
    )
    report.write(text, out)
    print(text)
    print(f"written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", help="comma-separated scenario keys, e.g. S1,S2")
    parser.add_argument("--out", type=Path, default=OUT, help=f"the table's file (default {OUT})")
    args = parser.parse_args()
    selected = {k.strip().upper() for k in args.only.split(",")} if args.only else None
    raise SystemExit(asyncio.run(main(args.quick, selected, args.out)))
