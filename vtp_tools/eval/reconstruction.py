"""Reconstruction quality (the original ``tools/test_reconstruction_hf.py``): PSNR, SSIM, LPIPS, rFID.

Per image: ``center_crop_arr`` to S, encode (under the run's precision) and decode (fp32), both images
de-normalised and clamped to [0, 1]. Then

* PSNR: ``20 log10(255 / sqrt(MSE))`` on the x255 values, per image (``vtp.image.psnr``);
* SSIM: Gaussian 11 x 11, sigma 1.5, data range 1 (torchmetrics' default, ``vtp.image.ssim``), per image;
* LPIPS: VGG16 v0.1 on ``2x - 1`` (:mod:`vtp_tools.eval.metrics.lpips`), per image;
* rFID: Inception pool3 features of the 8-bit images the original saves as PNG (``uint8(255 x)``,
  truncated) for the reference set and the reconstructions, Frechet distance of the two Gaussians.

PSNR, SSIM and LPIPS are the mean over all images (the original averages batch means, and rank means
under DDP, which weighs a short last batch more; the per-image mean is the quantity those estimate).
FID statistics are accumulated per rank as ``(n, sum, sum of outer products)`` in float64 and summed.
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from vtp.image import denormalize, psnr, ssim

from .context import Progress, Run, gather_by_index
from .data import ImageFolderDataset, ShardSampler, make_loader
from .metrics.inception import frechet_distance

logger = logging.getLogger(__name__)


class _GaussianAccumulator:
    """Running (n, sum, sum x x^T) of feature rows in float64."""

    def __init__(self):
        self.n, self.sum, self.outer = 0, 0.0, 0.0  # arrays after the first add

    def add(self, feats: torch.Tensor) -> None:
        x = feats.detach().double().cpu().numpy()  # (B, D)
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def state(self) -> tuple:
        return self.n, self.sum, self.outer

    @staticmethod
    def stats(parts: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """(mean, covariance with N-1) of the union of the parts."""
        n = sum(p[0] for p in parts)
        s = sum(p[1] for p in parts)
        o = sum(p[2] for p in parts)
        mu = s / n
        return mu, (o - n * np.outer(mu, mu)) / (n - 1)


def quantize(x01: torch.Tensor) -> torch.Tensor:
    """The 8-bit image the original writes (``(x * 255).astype(uint8)``, truncation), back in [0, 1]."""
    return torch.floor(x01 * 255.0).clamp(0, 255) / 255.0


def evaluate(run: Run, dataset: ImageFolderDataset, batch_size: int = 32, workers: Optional[int] = None,
             limit: Optional[int] = None, lpips_net=None, fid_net=None) -> Optional[dict]:
    """Mean PSNR/SSIM/LPIPS and rFID over the dataset (first ``limit`` images). None on ranks > 0.

    ``lpips_net`` / ``fid_net`` None skip that metric (reported as None).
    """
    ctx = run.ctx
    n = len(dataset) if limit is None else min(limit, len(dataset))
    sampler = ShardSampler(n, ctx.rank, ctx.world_size)
    loader = make_loader(dataset, sampler, batch_size, workers, pin_memory=run.device.type != "cpu")
    if lpips_net is not None:
        lpips_net = lpips_net.to(run.device).eval()
    if fid_net is not None:
        fid_net = fid_net.to(run.device).eval()
    ref_acc, rec_acc = _GaussianAccumulator(), _GaussianAccumulator()
    progress = Progress(len(sampler), "reconstruction", enabled=ctx.is_main)
    indices, rows = [], []
    with torch.inference_mode():
        for images, _, idx in loader:
            images = images.to(run.device, non_blocking=True)
            with run.autocast():
                latents = run.model.get_reconstruction_latents(images)
            recon = run.model.get_latents_decoded_images(latents.float()).float()
            orig01 = denormalize(images).clamp(0, 1)  # (B, 3, S, S)
            rec01 = denormalize(recon).clamp(0, 1)
            p = psnr(orig01 * 255.0, rec01 * 255.0, data_range=255.0, reduction="none")
            s = ssim(orig01, rec01, data_range=1.0, reduction="none")
            lp = lpips_net(orig01 * 2 - 1, rec01 * 2 - 1).float().cpu() if lpips_net is not None else None
            if fid_net is not None:
                ref_acc.add(fid_net(quantize(orig01)))
                rec_acc.add(fid_net(quantize(rec01)))
            for i in range(images.shape[0]):
                rows.append((float(p[i]), float(s[i]), None if lp is None else float(lp[i])))
            indices += idx.tolist()
            progress.update(len(idx))
    seconds = progress.close()
    merged = gather_by_index(ctx, indices, rows, n)
    from ascend.distributed import gather_objects

    fid_parts = gather_objects(ctx, (ref_acc.state(), rec_acc.state()) if fid_net is not None else None)
    if merged is None:
        return None
    metrics = {"psnr": float(np.mean([r[0] for r in merged])), "ssim": float(np.mean([r[1] for r in merged])),
               "lpips": None if lpips_net is None else float(np.mean([r[2] for r in merged])), "rfid": None}
    if fid_net is not None:
        if n < 2:
            logger.warning("rFID needs at least 2 images; skipped")
        else:
            mu1, s1 = _GaussianAccumulator.stats([p[0] for p in fid_parts])
            mu2, s2 = _GaussianAccumulator.stats([p[1] for p in fid_parts])
            metrics["rfid"] = frechet_distance(mu1, s1, mu2, s2)
    return {"metrics": metrics, "num_samples": n,
            "timing": {"seconds": seconds, "images_per_s_rank0": len(sampler) / max(seconds, 1e-9)}}
