"""The one guarded place that imports ``torch_npu``.

Why a guard is needed (facts file, section 3):

* Since torch 2.5, torch_npu registers a ``torch.backends`` entry point, so ``import torch`` imports
  torch_npu by itself ("autoload"). On a host with torch_npu installed but no CANN (or no driver
  libraries), that autoload fails and ``import torch`` itself raises
  ``RuntimeError: Failed to load the backend extension: torch_npu``, chained from
  ``ImportError: libhccl.so: cannot open shared object file``.
* With ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` set *before* ``import torch``, torch imports cleanly and an
  explicit ``import torch_npu`` raises a plain ``ImportError`` that can be caught and reported.

So entry points (CLI ``main`` functions) call :func:`prepare_environment` before their first
``import torch``; library code calls :func:`import_torch_npu` and never imports torch_npu itself.

This module imports neither torch nor torch_npu at import time, so importing it is cheap and safe
before ``prepare_environment()``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from types import ModuleType

logger = logging.getLogger(__name__)

AUTOLOAD_ENV = "TORCH_DEVICE_BACKEND_AUTOLOAD"
CANN_ENV_VARS = ("ASCEND_HOME_PATH", "ASCEND_OPP_PATH")

# SoC version integers returned by ``get_soc_version()`` (torch_npu csrc/core/npu/NpuVariables.h).
SOC_910A = 102
SOC_310P1 = 200
SOC_910B1 = 220  # first Atlas A2 SoC: bf16, HF32 defaults, jit_compile=False, ND format default
SOC_310B1 = 240
SOC_910_9391 = 250  # first Atlas A3 SoC
SOC_950 = 260

# Inclusive ranges of the enum, mapped to the product family names used in the facts file.
_SOC_FAMILIES = (
    (100, 104, "910A"),  # Atlas training (910 Premium A, Pro A, 910A, Pro B, 910B-old)
    (200, 205, "310P"),  # Atlas inference
    (220, 225, "A2"),  # Atlas A2, 910B1..910B4-1
    (240, 243, "310B"),
    (250, 256, "A3"),  # Atlas A3, 910_93xx
    (260, 260, "950"),
)

# (module or None, reason or None), filled by the first import_torch_npu() call.
_cache: tuple[ModuleType | None, str | None] | None = None


def _reset_cache() -> None:
    """Forget the cached import result (for tests that swap in a stand-in torch_npu)."""
    global _cache
    _cache = None


def torch_npu_installed() -> bool:
    """True when a ``torch_npu`` distribution is importable in principle. Imports nothing."""
    module = sys.modules.get("torch_npu")
    if module is not None:
        return True
    try:
        return importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        return False


def missing_cann_env() -> list[str]:
    """Names of the CANN environment variables (set by CANN's ``set_env.sh``) that are not set."""
    return [name for name in CANN_ENV_VARS if not os.environ.get(name)]


def prepare_environment() -> dict:
    """Make ``import torch`` survive a torch_npu install without a usable CANN. Call before ``import torch``.

    Decision: ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` is set only when all of these hold:

    1. torch_npu is installed (``find_spec``; nothing is imported);
    2. the user has not set ``TORCH_DEVICE_BACKEND_AUTOLOAD`` themselves (an explicit choice wins);
    3. ``ASCEND_HOME_PATH`` or ``ASCEND_OPP_PATH`` is unset, i.e. CANN's ``set_env.sh`` was not
       sourced. Autoload would then fail and take ``import torch`` down with it.

    On a healthy Ascend host (set_env.sh sourced) torch's stock behaviour is kept: autoload imports
    torch_npu, exactly as torch_npu's README documents. The rule does not catch a host where
    set_env.sh was sourced but the driver libraries are missing (``libascend_hal.so``, typical of a
    container without ``/usr/local/Ascend/driver`` mounted); there ``import torch`` still fails, and the
    user must export ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` or mount the driver. Disabling autoload
    unconditionally would cover that case too, but it would also change behaviour on working hosts
    for any code that relies on autoload, and the variable is inherited by child processes.

    Returns a dict: ``torch_npu_installed`` (bool), ``autoload`` ("disabled" when this call set it,
    otherwise "unchanged") and ``reason`` (one sentence). When torch is already imported the
    variable has no effect any more; the returned reason says so.
    """
    installed = torch_npu_installed()
    result = {"torch_npu_installed": installed, "autoload": "unchanged", "reason": ""}
    if not installed:
        result["reason"] = "torch_npu is not installed"
        return result
    if AUTOLOAD_ENV in os.environ:
        result["reason"] = f"{AUTOLOAD_ENV}={os.environ[AUTOLOAD_ENV]} was set by the user"
        return result
    missing = missing_cann_env()
    if not missing:
        result["reason"] = "CANN environment is set; torch autoloads torch_npu"
        return result
    if "torch" in sys.modules:
        result["reason"] = (
            f"CANN environment missing ({', '.join(missing)} unset) but torch is already imported, "
            f"so {AUTOLOAD_ENV}=0 comes too late"
        )
        logger.warning("prepare_environment: %s", result["reason"])
        return result
    os.environ[AUTOLOAD_ENV] = "0"
    result["autoload"] = "disabled"
    result["reason"] = (
        f"torch_npu installed but CANN environment missing ({', '.join(missing)} unset): "
        f"set {AUTOLOAD_ENV}=0 so that import torch does not fail"
    )
    logger.info("prepare_environment: %s", result["reason"])
    return result


def _exception_chain(exc: BaseException) -> str:
    """``Type: message`` of the exception and of each cause, joined with " <- "."""
    parts, seen = [], set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " <- ".join(parts)


def _diagnose(text: str) -> str:
    """A short, actionable cause for a failed ``import torch_npu``, from the error text."""
    if "libascend_hal" in text:
        return "Ascend driver not found (libascend_hal.so): install or mount /usr/local/Ascend/driver"
    if "cannot open shared object file" in text or "libascendcl" in text or "libhccl" in text:
        return "CANN not found: source set_env.sh (e.g. /usr/local/Ascend/ascend-toolkit/set_env.sh)"
    if "Two accelerators" in text:
        return "torch is a CUDA build; torch_npu needs the CPU build of torch"
    if "No module named 'torch_npu._C'" in text:
        return "a local torch_npu/ folder shadows the installed package: run from another directory"
    return "torch_npu failed to import"


def import_torch_npu() -> tuple[ModuleType | None, str | None]:
    """Import torch_npu once and cache the outcome.

    Returns ``(module, None)`` on success and ``(None, reason)`` otherwise. The reason keeps the
    exact error text behind a short diagnosis, e.g. ``"CANN not found: source set_env.sh (...):
    ImportError: libhccl.so: cannot open shared object file: No such file or directory"``.

    Order (facts section 3): a torch_npu already in ``sys.modules`` (autoloaded by torch) is used
    as is; otherwise ``find_spec`` decides whether it is installed, without importing; only then is
    it imported, catching ImportError, OSError and RuntimeError (the failure modes seen with a
    missing CANN, missing driver, or a CUDA torch). Anything else raised by the import is also
    turned into a reason, and logged with its traceback.
    """
    global _cache
    if _cache is not None:
        return _cache
    module = sys.modules.get("torch_npu")
    if module is not None:
        _cache = (module, None)
        return _cache
    if not torch_npu_installed():
        _cache = (None, "torch_npu is not installed")
        return _cache
    try:
        module = importlib.import_module("torch_npu")
    except (ImportError, OSError, RuntimeError) as exc:
        text = _exception_chain(exc)
        _cache = (None, f"{_diagnose(text)}: {text}")
    except Exception as exc:  # a probe must never crash its caller
        text = _exception_chain(exc)
        logger.warning("import torch_npu raised an unexpected error", exc_info=True)
        _cache = (None, f"torch_npu failed to import (unexpected error): {text}")
    else:
        _cache = (module, None)
    if _cache[1] is not None:
        logger.debug("torch_npu unavailable: %s", _cache[1])
    return _cache


def npu_module() -> ModuleType | None:
    """``torch.npu`` (the same object as ``torch_npu.npu``) when torch_npu imported, else None."""
    module, _ = import_torch_npu()
    if module is None:
        return None
    torch = sys.modules.get("torch")
    return getattr(torch, "npu", None) or getattr(module, "npu", None)


def npu_device_count() -> tuple[int, str | None]:
    """``(count, reason)``: the visible NPU count (honours ``ASCEND_RT_VISIBLE_DEVICES``), and why 0."""
    module, reason = import_torch_npu()
    if module is None:
        return 0, reason
    npu = npu_module()
    if npu is None:
        return 0, "torch_npu imported but torch.npu is missing"
    try:
        if not npu.is_available():
            return 0, "torch_npu imported but torch.npu.is_available() is False (no device visible?)"
        count = int(npu.device_count())
    except Exception as exc:  # driver errors surface here on a broken host
        return 0, f"torch.npu device query failed: {_exception_chain(exc)}"
    if count <= 0:
        return 0, "torch_npu imported but torch.npu.device_count() is 0"
    return count, None


def npu_available() -> bool:
    """True when torch_npu imports, ``torch.npu.is_available()`` and at least one NPU is visible."""
    return npu_device_count()[0] > 0


def soc_version() -> int | None:
    """The SoC version enum (e.g. 223 for Ascend910B3), or None off NPU or when unknown.

    Compare against the ``SOC_*`` constants: ``soc_version() >= SOC_910B1`` means an Atlas A2 or
    newer chip (bf16, ND format and prebuilt kernels by default). Tries ``torch.npu.get_soc_version``
    and then ``torch_npu.npu.utils.get_soc_version`` (where torch_npu defines it).
    """
    module, _ = import_torch_npu()
    if module is None:
        return None
    npu = npu_module()
    utils = getattr(getattr(module, "npu", None), "utils", None)
    for owner in (npu, utils):
        getter = getattr(owner, "get_soc_version", None)
        if getter is None:
            continue
        try:
            return int(getter())
        except Exception as exc:
            logger.debug("get_soc_version failed: %s", _exception_chain(exc))
    return None


def soc_family(version: int | None) -> str | None:
    """Product family of a SoC version: "910A", "310P", "A2", "310B", "A3", "950"; None if unknown."""
    if version is None:
        return None
    for low, high, name in _SOC_FAMILIES:
        if low <= version <= high:
            return name
    return None
