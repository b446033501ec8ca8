"""Settings of the notifier service."""

from __future__ import annotations

from pydantic import Field

from shared.settings import CommonSettings


class NotifierSettings(CommonSettings):
    # Ops webhook channels: every failure event is POSTed to each of these URLs.
    ops_webhook_urls: list[str] = Field(default_factory=list)
    webhook_timeout: float = 10.0
