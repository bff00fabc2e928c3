"""Tests for vtp.image: loading, pre-/post-processing, metrics, synthetic images."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vtp.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageError,
    denormalize,
    load_image,
    make_sample_image,
    make_synthetic_batch,
    normalize,
    preprocess,
    psnr,
    save_png,
    ssim,
    to_uint8,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def bands_image(width: int, height: int, colours) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    step = width // len(colours)
    for i, colour in enumerate(colours):
        arr[:, i * step : (i + 1) * step] = colour
    return Image.fromarray(arr)


# --------------------------------------------------------------------------------------------------
# load_image: modes and orientation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_exif_orientation_is_applied(tmp_path, ext):
    path = tmp_path / f"rotated.{ext}"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    bands_image(40, 20, [RED, BLUE]).save(path, exif=exif)  # stored 40 wide x 20 high

    img = load_image(path)

    assert img.mode == "RGB"
    assert img.size == (20, 40)  # displayed 20 wide x 40 high
    arr = np.asarray(img).astype(int)
    # Clockwise rotation moves the left (red) half to the top.
    assert np.abs(arr[5, 10] - RED).max() < 40
    assert np.abs(arr[35, 10] - BLUE).max() < 40


def test_rgba_is_composited_over_white(tmp_path):
    arr = np.zeros((4, 4, 4), dtype=np.uint8)
    arr[:, :2] = (255, 0, 0, 0)  # fully transparent red -> white
    arr[:, 2:] = (0, 0, 255, 128)  # half-transparent blue over white
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, "RGBA").save(path)

    out = np.asarray(load_image(path)).astype(int)

    assert (out[:, :2] == WHITE).all()
    assert np.abs(out[0, 3] - (127, 127, 255)).max() <= 1


def test_la_is_composited_over_white(tmp_path):
    img = Image.new("LA", (4, 2), (0, 255))
    img.putpixel((0, 0), (0, 0))  # transparent black -> white
    path = tmp_path / "la.png"
    img.save(path)

    out = np.asarray(load_image(path))

    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[1, 1]) == (0, 0, 0)


@pytest.mark.parametrize("transparency", [0, b"\x00\xff"], ids=["index", "alpha-table"])
def test_palette_with_transparency(tmp_path, transparency):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([*RED, *BLUE] + [0] * 762)
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=transparency)

    out = np.asarray(load_image(path))

    assert tuple(out[0, 0]) == WHITE  # palette entry 0 is transparent
    assert tuple(out[0, 1]) == BLUE


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([*RED, *GREEN] + [0] * 762)
    img.putpixel((1, 0), 1)
    path = tmp_path / "p.gif"
    img.save(path)

    out = np.asarray(load_image(path))

    assert tuple(out[0, 0]) == RED
    assert tuple(out[0, 1]) == GREEN


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(path)  # no cyan, full magenta + yellow = red

    img = load_image(path)

    assert img.mode == "RGB"
    assert tuple(np.asarray(img)[1, 1]) == RED


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype="<u2")
    path = tmp_path / "gray16.png"
    Image.frombytes("I;16", (4, 1), values.tobytes()).save(path)
    with Image.open(path) as check:
        assert check.mode == "I;16"  # the file really is 16-bit

    out = np.asarray(load_image(path))

    assert out.shape == (1, 4, 3)
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_32bit_integer_grayscale_in_16bit_range(tmp_path):
    path = tmp_path / "gray32.tif"
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(path)
    with Image.open(path) as check:
        assert check.mode == "I"

    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


def test_float_grayscale_in_unit_range(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)

    assert np.asarray(load_image(path))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("mode, value, expected", [("L", 77, (77, 77, 77)), ("1", 1, WHITE)])
def test_grayscale_and_bilevel(tmp_path, mode, value, expected):
    path = tmp_path / f"gray_{mode}.png"
    Image.new(mode, (5, 3), value).save(path)

    img = load_image(path)

    assert img.mode == "RGB" and img.size == (5, 3)
    assert tuple(np.asarray(img)[2, 4]) == expected


# --------------------------------------------------------------------------------------------------
# load_image: error paths
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_file_raises_image_error_naming_it(tmp_path, ext):
    path = tmp_path / f"broken.{ext}"
    noise_image(96, 96).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    with pytest.raises(ImageError, match="truncated or corrupt") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_named_png_raises_image_error(tmp_path):
    path = tmp_path / "not_an_image.png"
    path.write_text("<html>404 Not Found</html>\n")

    with pytest.raises(ImageError, match="not a recognised image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_raises_image_error(tmp_path):
    path = tmp_path / "nowhere" / "missing.png"

    with pytest.raises(ImageError, match="not found") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_directory_raises_image_error(tmp_path):
    with pytest.raises(ImageError, match="directory") as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------------------------------
# preprocess, normalize / denormalize
# --------------------------------------------------------------------------------------------------


def test_preprocess_shape_dtype_and_range(tmp_path):
    path = tmp_path / "in.png"
    img = noise_image(50, 30)
    img.putpixel((0, 0), (0, 0, 0))
    img.putpixel((1, 0), WHITE)
    img.save(path)

    x = preprocess(path, size=32)

    assert x.shape == (1, 3, 32, 32) and x.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert (x[0] >= -mean / std - 1e-6).all() and (x[0] <= (1 - mean) / std + 1e-6).all()
    unit = denormalize(x)
    assert unit.min() >= -1e-6 and unit.max() <= 1 + 1e-6
    # every value is a multiple of 1/255 (uint8 / 255)
    torch.testing.assert_close(unit * 255, (unit * 255).round(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", [(3, 5, 7), (2, 3, 4, 4)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalize_denormalize_round_trip(shape, dtype):
    x = torch.rand(shape, dtype=dtype, generator=torch.Generator().manual_seed(0))

    y = normalize(x)

    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y[..., 0, :, :], (x[..., 0, :, :] - 0.485) / 0.229)
    torch.testing.assert_close(denormalize(y), x)


def test_normalize_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        normalize(torch.zeros(4, 8, 8))


@pytest.mark.parametrize("size, hw", [(4, (4, 4)), ((3, 6), (3, 6))])
def test_resize_mode_equals_pil_bilinear(size, hw):
    img = noise_image(7, 5, seed=1)
    expected_pixels = np.asarray(img.resize((hw[1], hw[0]), Image.Resampling.BILINEAR))
    expected = torch.from_numpy(expected_pixels.astype(np.float32) / 255).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    expected = ((expected - mean) / std).unsqueeze(0)

    x = preprocess(img, size=size, mode="resize")

    assert x.shape == (1, 3, *hw)
    torch.testing.assert_close(x, expected)


def test_center_crop_keeps_the_centre_of_a_wide_image():
    img = bands_image(300, 100, [RED, GREEN, BLUE])  # 100 px bands; shorter side 100

    x = preprocess(img, size=64, mode="center_crop")  # -> 192 x 64, crop columns 64..127

    pixels = to_uint8(x[0]).astype(int)
    assert pixels.shape == (64, 64, 3)
    assert np.abs(pixels[:, 2:-2] - GREEN).max() <= 3  # only the middle band survives
    squashed = to_uint8(preprocess(img, size=64, mode="resize")[0]).astype(int)
    assert np.abs(squashed[:, 2] - RED).max() <= 3  # resize keeps all bands (control)


@pytest.mark.parametrize("width, height", [(600, 200), (90, 130)])
def test_center_crop_follows_adm_recipe(width, height):
    img = noise_image(width, height, seed=2)
    size = 64
    ref = img
    while min(ref.size) >= 2 * size:  # 600x200 -> BOX to 300x100; 90x130 -> no halving
        ref = ref.resize((ref.size[0] // 2, ref.size[1] // 2), Image.Resampling.BOX)
    scale = size / min(ref.size)
    ref = ref.resize((round(ref.size[0] * scale), round(ref.size[1] * scale)), Image.Resampling.BICUBIC)
    left, top = (ref.size[0] - size) // 2, (ref.size[1] - size) // 2
    ref = np.asarray(ref)[top : top + size, left : left + size]

    x = preprocess(img, size=size, mode="center_crop")

    torch.testing.assert_close(denormalize(x[0]) * 255, torch.from_numpy(ref.astype(np.float32)).permute(2, 0, 1))


def test_preprocess_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown preprocess mode 'crop'"):
        preprocess(noise_image(8, 8), size=4, mode="crop")
    with pytest.raises(ValueError, match="square size"):
        preprocess(noise_image(8, 8), size=(4, 6), mode="center_crop")
    with pytest.raises(TypeError, match="file path or a PIL image"):
        preprocess(torch.zeros(3, 8, 8))


# --------------------------------------------------------------------------------------------------
# to_uint8, save_png
# --------------------------------------------------------------------------------------------------


def test_to_uint8_truncates_and_clamps():
    unit = torch.tensor([0.999, 0.5, -0.2, 1.3]).view(1, 1, 4).expand(3, 1, 4)

    pixels = to_uint8(normalize(unit))

    assert pixels.shape == (1, 4, 3) and pixels.dtype == np.uint8
    assert pixels[0, :, 0].tolist() == [254, 127, 0, 255]  # 254.7 -> 254, not 255
    assert to_uint8(normalize(unit).unsqueeze(0).repeat(2, 1, 1, 1)).shape == (2, 1, 4, 3)


@pytest.mark.parametrize("batched", [False, True])
def test_save_png_round_trip_is_atomic(tmp_path, batched):
    unit = torch.rand(3, 6, 5, generator=torch.Generator().manual_seed(0))
    unit[:, 0, 0] = 0.999
    x = normalize(unit)
    path = tmp_path / "out" / "recon.png"

    save_png(x.unsqueeze(0) if batched else x, path)

    with Image.open(path) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        saved = np.asarray(img)
    np.testing.assert_array_equal(saved, to_uint8(x))
    np.testing.assert_array_equal(saved, (unit.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    assert saved[0, 0].tolist() == [254, 254, 254]
    assert sorted(p.name for p in path.parent.iterdir()) == ["recon.png"]  # no temp file left
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # umask honoured, not 0600


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (4, 4), (1, 4, 4)])
def test_save_png_rejects_other_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"\[3, H, W\] or \[1, 3, H, W\]"):
        save_png(torch.zeros(shape), tmp_path / "x.png")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o077, 0o002])
def test_save_png_follows_the_umask(tmp_path, mask):
    saved = os.umask(mask)
    try:
        path = save_png(torch.zeros(3, 4, 4), tmp_path / "x.png")
    finally:
        os.umask(saved)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_save_png_uses_a_new_temporary_file_each_time(tmp_path, monkeypatch):
    import vtp.io_utils

    real_replace = vtp.io_utils.os.replace
    moved = []

    def recording_replace(src, dst):
        moved.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(vtp.io_utils.os, "replace", recording_replace)
    path = tmp_path / "recon.png"
    save_png(torch.zeros(3, 4, 4), path)
    save_png(torch.ones(3, 4, 4), path)
    (first, _), (second, _) = moved
    assert first != second and first.startswith(".recon.png.") and second.endswith(".tmp")
    assert [dst for _, dst in moved] == ["recon.png", "recon.png"]
    assert [p.name for p in tmp_path.iterdir()] == ["recon.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(path)), to_uint8(torch.ones(3, 4, 4)))


def test_failed_save_png_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = save_png(torch.zeros(3, 4, 4), tmp_path / "recon.png")
    before = path.read_bytes()

    def broken_save(self, fp, format=None, **params):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_png(torch.ones(3, 4, 4), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["recon.png"]


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def test_psnr_known_value_and_identical():
    a = torch.full((2, 3, 8, 8), 0.5)

    assert float(psnr(a, a + 0.1)) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    assert float(psnr(a[0] * 255, (a[0] + 0.1) * 255, data_range=255)) == pytest.approx(20.0, abs=1e-5)
    assert math.isinf(float(psnr(a, a))) and float(psnr(a, a)) > 0


def test_psnr_per_image_and_mean():
    a = torch.full((2, 3, 4, 4), 0.5)
    b = a.clone()
    b[0] += 0.1  # 20 dB
    b[1] += 0.01  # 40 dB

    per_image = psnr(a, b, reduction="none")

    assert per_image.shape == (2,) and per_image.dtype == torch.float64
    torch.testing.assert_close(per_image, torch.tensor([20.0, 40.0], dtype=torch.float64), atol=1e-4, rtol=0)
    assert float(psnr(a, b)) == pytest.approx(30.0, abs=1e-4)


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))


def _ssim_by_hand(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Direct per-window SSIM (Wang et al. 2004), single channel, loops over valid windows."""
    offsets = np.arange(11) - 5.0
    g = np.exp(-(offsets**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_direct_formula_with_valid_windows():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 3, 14, 13, generator=gen, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(1, 3, 14, 13, generator=gen, dtype=torch.float64)).clamp(0, 1)
    expected = np.mean([_ssim_by_hand(a[0, c].numpy(), b[0, c].numpy()) for c in range(3)])

    assert float(ssim(a, b)) == pytest.approx(expected, rel=1e-9)


def test_ssim_identical_noisy_symmetric_and_constant():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 24, 24, generator=gen)
    noisy = (a + 0.1 * torch.randn(a.shape, generator=gen)).clamp(0, 1)

    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-9)
    value = float(ssim(a, noisy))
    assert 0.0 < value < 0.99
    assert float(ssim(noisy, a)) == pytest.approx(value, abs=1e-12)
    assert ssim(a, noisy, reduction="none").shape == (2,)
    # constant images: only the luminance term, (2*0.5*0.6 + C1) / (0.25 + 0.36 + C1)
    c1 = 1e-4
    expected = (0.6 + c1) / (0.61 + c1)
    assert float(ssim(torch.full((1, 3, 11, 11), 0.5), torch.full((1, 3, 11, 11), 0.6))) == pytest.approx(expected)


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 10, 32), torch.zeros(1, 3, 10, 32))


