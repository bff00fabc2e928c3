"""Applications of VTP above the device layer: the original's evaluations and latent extraction on any device.

Layering: ``vtp`` (the model) <- ``ascend`` (devices, distributed, fusion) <- ``vtp_tools`` and ``verify``.
:mod:`vtp_tools.eval` is ``python -m vtp_tools.eval``; :mod:`vtp_tools.extract` is ``python -m vtp_tools.extract``.
"""
