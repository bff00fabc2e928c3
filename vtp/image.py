"""Image loading, pre-/post-processing and image-quality metrics (spec §8).

The pipeline mirrors the original VTP README and tools:

* ``load_image``  -- any file PIL opens -> RGB ``PIL.Image`` (EXIF orientation applied).
* ``preprocess``  -- RGB image -> ``[1, 3, S, S]`` float32, ImageNet-normalised
  (``mode="resize"``: README squash; ``mode="center_crop"``: ADM ``center_crop_arr``).
* ``to_uint8`` / ``save_png`` -- normalised tensor -> uint8 pixels (truncation, as the README).
* ``psnr`` / ``ssim`` -- reconstruction metrics on [0, 1] images.
* ``make_sample_image`` / ``make_synthetic_batch`` -- deterministic synthetic test images, so no
  data has to be downloaded for smoke tests.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from .io_utils import atomic_path

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageError",
    "load_image",
    "preprocess",
    "resize_notes",
    "normalize",
    "denormalize",
    "to_uint8",
    "save_png",
    "psnr",
    "ssim",
    "make_sample_image",
    "make_synthetic_batch",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PathLike = Union[str, "os.PathLike[str]"]
Size = Union[int, Sequence[int]]

# 16-bit grayscale modes; "I" (32-bit signed) and "F" (32-bit float) are handled separately.
_MODES_16BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_MODES_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


class ImageError(ValueError):
    """An image file could not be read; the message names the file and what to do."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_image(path: PathLike) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image``.

    Opens anything PIL opens (first frame of multi-frame files), forces a full decode so a truncated
    or corrupt file fails here rather than later, and applies the EXIF orientation tag
    (``PIL.ImageOps.exif_transpose``). Modes are converted to RGB as follows:

    * RGBA, LA, PA, and P/L/RGB with a transparency entry: **alpha is composited over white**
      (the original README's ``Image.open(p).convert("RGB")`` drops alpha instead, keeping whatever
      colour is stored under transparent pixels; white is what a viewer shows).
    * I;16 (16-bit grayscale): ``round(v / 257)``, so 65535 -> 255, 32768 -> 128 (no clipping).
    * I (32-bit integer): values within [0, 65535] are treated as 16-bit as above; other ranges are
      min-max stretched to [0, 255] (a warning is logged, the original scale is unknown).
    * F (32-bit float): NaN -> 0, +-Inf -> the finite max/min; values within [0, 1] are scaled by
      255, values within [0, 255] are used as they are, other ranges are min-max stretched.
    * P, CMYK, L, 1, YCbCr, ...: PIL's own ``convert("RGB")`` (no ICC colour management).

    Raises:
        ImageError: the file is missing, a directory, not an image, truncated or corrupt. The
            message names the path. A missing file's error is chained from ``FileNotFoundError``.
    """
    path = Path(os.fspath(path))
    if not path.exists():
        raise ImageError(
            f"image file not found: {path} -- check the path (relative paths are resolved "
            f"against the working directory {Path.cwd()})"
        ) from FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        raise ImageError(f"expected an image file but got a directory: {path} -- pass a file inside it")
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated data raises here
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except UnidentifiedImageError as err:
        raise ImageError(
            f"not a recognised image file: {path} -- check that it really is an image "
            f"(PNG, JPEG, WebP, TIFF, ...) and not, e.g., an HTML error page saved under an image name"
        ) from err
    except Image.DecompressionBombError as err:
        raise ImageError(
            f"image too large: {path} ({err}) -- if you trust the file, raise "
            f"PIL.Image.MAX_IMAGE_PIXELS before loading it"
        ) from err
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as err:
        raise ImageError(
            f"cannot decode image file: {path} ({type(err).__name__}: {err}) -- the file is "
            f"truncated or corrupt; re-download or re-export it"
        ) from err


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB (rules in :func:`load_image`)."""
    mode = img.mode
    if mode in _MODES_16BIT or mode in ("I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(img), mode)).convert("RGB")
    if mode in _MODES_WITH_ALPHA or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return img.copy()
    return img.convert("RGB")


def _gray_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Scale a high-bit-depth grayscale array (PIL mode I;16*, I or F) to uint8 (HxW)."""
    if mode in _MODES_16BIT:
        # round(v / 257) in exact integer arithmetic; 257 is odd so there are no ties.
        return ((arr.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if mode == "I":
        lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
        if lo >= 0 and hi <= 65535:
            return ((arr.astype(np.int64) + 128) // 257).astype(np.uint8)
        logger.warning("32-bit integer image with values in [%d, %d]: min-max stretched to 8 bit", lo, hi)
        return _stretch(arr.astype(np.float64), lo, hi)
    # mode "F"
    arr = arr.astype(np.float64)
    finite = arr[np.isfinite(arr)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    arr = np.nan_to_num(arr, nan=0.0, posinf=hi, neginf=lo)
    if arr.size:
        lo, hi = float(arr.min()), float(arr.max())  # NaN -> 0 may have widened the range
    if lo >= 0.0 and hi <= 1.0:
        return np.floor(arr * 255.0 + 0.5).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.floor(arr + 0.5).astype(np.uint8)
    logger.warning("float image with values in [%g, %g]: min-max stretched to 8 bit", lo, hi)
    return _stretch(arr, lo, hi)


def _stretch(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linearly map [lo, hi] to [0, 255] and round; a constant image maps to 0."""
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.floor((arr - lo) * (255.0 / (hi - lo)) + 0.5).clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Pre-processing
# --------------------------------------------------------------------------------------------------


def preprocess(image: PathLike | Image.Image, size: Size = 256, mode: str = "resize") -> torch.Tensor:
    """Image -> ``[1, 3, H, W]`` float32, ImageNet-normalised model input.

    Args:
        image: a file path (read with :func:`load_image`, EXIF orientation applied) or a PIL image
            (converted to RGB with the same mode rules; its EXIF orientation is *not* applied).
        size: ``S`` for an S x S output, or ``(H, W)`` (``mode="resize"`` only).
        mode: ``"resize"`` -- squash to (H, W) with PIL bilinear, ignoring the aspect ratio, as the
            README's ``transforms.Resize((S, S))`` does on PIL images (PIL antialiases when
            shrinking). ``"center_crop"`` -- the ADM ``center_crop_arr`` recipe of the
            reconstruction tool: BOX-halve while the shorter side >= 2*S, BICUBIC-resize the
            shorter side to S (Python ``round`` for the longer one), crop the central S x S.

    Then ``uint8 / 255`` (ToTensor) and ``(x - mean) / std`` with the ImageNet constants.
    """
    if isinstance(image, Image.Image):
        img = _to_rgb(image)
    elif isinstance(image, (str, os.PathLike)):
        img = load_image(image)
    else:
        raise TypeError(f"preprocess expects a file path or a PIL image, got {type(image).__name__}")
    if mode == "resize":
        height, width = _size_hw(size)
        img = img.resize((width, height), Image.Resampling.BILINEAR)
    elif mode == "center_crop":
        height, width = _size_hw(size)
        if height != width:
            raise ValueError(f"mode='center_crop' needs a square size, got (H, W) = ({height}, {width})")
        img = _center_crop_arr(img, height)
    else:
        raise ValueError(f"unknown preprocess mode {mode!r}; use 'resize' or 'center_crop'")
    return normalize(_pil_to_unit_tensor(img)).unsqueeze(0)


def resize_notes(width: int, height: int, size: int, mode: str = "resize") -> list[str]:
    """What :func:`preprocess` does to a ``width`` x ``height`` image that a user should know, one
    sentence each ([] when it only shrinks a square image): an aspect-ratio change (``"resize"`` squashes,
    ``"center_crop"`` cuts the longer side) and an enlargement (a side shorter than ``size``)."""
    notes = []
    if width != height:
        if mode == "resize":
            notes.append(f"the {width}x{height} image is squashed to {size}x{size}: its aspect ratio "
                         f"{width / height:.2f} becomes 1 (center-crop mode keeps it and cuts the longer side)")
        else:
            kept = min(width, height) / max(width, height)
            notes.append(f"the {width}x{height} image is cropped to its central square: {100 * kept:.0f} % of the "
                         "longer side is kept")
    short = min(width, height)  # both modes bring the shorter side to `size`
    if short < size:
        notes.append(f"the {width}x{height} image is enlarged {size / short:.2f}x to {size}x{size}: the model sees "
                     "an interpolated image, so the reconstruction and its PSNR/SSIM say little about fine detail")
    return notes


def _size_hw(size: Size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        height = width = int(size)
    elif isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        height, width = int(size[0]), int(size[1])
    else:
        raise ValueError(f"size must be an int S or a pair (H, W) of ints, got {size!r}")
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got (H, W) = ({height}, {width})")
    return height, width


def _center_crop_arr(img: Image.Image, image_size: int) -> Image.Image:
    """ADM / guided-diffusion ``center_crop_arr`` (spec §8), returning a PIL image."""
    while min(img.size) >= 2 * image_size:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.Resampling.BOX)
    scale = image_size / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.BICUBIC)
    width, height = img.size
    top, left = (height - image_size) // 2, (width - image_size) // 2
    return img.crop((left, top, left + image_size, top + image_size))