# --------------------------------------------------------------------------------------------------
# Synthetic images
# --------------------------------------------------------------------------------------------------


def test_make_sample_image_is_deterministic_and_structured():
    a, b, c = make_sample_image(64, seed=0), make_sample_image(64, seed=0), make_sample_image(64, seed=1)

    assert a.mode == "RGB" and a.size == (64, 64)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    pixels = np.asarray(make_sample_image(256, seed=0)).astype(np.float64)
    assert pixels.std() > 30  # not flat
    assert np.abs(np.diff(pixels, axis=1)).mean() > 3  # has edges / texture


def test_make_sample_image_pixels_are_pinned():
    """Same pixels on every machine: only the raw PCG64 stream and IEEE-exact numpy ops are used."""
    digest = hashlib.sha256(np.asarray(make_sample_image(64, seed=0)).tobytes()).hexdigest()
    assert digest == "2b04d159efaa0bb5673e231fdb990c8dbaba92edb7336d307bc811fb0a9ffad6"


def test_make_synthetic_batch():
    batch = make_synthetic_batch(3, size=32, seed=5)

    assert batch.shape == (3, 3, 32, 32) and batch.dtype == torch.float32
    pixels = torch.from_numpy(np.asarray(make_sample_image(32, seed=6)).astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(denormalize(batch[1]) * 255, pixels, atol=1e-4, rtol=0)
    assert not torch.equal(batch[0], batch[1])
