"""What the demo and the verification harness share: finding the weights (or falling back to synthetic
ones, loudly), the default image and prompts, and turning a reference model into a device candidate."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Optional, Tuple

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "VTP-Small-f16d64"
DEFAULT_WEIGHTS = Path("weights") / DEFAULT_PRESET
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = ("a diagram", "a dog", "a cat", "a person")
SYNTHETIC_NOTICE = ("NOTICE: no checkpoint found at {path}; using SYNTHETIC random weights ({preset}). Outputs "
                    "are not meaningful images or probabilities; accuracy and timing are still real measurements "
                    "of the model's computation. Download weights with `python -m vtp.weights download {preset}`.")


class WeightsMissing(RuntimeError):
    """Weights were required (--require-weights) but not found."""


def default_weights_dir() -> Path:
    """`weights/VTP-Small-f16d64` under the current directory when it holds a checkpoint, else the same folder
    in this checkout (so `bash /path/to/run_verify.sh` finds the checkout's weights from anywhere)."""
    for folder in (DEFAULT_WEIGHTS, REPO_ROOT / DEFAULT_WEIGHTS):
        if (folder / "config.json").is_file():
            return folder
    return DEFAULT_WEIGHTS


def load_weights(weights: "str | os.PathLike | None" = None, *, require: bool = False,
                 preset: str = DEFAULT_PRESET, seed: int = 0):
    """(model on CPU in fp32, identity dict). `weights` None means `weights/VTP-Small-f16d64` when it exists,
    else synthetic weights of `preset` (unless `require`). An explicit folder must exist.

    identity: {"kind": "checkpoint", "path", "files", "sha256", "manifest"} (the files the loader read) or
    {"kind": "synthetic", "source", "preset"}.
    """
    from vtp import VTPModel
    from vtp import weights as vtp_weights

    folder = Path(weights) if weights is not None else default_weights_dir()
    if weights is None and not (folder / "config.json").is_file():
        if require:
            raise WeightsMissing(f"no checkpoint at {folder} and --require-weights is set; download it with "
                                 f"`python -m vtp.weights download {preset}` or pass --weights DIR")
        logger.warning(SYNTHETIC_NOTICE.format(path=folder, preset=preset))
        model = VTPModel.synthetic(preset, seed=seed)
        return model, {"kind": "synthetic", "source": model.weights_source, "preset": preset}
    model = VTPModel.from_pretrained(folder)
    # the identity of the files the loader actually read, not of whatever else lies in the folder
    identity = {"kind": "checkpoint", **vtp_weights.weights_identity(folder, files=model.checkpoint_files)}
    return model, identity


def default_image(weights: "str | os.PathLike | None" = None, size: int = 256):
    """(PIL RGB image, description): the checkpoint folder's figures/dog.png when present, else the
    project's own deterministic sample image."""
    from vtp.image import load_image, make_sample_image

    folder = Path(weights) if weights is not None else default_weights_dir()
    dog = folder / "figures" / "dog.png"
    if dog.is_file():
        return load_image(dog), str(dog)
    return make_sample_image(size=size, seed=0), "generated sample image (vtp.image.make_sample_image, seed 0)"


def prepare_candidate(reference, device, *, fusion="all", precision: str = "fp32",
                      record_path: Optional[Path] = None, copy_model: bool = True) -> Tuple[object, object]:
    """A copy of `reference` with the fusion rules applied for `device` and the compute dtype of
    `precision` (the kernel decisions depend on it), moved to `device`.

    The reference itself is never modified (the fusion layer swaps modules per instance).
    Returns (candidate, fusion report).
    """
    from ascend.device import PRECISIONS
    from ascend.fusion import apply_fusions

    candidate = copy.deepcopy(reference) if copy_model else reference
    report = apply_fusions(candidate, fusion=fusion, device=device, record_path=record_path,
                           dtype=PRECISIONS[precision])
    candidate = candidate.to(device)
    candidate.eval()
    return candidate, report
