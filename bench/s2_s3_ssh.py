"""S2 and S3: a web host over SSH (a real sshd on 127.0.0.1 with generated keys).

S2, redeploy where only the HTML changed: ours is ``SshHost.upload`` + ``activate`` on a warm
pooled connection; B0 is ``rsync -a --delete`` into the site's dir over a fresh OpenSSH
connection. Bytes: ours = objects sent (``DeploymentStats.uploaded_bytes``), B0 = rsync's
"Total bytes sent". S3, cold push of 2,000 × 4 KiB files: ours (``SshHost.upload``, warm
connection) vs asyncssh ``put(recurse=True)`` (warm connection, SFTP session included) vs
OpenSSH ``sftp -b`` (a fresh process and connection, as B0 would run it)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import asyncssh

from bench import sites
from bench.report import Row, ms, pct, spread, verdict
from bench.stack import Sshd, Stack
from services.deployer.transport.ssh import SshHost
from shared.ids import new_id

S2_PAGES, S2_ASSETS, S2_ASSET_SIZE = 20, 40, 16 * 1024
S3_FILES, S3_SIZE = 2_000, 4096


def ssh_host(server: Sshd, sites_root: Path) -> SshHost:
    return SshHost(
        "bench",
        address="127.0.0.1",
        port=server.port,
        username=server.username,
        client_key=server.client_key,
        host_keys=[server.host_key],
        sites_root=str(sites_root),
        command_timeout=120.0,
    )


def rsync_once(server: Sshd, src: Path, dest: Path) -> tuple[float, int]:
    ssh = " ".join(["ssh", *server.ssh_argv()])
    started = time.perf_counter()
    done = subprocess.run(
        ["rsync", "-a", "--delete", "--stats", "-e", ssh, f"{src}/",
         f"{server.username}@127.0.0.1:{dest}/"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    sent = re.search(r"Total bytes sent: ([\d,.]+)", done.stdout)
    return elapsed, int(re.sub(r"[,.]", "", sent.group(1))) if sent else -1


async def run_s2(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    server = stack.sshd()
    remote = stack.tempdir("s2-remote")
    src = stack.tempdir("s2-src") / "site"
    domain = "redeploy.example.com"
    release = new_id("dep")
    sites.write_site(src, release, pages=S2_PAGES, assets=S2_ASSETS, asset_size=S2_ASSET_SIZE)
    host = ssh_host(server, remote / "sites")
    b0_dest = remote / "b0" / domain
    b0_dest.mkdir(parents=True)
    try:
        # The first deploy of the site, on both sides (not timed).
        await host.upload(domain, release, src)
        await host.activate(domain, release)
        rsync_once(server, src, b0_dest)
        ours_t, b0_t, ours_bytes, b0_bytes, ours_files = [], [], [], [], []
        activate_t: list[float] = []
        for n in range(warmup + reps):
            release = new_id("dep")
            sites.write_pages(src, release, S2_PAGES)  # only the HTML changes
            started = time.perf_counter()
            stats = await host.upload(domain, release, src)
            uploaded = time.perf_counter()
            await host.activate(domain, release)
            ours_s = time.perf_counter() - started
            if n >= warmup:
                activate_t.append(time.perf_counter() - uploaded)
            b0_s, sent = rsync_once(server, src, b0_dest)
            await host.prune(domain, 3)
            if n >= warmup:
                ours_t.append(ours_s)
                b0_t.append(b0_s)
                ours_bytes.append(stats.uploaded_bytes)
                ours_files.append(stats.uploaded_files)
                b0_bytes.append(sent)
        connects = host.connects
    finally:
        await host.close()
    speed = pct(b0_t, 50) / pct(ours_t, 50)
    byte_ratio = pct(b0_bytes, 50) / max(pct(ours_bytes, 50), 1)
    html_bytes = S2_PAGES * 2048
    row = Row(
        "S2 redeploy over SSH, only the 20 HTML pages of 60 files changed (warm connection)",
        f"{spread(ours_t)}; uploaded {int(pct(ours_files, 50))} files, "
        f"{int(pct(ours_bytes, 50)):,} B",
        f"{ms(pct(b0_t, 50))} (p99 {ms(pct(b0_t, 99))}); rsync sent {int(pct(b0_bytes, 50)):,} B",
        f"{speed:.1f}× faster; {byte_ratio:.2f}× fewer bytes",
        "uploaded = changed files only; p50 ≤ 60 ms; ≥ 5× faster, ≥ 10× fewer bytes",
        verdict(
            only_changed=pct(ours_files, 50) == S2_PAGES,
            p50=pct(ours_t, 50) <= 0.060,
            speed=speed >= 5,
            bytes=byte_ratio >= 10,
        ),
    )
    row.notes.append(
        f"{connects} SSH connection(s) for all runs on our side; B0 opens one per rsync. "
        f"Of ours, `activate` alone (one request to the session's long-lived host agent) "
        f"took p50 {ms(pct(activate_t, 50))}. "
        f"The changed pages hold {html_bytes:,} B. Our byte figure counts object payload "
        "only; on the wire each upload also carries the manifest (not counted), while "
        "rsync's figure includes its file list and delta checksums. "
        "B0 writes into the live directory (not atomic) and needs no reload for a redeploy."
    )
    return [row]


def write_cold_tree(root: Path) -> None:
    """2,000 files of fresh random bytes: nothing of them is on the host yet."""
    for n in range(S3_FILES):
        sites.write_file(root / f"d{n // 100}" / f"f{n}.bin", os.urandom(S3_SIZE))
    for dirpath, dirnames, _ in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


async def run_s3(stack: Stack, *, quick: bool, reps: int, warmup: int) -> list[Row]:
    # asyncssh's put takes seconds per run: one repetition in quick mode (keeps
    # `make bench-quick` under 10 minutes on 2 busy cores).
    reps, warmup = (1, 1) if quick else (reps, 1)
    server = stack.sshd()
    remote = stack.tempdir("s3-remote")
    work = stack.tempdir("s3-src")
    host = ssh_host(server, remote / "sites")
    pinned: tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]] = (
        [asyncssh.import_public_key(server.host_key)],
        [],
        [],
    )
    conn = await asyncssh.connect(
        "127.0.0.1", server.port, username=server.username,
        client_keys=[str(server.client_key)], known_hosts=pinned,
        config=None, agent_path=None,
    )  # fmt: skip
    ours_t: list[float] = []
    put_t: list[float] = []
    sftp_t: list[float] = []
    try:
        await host.releases("warm.example.com")  # open the pooled connection
        for n in range(warmup + reps):
            src = work / f"tree-{n}"
            timings = []
            for side in ("ours", "put", "sftp"):
                write_cold_tree(src)  # fresh bytes for every side: every push is cold
                dest = remote / side / f"t{n}"
                dest.parent.mkdir(exist_ok=True)
                started = time.perf_counter()
                if side == "ours":
                    domain = f"cold-{n}.example.com"
                    await host.upload(domain, new_id("dep"), src)
                elif side == "put":
                    async with conn.start_sftp_client() as sftp:
                        await sftp.put(str(src), str(dest), recurse=True)
                else:
                    batch = work / "batch"
                    batch.write_text(f"put -r {src} {dest}\n")
                    subprocess.run(
                        ["sftp", *server.ssh_argv_sftp(), "-b", str(batch),
                         f"{server.username}@127.0.0.1"],
                        check=True, capture_output=True,
                    )  # fmt: skip
                timings.append(time.perf_counter() - started)
                shutil.rmtree(src)
                if side == "ours":
                    await host.remove_site(domain)
                    await host.collect_garbage()
                else:
                    shutil.rmtree(dest, ignore_errors=True)
            if n >= warmup:
                ours_t.append(timings[0])
                put_t.append(timings[1])
                sftp_t.append(timings[2])
    finally:
        conn.close()
        await host.close()
    per_file = pct(ours_t, 50) / S3_FILES
    put_ratio = pct(put_t, 50) / pct(ours_t, 50)
    sftp_ratio = pct(sftp_t, 50) / pct(ours_t, 50)

    def per(samples: list[float]) -> str:
        return f"{pct(samples, 50) / S3_FILES * 1000:.3f} ms/file"

    row = Row(
        "S3 cold push of 2,000 × 4 KiB files over SSH",
        f"{per(ours_t)} ({spread(ours_t)} per push)",
        f"asyncssh put {per(put_t)} ({ms(pct(put_t, 50))}); "
        f"sftp -b {per(sftp_t)} ({ms(pct(sftp_t, 50))})",
        f"{put_ratio:.1f}× vs put; {sftp_ratio:.1f}× vs sftp -b",
        "≤ 0.3 ms/file; ≥ 5× asyncssh put; ≥ 2× sftp -b",
        verdict(per_file=per_file <= 0.0003, vs_put=put_ratio >= 5, vs_sftp=sftp_ratio >= 2),
    )
    row.notes.append(
        f"{reps} repetition(s) after {warmup} warm-up. Ours and asyncssh use a warm "
        "connection; `sftp -b` starts its own process and connection per push (as B0 would). "
        "Ours also stores each object in the host's content store and renames the release "
        "into place; the baselines only write files."
    )
    return [row]
