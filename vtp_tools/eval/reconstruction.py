"""Reconstruction quality (the original ``tools/test_reconstruction_hf.py``): PSNR, SSIM, LPIPS, rFID.

Per image: ``center_crop_arr`` to S, encode (under the run's precision) and decode (fp32). Both images are
brought back to [0, 1] exactly as the original does: torchvision ``Normalize(-mean/std, 1/std)``
(:func:`unnormalize`: ``(x - (-m/s)) / (1/s)`` with float32 constants, which rounds differently from
``x * s + m``), then clamped. On those pixels:

* PSNR: ``20 log10(255 / sqrt(MSE))`` on the x255 values, per image (``vtp.image.psnr``);
* SSIM: Gaussian 11 x 11, sigma 1.5, data range 1 (torchmetrics' default, ``vtp.image.ssim``), per image;
* LPIPS: VGG16 v0.1 on ``2x - 1`` (:mod:`vtp_tools.eval.metrics.lpips`), per image;
* rFID: Inception pool3 features of the 8-bit PNGs the original saves (:func:`reference_levels`:
  ``(x * 255).astype(uint8)``, truncation, read back as ``level / 255``) for the reference set and the
  reconstructions, Frechet distance of the two Gaussians.

Averaging (``average``): ``"original"`` (default) as the original: SSIM and LPIPS are batch means averaged
over the batches, PSNR the mean of per-image values, and under torchrun each is the mean of the ranks' means,
with DistributedSampler's padded duplicates counted (:func:`original_average`, from the per-image values,
the batch size and the number of processes). ``"images"``: the plain mean over all images, each once (the
quantity those estimate; equal to the original's when every batch is full and the images split evenly).
Both are in the result. FID statistics are accumulated per rank as ``(n, sum, sum of outer products)`` in
float64 and summed: every image counts once (the original's PNG folder, whose names under DDP can skip
images, is not reproduced).
"""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from vtp.image import IMAGENET_MEAN, IMAGENET_STD, psnr, ssim

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


AVERAGES = ("original", "images")
AVERAGE_NOTES = {
    "original": "as the original: SSIM and LPIPS the mean of batch means, PSNR of per-image values, then the mean "
                "over processes with DistributedSampler's padded duplicates; the plain image mean is image_mean",
    "images": "the mean over images, each once (differs from the original's batch/rank means when the last batch "
              "is short or the images do not split evenly over the processes); the original's is original_average",
}


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised (B, 3, H, W) back to [0, 1] scale as the original does it: torchvision
    ``Normalize(mean=-m/s, std=1/s)``, i.e. ``(x - c) / d`` with ``c = -m/s`` and ``d = 1/s`` computed in
    Python floats and cast to ``x``'s dtype. Not clamped."""
    c = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)], dtype=x.dtype, device=x.device)
    d = torch.tensor([1 / s for s in IMAGENET_STD], dtype=x.dtype, device=x.device)
    return (x - c.view(-1, 1, 1)) / d.view(-1, 1, 1)


def reference_levels(x01: torch.Tensor) -> torch.Tensor:
    """The uint8 levels of the PNG the original writes from clamped [0, 1] float32 pixels: ``x * 255`` in
    float32, truncated (``numpy.astype(uint8)``); (B, 3, H, W) uint8."""
    return torch.floor(x01.float() * 255.0).clamp(0, 255).to(torch.uint8)


def quantize(x01: torch.Tensor) -> torch.Tensor:
    """What the FID network reads from such a PNG: :func:`reference_levels` / 255 (ToTensor), float32."""
    return reference_levels(x01).float() / 255.0


def original_average(values: list, batch_size: int, world_size: int = 1, per_batch: bool = True) -> float:
    """The original's average of per-image ``values`` (dataset order) run with ``batch_size`` per process and
    ``world_size`` processes: DistributedSampler order (indices padded from the start to a multiple of
    ``world_size``, rank ``r`` takes ``r, r + W, ...``), then per rank the mean of batch means
    (``per_batch``, SSIM and LPIPS) or of the values (PSNR), then the mean over ranks."""
    n = len(values)
    order = list(range(n))
    pad = -(-n // world_size) * world_size - n
    order += (order * -(-pad // n))[:pad]
    rank_means = []
    for r in range(world_size):
        mine = [values[i] for i in order[r::world_size]]
        if per_batch:
            mine = [float(np.mean(mine[b:b + batch_size])) for b in range(0, len(mine), batch_size)]
        rank_means.append(float(np.mean(mine)))
    return float(np.mean(rank_means))


def evaluate(run: Run, dataset: ImageFolderDataset, batch_size: int = 32, workers: Optional[int] = None,
             limit: Optional[int] = None, lpips_net=None, fid_net=None, average: str = "original") -> Optional[dict]:
    """PSNR/SSIM/LPIPS averaged per ``average`` (see the module) and rFID over the dataset (first ``limit``
    images). None on ranks > 0. ``lpips_net`` / ``fid_net`` None skip that metric (reported as None).
    The dict also holds ``per_image`` [(psnr, ssim, lpips or None)] in dataset order and ``extra`` (the
    averaging and the other average's values).
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
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
            orig01 = unnormalize(images).clamp(0, 1)  # (B, 3, S, S)
            rec01 = unnormalize(recon).clamp(0, 1)
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
    names = ("psnr", "ssim", "lpips") if lpips_net is not None else ("psnr", "ssim")
    by_image = {k: float(np.mean([r[j] for r in merged])) for j, k in enumerate(names)}
    by_original = {k: original_average([r[j] for r in merged], batch_size, ctx.world_size, per_batch=k != "psnr")
                   for j, k in enumerate(names)}
    chosen, other = (by_original, by_image) if average == "original" else (by_image, by_original)
    metrics = {"psnr": chosen["psnr"], "ssim": chosen["ssim"], "lpips": chosen.get("lpips"), "rfid": None}
    extra = {"average": average, "average_batch_size": batch_size, "average_world_size": ctx.world_size,
             "average_note": AVERAGE_NOTES[average],
             ("image_mean" if average == "original" else "original_average"): other}
    if fid_net is not None:
        if n < 2:
            logger.warning("rFID needs at least 2 images; skipped")
        else:
            mu1, s1 = _GaussianAccumulator.stats([p[0] for p in fid_parts])
            mu2, s2 = _GaussianAccumulator.stats([p[1] for p in fid_parts])
            metrics["rfid"] = frechet_distance(mu1, s1, mu2, s2)
    return {"metrics": metrics, "num_samples": n, "per_image": merged, "extra": extra,
            "timing": {"seconds": seconds, "images_per_s_rank0": len(sampler) / max(seconds, 1e-9)}}
