"""Reconstruction metrics on known pairs: PSNR/SSIM closed forms, the Frechet distance of Gaussians, the FID
Inception and LPIPS networks (random weights of the right architecture) against independent formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vtp_tools.eval.metrics import FIDInception, LPIPS, MetricWeightsMissing, frechet_distance, psnr, ssim
from vtp_tools.eval.metrics.weightfiles import INCEPTION, WeightFile, locate


def test_psnr_of_a_constant_offset():
    a = torch.full((2, 3, 16, 16), 0.5)
    b = a + 4 / 255
    assert psnr(a * 255, b * 255, data_range=255).item() == pytest.approx(20 * math.log10(255 / 4))


def test_ssim_known_pairs():
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    assert ssim(x, x).item() == pytest.approx(1.0)
    # constant images: only the luminance term, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1)
    assert ssim(torch.full((1, 3, 16, 16), 0.2), torch.full((1, 3, 16, 16), 0.6)).item() == pytest.approx(expected)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    v1, v2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_general_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    s1, s2 = a @ a.T, b @ b.T
    mu = rng.normal(size=6)
    # independent: tr sqrt(S1 S2) = sum of the square roots of the (real, >= 0) eigenvalues of S1 S2
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = (mu ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu, s1, 0 * mu, s2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-8)


def test_fid_inception_architecture_and_state_dict_names():
    torch.manual_seed(0)
    net = FIDInception().eval()
    keys = net.state_dict().keys()
    assert "Mixed_7c.branch3x3dbl_3b.bn.running_var" in keys and "Conv2d_1a_3x3.conv.weight" in keys
    # torchvision Inception3: 27,161,264 parameters, less fc (2,049,000) and AuxLogits (3,326,696)
    assert sum(p.numel() for p in net.parameters()) == 21_785_568
    with torch.no_grad():
        out = net(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 2048) and torch.isfinite(out).all()


def _lpips_reference(net: LPIPS, x, y):
    """LPIPS written out with functional ops from the same weights."""
    def feats(z):
        z = (z - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        out = []
        for i, layer in enumerate(net.features):
            if isinstance(layer, torch.nn.Conv2d):
                z = F.conv2d(z, layer.weight, layer.bias, padding=1)
            elif isinstance(layer, torch.nn.ReLU):
                z = z.clamp(min=0)
                if i in (3, 8, 15, 22, 29):
                    out.append(z)
            else:
                z = F.max_pool2d(z, 2)
        return out
    total = torch.zeros(x.shape[0])
    for k, (a, b) in enumerate(zip(feats(x), feats(y))):
        na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = getattr(net, f"lin{k}").model[1].weight.view(1, -1, 1, 1)
        total += ((na - nb) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_lpips_matches_formula_and_is_zero_on_identical_images():
    torch.manual_seed(0)
    net = LPIPS().eval()
    for i in range(5):  # positive heads, as trained LPIPS heads are
        head = getattr(net, f"lin{i}").model[1]
        head.weight.data = head.weight.data.abs()
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        d = net(x, y)
        torch.testing.assert_close(d, _lpips_reference(net, x, y), rtol=1e-4, atol=1e-6)
        assert net(x, x).abs().max().item() < 1e-6 and (d > 0).all()


def test_missing_or_corrupt_weights_say_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    monkeypatch.delenv("VTP_METRIC_WEIGHTS", raising=False)
    with pytest.raises(MetricWeightsMissing, match=r"(?s)not found.*hub/checkpoints/pt_inception.*copy it"):
        locate(INCEPTION)
    bad = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    bad.write_bytes(b"junk")
    with pytest.raises(MetricWeightsMissing, match="does not start with 6726825d"):
        locate(INCEPTION, bad)
    anyfile = WeightFile("x.pth", "http://example", what="x")
    assert locate(anyfile, bad)["verified"] is False
