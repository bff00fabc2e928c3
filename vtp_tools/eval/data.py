"""ImageFolder datasets without torchvision: discovery, identity, the original tools' transforms, sharding.

Layout (torchvision ``ImageFolder``): ``root/<class>/**/<image>``; classes are the sorted names of the
sub-folders of ``root`` and the label of an image is the index of its class; images are the files with
an image extension, in torchvision ``make_dataset``'s order: per class, the ``os.walk`` entries sorted by
their folder path (so ``a-b/`` comes before ``a/b/``, as the path strings sort), the files of each folder
sorted by name. An image is read as torchvision's default loader does: ``PIL.Image.open(path).convert("RGB")``.

Transforms (the original VTP tools; ``uint8 / 255`` then ``(x - mean) / std`` with the ImageNet constants):

* ``resize`` -- zero-shot: ``Resize((S, S))`` (PIL bilinear, antialiased when shrinking).
* ``center_crop`` -- reconstruction and latent extraction: the ADM ``center_crop_arr`` recipe.
* ``resize_center_crop`` -- linear-probe evaluation: shorter side to ``resize`` (bicubic), central ``S x S``.
* ``random_resized_crop`` -- linear-probe training: torchvision ``RandomResizedCrop(S, BICUBIC)`` (scale
  (0.08, 1), ratio (3/4, 4/3); the box is cropped, then the crop is resized, so no pixel outside the box is
  read) and ``RandomHorizontalFlip``. The draws follow torchvision's recipe but come from a generator seeded
  by ``seed``, the epoch and the sample index (reproducible, independent of workers), not from torch's
  global RNG: the crops are distributed as the original's, not the same crops.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from vtp.image import _center_crop_arr, _pil_to_unit_tensor, normalize

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TRANSFORMS = ("resize", "center_crop", "resize_center_crop", "random_resized_crop")


class DatasetError(ValueError):
    """The dataset folder is missing, empty or malformed. The message says which path and what to do."""


def find_samples(root: "str | os.PathLike") -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(relative path, label)]) of an ImageFolder tree; raises DatasetError when unusable."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder: pass an ImageFolder "
                           f"root (one sub-folder per class, images inside)")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise DatasetError(f"dataset folder {root} has no class sub-folders: the ImageFolder layout is "
                           f"{root}/<class>/<image>.jpg (put the images of each class in its own folder)")
    samples: list[tuple[str, int]] = []
    empty = []
    for label, name in enumerate(classes):
        found = 0
        for dirpath, _, filenames in sorted(os.walk(os.path.join(root, name), followlinks=True)):
            for filename in sorted(filenames):
                if filename.lower().endswith(IMG_EXTENSIONS):
                    samples.append((Path(dirpath, filename).relative_to(root).as_posix(), label))
                    found += 1
        if not found:
            empty.append(name)
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DatasetError(f"dataset folder {root}: class folder(s) {shown} hold no image "
                           f"({', '.join(IMG_EXTENSIONS)}); remove them or add images")
    return classes, samples


def file_list_sha256(relative_paths: list[str]) -> str:
    """sha256 of the sorted relative POSIX paths, one per line (each ending in a newline)."""
    digest = hashlib.sha256()
    for rel in sorted(relative_paths):
        digest.update(rel.encode("utf-8") + b"\n")
    return digest.hexdigest()


def load_rgb(path: "str | os.PathLike") -> Image.Image:
    """torchvision's ``pil_loader``: open and convert to RGB; DatasetError naming the file when unreadable."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"image {path} cannot be read ({type(exc).__name__}: {exc}); "
                           f"replace or remove the file") from exc


