"""What makes a complete checkpoint folder, and which of its files the loader reads.

A folder in the official layout holds ``config.json`` and the weights in one of three forms, taken in
this order of preference (that of transformers) when several are present:

1. ``model.safetensors``;
2. ``model.safetensors.index.json`` and every shard file its ``weight_map`` names;
3. ``pytorch_model.bin``.

This is the one definition used by the loader (``vtp.checkpoint``), the weights tool (``vtp.weights``)
and the environment check (``verify.env_check``). Torch-free, so ``python -m vtp.weights`` stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath

__all__ = [
    "BIN_NAME",
    "CONFIG_NAME",
    "SAFETENSORS_INDEX_NAME",
    "SAFETENSORS_NAME",
    "CheckpointError",
    "find_weights",
    "is_weight_file",
    "missing_files",
]

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
BIN_NAME = "pytorch_model.bin"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, unreadable, or does not fit its config.

    ``missing`` names, relative to the folder, what :func:`find_weights` looked for and did not find
    (empty for other problems).
    """

    def __init__(self, message: str, missing: "list[str] | None" = None):
        super().__init__(message)
        self.missing = list(missing or [])


def is_weight_file(name: str) -> bool:
    """True for a file a loader could read weights from: ``*.safetensors``, ``*.bin`` or the index."""
    base = PurePosixPath(name).name
    return base.endswith(WEIGHT_SUFFIXES) or base == SAFETENSORS_INDEX_NAME


def find_weights(folder: "str | os.PathLike") -> tuple[str, list[Path]]:
    """``(kind, files)`` of the weights the loader reads from ``folder``.

    ``kind`` is "safetensors", "sharded" or "bin"; ``files`` are paths under ``folder`` (the shards in
    name order). Raises CheckpointError, with ``missing`` set, when there are no weights, the index is
    unreadable or names a shard that is not there.
    """
    folder = Path(folder)
    single = folder / SAFETENSORS_NAME
    if single.is_file():
        return "safetensors", [single]
    index = folder / SAFETENSORS_INDEX_NAME
    if index.is_file():
        shards = _index_shards(index)
        absent = [s for s in shards if not (folder / s).is_file()]
        if absent:
            raise CheckpointError(f"{index}: shard file(s) not found in {folder}: {', '.join(absent)}", absent)
        return "sharded", [folder / s for s in shards]
    binary = folder / BIN_NAME
    if binary.is_file():
        return "bin", [binary]
    raise CheckpointError(
        f"{folder}: no weights found (looked for {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, {BIN_NAME}); "
        "download them with `python -m vtp.weights download VTP-Small-f16d64` or place them by hand "
        "(weights/README.md)",
        [SAFETENSORS_NAME],
    )


def _index_shards(index: Path) -> list[str]:
    """The shard file names an index's ``weight_map`` names, sorted; CheckpointError when it is unusable."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}"
        raise CheckpointError(
            f"{index}: not a valid safetensors index ({reason}); it needs a 'weight_map' object of tensor "
            "name -> shard file",
            [f"{index.name} (unreadable: {reason})"],
        ) from None
    for shard in shards:
        rel = PurePosixPath(shard) if isinstance(shard, str) else None
        if rel is None or not rel.parts or rel.is_absolute() or ".." in rel.parts:
            raise CheckpointError(
                f"{index}: shard {shard!r} is not a file name inside the folder",
                [f"{index.name} (bad shard name {shard!r})"],
            )
    return shards


def missing_files(folder: "str | os.PathLike") -> list[str]:
    """What a complete checkpoint needs that ``folder`` lacks (names relative to it); [] when complete."""
    folder = Path(folder)
    missing = [] if (folder / CONFIG_NAME).is_file() else [CONFIG_NAME]
    try:
        find_weights(folder)
    except CheckpointError as e:
        missing += e.missing
    return missing


def unreadable_files(folder: "str | os.PathLike") -> list[str]:
    """Problems of the weights files the loader would read that show without loading them, one line each:
    an empty file (a failed download or copy), a safetensors file whose header does not parse. [] when
    there are none, or when the weights are missing (`missing_files` says that)."""
    try:
        _, files = find_weights(folder)
    except CheckpointError:
        return []
    problems = []
    for path in files:
        size = path.stat().st_size
        if size == 0:
            problems.append(f"{path}: the file is empty (0 bytes): a failed download or copy")
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt") as f:
                    f.keys()
            except Exception as e:  # a truncated header or not safetensors at all
                problems.append(f"{path}: not a readable safetensors file ({size} bytes; {e})")
    return problems
