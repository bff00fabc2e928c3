"""Reconstruction: per-image PSNR/SSIM/LPIPS means and the FID of the 8-bit images equal a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_helpers import make_image_folder
from PIL import Image

from vtp_tools.eval import reconstruction
from vtp_tools.eval.cli import main
from vtp_tools.eval.context import open_run
from vtp_tools.eval.data import ImageFolderDataset
from vtp_tools.eval.metrics import LPIPS, frechet_distance, psnr, ssim
from vtp.image import denormalize


class SmallFeatures(torch.nn.Module):
    """A stand-in feature network (the Inception itself is tested in test_eval_metrics): (B, 3, H, W) -> (B, 6)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 6, 3)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3)) + x.mean(dim=(1, 2, 3))[:, None]


MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _original_unnormalize(x):
    """The original's transform_rev, spelled out as torchvision's Normalize computes it:
    ``tensor.sub_(mean).div_(std)`` with mean = -m/s and std = 1/s as float32 tensors."""
    mean = torch.as_tensor([-m / s for m, s in zip(MEAN, STD)], dtype=x.dtype).view(-1, 1, 1)
    std = torch.as_tensor([1 / s for s in STD], dtype=x.dtype).view(-1, 1, 1)
    return x.clone().sub_(mean).div_(std)


def _original_png_levels(x_normalized, folder):
    """What the original writes and pytorch_fid reads back: transform_rev, clamp, ``(x * 255).astype(uint8)``
    of the channels-last numpy array, PIL save as PNG, read again."""
    x01 = torch.clamp(_original_unnormalize(x_normalized), 0, 1)
    arr = (x01.permute(0, 2, 3, 1).numpy() * 255.0).astype(np.uint8)
    levels = []
    for i, a in enumerate(arr):
        Image.fromarray(a).save(folder / f"ref_{i:06d}.png")
        levels.append(np.asarray(Image.open(folder / f"ref_{i:06d}.png")))
    return np.stack(levels)


def test_reference_png_levels_equal_the_originals(tmp_path):
    """Every 8-bit level of every channel, normalised as the loader does: our reference levels are the
    original's PNG bytes; the old x * std + mean path lands one level lower on about a quarter of them."""
    levels = torch.arange(256, dtype=torch.float32) / 255
    x01 = levels.view(1, 1, 16, 16).expand(1, 3, 16, 16).contiguous()
    noisy = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    for image in (noisy, x01):
        x = (image - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        ours = reconstruction.reference_levels(reconstruction.unnormalize(x).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(ours, _original_png_levels(x, tmp_path))
    old = reconstruction.reference_levels(denormalize(x).clamp(0, 1)).permute(0, 2, 3, 1).numpy()
    differ = int((old != _original_png_levels(x, tmp_path)).sum())
    assert differ > 100, differ  # the issue counted 187 of the 768 (level, channel) pairs


def test_original_average_of_batches_and_ranks():
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert reconstruction.original_average(values, batch_size=2, world_size=1) == pytest.approx((1.5 + 3.5 + 5) / 3)
    assert reconstruction.original_average(values, batch_size=2, per_batch=False) == pytest.approx(3.0)
    # 2 ranks: DistributedSampler pads with index 0; rank 0 takes 1, 3, 5 and rank 1 takes 2, 4, 1
    assert reconstruction.original_average(values, 2, 2) == pytest.approx(((2 + 5) / 2 + (3 + 1) / 2) / 2)
    assert reconstruction.original_average(values, 2, 2, per_batch=False) == pytest.approx((3 + 7 / 3) / 2)


@pytest.mark.parametrize("average", ["original", "images"])
def test_metrics_equal_direct_computation(tmp_path, tiny_model, average):
    root = make_image_folder(tmp_path / "ds", per_class=3)
    ds = ImageFolderDataset(root, "center_crop", size=16)
    run = open_run("cpu", "fp32", "none", model=tiny_model, identity={"kind": "test"})
    torch.manual_seed(0)
    lp, feat = LPIPS().eval(), SmallFeatures().eval()
    out = reconstruction.evaluate(run, ds, batch_size=4, workers=0, lpips_net=lp, fid_net=feat, average=average)

    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        rec = tiny_model.get_latents_decoded_images(tiny_model.get_reconstruction_latents(x))
        a, b = _original_unnormalize(x).clamp(0, 1), _original_unnormalize(rec).clamp(0, 1)
        lp_each = lp(a * 2 - 1, b * 2 - 1).flatten()
        ssim_each = torch.stack([ssim(a[i:i + 1], b[i:i + 1]) for i in range(9)])
        fa = feat(torch.from_numpy(_original_png_levels(x, tmp_path)).permute(0, 3, 1, 2).float() / 255).double()
        fb = feat((b * 255).floor() / 255).double().numpy()
    fa = fa.numpy()
    fid = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    if average == "original":  # batches of 4, 4, 1: the mean of the three batch means
        expect_ssim = np.mean([ssim_each[i:i + 4].mean().item() for i in (0, 4, 8)])
        expect_lpips = np.mean([lp_each[i:i + 4].mean().item() for i in (0, 4, 8)])
        assert abs(expect_ssim - ssim_each.mean().item()) > 1e-6  # the two averages differ here
        assert out["extra"]["image_mean"]["ssim"] == pytest.approx(ssim_each.mean().item(), rel=1e-6)
    else:
        expect_ssim, expect_lpips = ssim_each.mean().item(), lp_each.mean().item()
        assert "original_average" in out["extra"]
    m = out["metrics"]
    assert m["psnr"] == pytest.approx(psnr(a * 255, b * 255, data_range=255).item(), rel=1e-6)
    assert m["ssim"] == pytest.approx(expect_ssim, rel=1e-6)
    assert m["lpips"] == pytest.approx(expect_lpips, rel=1e-4)
    assert m["rfid"] == pytest.approx(fid, rel=1e-6, abs=1e-9)
    assert out["num_samples"] == 9 and out["extra"]["average"] == average


def test_cli_without_metric_networks(tmp_path, tiny_checkpoint):
    root = make_image_folder(tmp_path / "ds", per_class=1)
    out = tmp_path / "rec.json"
    assert main(["reconstruction", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--workers", "0", "--image-size", "32", "--no-fid", "--no-lpips", "--out", str(out), "-q"]) == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["rfid"] is None and r["metrics"]["psnr"] > 0 and r["dataset"]["transform"] == "center_crop"


def test_cli_missing_inception_exits_2(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing"))
    root = make_image_folder(tmp_path / "ds", per_class=1)
    assert main(["reconstruction", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--no-lpips", "--out", str(tmp_path / "r.json")]) == 2
    assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_metrics_if_present_skips_missing_networks_and_says_how(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """bash run_verify.sh --dataset's mode: every metric whose network file is present, the others named as
    skipped with where to put the file (before, it ran with --no-fid --no-lpips whatever was present)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "nothing"))
    monkeypatch.delenv("VTP_METRIC_WEIGHTS", raising=False)
    root = make_image_folder(tmp_path / "ds", per_class=1)
    out = tmp_path / "rec.json"
    assert main(["reconstruction", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--workers", "0", "--image-size", "32", "--metrics-if-present", "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "lpips skipped" in err and "rfid skipped" in err and "VTP_METRIC_WEIGHTS" in err
    r = json.loads(out.read_text())
    assert set(r["options"]["metrics_skipped"]) == {"lpips", "rfid"} and r["metrics"]["lpips"] is None
    assert "pt_inception-2015-12-05-6726825d.pth" in r["options"]["metrics_skipped"]["rfid"]
