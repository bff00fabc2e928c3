"""Reconstruction: per-image PSNR/SSIM/LPIPS means and the FID of the 8-bit images equal a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_helpers import make_image_folder

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


def test_metrics_equal_direct_computation(tmp_path, tiny_model):
    root = make_image_folder(tmp_path / "ds", per_class=3)
    ds = ImageFolderDataset(root, "center_crop", size=16)
    run = open_run("cpu", "fp32", "none", model=tiny_model, identity={"kind": "test"})
    torch.manual_seed(0)
    lp, feat = LPIPS().eval(), SmallFeatures().eval()
    out = reconstruction.evaluate(run, ds, batch_size=4, workers=0, lpips_net=lp, fid_net=feat)

    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        rec = tiny_model.get_latents_decoded_images(tiny_model.get_reconstruction_latents(x))
        a, b = denormalize(x).clamp(0, 1), denormalize(rec).clamp(0, 1)
        lp_ref = lp(a * 2 - 1, b * 2 - 1).mean().item()
        fa = feat((a * 255).floor() / 255).double().numpy()
        fb = feat((b * 255).floor() / 255).double().numpy()
    fid = frechet_distance(fa.mean(0), np.cov(fa, rowvar=False), fb.mean(0), np.cov(fb, rowvar=False))
    m = out["metrics"]
    assert m["psnr"] == pytest.approx(psnr(a * 255, b * 255, data_range=255).item(), rel=1e-6)
    assert m["ssim"] == pytest.approx(ssim(a, b).item(), rel=1e-6)
    assert m["lpips"] == pytest.approx(lp_ref, rel=1e-4)
    assert m["rfid"] == pytest.approx(fid, rel=1e-6, abs=1e-9)
    assert out["num_samples"] == 9


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
