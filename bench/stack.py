"""The real peers a benchmark run starts for itself, in temp dirs on free 127.0.0.1 ports:
our catch-all nginx, B0's nginx with one ``server{}`` per site, and an OpenSSH sshd with keys
generated for it (the approach of tests/fixtures/sshd.py, without pytest). ``Stack`` stops
and removes everything it started, whatever happened."""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import asyncssh

from cli.devstack import procs
from cli.devstack.nginx import start_nginx

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself: it must be started by absolute path


def world_readable_tempdir(prefix: str) -> Path:
    """nginx's workers run as ``nobody``: they must traverse everything they serve."""
    path = Path(tempfile.mkdtemp(prefix=f"sitefleet-bench-{prefix}-"))
    path.chmod(0o755)
    return path


def fetch(port: int, host: str, path: str = "/") -> tuple[int, bytes]:
    """One GET on a fresh connection (a kept-alive one could stay on an old nginx worker)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def wait_served(port: int, host: str, marker: str, timeout: float = 30.0) -> int:
    """Poll until GET / answers 200 with ``marker`` in the body; returns the polls made."""
    wanted = marker.encode()
    deadline = time.perf_counter() + timeout
    polls = 0
    while True:
        polls += 1
        status, body = fetch(port, host)
        if status == 200 and wanted in body:
            return polls
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{host} not served with {marker} after {timeout} s: {status}")
        time.sleep(0.0005)


def children(pid: int) -> set[int]:
    """Child pids of a process (nginx's workers: a reload replaces them all)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def rss_kib(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


class OurNginx:
    """The production config (infra/nginx): one catch-all server, root follows $host."""

    def __init__(self, root: Path) -> None:
        self.sites_root = root / "sites"
        self.port = procs.free_port()
        self.https_port = procs.free_port()
        self.proc = start_nginx(
            root / "nginx", port=self.port, sites_root=self.sites_root, https_port=self.https_port
        )

    def workers(self) -> set[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        procs.stop(self.proc)


B0_MAIN = """worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    sendfile on;
    open_file_cache off;
    server_names_hash_max_size 131072;
    server_names_hash_bucket_size 128;
    server {{ listen 127.0.0.1:{port} default_server; server_name _; return 404; }}
    include {prefix}/conf.d/*.conf;
}}
"""

B0_SITE = """server {{
    listen 127.0.0.1:{port};
    server_name {domain};
    root {root};
    index index.html;
    location / {{ try_files $uri $uri/ $uri.html =404; }}
}}
"""


class B0Nginx:
    """The seed's first design: a ``server{}`` file per site, ``nginx -s reload`` to add one."""

    def __init__(self, root: Path) -> None:
        self.prefix = root / "nginx"
        self.sites_root = root / "sites"
        self.port = procs.free_port()
        for sub in ("logs", "tmp", "conf", "conf.d"):
            (self.prefix / sub).mkdir(parents=True, exist_ok=True)
        self.sites_root.mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "conf" / "nginx.conf"
        self.conf.write_text(B0_MAIN.format(prefix=self.prefix, port=self.port))
        self.proc: subprocess.Popen[bytes] | None = None
        self.reloads = 0

    def site_conf(self, domain: str, root: Path) -> str:
        return B0_SITE.format(port=self.port, domain=domain, root=root)

    def write_site(self, domain: str, root: Path | None = None) -> None:
        path = self.prefix / "conf.d" / f"{domain}.conf"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.site_conf(domain, root or self.sites_root / domain))
        os.rename(tmp, path)

    def start(self) -> None:
        self.proc = procs.start(
            ["nginx", "-p", str(self.prefix), "-c", str(self.conf), "-g", "daemon off;"],
            log=self.prefix / "logs" / "stdout.log",
        )
        procs.wait_for_port(self.port, proc=self.proc, timeout=120)

    def reload(self) -> None:
        subprocess.run(
            ["nginx", "-q", "-p", str(self.prefix), "-c", str(self.conf), "-s", "reload"],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        self.reloads += 1

    def processes(self) -> set[int]:
        return {self.proc.pid} | children(self.proc.pid) if self.proc else set()

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)


class Sshd:
    """sshd -D on a free port; logs in as this user with a generated ed25519 key."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = procs.free_port()
        self.username = getpass.getuser()
        self.client_key = root / "client_ed25519"
        host_key = _write_key(root / "host_ed25519")
        self.host_key = host_key.export_public_key().decode().strip()
        client = _write_key(self.client_key)
        (root / "authorized_keys").write_bytes(client.export_public_key())
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key}\n")
        self.config = root / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {root / 'host_ed25519'}\nPidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {root / 'authorized_keys'}\nAllowUsers {self.username}\n"
            "StrictModes no\nUsePAM no\nPubkeyAuthentication yes\nPasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            "MaxSessions 32\nMaxStartups 64\nLogLevel ERROR\n"
            f"Subsystem sftp internal-sftp\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        log = self.root / "sshd.log"
        self.proc = procs.start([SSHD, "-D", "-f", str(self.config), "-E", str(log)], log=log)
        procs.wait_for_port(self.port, proc=self.proc)

    def ssh_argv(self) -> list[str]:
        """The OpenSSH client options B0 uses: this key, this pinned host key, no config."""
        return [
            "-F", "/dev/null", "-i", str(self.client_key), "-p", str(self.port),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
        ]  # fmt: skip

    def ssh_argv_sftp(self) -> list[str]:
        """The same for sftp(1), whose port option is -P."""
        argv = self.ssh_argv()
        at = argv.index("-p")
        return [*argv[:at], "-P", *argv[at + 1 :]]

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc)


def _write_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(path)
    path.chmod(0o600)
    return key


class Stack:
    """Everything one run started; ``close()`` stops the processes and removes the dirs."""

    def __init__(self) -> None:
        self._stoppers: list[object] = []
        self._dirs: list[Path] = []

    def tempdir(self, prefix: str) -> Path:
        path = world_readable_tempdir(prefix)
        self._dirs.append(path)
        return path

    def our_nginx(self, name: str) -> OurNginx:
        server = OurNginx(self.tempdir(name))
        self._stoppers.append(server)
        return server

    def b0_nginx(self, name: str) -> B0Nginx:
        server = B0Nginx(self.tempdir(name))
        self._stoppers.append(server)
        return server

    def sshd(self) -> Sshd:
        server = Sshd(self.tempdir("sshd"))
        self._stoppers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in reversed(self._stoppers):
            with contextlib.suppress(Exception):
                server.stop()  # type: ignore[attr-defined]
        for path in self._dirs:
            shutil.rmtree(path, ignore_errors=True)
