"""The original VTP evaluations on any device: zero-shot, linear probing, reconstruction (``python -m vtp.eval``).

Modules: :mod:`~vtp.eval.data` (ImageFolder without torchvision, dataset identity, sharding),
:mod:`~vtp.eval.zero_shot`, :mod:`~vtp.eval.linear_probe`, :mod:`~vtp.eval.reconstruction`,
:mod:`~vtp.eval.metrics` (PSNR, SSIM, LPIPS, FID), :mod:`~vtp.eval.results` (schema, gates, compare),
:mod:`~vtp.eval.context` (device, model, progress, gathering), :mod:`~vtp.eval.cli`.
"""
