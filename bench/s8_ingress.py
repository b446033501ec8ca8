"""S8: API ingress — ``POST /v1/sites`` (authenticate, validate the params against the
template's schema, write the site, its deployment and two outbox rows in one transaction,
answer 201; the relay then publishes the jobs with confirms) under load from a second
process, against a hello-world route on the same server.

The server is the API as it runs (``bench/api_hello.py``: ``services.api``'s app, middleware
and uvicorn settings — uvloop, httptools — plus one GET route answering a constant) on the
platform's own vhost and database; only the API runs (no deployer eating the CPU; the jobs
wait in their queues). The load is ``wrk`` (one thread, ``CONNECTIONS`` connections, closed
loop) with ``bench/s8_wrk.lua`` making a fresh domain per POST. Rounds alternate hello and
POST so the machine's drift hits both; req/s is the median round, latency percentiles come
from the median round too. Cost ratio = hello req/s ÷ POST req/s (the same process on the
same cores: the extra CPU a POST takes)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from bench import platform as plat
from bench.report import Row, verdict
from bench.stack import Stack
from cli.devstack import procs
from shared.settings import PROJECT_ROOT
from tests.fixtures.platform import wait_until

CONNECTIONS = 16
SCRIPT = Path(__file__).with_name("s8_wrk.lua")


def wrk(url: str, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s", "-s",
         str(SCRIPT), url],
        capture_output=True, text=True, env={**os.environ, **env}, timeout=seconds + 60,
    )  # fmt: skip
    line = [x for x in done.stdout.splitlines() if x.startswith("{")]
    if done.returncode != 0 or not line:
        raise RuntimeError(f"wrk failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    out: dict[str, Any] = json.loads(line[-1])
    out["rps"] = out["requests"] / (out["duration_us"] / 1e6)
    return out


def loaded(pid: int) -> list[str]:
    """Which of uvloop and httptools the server process has loaded (its memory maps)."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return [name for name in ("uvloop", "httptools") if f"/{name}/" in maps]


async def run(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    rounds, seconds = (2, 4) if quick else (3, 10)
    async with plat.running("s8", services=()) as platform:
        platform.procs["api"] = procs.start(
            [sys.executable, "-m", "bench.api_hello"],
            log=platform.logs / "api.log",
            env=platform.env,
            cwd=PROJECT_ROOT,
        )

        async def up() -> bool:
            if platform.procs["api"].poll() is not None:
                raise RuntimeError("api exited:\n" + platform.log_tail("api"))
            try:
                async with platform.client() as client:
                    return (await client.get("/readyz")).status_code == 200
            except Exception:
                return False

        await wait_until(up, timeout=60, what="the API to be ready")
        token = await platform.new_tenant("bench")
        libs = loaded(platform.procs["api"].pid)
        tag = uuid.uuid4().hex[:6]
        env = {"S8_TOKEN": token}
        # Warm-up: both paths once, briefly (imports, prepared statements, pools).
        await asyncio.to_thread(wrk, platform.api_url, 2, {**env, "S8_MODE": "hello"})
        await asyncio.to_thread(
            wrk, platform.api_url, 2, {**env, "S8_MODE": "post", "S8_PREFIX": f"w{tag}"}
        )
        hello: list[dict[str, Any]] = []
        post: list[dict[str, Any]] = []
        # CPU seconds of the API process and of the database's backends, per side.
        used = {side: {"api": 0.0, "postgres": 0.0} for side in ("hello", "post")}
        for n in range(rounds):
            order = ["hello", "post"] if n % 2 == 0 else ["post", "hello"]
            for mode in order:
                before = await plat.cpu(platform)
                got = await asyncio.to_thread(
                    wrk,
                    platform.api_url,
                    seconds,
                    {**env, "S8_MODE": mode, "S8_PREFIX": f"r{n}{tag}"},
                )
                after = await plat.cpu(platform)
                for key in used[mode]:
                    used[mode][key] += after[key] - before[key]
                (hello if mode == "hello" else post).append(got)
        rss = plat.tree_rss_kib(platform.procs["api"].pid)

    def mid(results: list[dict[str, Any]]) -> dict[str, Any]:
        return sorted(results, key=lambda r: r["rps"])[len(results) // 2]

    ours, base = mid(post), mid(hello)
    errors = sum(r["status"] + r["connect"] + r["read"] + r["write"] + r["timeout"] for r in post)
    ratio = base["rps"] / ours["rps"]
    per_req = {
        side: {k: v / sum(r["requests"] for r in runs) * 1000 for k, v in used[side].items()}
        for side, runs in (("hello", hello), ("post", post))
    }
    row = Row(
        "S8 API ingress: POST /v1/sites under load (wrk, 16 connections)",
        f"{ours['rps']:,.0f} req/s; latency {ours['p50_us'] / 1000:.3g} ms / "
        f"{ours['p99_us'] / 1000:.3g} ms / {ours['max_us'] / 1000:.3g} ms"
        + (f"; {errors} errors or non-2xx" if errors else "; 0 errors"),
        f"hello-world route, same server: {base['rps']:,.0f} req/s; p50 "
        f"{base['p50_us'] / 1000:.3g} ms, p99 {base['p99_us'] / 1000:.3g} ms",
        f"{ratio:.1f}× the cost of hello-world",
        "≥ 2,000 req/s, p99 ≤ 20 ms; ≤ 4× hello-world",
        verdict(req_per_s=ours["rps"] >= 2000, p99=ours["p99_us"] <= 20_000,
                vs_hello=ratio <= 4, no_errors=errors == 0),
    )  # fmt: skip
    row.notes.append(
        f"{rounds} rounds of {seconds} s per side after a 2 s warm-up of each, alternating; "
        f"figures of the median round (POST rounds: "
        + ", ".join(f"{r['rps']:,.0f}" for r in post)
        + " req/s; hello: "
        + ", ".join(f"{r['rps']:,.0f}" for r in hello)
        + f" req/s). CPU per request: POST {per_req['post']['api']:.2f} ms in the API process "
        f"+ {per_req['post']['postgres']:.2f} ms in PostgreSQL; hello "
        f"{per_req['hello']['api']:.2f} ms in the API process. A POST runs 5 SQL statements "
        "in its transaction (token, one query for every domain check, insert site, insert "
        "deployment, insert the outbox rows) and the relay 2-3 more to publish them, each "
        "through SQLAlchemy and asyncpg; the HTTP server and the "
        "middleware cost what the hello-world route costs. The API process had "
        f"{', '.join(libs) or 'neither uvloop nor httptools'} loaded (checked in "
        f"/proc/<pid>/maps); RSS at the end {rss / 1024:.0f} MiB. wrk runs "
        "in its own process on the same 2 cores, as do PostgreSQL and RabbitMQ; only the API "
        "service runs (the jobs it publishes wait in their queues). Latency at saturation "
        f"with {CONNECTIONS} connections is about connections ÷ throughput, so p99 follows "
        "req/s. Other helpers' test runs share this machine: see the load average above."
    )
    return [row]
