"""The device layer, above the model (vtp/) and below the applications (verify/, vtp_tools/): device
selection (NPU > CUDA > CPU), the environment report, torch.distributed set-up and the load-time fusion
layer (fused-operator swaps, ``fusion_result.json``).

Importing this package is cheap and imports neither torch nor torch_npu, so an entry point can run

    from ascend.npu import prepare_environment
    prepare_environment()  # before the first `import torch`
    import torch

The device helpers below are re-exported lazily: ``ascend.resolve_device`` imports torch (and
``ascend.device``) on first access. ``torch_npu`` is imported only by :mod:`ascend.npu`.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DeviceError": "device",
    "resolve_device": "device",
    "available_devices": "device",
    "is_npu": "device",
    "synchronize": "device",
    "peak_memory_bytes": "device",
    "reset_peak_memory": "device",
    "timed": "device",
    "autocast": "device",
    "strict_fp32": "device",
    "set_strict_fp32": "device",
    "restore_fp32_state": "device",
    "ascend_options": "device",
    "environment_report": "environment",
    "format_environment": "environment",
    "prepare_environment": "npu",
    "import_torch_npu": "npu",
    "npu_available": "npu",
    "soc_version": "npu",
    "soc_family": "npu",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ascend' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
