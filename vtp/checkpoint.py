"""Reading and writing checkpoints in the official layout (spec §2.7): a folder with config.json and
model.safetensors, a sharded model.safetensors.index.json, or pytorch_model.bin.

Loading never runs random initialisation: the model is built on the meta device and the file's tensors
are assigned in place (safetensors are memory-mapped, so pages are read on first use).
"""

from __future__ import annotations

import gc
import logging
import re
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

from .config import VTPConfig
from .io_utils import atomic_path, atomic_write_json
from .layout import BIN_NAME, SAFETENSORS_INDEX_NAME, SAFETENSORS_NAME, CheckpointError, find_weights

# the layout names and CheckpointError live in the torch-free vtp.layout; re-exported for existing imports
__all__ = ["BIN_NAME", "SAFETENSORS_INDEX_NAME", "SAFETENSORS_NAME", "CheckpointError", "check_state_dict",
           "SYNTHETIC_KEY", "find_weights", "load_model", "read_state_dict", "save_model", "synthetic_mark"]

logger = logging.getLogger(__name__)

# computed buffers: rebuilt at load, and checked against the file where the file has them
COMPUTED_BUFFERS = ("trunk.rope_embed.periods", "pixel_decoder.rope_embed.periods")
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
# safetensors metadata entry that marks synthetic weights ("synthetic:<preset>:seed=<seed>"); loaders of the
# official layout (transformers, the original VTP) read only "format" and ignore it
SYNTHETIC_KEY = "vtp_synthetic"


def read_state_dict(kind: str, files: List[Path]) -> Dict[str, torch.Tensor]:
    """Tensors of the checkpoint files, on CPU; safetensors memory-mapped."""
    state: Dict[str, torch.Tensor] = {}
    for path in files:
        if kind == "bin":
            try:
                part = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # pickle, zip and weights_only errors have many types
                raise CheckpointError(f"{path}: cannot read as a PyTorch checkpoint ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}); the file is truncated, "
                                      "corrupt or not a plain state dict") from None
            if not isinstance(part, dict) or not all(isinstance(v, torch.Tensor) for v in part.values()):
                raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(part).__name__}")
        else:
            part = _read_safetensors(path)
        dup = state.keys() & part.keys()
        if dup:
            raise CheckpointError(f"{path}: tensor(s) also present in another shard: {', '.join(sorted(dup)[:5])}")
        state.update(part)
    return state


def _read_safetensors(path: Path) -> Dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    size = path.stat().st_size
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: cannot read as safetensors ({size} bytes; {type(e).__name__}: {e}); the "
                              "file is truncated or corrupt: download it again or check it with "
                              "`python -m vtp.weights verify <folder>`") from None


def synthetic_mark(folder: "str | Path") -> Optional[str]:
    """The ``vtp_synthetic`` label of the weights the loader would read from ``folder`` (read from the
    safetensors headers only), None for unmarked weights and for pytorch_model.bin. Raises CheckpointError
    when the folder has no weights or a header cannot be read."""
    return _synthetic_label(*find_weights(folder))


