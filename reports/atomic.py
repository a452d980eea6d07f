"""Atomic file writes: write a sibling temp file, then os.replace, so a crash never leaves half a file."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO


def write_with(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Create a temp file next to `path` (usual umask permissions), let `fill` write it, move it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp_path, "xb") as tmp:
            fill(tmp)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 text to `path` atomically."""
    write_with(path, lambda tmp: tmp.write(text.encode("utf-8")))


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    write_with(path, lambda tmp: tmp.write(data))


def copy_file(source: Path, path: Path) -> None:
    """Copy `source` to `path` atomically."""
    with open(source, "rb") as src:
        write_with(path, lambda tmp: shutil.copyfileobj(src, tmp))
