"""Atomic file writes: write a temporary file in the target folder, then `os.replace` it into place."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: "str | os.PathLike", data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: "str | os.PathLike", obj) -> Path:
    """JSON with NaN/Inf refused (allow_nan=False): outputs other programs read must be strict JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_append_text(path: "str | os.PathLike", text: str) -> Path:
    """Append by rewriting: the old content plus `text` replaces the file in one step, so a crash never
    leaves a half-written run in the log."""
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    return atomic_write_text(path, old + text)
