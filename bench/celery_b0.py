"""The baseline of S4: Celery 5 (prefork, concurrency 2) running B0 for each new site —
render the site (the same renderer and template as ours), ``cp -a`` it into B0's sites
dir, write its ``server{}`` file, ``nginx -s reload``, poll until nginx serves it. Each task
appends "seq sent served" (wall-clock seconds) to BENCH_OUT once the site is served.

The worker reads B0's nginx from the environment: BENCH_B0_PREFIX (its ``-p`` prefix, with
conf/nginx.conf and conf.d/), BENCH_B0_PORT, BENCH_B0_SITES, and BENCH_B0_WORK (render dir)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path

from celery import Celery

from bench.stack import B0_SITE, wait_served
from services.deployer.render import render_site
from shared.settings import PROJECT_ROOT
from shared.template_packs import TemplatePack, load_pack

app = Celery("bench-b0", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1//"))
app.conf.update(
    broker_transport_options={"confirm_publish": True},
    task_acks_late=True,
    task_ignore_result=True,
    task_default_delivery_mode="persistent",
    worker_hijack_root_logger=False,
)


@cache
def pack() -> TemplatePack:
    return load_pack(PROJECT_ROOT / "templates" / "landing" / "1.0.0")


@app.task(name="bench.b0_site")  # type: ignore[untyped-decorator]  # celery is untyped
def b0_site(seq: int, domain: str, params: dict[str, object], sent: float) -> None:
    prefix = Path(os.environ["BENCH_B0_PREFIX"])
    port = int(os.environ["BENCH_B0_PORT"])
    sites = Path(os.environ["BENCH_B0_SITES"])
    release = f"b0-{seq}-{int(sent * 1000)}"
    out = Path(os.environ["BENCH_B0_WORK"]) / release
    render_site(pack(), params, domain=domain, release_id=release, out_dir=out)
    subprocess.run(["cp", "-a", str(out), str(sites / domain)], check=True)
    shutil.rmtree(out)
    conf = prefix / "conf.d" / f"{domain}.conf"
    tmp = conf.with_suffix(".tmp")
    tmp.write_text(B0_SITE.format(port=port, domain=domain, root=sites / domain))
    os.rename(tmp, conf)
    subprocess.run(
        ["nginx", "-q", "-p", str(prefix), "-c", str(prefix / "conf" / "nginx.conf"), "-s",
         "reload"],
        check=True, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_served(port, domain, release, timeout=120)
    with open(os.environ["BENCH_OUT"], "a") as log:
        log.write(f"{seq} {sent} {time.time()}\n")