def _resize_shorter(img: Image.Image, size: int, resample) -> Image.Image:
    """torchvision ``Resize(int)``: the shorter side becomes ``size``, the longer keeps the aspect (truncated)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    if short == size:
        return img
    new_long = int(size * long / short)
    return img.resize((size, new_long) if w <= h else (new_long, size), resample)


def _center_crop(img: Image.Image, size: int) -> Image.Image:
    """torchvision ``CenterCrop`` (the image is at least ``size`` on both sides here)."""
    w, h = img.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _random_resized_crop(img: Image.Image, size: int, gen: torch.Generator) -> Image.Image:
    """torchvision ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3), BICUBIC)`` on a PIL image:
    the box drawn by its ``get_params`` recipe (from ``gen``), ``crop`` to the box, then ``resize``."""
    w, h = img.size
    area = h * w
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(0.08, 1.0, generator=gen).item()
        ratio = math.exp(torch.empty(1).uniform_(*log_ratio, generator=gen).item())
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=gen).item())
            left = int(torch.randint(0, w - cw + 1, (1,), generator=gen).item())
            break
    else:  # fallback: central crop at the clamped aspect ratio
        in_ratio = w / h
        if in_ratio < 3 / 4:
            cw, ch = w, int(round(w / (3 / 4)))
        elif in_ratio > 4 / 3:
            ch, cw = h, int(round(h * (4 / 3)))
        else:
            cw, ch = w, h
        top, left = (h - ch) // 2, (w - cw) // 2
    return img.crop((left, top, left + cw, top + ch)).resize((size, size), Image.Resampling.BICUBIC)


def to_normalized_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (3, H, W) float32, ImageNet-normalised (ToTensor + Normalize)."""
    return normalize(_pil_to_unit_tensor(img))


@dataclass
class ImageFolderDataset(Dataset):
    """An ImageFolder tree; item ``i`` is ``(image (3, S, S) float32, label, i)``.

    ``transform`` is one of :data:`TRANSFORMS`; ``size`` the output side; ``resize`` the shorter side
    before the central crop (``resize_center_crop``); ``hflip`` flips every image (the extraction
    tool's ``latents_flip``); ``seed`` and ``epoch`` drive ``random_resized_crop``.
    """

    root: Path
    transform: str = "resize"
    size: int = 256
    resize: int = 256
    hflip: bool = False
    seed: int = 0
    epoch: int = 0

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"unknown transform {self.transform!r}; use one of {', '.join(TRANSFORMS)}")
        self.root = Path(self.root)
        self.classes, self.samples = find_samples(self.root)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def identity(self) -> dict:
        """Dataset identity for results: path, counts and the sha256 of the sorted file list."""
        rel = [p for p, _ in self.samples]
        return {"path": str(self.root.resolve()), "num_images": len(rel), "num_classes": len(self.classes),
                "file_list_sha256": file_list_sha256(rel), "transform": self.transform, "image_size": self.size}

    def check_readable(self) -> None:
        """Open the first image of every class (header only): a malformed dataset fails before heavy work."""
        first: dict[int, str] = {}
        for rel, label in self.samples:
            first.setdefault(label, rel)
        for rel in first.values():
            try:
                with Image.open(self.root / rel) as img:
                    img.size  # noqa: B018 -- the header is parsed
            except (OSError, ValueError) as exc:
                raise DatasetError(f"image {self.root / rel} cannot be read ({type(exc).__name__}: {exc}); "
                                   f"replace or remove the file") from exc

    def __getitem__(self, index: int):
        rel, label = self.samples[index]
        img = load_rgb(self.root / rel)
        if self.transform == "resize":
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        elif self.transform == "center_crop":
            img = _center_crop_arr(img, self.size)
        elif self.transform == "resize_center_crop":
            img = _center_crop(_resize_shorter(img, self.resize, Image.Resampling.BICUBIC), self.size)
        else:
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index)
            img = _random_resized_crop(img, self.size, gen)
            if torch.rand(1, generator=gen).item() < 0.5:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return to_normalized_tensor(img), label, index


class ShardSampler(Sampler):
    """Indices ``rank, rank + world, ...`` of ``indices`` (default ``range(n)``): every sample on exactly
    one rank, no padding (unlike DistributedSampler), so gathered results never hold duplicates."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, indices: Optional[list[int]] = None):
        base = list(range(n)) if indices is None else list(indices)
        self.indices = base[rank::world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def default_workers() -> int:
    """DataLoader workers: half the CPUs, at most 8 (the main process runs the model)."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def make_loader(dataset: Dataset, sampler: Sampler, batch_size: int, workers: Optional[int] = None,
                pin_memory: bool = False) -> DataLoader:
    """A loader that decodes in ``workers`` background processes and keeps 4 batches per worker ready."""
    workers = default_workers() if workers is None else workers
    extra = {"prefetch_factor": 4, "persistent_workers": False} if workers > 0 else {}
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=False, **extra)
