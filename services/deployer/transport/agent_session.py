"""The deployer's end of one host agent process over an SSH channel: sending the agent and
its requests, reading its framed replies, streaming a release's missing objects."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
from pathlib import Path
from typing import IO, Any

import asyncssh

from services.deployer import layout, nginx_rules, objects
from services.deployer.objects import Entry
from services.deployer.transport import host_agent
from services.deployer.transport.host_agent import FRAME

# Bytes of release files read per hop to a worker thread while objects are streamed.
_SEND_BATCH = 1024 * 1024
# Characters of the agent's stderr kept in an error message; seconds to wait for it.
_STDERR_TAIL = 2000
_STDERR_WAIT = 5.0


class AgentError(Exception):
    """The agent's reply was an error frame."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class AgentDied(Exception):
    """The agent ended without a reply (its stderr is the message)."""


class AgentSession:
    """The streams of one agent process, which serves one request after another."""

    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    def alive(self) -> bool:
        """Whether the agent can take another request (as far as can be seen from here)."""
        process = self._process
        return (
            process.exit_status is None
            and not process.stdout.at_eof()
            and not process.channel.get_connection().is_closed()
        )

    def close(self) -> None:
        """End the agent (closing the channel; the agent sees EOF, or SIGHUP)."""
        self._process.close()

    async def send(self, data: bytes) -> bool:
        """False if the agent no longer reads (it has replied, or died: ``reply`` says)."""
        try:
            self._process.stdin.write(data)
            await self._process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return False
        return True

    async def send_objects(self, src_dir: Path, entries: list[Entry]) -> None:
        reader = ObjectStream(src_dir, entries)
        try:
            while batch := await asyncio.to_thread(reader.read_batch):
                if not await self.send(batch):
                    break
        finally:
            reader.close()

    async def reply(self) -> dict[str, Any]:
        """The agent's next frame; ``AgentError`` if it is an error."""
        stdout = self._process.stdout
        try:
            (size,) = FRAME.unpack(await stdout.readexactly(FRAME.size))
            message: dict[str, Any] = json.loads(await stdout.readexactly(size))
        except asyncio.IncompleteReadError:
            if self._process.channel.get_connection().is_closed():
                raise
            raise AgentDied(await self._stderr_tail()) from None
        if "error" in message:
            raise AgentError(message["error"]["kind"], message["error"]["message"])
        return message

    async def _stderr_tail(self) -> str:
        text = b""
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            async with asyncio.timeout(_STDERR_WAIT):
                text = await self._process.stderr.read()
                await self._process.wait_closed()
        status = self._process.exit_status
        tail = text.decode(errors="replace").strip()[-_STDERR_TAIL:]
        return f"exit status {status}: {tail or '(no output)'}"


class ObjectStream:
    """The bytes of ``entries``' files, concatenated, each exactly its manifest size.

    A file that vanished, shrank or cannot be read is padded with zeros (one that grew is cut
    short): the stream stays in step with what the agent expects, and the agent refuses the
    object's hash, so the upload fails as ``release_changed_during_upload``."""

    def __init__(self, src_dir: Path, entries: list[Entry]) -> None:
        self._src_dir = src_dir
        self._pending = iter(entries)
        self._file: IO[bytes] | None = None
        self._left = 0

    def read_batch(self) -> bytes:
        """Up to ~1 MiB of the stream; b"" at its end."""
        batch = bytearray()
        while len(batch) < _SEND_BATCH:
            if self._left == 0:
                self.close()
                entry = next(self._pending, None)
                if entry is None:
                    break
                self._left = entry.size
                self._file = self._open(entry)
                continue
            want = min(self._left, _SEND_BATCH - len(batch))
            chunk = self._read(want)
            batch += chunk or bytes(want)
            self._left -= len(chunk) or want
        return bytes(batch)

    def _read(self, size: int) -> bytes:
        if self._file is None:
            return b""
        try:
            return self._file.read(size)
        except OSError:
            self.close()
            return b""

    def _open(self, entry: Entry) -> IO[bytes] | None:
        try:
            fd = os.open(self._src_dir / entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        return open(fd, "rb")  # closed by close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


@functools.cache
def agent_modules() -> bytes:
    """What BOOTSTRAP reads first: the agent and the modules it imports, as source."""
    modules = [objects, layout, nginx_rules, host_agent]
    parts = [f"{len(modules)}\n".encode()]
    for module in modules:
        source = Path(str(module.__file__)).read_bytes()
        parts += [f"{module.__name__} {len(source)}\n".encode(), source]
    return b"".join(parts)