def _synthetic_label(kind: str, files: List[Path]) -> Optional[str]:
    from safetensors import SafetensorError, safe_open

    if kind == "bin":
        return None
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                label = (f.metadata() or {}).get(SYNTHETIC_KEY)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot read the safetensors header ({type(e).__name__}: {e}); the file "
                                  "is truncated or corrupt") from None
        if label:
            return label
    return None


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], where: str, config: VTPConfig) -> None:
    """Raise one CheckpointError listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: file {list(state[k].shape)} vs config {list(expected[k].shape)}"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    if not (missing or unexpected or shapes):
        return

    def block(title: str, items: List[str]) -> str:
        shown = "\n".join(f"    {x}" for x in items[:25])
        more = f"\n    ... and {len(items) - 25} more" if len(items) > 25 else ""
        return f"\n  {title} ({len(items)}):\n{shown}{more}"

    msg = f"{where} does not fit its config {config.source or '(given)'}:"
    if missing:
        msg += block("missing keys", missing)
    if unexpected:
        msg += block("unexpected keys", unexpected)
    if shapes:
        msg += block("shape mismatches", shapes)
    msg += "\n  Check that config.json belongs to these weights (Small/Base/Large differ in width and depth)."
    raise CheckpointError(msg)


def load_model(cls, path, *, device="cpu", dtype=torch.float32, verify: str = "auto"):
    t0 = time.perf_counter()
    folder = Path(path)
    if not folder.exists():
        raise CheckpointError(f"{folder}: checkpoint folder not found; download it with `python -m vtp.weights "
                              "download VTP-Small-f16d64` or place config.json and model.safetensors there")
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: expected a checkpoint folder (config.json + model.safetensors), got a file")
    config = VTPConfig.from_json(folder / "config.json")
    kind, files = find_weights(folder)
    if verify not in ("auto", "full", "none"):
        raise ValueError(f"verify={verify!r} must be 'auto', 'full' or 'none'")
    if verify != "none":
        _verify_manifest(folder, full=True if verify == "full" else "auto")
    state = read_state_dict(kind, files)
    where = str(files[0] if len(files) == 1 else folder / SAFETENSORS_INDEX_NAME)

    # building thousands of small objects triggers a full garbage collection (~90 ms of a ~140 ms load)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with torch.device("meta"):
            model = cls(config)
    finally:
        if gc_was_enabled:
            gc.enable()
    # the RoPE periods are in the file (bf16); recompute them and check the file agrees
    for key in COMPUTED_BUFFERS:
        if key in state:
            state[key] = state[key].to(torch.bfloat16)
    check_state_dict(model, state, where, config)
    for name, tensor in state.items():
        if tensor.is_floating_point() and name not in COMPUTED_BUFFERS and tensor.dtype != dtype:
            state[name] = tensor.to(dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_buffers()
    _check_rope_periods(model, state, where)
    model.synthetic_label = _synthetic_label(kind, files)
    model.weights_source = f"{model.synthetic_label} from {folder}" if model.synthetic_label else str(folder)
    model.checkpoint_files = [str(f) for f in files]
    if str(device) != "cpu":
        model.to(device)
    model.eval()
    logger.info("loaded %s (%s, %d tensors) in %.3f s", folder, kind, len(state), time.perf_counter() - t0)
    return model


def _check_rope_periods(model, state: Dict[str, torch.Tensor], where: str) -> None:
    for key, rope in zip(COMPUTED_BUFFERS, model.rope_modules()):
        if key in state and not torch.equal(state[key], rope.periods):
            raise CheckpointError(f"{where}: {key} = {state[key].tolist()} differs from the RoPE periods of base "
                                  f"{rope.base} for head dim {rope.head_dim} ({rope.periods.tolist()}); the file "
                                  "does not come from a VTP model of this config")


def _verify_manifest(folder: Path, full) -> None:
    from . import weights

    try:
        summary = weights.verify_manifest(folder, full=full)
    except weights.WeightsError as e:
        raise CheckpointError(str(e)) from None
    if summary:
        logger.info("%s: manifest verified (%s, %d files)", folder, summary["verified"], summary["files"])


def save_model(model, folder, max_shard_bytes: Optional[int] = None) -> Path:
    """config.json + model.safetensors (or model-0000i-of-0000n.safetensors shards and an index when the
    payload exceeds `max_shard_bytes`), each written atomically.

    Synthetic weights (``model.synthetic_label`` set) carry it as the ``vtp_synthetic`` entry of every
    file's safetensors metadata (and of the index's "metadata"), so that they load as synthetic again.

    Safetensors weights of an earlier save that this one does not rewrite (a model.safetensors that would
    shadow new shards, an old index, shards of another count) are removed, so that the folder loads what
    was saved; a pytorch_model.bin is left alone (safetensors take precedence over it).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in state.items():
        nbytes = v.numel() * v.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    meta = {"format": "pt"}
    label = getattr(model, "synthetic_label", None)
    if label:
        meta[SYNTHETIC_KEY] = str(label)
    if len(shards) == 1:
        with atomic_path(folder / SAFETENSORS_NAME) as tmp:
            save_file(shards[0], str(tmp), metadata=meta)
        written = {SAFETENSORS_NAME}
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            with atomic_path(folder / name) as tmp:
                save_file(shard, str(tmp), metadata=meta)
            weight_map.update({k: name for k in shard})
        total = sum(v.numel() * v.element_size() for v in state.values())
        index_meta = {"total_size": total, **({SYNTHETIC_KEY: str(label)} if label else {})}
        atomic_write_json(folder / SAFETENSORS_INDEX_NAME, {"metadata": index_meta,
                                                            "weight_map": dict(sorted(weight_map.items()))})
        written = {*weight_map.values(), SAFETENSORS_INDEX_NAME}
    _remove_stale_weights(folder, written)
    model.config.save(folder)
    from . import weights

    if (folder / weights.MANIFEST_NAME).exists():  # keep an existing manifest true to the files
        weights.write_manifest(folder, source="save_pretrained")
    return folder


def _remove_stale_weights(folder: Path, written: set) -> None:
    """Delete model.safetensors, the index and model-*-of-*.safetensors shards not in `written`."""
    for path in folder.iterdir():
        name = path.name
        stale = name in (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME) or SHARD_NAME.fullmatch(name)
        if stale and name not in written and path.is_file():
            path.unlink()
            logger.info("removed %s of an earlier save", path)
