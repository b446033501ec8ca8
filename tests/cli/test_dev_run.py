"""`make run`'s runner as a user meets it: the demo site comes up, is served by nginx and
published in DNS, and Ctrl-C stops everything it started."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from cli.devstack import procs
from tests.e2e.helpers import query
from tests.fixtures.components import world_readable_tempdir
from tests.fixtures.isolation import create_vhost_async, drop_database, drop_vhost_async


@pytest.fixture
async def dev_env(run_id: str):
    var = world_readable_tempdir("devrun")
    vhost, amqp_url = await create_vhost_async(f"sitefleet-test-{run_id}-devrun")
    db = f"sitefleet_test_{run_id}_devrun"  # the runner creates it, as on a fresh machine
    ports = {name: procs.free_port() for name in ("api", "http", "https", "dns", "pdns")}
    env = {
        **os.environ,
        "SITEFLEET_VAR_DIR": str(var),
        "SITEFLEET_AMQP_URL": amqp_url,
        "SITEFLEET_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{db}",
        "SITEFLEET_API_PORT": str(ports["api"]),
        "SITEFLEET_HTTP_PORT": str(ports["http"]),
        "SITEFLEET_HTTPS_PORT": str(ports["https"]),
        "SITEFLEET_DNS_PORT": str(ports["dns"]),
        "SITEFLEET_PDNS_API_PORT": str(ports["pdns"]),
    }
    yield env, ports
    await drop_database(db)
    await drop_vhost_async(vhost)
    shutil.rmtree(var, ignore_errors=True)


def start_runner(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    proc = subprocess.Popen(
        [".venv/bin/sitefleet", "dev", "run"],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line or "could not start" in line:
            break
    return proc, lines


def stop_runner(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, rest


async def test_dev_run_brings_up_the_demo_site_and_stops_cleanly(dev_env) -> None:
    env, ports = dev_env
    proc, lines = start_runner(env)
    output = "".join(lines)
    try:
        assert "Demo site demo.sitefleet.test is live" in output, output
        token = next(w for w in output.split() if w.startswith("sft_"))
        page = httpx.get(
            f"http://127.0.0.1:{ports['http']}/", headers={"Host": "demo.sitefleet.test"}
        )
        assert page.status_code == 200
        assert "<title>Sitefleet demo</title>" in page.text
        me = httpx.get(
            f"http://127.0.0.1:{ports['api']}/v1/me", headers={"Authorization": f"Bearer {token}"}
        ).json()
        assert me["tenant"]["name"] == "demo"
        assert await query(ports["dns"], "proxy.demo.sitefleet.test", "A") == (
            "NOERROR",
            ["127.0.0.1"],
        )
        assert (await query(ports["dns"], "demo.sitefleet.test", "A"))[1] == ["127.0.0.1"]
        assert (await query(ports["dns"], "www.demo.sitefleet.test", "CNAME"))[1]
        assert (await query(ports["dns"], "media.demo.sitefleet.test", "CNAME"))[1]
    finally:
        stop_runner(proc)
    for port in ports.values():  # everything it started is gone
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=1)

    # A second run reuses the state and brings the same site back.
    proc, lines = start_runner(env)
    try:
        assert "Demo site demo.sitefleet.test is live" in "".join(lines), "".join(lines)
        assert (
            httpx.get(
                f"http://127.0.0.1:{ports['http']}/", headers={"Host": "demo.sitefleet.test"}
            ).status_code
            == 200
        )
    finally:
        stop_runner(proc)


def test_dev_run_refuses_a_busy_port(dev_env) -> None:
    env, ports = dev_env
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports["http"]))
        busy.listen()
        result = subprocess.run(
            [".venv/bin/sitefleet", "dev", "run"],
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
        )
    assert result.returncode == 1
    assert f"port {ports['http']} (nginx) is in use" in result.stdout
    assert not (Path(env["SITEFLEET_VAR_DIR"]) / "nginx").exists()  # nothing was started
