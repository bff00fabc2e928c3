"""Atomic file writes: write a temporary file in the target folder, then `os.replace` it into place.

Every file the kit writes for others to read (JSON reports, manifests, checkpoints, PNGs) goes through
:func:`atomic_path`, so a reader sees the old file or the new one, never half of one, and a failed write
leaves no temporary file behind. Torch-free and cheap to import.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_append_text", "atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "folder_write_problem"]

_TEMP_NAME_TRIES = 100


@contextlib.contextmanager
def atomic_path(path: "str | os.PathLike") -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path``; on success move it onto ``path``.

    The temporary file is hidden and unique (``.NAME.<random>.tmp``), so concurrent writers of the same
    path do not collide (the last to finish wins). It is created with mode 0o666 and the process umask
    applied by the kernel, the permissions ``open(path, "w")`` would give; a writer that replaces the
    file instead of truncating it (safetensors does, with mode 0o600) gets those permissions back. When
    the block ends normally the file is fsynced and ``os.replace``-d onto ``path``; on any exception,
    the replace included, it is removed. The parent folder is created.

        with atomic_path("out/model.safetensors") as tmp:
            save_file(tensors, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        mode = os.stat(tmp).st_mode & 0o7777
        yield tmp
        if os.stat(tmp).st_mode & 0o7777 != mode:
            os.chmod(tmp, mode)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path) -> Path:
    """Create ``.NAME.<12 hex>.tmp`` beside ``path`` exclusively (O_EXCL), mode 0o666 & ~umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_NAME_TRIES):
        tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary name beside {path} after {_TEMP_NAME_TRIES} tries")


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to disk, so that the rename never lands before the bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: "str | os.PathLike", data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`); return the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; return the path."""
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


def folder_write_problem(folder: "str | os.PathLike") -> "str | None":
    """None when ``folder`` exists, or can be created, and a file can be written in it; else the reason.

    The probe is a real write of a temporary file (removed again): root ignores permission bits, and a
    read-only mount or a full disk only shows when something is written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = _create_temp(folder / ".write-probe")
        os.unlink(probe)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
