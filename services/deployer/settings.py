"""The deployer's settings: the shared pieces plus its work dirs, limits and timeouts."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pydantic import Field

from shared.settings import PROJECT_ROOT, CommonSettings, WebHostSettings

NGINX_PROFILES_DIR = PROJECT_ROOT / "infra" / "nginx" / "profiles"


class DeployerSettings(CommonSettings, WebHostSettings):
    # Each deployment builds in <work_root>/<deployment_id>/, removed afterwards.
    work_root: Path = PROJECT_ROOT / "var" / "work"
    # Releases kept per site (the current one included) for instant rollback.
    keep_releases: int = 5
    # Seconds a started phase waits before it is reported as progress (one report then
    # carries every phase since): deployments that finish sooner report only their outcome.
    # 0: report each phase as it starts.
    progress_report_delay: float = 1.0
    # Seconds for the one GET through nginx after activation.
    health_check_timeout: float = 5.0
    # Seconds the build and upload phases may take before the attempt is retried.
    deploy_timeout: float = 300
    # Limits on one rendered release (a runaway template must not fill the disk).
    max_release_files: int = 10_000
    max_release_bytes: int = 200 * 1024 * 1024
    # Template build steps (services/deployer/sandbox.py): wall-clock seconds per step (the
    # most a manifest may ask for), and the rlimits of a step: address space and largest
    # file in bytes, processes of its build uid, CPU seconds.
    build_timeout: float = 60
    build_memory_bytes: int = 1024 * 1024 * 1024
    build_max_processes: int = 64
    build_max_file_bytes: int = 200 * 1024 * 1024
    build_cpu_seconds: int = 60
    # Bytes of a step's stdout+stderr kept (the tail; the rest is read and dropped).
    build_output_limit: int = 64 * 1024
    # Seconds between checks of a running step's site against the release limits.
    build_watch_interval: float = 0.5
    # Each running step gets a uid of its own from [base, base + count), claimed with a lock
    # file in build_uid_lock_dir, shared by every deployer process on the machine whatever
    # checkout it runs from (a build's uid is killed whole after its step: two deployers
    # holding one uid would kill each other's builds).
    build_uid_base: int = 200_000
    build_uid_count: int = 32
    build_uid_lock_dir: Path = Path(tempfile.gettempdir()) / "sitefleet-build-uids"
    bwrap_path: Path = Path("/usr/bin/bwrap")
    # Seconds a stopping process waits for in-flight jobs before it closes anyway
    # (unacked jobs go back to the queue and another deployer picks them up).
    shutdown_grace: float = 60
    # The web host's object store; None: <sites_root>/.objects. Must be on the sites'
    # filesystem (releases are hardlinks into it) and outside what nginx serves.
    objects_root: Path | None = None
    # Links per object copy before another copy starts (ext4 refuses the 65,001st link;
    # EMLINK is handled too, this only lets tests and other filesystems lower the ceiling).
    object_max_links: int = 65_000
    # Registered web hosts (services/deployer/hosts.py) a site is placed on at its first
    # deployment: the least-loaded enabled ones.
    hosts_per_site: int = Field(default=1, ge=1)
    # Web hosts reached over SSH (services/deployer/transport/ssh.py). Their sites root and
    # object store (None: <sites root>/.objects), the same layout as the local web host's.
    ssh_sites_root: str = "/srv/sitefleet/sites"
    ssh_objects_root: str | None = None
    # The host's interpreter that runs the stdlib-only host agent.
    ssh_remote_python: str = "/usr/bin/python3"
    # Seconds to open and authenticate a connection, and for one operation other than an
    # upload (an upload is bounded by deploy_timeout).
    ssh_connect_timeout: float = 10.0
    ssh_command_timeout: float = 60.0
    # A silent connection is declared lost after interval * count_max seconds.
    ssh_keepalive_interval: float = 15.0
    ssh_keepalive_count_max: int = 3
    # Operations in flight at once on one host's pooled connection (sshd's MaxSessions,
    # 10 by default, must allow at least this many).
    ssh_max_channels: int = 8
    # The local web host's nginx, for templates with a rule profile (services/deployer/
    # nginx.py): argv that runs it, e.g. ["nginx", "-p", PREFIX, "-c", CONF] ("-t -q" and
    # "-s reload" are appended); None: plain sites only. Its catch-all's listen address
    # (None: http_host:http_port). A host reloads at most once per window (seconds).
    nginx_command: list[str] | None = None
    nginx_listen: str | None = None
    nginx_reload_window: float = 2.0
    # Seconds a host's nginx may take to serve new rules after its reload.
    nginx_reload_timeout: float = 15.0
    # Where the rule profiles' server blocks are (<profile>.conf).
    nginx_profiles_dir: Path = NGINX_PROFILES_DIR

    @property
    def local_nginx_listen(self) -> str:
        return self.nginx_listen or f"{self.http_host}:{self.http_port}"
