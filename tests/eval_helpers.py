"""Shared helpers of the tests of vtp_tools.eval and vtp_tools.extract: tiny generated ImageFolders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLORS = {"blue whale": (40, 40, 200), "green_frog": (40, 200, 40), "red_fox": (200, 40, 40)}
# Folders named by ImageNet wnids (tench, goldfish, red fox): a subset mapped to the 1000 classes.
WNID_COLORS = {"n01440764": (40, 40, 200), "n01443537": (40, 200, 40), "n02119022": (200, 40, 40)}


def make_image_folder(root: Path, per_class: int = 4, size=(40, 48), seed: int = 0, noise: float = 30.0,
                      colors: dict = COLORS) -> Path:
    """root/<class>/<i>.png: noisy images of one colour per class (separable by colour)."""
    rng = np.random.default_rng(seed)
    for name, color in colors.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.clip(np.array(color) + rng.normal(0, noise, (*size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root
