"""Reconstruction metrics: PSNR and SSIM (``vtp.image``), LPIPS (VGG16 v0.1) and FID (pytorch-fid Inception)."""

from vtp.image import psnr, ssim

from .inception import FIDInception, activation_stats, frechet_distance, load_fid_inception
from .lpips import LPIPS, load_lpips
from .weightfiles import MetricWeightsMissing

__all__ = ["FIDInception", "LPIPS", "MetricWeightsMissing", "activation_stats", "frechet_distance",
           "load_fid_inception", "load_lpips", "psnr", "ssim"]
