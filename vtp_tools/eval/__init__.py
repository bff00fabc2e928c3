"""The original VTP evaluations on any device: zero-shot, linear probing, reconstruction (``python -m vtp_tools.eval``).

Modules: :mod:`~vtp_tools.eval.data` (ImageFolder without torchvision, dataset identity, sharding),
:mod:`~vtp_tools.eval.zero_shot`, :mod:`~vtp_tools.eval.linear_probe`, :mod:`~vtp_tools.eval.reconstruction`,
:mod:`~vtp_tools.eval.metrics` (PSNR, SSIM, LPIPS, FID), :mod:`~vtp_tools.eval.results` (schema, gates, compare),
:mod:`~vtp_tools.eval.context` (device, model, progress, gathering), :mod:`~vtp_tools.eval.cli`.
"""
