"""Atomic file writes: whoever opens the file sees its old content or the complete new one, never a partial file.

The content goes into a temporary file ``.<name>.<random>.tmp`` in the target's folder (same file system, so the final
``os.replace`` is an atomic rename) and is moved into place only once it is complete; on any failure, including an
exception raised by the caller's writer, the temporary file is removed and the target is left as it was. Errors are
re-raised unchanged (callers that want a friendlier message for a full disk check ``errno.ENOSPC``).

A new file gets the permissions ``open(path, "w")`` would give it (0o666 minus the process umask), not the owner-only
0o600 of ``tempfile.mkstemp``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomically", "write_text_atomically"]


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write ``path`` through ``write(f)``, ``f`` a binary file open for writing, atomically; returns ``path``.

    Missing parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            mode = _new_file_mode()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``write_atomically``); returns ``path``."""
    data = text.encode(encoding)
    return write_atomically(path, lambda f: f.write(data))


def _new_file_mode() -> int | None:
    """0o666 minus the umask, read from ``/proc/self/status`` (Linux); None where that cannot be read (the file then
    keeps mkstemp's 0o600: setting the umask to read it would briefly change it for every thread)."""
    if not hasattr(os, "fchmod"):
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None
