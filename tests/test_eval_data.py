"""vtp_tools.eval.data: ImageFolder discovery, identity, transforms, sharding; bad datasets exit 2 before any work."""

from __future__ import annotations

import hashlib

import pytest
import torch
from eval_helpers import make_image_folder

from vtp_tools.eval.data import DatasetError, ImageFolderDataset, ShardSampler, find_samples
from vtp_tools.eval.cli import main


def test_imagefolder_order_labels_and_identity(tmp_path):
    root = make_image_folder(tmp_path / "ds", per_class=2)
    (root / "red_fox" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root, "resize", size=16)
    assert ds.classes == ["blue whale", "green_frog", "red_fox"]
    assert [p for p, _ in ds.samples][:3] == ["blue whale/0.png", "blue whale/1.png", "green_frog/0.png"]
    assert ds.targets == [0, 0, 1, 1, 2, 2]
    ident = ds.identity()
    listing = "".join(f"{p}\n" for p in sorted(p for p, _ in ds.samples)).encode()
    assert ident["file_list_sha256"] == hashlib.sha256(listing).hexdigest()
    assert (ident["num_images"], ident["num_classes"]) == (6, 3)
    x, label, index = ds[3]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and (label, index) == (1, 3)


@pytest.mark.parametrize("transform,size", [("center_crop", 32), ("resize_center_crop", 24),
                                            ("random_resized_crop", 24)])
def test_transforms_give_square_images(tmp_path, transform, size):
    ds = ImageFolderDataset(make_image_folder(tmp_path / "ds", per_class=1), transform, size=size, resize=32)
    assert ds[0][0].shape == (3, size, size)
    if transform == "random_resized_crop":  # reproducible from seed and index
        assert torch.equal(ds[0][0], ds[0][0])


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_shards_cover_every_sample_exactly_once(world):
    seen = sorted(i for r in range(world) for i in ShardSampler(7, r, world))
    assert seen == list(range(7))


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        find_samples(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no class sub-folders.*ImageFolder layout"):
        find_samples(tmp_path / "flat")
    (tmp_path / "empty_class" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="cat hold no image"):
        find_samples(tmp_path / "empty_class")
    bad = make_image_folder(tmp_path / "bad", per_class=1)
    (bad / "blue whale" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match="cannot be read"):
        ImageFolderDataset(bad).check_readable()


def test_cli_empty_dataset_exits_2_and_writes_nothing(tmp_path, capsys):
    (tmp_path / "ds").mkdir()
    out = tmp_path / "r.json"
    code = main(["zero-shot", "--data", str(tmp_path / "ds"), "--device", "cpu", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "no class sub-folders" in capsys.readouterr().err


def test_nested_class_folders_walk_in_make_dataset_order(tmp_path):
    """torchvision's make_dataset sorts the os.walk entries by folder path: 'a-b' ('-' < '/') comes before 'a/b',
    which a depth-first walk visits first."""
    from PIL import Image

    for rel in ("c/0.png", "c/a/1.png", "c/a/b/2.png", "c/a-b/3.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / rel)
    _, samples = find_samples(tmp_path)
    assert [p for p, _ in samples] == ["c/0.png", "c/a/1.png", "c/a-b/3.png", "c/a/b/2.png"]


def _torchvision_box(width, height, gen):
    """RandomResizedCrop.get_params(scale=(0.08, 1), ratio=(3/4, 4/3)) with draws from ``gen``: (left, top, w, h)."""
    import math

    for _ in range(10):
        area = width * height * torch.empty(1).uniform_(0.08, 1.0, generator=gen).item()
        ratio = math.exp(torch.empty(1).uniform_(math.log(3 / 4), math.log(4 / 3), generator=gen).item())
        w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            return left, top, w, h
    raise AssertionError("fallback not expected for this image")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_resized_crop_crops_then_resizes(seed):
    """As torchvision (F.resized_crop on PIL: crop, then resize bicubic): the pixels outside the box never
    enter the result. A one-step Pillow resize(box=...) reads them at the border and differs here."""
    import numpy as np
    from PIL import Image

    from vtp_tools.eval.data import _random_resized_crop

    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    ours = _random_resized_crop(img, 24, torch.Generator().manual_seed(seed))
    left, top, w, h = _torchvision_box(80, 60, torch.Generator().manual_seed(seed))
    expected = img.crop((left, top, left + w, top + h)).resize((24, 24), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(expected))
