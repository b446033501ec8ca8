"""Checking a build's output before it becomes a release: only regular files and
directories, within the file-count and size limits.

Every symlink is refused. One that is absolute or climbs out of the tree is reported as
``output_symlink_escape``; one that stays inside is ``output_symlink``: a release is a
manifest of (path, sha256, mode) with no way to express a link, so a pack that wants an
alias writes a copy. Devices, FIFOs and sockets are ``output_special_file``; more than
``max_files`` files (or directories) or ``max_bytes`` bytes is ``release_too_large``.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from shared.errors import Permanent


def check_output(root: Path, *, max_files: int, max_bytes: int) -> None:
    """Raise ``Permanent`` for the first violation found. Blocking: run it in a thread.

    Walks with ``lstat`` only, so no link is ever followed, and stops as soon as a limit is
    passed (a tree of a million files costs no more than ``max_files`` entries).
    """
    files = dirs = size = 0
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root / rel_dir) as entries:
            for entry in entries:
                rel = posixpath.join(rel_dir, entry.name)
                mode = entry.stat(follow_symlinks=False).st_mode
                if stat.S_ISDIR(mode):
                    dirs += 1
                    pending.append(rel)
                elif stat.S_ISREG(mode):
                    files += 1
                    size += entry.stat(follow_symlinks=False).st_size
                elif stat.S_ISLNK(mode):
                    raise _symlink_error(rel, os.readlink(entry.path))
                else:
                    raise Permanent(
                        f"the build output {rel!r} is a {_kind(mode)}, not a regular file",
                        code="output_special_file",
                        details={"path": rel},
                    )
                if files > max_files or dirs > max_files or size > max_bytes:
                    raise too_large(max_files, max_bytes)


def output_exceeds(root: Path, *, max_files: int, max_bytes: int) -> bool:
    """Whether a tree that a build is still writing has passed the limits. Blocking.

    Safe while an untrusted process reshapes the tree: ``os.fwalk`` moves by directory fd
    and never through a symlink, so a directory swapped for a link cannot lead it out.
    """
    files = dirs = size = 0
    for _, dirnames, filenames, dir_fd in os.fwalk(root, follow_symlinks=False):
        dirs += len(dirnames)
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if stat.S_ISREG(st.st_mode):
                files += 1
                size += st.st_size
        if files > max_files or dirs > max_files or size > max_bytes:
            return True
    return False


def too_large(max_files: int, max_bytes: int) -> Permanent:
    return Permanent(
        f"the build output exceeds the release limits ({max_files} files, {max_bytes} bytes)",
        code="release_too_large",
        details={"max_files": max_files, "max_bytes": max_bytes},
    )


def _symlink_error(rel: str, target: str) -> Permanent:
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
    details = {"path": rel, "target": target}
    if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
        return Permanent(
            f"the build output {rel!r} is a symlink leaving the site ({target!r})",
            code="output_symlink_escape",
            details=details,
        )
    return Permanent(
        f"the build output {rel!r} is a symlink ({target!r}); releases hold only regular "
        "files: write a copy instead",
        code="output_symlink",
        details=details,
    )


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "special file"