def _pil_to_unit_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> ``[3, H, W]`` float32 in [0, 1] (``uint8 / 255``, as ToTensor)."""
    arr = np.asarray(img, dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255.0)  # (3, H, W)


# --------------------------------------------------------------------------------------------------
# Normalisation and post-processing
# --------------------------------------------------------------------------------------------------


def _mean_std(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_floating_point(x):
        raise TypeError(f"expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"expected an image tensor [3, H, W] or [B, 3, H, W], got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """``(x - mean) / std`` with the ImageNet constants; x is [3, H, W] or [B, 3, H, W] in [0, 1].

    The dtype and device of ``x`` are kept (the constants are cast to them, as torchvision does).
    """
    mean, std = _mean_std(x)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """``x * std + mean``, the inverse of :func:`normalize`; dtype and device are kept."""
    mean, std = _mean_std(x)
    return x * std + mean


def to_uint8(x_normalized: torch.Tensor) -> np.ndarray:
    """Normalised image(s) -> uint8 pixels: [3, H, W] -> (H, W, 3); [B, 3, H, W] -> (B, H, W, 3).

    As the README: denormalise, clamp to [0, 1], multiply by 255 in float32, then ``astype(uint8)``,
    which **truncates** (0.999 -> 254, not 255). NaN becomes 0.
    """
    x = denormalize(x_normalized.detach()).clamp(0.0, 1.0).float().cpu()
    x = torch.nan_to_num(x, nan=0.0)
    x = x.permute(1, 2, 0) if x.dim() == 3 else x.permute(0, 2, 3, 1)  # channels last
    return (x.numpy() * 255.0).astype(np.uint8)


def save_png(
    x_normalized: torch.Tensor, path: PathLike, metadata: Optional[Mapping[str, object]] = None
) -> Path:
    """Write one normalised image ([3, H, W] or [1, 3, H, W]) to ``path`` as an 8-bit RGB PNG.

    Pixels are :func:`to_uint8` (truncation). ``metadata`` becomes the PNG's text chunks, one per key
    (values written with ``str``; PIL's ``Image.open(path).text`` reads them back). The parent folder is created; the file is written
    atomically (:func:`vtp.io_utils.atomic_path`: a temporary file in the same folder, moved into place
    with ``os.replace``), so a reader never sees a half-written PNG. Returns the path.

    Raises:
        ValueError: for any other shape (e.g. a batch of more than one image).
    """
    shape = tuple(x_normalized.shape)
    if x_normalized.dim() == 4 and shape[0] == 1:
        x_normalized = x_normalized[0]
    if x_normalized.dim() != 3 or x_normalized.shape[0] != 3:
        raise ValueError(
            f"save_png writes one image of shape [3, H, W] or [1, 3, H, W], got {shape}; "
            f"save a batch one image at a time"
        )
    pixels = to_uint8(x_normalized)
    info = None
    if metadata:
        info = PngInfo()
        for key, value in metadata.items():
            info.add_text(str(key), str(value))
    path = Path(os.fspath(path))
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)
    return path


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _as_batch(a, b, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.as_tensor(a).detach().cpu()
    b = torch.as_tensor(b).detach().cpu()
    if a.shape != b.shape:
        raise ValueError(f"{name}: inputs must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise ValueError(f"{name}: expected [C, H, W] or [B, C, H, W], got shape {tuple(a.shape)}")
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    return a.to(torch.float64), b.to(torch.float64)


def _reduce(values: torch.Tensor, reduction: str, name: str) -> torch.Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"{name}: reduction must be 'mean' or 'none', got {reduction!r}")


def psnr(a, b, data_range: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Peak signal-to-noise ratio in dB: ``20 * log10(data_range / sqrt(MSE))``.

    Args:
        a, b: images of the same shape, [C, H, W] or a batch [B, ...] (tensors or arrays; the layout
            within an image does not matter). Values in [0, data_range]; use ``data_range=255`` on
            uint8 pixels, which gives the reference tool's number.
        reduction: ``"mean"`` -- the mean over the batch of the per-image PSNR (0-d tensor);
            ``"none"`` -- per-image values, shape [B].

    ``psnr(255 * x, 255 * y, data_range=255)`` equals ``psnr(x, y)`` (the tool's formula on x255 values).
    Computed on the CPU in float64, returned as a float64 CPU tensor. Identical images (MSE = 0) give ``+inf``
    (and then the batch mean is ``+inf``); NaN in an input gives NaN for that image.
    """
    if not data_range > 0:
        raise ValueError(f"psnr: data_range must be > 0, got {data_range}")
    a, b = _as_batch(a, b, "psnr")
    mse = (a - b).square().flatten(1).mean(dim=1)  # (B,)
    values = 20.0 * torch.log10(data_range / mse.sqrt())  # 1/0 -> inf -> log10 -> inf
    return _reduce(values, reduction, "psnr")


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 2-D Gaussian window (outer product of two 1-D ones), float64 [size, size]."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(offsets**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(
    a,
    b,
    data_range: float = 1.0,
    reduction: str = "mean",
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) with a Gaussian window.

    For each channel separately, local statistics are Gaussian-weighted (11 x 11, sigma 1.5) over
    every window position that fits inside the image ('valid' convolution, no padding)::

        SSIM = ((2 mu_a mu_b + C1)(2 cov_ab + C2)) / ((mu_a^2 + mu_b^2 + C1)(var_a + var_b + C2))
        C1 = (k1 * data_range)^2,  C2 = (k2 * data_range)^2

    (variances clamped at 0 against rounding); the map is averaged over channels and positions per
    image. This matches torchmetrics' default ``StructuralSimilarityIndexMeasure`` (which pads and
    then crops the border, i.e. a valid convolution), up to float rounding: this function computes
    on the CPU in float64 and returns a float64 CPU tensor.

    Args:
        a, b: [B, C, H, W] or [C, H, W] tensors in [0, data_range]; H, W >= window_size.
        reduction: ``"mean"`` -> 0-d float64 tensor (mean over the batch); ``"none"`` -> shape [B].

    Identical images give exactly 1 (up to rounding); a constant image pair gives the luminance term
    only. NaN/Inf in an input propagates to NaN for that image.
    """
    if not data_range > 0:
        raise ValueError(f"ssim: data_range must be > 0, got {data_range}")
    a, b = _as_batch(a, b, "ssim")
    batch, channels, height, width = a.shape
    if height < window_size or width < window_size:
        raise ValueError(f"ssim: images must be at least {window_size}x{window_size}, got {height}x{width}")
    window = _gaussian_window(window_size, sigma).expand(channels, 1, window_size, window_size)

    def local_mean(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H-w+1, W-w+1)
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = local_mean(a), local_mean(b)
    var_a = (local_mean(a * a) - mu_a**2).clamp(min=0)
    var_b = (local_mean(b * b) - mu_b**2).clamp(min=0)
    cov_ab = local_mean(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return _reduce(ssim_map.flatten(1).mean(dim=1), reduction, "ssim")


# --------------------------------------------------------------------------------------------------
# Synthetic test images
# --------------------------------------------------------------------------------------------------


class _Uniform:
    """Uniform doubles in [0, 1) from the raw PCG64 bit stream of a numpy Generator.

    Only the bit generator's raw output is used (stable across numpy versions and machines, NEP 19);
    distribution methods such as ``Generator.random`` are not guaranteed to be.
    """

    def __init__(self, seed: int):
        self._bits = np.random.default_rng(seed).bit_generator

    def __call__(self, n: int | tuple[int, ...] = 1) -> np.ndarray:
        shape = (n,) if isinstance(n, int) else n
        raw = self._bits.random_raw(int(np.prod(shape)))
        return ((raw >> np.uint64(11)).astype(np.float64) * 2.0**-53).reshape(shape)


def make_sample_image(size: int = 256, seed: int = 0) -> Image.Image:
    """A deterministic synthetic RGB test image, ``size`` x ``size``.

    Content (placement and colours drawn from ``seed``): a four-corner colour gradient, smooth
    value-noise "clouds", per-pixel grain, a patch of oblique stripes, a checkerboard square, a
    triangle, an antialiased disc and a disc of concentric rings -- smooth areas, sharp edges and
    high frequencies that a reconstruction will visibly keep or lose.

    Only IEEE-exact numpy operations are used (+, -, *, /, sqrt, floor, comparisons; no reductions,
    no transcendental functions, no font rendering) on values from the raw PCG64 stream, so the
    pixels are the same on every machine for a given (size, seed).
    """
    size = int(size)
    if size < 8:
        raise ValueError(f"make_sample_image: size must be >= 8, got {size}")
    u = _Uniform(seed)
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = coords[:, None], coords[None, :]  # (S, 1), (1, S): broadcast to (S, S)

    # Four-corner bilinear colour gradient.
    corners = u((4, 3))
    img = (
        corners[0] * ((1 - x) * (1 - y))[..., None]
        + corners[1] * (x * (1 - y))[..., None]
        + corners[2] * ((1 - x) * y)[..., None]
        + corners[3] * (x * y)[..., None]
    )  # (S, S, 3)

    # Value noise: an 8x8 random grid, bilinearly interpolated, plus fine per-pixel grain.
    grid = u((8, 8, 3)) - 0.5
    gy, gx = np.broadcast_to(y * 7, (size, size)), np.broadcast_to(x * 7, (size, size))
    iy, ix = np.minimum(np.floor(gy), 6).astype(np.int64), np.minimum(np.floor(gx), 6).astype(np.int64)
    fy, fx = (gy - iy)[..., None], (gx - ix)[..., None]
    clouds = (
        grid[iy, ix] * ((1 - fy) * (1 - fx))
        + grid[iy, ix + 1] * ((1 - fy) * fx)
        + grid[iy + 1, ix] * (fy * (1 - fx))
        + grid[iy + 1, ix + 1] * (fy * fx)
    )
    img = img + 0.3 * clouds + 0.08 * (u((size, size, 1)) - 0.5)

    def paint(alpha: np.ndarray, colour: np.ndarray) -> None:
        nonlocal img
        alpha = alpha[..., None]
        img = img * (1 - alpha) + colour * alpha

    def box(x0: float, y0: float, side: float) -> np.ndarray:
        return ((x >= x0) & (x < x0 + side) & (y >= y0) & (y < y0 + side)).astype(np.float64)

    def triangle_wave(t: np.ndarray) -> np.ndarray:  # period 1, values in [0, 1]
        return np.abs(2 * (t - np.floor(t)) - 1)

    # Oblique stripes in the top-left quadrant.
    sx, sy, side, dx, dy, freq = u(6)
    x0, y0, side = 0.05 + 0.15 * sx, 0.05 + 0.15 * sy, 0.25 + 0.1 * side
    stripes = triangle_wave((x * (2 * dx - 1) + y * (2 * dy - 1 + 0.5)) * (10 + 10 * freq))
    paint(box(x0, y0, side), np.stack([stripes] * 3, axis=-1) * u((1, 1, 3)) + (1 - stripes)[..., None] * 0.1)

    # Checkerboard square in the top-right quadrant.
    cx0, cy0, cells = u(3)
    cells = 4 + np.floor(cells * 5)
    x0, y0, side = 0.55 + 0.15 * cx0, 0.05 + 0.15 * cy0, 0.3
    checker = (np.floor((x - x0) / side * cells) + np.floor((y - y0) / side * cells)) % 2
    paint(box(x0, y0, side) * checker, u(3))

    # Triangle in the bottom-left quadrant (intersection of three half-planes).
    tx, ty = u(2)
    ax, ay = 0.05 + 0.1 * tx, 0.9
    bx, by = ax + 0.35, 0.9
    px, py = ax + 0.1 + 0.1 * ty, 0.55

    def left_of(x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
        return (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) <= 0

    paint((left_of(ax, ay, bx, by) & left_of(bx, by, px, py) & left_of(px, py, ax, ay)).astype(np.float64), u(3))

    # Antialiased solid disc (bottom right) and a disc of concentric rings (centre).
    half_pixel = 0.75 / size
    for cx, cy, radius, rings in ((0.72, 0.72, 0.16, False), (0.5, 0.5, 0.13, True)):
        jx, jy, jr = u(3)
        cx, cy, radius = cx + 0.06 * (jx - 0.5), cy + 0.06 * (jy - 0.5), radius * (0.8 + 0.4 * jr)
        dist = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
        alpha = np.clip((radius - dist) / (2 * half_pixel) + 0.5, 0.0, 1.0)
        colour = u(3)
        if rings:
            ring = triangle_wave(dist * (40 + 30 * u(1)[0]))[..., None]
            colour = colour * ring + (1 - colour) * (1 - ring)
        paint(alpha, colour)

    pixels = np.floor(np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels)


def make_synthetic_batch(n: int, size: int = 256, seed: int = 0) -> torch.Tensor:
    """``[n, 3, size, size]`` float32 ImageNet-normalised batch of :func:`make_sample_image` images
    with seeds ``seed, seed + 1, ..., seed + n - 1`` (no resizing)."""
    if n < 1:
        raise ValueError(f"make_synthetic_batch: n must be >= 1, got {n}")
    images = [_pil_to_unit_tensor(make_sample_image(size, seed + i)) for i in range(n)]
    return normalize(torch.stack(images))
