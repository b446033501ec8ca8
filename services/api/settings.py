"""Settings of the API service."""

from __future__ import annotations

from shared.settings import CommonSettings, DomainSettings, WebHostSettings


class ApiSettings(CommonSettings, WebHostSettings, DomainSettings):
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # Requests with a larger body are refused with 413 before they are parsed.
    max_body_bytes: int = 1_000_000
    # The relay publishes at once after a commit in this process; it polls for rows
    # written by other processes (or left over after a broker outage) at this interval.
    outbox_poll_interval: float = 0.5
    outbox_batch: int = 200
    # How long a publish may wait for the broker's confirm before the relay retries it.
    publish_timeout: float = 10.0
    # On SIGTERM: seconds the requests in flight may take to finish, and then again the
    # seconds the outbox relay may take to publish what is still pending, before the
    # process exits anyway (what is left is published by the next API process).
    api_shutdown_grace: int = 20
    # A deployment with no outcome after this long is failed and announced (the reaper).
    deployment_timeout: float = 1800.0
    reaper_interval: float = 30.0
    # The rollout driver runs after every deployment outcome this process records, and at
    # least this often (outcomes recorded by other API processes, lost wake-ups).
    rollout_driver_interval: float = 5.0
    # Base URL of this API as customers reach it (deploy hook URLs are built from it).
    public_url: str = ""
    # Deploy hooks: a burst of requests, then this many per minute per hook.
    hook_burst: int = 3
    hook_per_minute: float = 6.0

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.api_host}:{self.api_port}"
