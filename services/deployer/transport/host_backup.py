"""A web host's side of ``sitefleet backup`` / ``restore`` over SSH: one exec per host of
the host's ``python3 -I -c BOOTSTRAP`` (host_agent's), which loads the modules sent as
source on stdin (state_archive.py, state_restore.py and what they import; this one last)
and serves one request: ``export`` (state_archive.export_state) or ``import``
(state_restore.import_state). A local host runs those two in the CLI's own process.

Wire protocol: stdin carries the modules, then one JSON request line. A chunk is a 4-byte
big-endian length and that many bytes; a zero-length chunk ends a stream. ``export``:
stdout carries the archive as chunks, then a frame (length + JSON) ``{"ok": summary}``
or ``{"error": {"kind", "message"}}``. ``import``: stdin carries the archive as chunks
after the request line; stdout one frame.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path
from typing import IO, Any

from services.deployer.nginx_rules import RulesRefused
from services.deployer.state_archive import CHUNK_BYTES, BadArchive, export_state
from services.deployer.state_restore import import_state

CHUNK = struct.Struct("!I")


class ChunkWriter(io.RawIOBase):
    """A writable stream sent as chunks (see the module docstring)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data):
            self._out.write(CHUNK.pack(len(data)))
            self._out.write(data)
        return len(data)

    def end(self) -> None:
        self._out.write(CHUNK.pack(0))
        self._out.flush()


class ChunkReader(io.RawIOBase):
    """The stream a peer sent as chunks; EOF at the zero-length chunk."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self._left = 0
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._done:
            return 0
        if self._left == 0:
            header = self._raw.read(CHUNK.size)
            if len(header) != CHUNK.size:
                raise EOFError("the stream ended without its last chunk")
            (self._left,) = CHUNK.unpack(header)
            if self._left == 0:
                self._done = True
                return 0
        data = self._raw.read(min(len(buffer), self._left))
        if not data:
            raise EOFError("the stream ended inside a chunk")
        buffer[: len(data)] = data
        self._left -= len(data)
        return len(data)


def encode_frame(value: object) -> bytes:
    data = json.dumps(value, separators=(",", ":")).encode()
    return CHUNK.pack(len(data)) + data


def serve(request: dict[str, Any], stdin: IO[bytes], chunks: ChunkWriter) -> Any:
    sites_root = Path(request["sites_root"])
    if not sites_root.is_absolute():
        raise BadArchive(f"sites root {sites_root} is not an absolute path")
    objects_root = Path(request["objects_root"]) if request.get("objects_root") else None
    if request["op"] == "export":
        buffered = io.BufferedWriter(chunks, buffer_size=CHUNK_BYTES)
        try:
            return export_state(sites_root, objects_root, buffered)
        finally:
            buffered.flush()
    if request["op"] == "import":
        reader = io.BufferedReader(ChunkReader(stdin), buffer_size=CHUNK_BYTES)
        return import_state(
            sites_root,
            objects_root,
            reader,
            max_links=int(request["max_links"]),
            sha256=request.get("sha256"),
            current=request.get("current"),
            nginx_command=request.get("nginx_command"),
            force=bool(request.get("force")),
        )
    raise BadArchive(f"unknown operation {request['op']!r}")


def main() -> None:
    """One request per process: the request line, then the streams (module docstring)."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    request = json.loads(stdin.readline())
    chunks = ChunkWriter(stdout)
    try:
        reply: dict[str, Any] = {"ok": serve(request, stdin, chunks)}
    except RulesRefused as exc:
        reply = {"error": {"kind": "rules_refused", "message": str(exc)}}
    except BadArchive as exc:
        reply = {"error": {"kind": "bad_archive", "message": str(exc)}}
    except (OSError, ValueError) as exc:
        reply = {"error": {"kind": "io", "message": f"{type(exc).__name__}: {exc}"}}
    if request.get("op") == "export":
        chunks.end()  # the archive's stream ends before the reply, even a failed one
    stdout.write(encode_frame(reply))
    stdout.flush()
