"""Where to ask DNS: a name server's address and port, as settings spell it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Nameserver:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, default_port: int = 53) -> Nameserver:
        """``127.0.0.1:5354``, ``[::1]:53`` or a bare host."""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            return cls(host, int(rest[1:]) if rest.startswith(":") else default_port)
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host, int(port))
        return cls(text, default_port)

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"
