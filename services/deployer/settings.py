"""The deployer's settings: the shared pieces plus its work dirs, limits and timeouts."""

from __future__ import annotations

from pathlib import Path

from shared.settings import PROJECT_ROOT, CommonSettings, WebHostSettings


class DeployerSettings(CommonSettings, WebHostSettings):
    # Each deployment builds in <work_root>/<deployment_id>/, removed afterwards.
    work_root: Path = PROJECT_ROOT / "var" / "work"
    # Releases kept per site (the current one included) for instant rollback.
    keep_releases: int = 5
    # Seconds for the one GET through nginx after activation.
    health_check_timeout: float = 5.0
    # Seconds the build and upload phases may take before the attempt is retried.
    deploy_timeout: float = 300
    # Limits on one rendered release (a runaway template must not fill the disk).
    max_release_files: int = 10_000
    max_release_bytes: int = 200 * 1024 * 1024
    # Seconds a stopping process waits for in-flight jobs before it closes anyway
    # (unacked jobs go back to the queue and another deployer picks them up).
    shutdown_grace: float = 60
