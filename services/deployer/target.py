"""A web host as one deployment uses it: its transport and where its nginx answers."""

from __future__ import annotations

from dataclasses import dataclass

from services.deployer.release import HostTransport
from services.deployer.settings import DeployerSettings


@dataclass(frozen=True)
class Target:
    host: HostTransport
    # Where the host's nginx answers the health check (with the site's Host header).
    http_host: str
    http_port: int
    # Where its nginx's TLS listener answers (same address as http_host).
    https_port: int = 8443
    # The web_hosts row's id ("local": the settings' web host, no row).
    host_id: str = "local"

    @property
    def name(self) -> str:
        return self.host.name

    @classmethod
    def local(cls, host: HostTransport, settings: DeployerSettings) -> Target:
        """The web host of the settings (used while no web host is registered)."""
        return cls(host, settings.http_host, settings.http_port, settings.https_port)
