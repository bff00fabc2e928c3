"""Device selection and per-device controls: NPU (torch_npu), CUDA and CPU.

Everything that differs between the three backends lives here, so model and verification code
only sees a ``torch.device`` and a few context managers:

* :func:`resolve_device` picks or validates the device and explains a refusal (:class:`DeviceError`).
* :func:`synchronize`, :func:`peak_memory_bytes`, :func:`reset_peak_memory`, :func:`timed` measure.
* :func:`autocast` runs a precision profile ("fp32", "fp16", "bf16").
* :func:`strict_fp32` / :func:`set_strict_fp32` switch off TF32 (CUDA) and HF32 (NPU) for fp32 checks.
* :func:`ascend_options` pins the torch_npu options that change numerics or first-call latency.

"Am I on NPU?" is ``device.type == "npu"`` (or :func:`is_npu`); the SoC is
``ascend.npu.soc_version()`` / ``ascend.npu.soc_family()``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import time
import warnings
from types import ModuleType
from typing import Iterator, Union

import torch

from . import npu as _npu

logger = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device, None]

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

_DEVICE_RE = re.compile(r"^(auto|npu|cuda|cpu)(?::(\d+))?$")
_USAGE = 'use "auto", "cpu", "npu", "npu:<index>", "cuda" or "cuda:<index>"'


class DeviceError(RuntimeError):
    """A requested device cannot be used. The message says what was asked, what exists, and why."""


# ----------------------------------------------------------------------------------------------
# Parsing and discovery


def _parse(requested: DeviceLike) -> tuple[str, int | None]:
    """``"npu:1"`` -> ``("npu", 1)``; None -> ``("auto", None)``. Raises DeviceError on a bad string."""
    if requested is None:
        return "auto", None
    if isinstance(requested, torch.device):
        return requested.type, requested.index
    if not isinstance(requested, str):
        raise DeviceError(f"device must be a string or torch.device, got {type(requested).__name__}: {_USAGE}")
    match = _DEVICE_RE.match(requested.strip().lower())
    if match is None:
        raise DeviceError(f"unknown device {requested!r}: {_USAGE}")
    kind, index = match.group(1), match.group(2)
    if kind == "auto" and index is not None:
        raise DeviceError(f"unknown device {requested!r}: 'auto' takes no index; {_USAGE}")
    return kind, None if index is None else int(index)


def _cuda_status() -> tuple[int, str | None]:
    """``(count, reason)`` for CUDA; the reason says why the count is 0."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return 0, f"torch {torch.__version__} was built without CUDA (CPU-only build)"
    try:
        if not torch.cuda.is_available():
            return 0, f"CUDA not available: torch is built for CUDA {torch.version.cuda} but no GPU is visible"
        return torch.cuda.device_count(), None
    except Exception as exc:
        return 0, f"CUDA not available: {type(exc).__name__}: {exc}"


def available_devices() -> list[str]:
    """Every usable device as a string, best first: ``["npu:0", "npu:1", "cuda:0", "cpu"]``."""
    npu_count, _ = _npu.npu_device_count()
    cuda_count, _ = _cuda_status()
    return [f"npu:{i}" for i in range(npu_count)] + [f"cuda:{i}" for i in range(cuda_count)] + ["cpu"]


def _current_index(module: ModuleType) -> int:
    try:
        return int(module.current_device())
    except Exception:
        return 0


def _refuse(requested: DeviceLike, reason: str) -> DeviceError:
    found = ", ".join(available_devices())
    return DeviceError(f"requested device {str(requested)!r} is not usable: {reason}. Available: {found}")


def _checked(kind: str, index: int | None, count: int, reason: str | None, requested: DeviceLike) -> torch.device:
    if count == 0:
        raise _refuse(requested, reason or f"no {kind.upper()} device found")
    if index is not None and index >= count:
        last = f"{kind}:0" if count == 1 else f"{kind}:0..{kind}:{count - 1}"
        raise _refuse(requested, f"device index {index} out of range: {count} {kind.upper()}(s) visible ({last})")
    try:
        return torch.device(kind, index)
    except RuntimeError as exc:  # torch_npu imported but did not register the "npu" device type
        raise _refuse(requested, f"torch does not know the device type {kind!r}: {exc}") from exc


def resolve_device(requested: DeviceLike = None) -> torch.device:
    """Turn a device request into a usable ``torch.device``.

    ``None`` or ``"auto"`` picks NPU > CUDA > CPU: NPU when torch_npu imports,
    ``torch.npu.is_available()`` and ``device_count() > 0``; the result carries the current device
    index (``npu:0`` unless ``torch.npu.set_device`` changed it). An explicit ``"npu"``,
    ``"npu:3"``, ``"cuda"``, ``"cuda:0"`` or ``"cpu"`` (or a ``torch.device``) is honoured or
    refused; an explicit request without an index keeps ``index=None`` (torch's "current device").

    Raises :class:`DeviceError` when the device is missing (the message names the request, the
    available devices and the cause: the torch_npu import error, no CANN, torch_npu not installed,
    index out of range, torch built without CUDA) or when the string is malformed.
    """
    kind, index = _parse(requested)
    if kind == "cpu":
        if index not in (None, 0):
            raise DeviceError(f"unknown device {requested!r}: the CPU has no index {index}; {_USAGE}")
        return torch.device("cpu")
    if kind == "npu":
        count, reason = _npu.npu_device_count()
        return _checked("npu", index, count, reason, requested)
    if kind == "cuda":
        count, reason = _cuda_status()
        return _checked("cuda", index, count, reason, requested)
    if kind != "auto":
        raise DeviceError(f"unknown device type {kind!r}: {_USAGE}")

    npu_count, npu_reason = _npu.npu_device_count()
    if npu_count > 0:
        device = _checked("npu", _current_index(_npu.npu_module()), npu_count, None, "npu")
        logger.info("device: %s (auto, %d NPU(s) visible)", device, npu_count)
        return device
    if _npu.torch_npu_installed():
        logger.warning("device: torch_npu is installed but no NPU is usable: %s", npu_reason)
    cuda_count, cuda_reason = _cuda_status()
    if cuda_count > 0:
        device = torch.device("cuda", _current_index(torch.cuda))
        logger.info("device: %s (auto, %d GPU(s) visible)", device, cuda_count)
        return device
    logger.info("device: cpu (auto; NPU: %s; CUDA: %s)", npu_reason, cuda_reason)
    return torch.device("cpu")


def is_npu(device: DeviceLike) -> bool:
    """True for an NPU device or device string (``"npu"``, ``"npu:1"``, ``torch.device("npu", 0)``)."""
    return _parse(device)[0] == "npu"


def _backend(device: DeviceLike) -> tuple[str, int | None, ModuleType | None]:
    """``(type, index, torch.npu | torch.cuda | None)`` for a device; None for CPU."""
    kind, index = _parse(device)
    if kind == "auto":
        kind, index = _parse(resolve_device(device))
    if kind == "npu":
        module = _npu.npu_module()
        if module is None:
            raise _refuse(device, _npu.import_torch_npu()[1] or "torch.npu is missing")
        return kind, index, module
    if kind == "cuda":
        return kind, index, torch.cuda
    return kind, index, None


# ----------------------------------------------------------------------------------------------
# Synchronisation, memory and timing


def synchronize(device: DeviceLike) -> None:
    """Wait for all queued work on the device.

    NPU: ``torch.npu.synchronize(index)``; NPU ops are queued asynchronously (``TASK_QUEUE_ENABLE``),
    so timings without this measure only the launch. CUDA: ``torch.cuda.synchronize(index)``.
    CPU: nothing to do, eager CPU ops have finished when they return.
    """
    _, index, module = _backend(device)
    if module is not None:
        module.synchronize(index)


def peak_memory_bytes(device: DeviceLike) -> int | None:
    """Peak memory since the last :func:`reset_peak_memory`, in bytes.

    NPU/CUDA: ``max_memory_allocated(index)``, the caching allocator's peak of live tensors.
    CPU: the process's peak resident set size (Linux ``VmHWM`` from ``/proc/self/status``, else
    ``resource.getrusage(...).ru_maxrss``). It counts everything in the process (interpreter,
    libraries, weights), so compare CPU values with each other, not with NPU values. None where no
    figure can be read (e.g. Windows).
    """
    _, index, module = _backend(device)
    if module is not None:
        return int(module.max_memory_allocated(index))
    return _cpu_peak_rss()


def reset_peak_memory(device: DeviceLike) -> bool:
    """Restart the peak counter of :func:`peak_memory_bytes`; True when it was reset.

    NPU/CUDA: ``reset_peak_memory_stats(index)``. CPU: writes ``5`` to ``/proc/self/clear_refs``
    (Linux >= 4.0), which resets the peak RSS to the current RSS; returns False where that is not
    possible, and the CPU figure then stays the peak since process start.
    """
    _, index, module = _backend(device)
    if module is not None:
        module.reset_peak_memory_stats(index)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError as exc:
        logger.debug("cannot reset the CPU peak RSS: %s", exc)
        return False


def _cpu_peak_rss() -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere
    except (ImportError, OSError, ValueError):
        return None


class Timing:
    """Result of :func:`timed`: ``seconds`` and ``ms`` of wall time, device work included."""

    seconds: float = float("nan")

    @property
    def ms(self) -> float:
        return self.seconds * 1e3


@contextlib.contextmanager
def timed(device: DeviceLike) -> Iterator[Timing]:
    """Wall time of the block with the device synchronised before and after.

    ``with timed(dev) as t: model(x)`` then ``t.ms``. Warm up first: the first NPU call of each
    op/shape may compile a kernel (jit_compile) and pays lazy initialisation.
    """
    timing = Timing()
    synchronize(device)
    start = time.perf_counter()
    yield timing
    synchronize(device)
    timing.seconds = time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Precision profiles


def autocast(device: DeviceLike, precision: str) -> contextlib.AbstractContextManager:
    """Context manager for a precision profile: "fp32", "fp16" or "bf16".

    fp32: no autocast (``nullcontext``). fp16/bf16: ``torch.autocast(device_type, dtype)``.
    Refuses (DeviceError) instead of running silently in fp32:

    * bf16 on an NPU where ``torch.npu.is_bf16_supported()`` is False (910A/310P), or a dtype missing
      from ``torch.npu.get_amp_supported_dtype()``;
    * bf16 on a CUDA GPU without bf16;
    * any case where torch disables autocast with a warning (checked on entry).

    CPU: torch 2.13 CPU autocast accepts both bf16 and fp16 (matmul/conv/linear run in the low
    dtype). CPU fp16 is correct but usually slow; it exists to mirror an NPU fp16 run on the host.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = PRECISIONS[precision]
    kind, _, module = _backend(device)
    if kind == "npu":
        bf16_ok = getattr(module, "is_bf16_supported", None)
        if dtype is torch.bfloat16 and bf16_ok is not None and not bf16_ok():
            soc = _npu.soc_version()
            raise DeviceError(
                f"bf16 is not supported on this NPU (SoC version {soc}, family {_npu.soc_family(soc)}; "
                "bf16 needs Atlas A2/910B or newer): use precision 'fp16' or 'fp32'"
            )
        supported = getattr(module, "get_amp_supported_dtype", None)
        if supported is not None and dtype not in supported():
            raise DeviceError(f"NPU autocast does not support {dtype} here (supported: {supported()})")
    elif kind == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise DeviceError("bf16 is not supported on this GPU: use precision 'fp16' or 'fp32'")
    return _checked_autocast(kind, dtype)


def _autocast_enabled(device_type: str, context: torch.autocast) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type here
        return bool(getattr(context, "_enabled", True))


@contextlib.contextmanager
def _checked_autocast(device_type: str, dtype: torch.dtype) -> Iterator[None]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        context = torch.autocast(device_type=device_type, dtype=dtype)
        context.__enter__()
    try:
        if not _autocast_enabled(device_type, context):
            text = "; ".join(str(w.message) for w in caught) or "no reason given"
            raise DeviceError(f"torch disabled {device_type} autocast for {dtype}: {text}")
        yield
    finally:
        context.__exit__(None, None, None)


# ----------------------------------------------------------------------------------------------
# Strict fp32 (no TF32 / HF32)

_NPU_PRECISION_MODE_STRICT = "must_keep_origin_dtype"
_NPU_PRECISION_MODE_OLD_DEFAULT = "allow_fp32_to_fp16"

# torch >= 2.9 keeps the fp32 math mode per backend in ``torch.backends.<node>.fp32_precision``
# ("ieee", "tf32", "bf16" or "none" = inherit), and the legacy flags (``allow_tf32``,
# ``get_float32_matmul_precision``) are views of it. Their setters always work, but their *getters*
# raise "mix of the legacy and new APIs" in some states (seen with torch 2.13, e.g. after
# ``set_float32_matmul_precision("medium")`` followed by ``cuda.matmul.allow_tf32 = True``). So the
# state is read through both views (a legacy value torch refuses to read is stored as None),
# changed through the legacy setters, and restored through the legacy setters and then the nodes.
_FP32_NODES = (
    "", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn", "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn",
)


def _set_cuda_matmul_tf32(value: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = value


def _set_cudnn_tf32(value: bool) -> None:
    torch.backends.cudnn.allow_tf32 = value


# (state key, getter, setter, value when strict, value when reduced precision is allowed)
_LEGACY_FLAGS = (
    (
        "float32_matmul_precision",
        torch.get_float32_matmul_precision,
        torch.set_float32_matmul_precision,
        "highest",
        "high",
    ),
    ("cuda.matmul.allow_tf32", lambda: torch.backends.cuda.matmul.allow_tf32, _set_cuda_matmul_tf32, False, True),
    ("cudnn.allow_tf32", lambda: torch.backends.cudnn.allow_tf32, _set_cudnn_tf32, False, True),
)


def _fp32_node(path: str):
    node = torch.backends
    for part in filter(None, path.split(".")):
        node = getattr(node, part)
    return node


def _fp32_key(path: str) -> str:
    return ".".join(filter(None, ("torch.backends", path, "fp32_precision")))


def _read_torch_flags() -> dict:
    state = {}
    for key, getter, _, _, _ in _LEGACY_FLAGS:
        try:
            state[key] = getter()
        except RuntimeError:  # torch's "mix of the legacy and new APIs" check
            state[key] = None
    for path in _FP32_NODES:
        try:
            state[_fp32_key(path)] = _fp32_node(path).fp32_precision
        except AttributeError:  # torch < 2.9, or a node this torch does not have
            pass
    return state


def _write_torch_flags(state: dict) -> None:
    for key, getter, setter, _, _ in _LEGACY_FLAGS:
        if state.get(key) is None:
            continue
        try:
            unchanged = getter() == state[key]
        except RuntimeError:
            unchanged = False
        if not unchanged:  # a redundant legacy write can itself make torch's getters raise
            setter(state[key])
    for path in _FP32_NODES:  # parents first: setting a parent also changes its children
        key = _fp32_key(path)
        if key in state and _fp32_node(path).fp32_precision != state[key]:
            _fp32_node(path).fp32_precision = state[key]


def _set_torch_fp32(enabled: bool) -> None:
    for _, _, setter, strict, reduced in _LEGACY_FLAGS:
        setter(strict if enabled else reduced)


def _read_flags(kind: str) -> dict:
    state = {"device_type": kind, **_read_torch_flags()}
    if kind == "npu":
        module = _npu.npu_module()
        state["npu.matmul.allow_hf32"] = module.matmul.allow_hf32
        state["npu.conv.allow_hf32"] = module.conv.allow_hf32
    return state


def _write_flags(state: dict) -> None:
    _write_torch_flags(state)
    if "npu.matmul.allow_hf32" in state:
        module = _npu.npu_module()
        module.matmul.allow_hf32 = state["npu.matmul.allow_hf32"]
        module.conv.allow_hf32 = state["npu.conv.allow_hf32"]
    if "npu.ACL_PRECISION_MODE" in state:
        _set_npu_precision_mode(state["npu.ACL_PRECISION_MODE"])


def _set_npu_precision_mode(mode: str) -> str | None:
    """``torch.npu.set_option({"ACL_PRECISION_MODE": mode})``; returns an error text or None."""
    try:
        _npu.npu_module().set_option({"ACL_PRECISION_MODE": mode})
        return None
    except Exception as exc:
        logger.warning("could not set ACL_PRECISION_MODE=%s: %s: %s", mode, type(exc).__name__, exc)
        return f"{type(exc).__name__}: {exc}"


def set_strict_fp32(device: DeviceLike, enabled: bool = True) -> dict:
    """Turn reduced-precision fp32 math off (``enabled=True``) or on; return the previous state.

    Strict (``enabled=True``):

    * torch, every device: ``torch.set_float32_matmul_precision("highest")``,
      ``torch.backends.cuda.matmul.allow_tf32 = False`` and ``torch.backends.cudnn.allow_tf32 = False``.
      On CPU this stops oneDNN from using bf16/tf32 for fp32 matmuls and is otherwise harmless.
    * NPU: ``torch.npu.matmul.allow_hf32 = False`` and ``torch.npu.conv.allow_hf32 = False``. Conv HF32
      is **on by default** in torch_npu, so an fp32 patch-embedding Conv2d otherwise runs in HF32.
      On SoCs older than 910B1 (910A/310P), whose default ``ACL_PRECISION_MODE`` is
      "allow_fp32_to_fp16" (fp32 ops without an fp32 kernel run in fp16), it also sets
      "must_keep_origin_dtype" via ``torch.npu.set_option`` (not verified on hardware).

    ``enabled=False`` allows reduced precision: matmul precision "high", TF32 for CUDA matmul and
    cuDNN, HF32 for NPU matmul and conv (and "allow_fp32_to_fp16" on 910A/310P).

    The returned dict is the state found on entry: ``device_type``, the three legacy flags (None
    where torch 2.9+ refuses to read one, see the comment above ``_FP32_NODES``), the
    ``torch.backends.*.fp32_precision`` nodes (torch >= 2.9) and the NPU flags. Pass it to
    :func:`restore_fp32_state`: the nodes and the NPU flags come back exactly.
    """
    kind, _, _ = _backend(device)
    previous = _read_flags(kind)
    _set_torch_fp32(enabled)
    if kind == "npu":
        module = _npu.npu_module()
        module.matmul.allow_hf32 = not enabled
        module.conv.allow_hf32 = not enabled
        soc = _npu.soc_version()
        if soc is not None and soc < _npu.SOC_910B1:
            mode = _NPU_PRECISION_MODE_STRICT if enabled else _NPU_PRECISION_MODE_OLD_DEFAULT
            error = _set_npu_precision_mode(mode)
            # No getter exists; the previous value is the SoC default unless someone changed it.
            previous["npu.ACL_PRECISION_MODE"] = _NPU_PRECISION_MODE_OLD_DEFAULT
            if error is not None:
                previous["npu.ACL_PRECISION_MODE_error"] = error
    logger.debug("strict fp32 %s on %s (previous: %s)", "on" if enabled else "off", kind, previous)
    return previous


def restore_fp32_state(state: dict) -> None:
    """Put back a state returned by :func:`set_strict_fp32`."""
    _write_flags(state)


@contextlib.contextmanager
def strict_fp32(device: DeviceLike) -> Iterator[dict]:
    """``with strict_fp32(dev) as previous:`` runs the block without TF32/HF32 and restores on exit.

    The yielded dict is the state found on entry (see :func:`set_strict_fp32`), so the caller can
    record what was changed.
    """
    previous = set_strict_fp32(device, True)
    try:
        yield previous
    finally:
        restore_fp32_state(previous)


# ----------------------------------------------------------------------------------------------
# Ascend-specific options


def ascend_options(device: DeviceLike, allow_internal_format: bool = False, jit_compile: bool | None = None) -> dict:
    """Pin the torch_npu options that change numerics or first-call latency; no-op off NPU.

    * ``torch.npu.config.allow_internal_format`` (pinned, default False here): when True, ops may
      keep tensors in private layouts (NZ, 5HD) and feed them to later ops directly; some ops then
      compute differently (precision anomalies) and ``as_strided`` on such tensors warns or errors
      (e.g. PixelShuffle's permute). torch_npu's default is False on A2/A3 but **True on 910A/310P**,
      hence the explicit pin. It affects only tensors created afterwards, so call this before moving
      the model to the device.
    * ``torch.npu.set_compile_mode(jit_compile=...)`` (only when given): True compiles each op/shape
      online on first call (910A/310P default; the first run can take minutes), False uses prebuilt
      binary kernels (A2/A3 default; 950 allows only False). Synchronises the device when called.

    Returns ``{"applied": True, "allow_internal_format": ..., "jit_compile": ...}`` (``jit_compile``
    is None when left alone) or ``{"applied": False, "reason": ...}`` off NPU.
    """
    kind, _, module = _backend(device)
    if kind != "npu":
        return {"applied": False, "reason": f"device is {kind}, not npu"}
    module.config.allow_internal_format = bool(allow_internal_format)
    applied = {"applied": True, "allow_internal_format": bool(allow_internal_format), "jit_compile": None}
    if jit_compile is not None:
        module.set_compile_mode(jit_compile=bool(jit_compile))
        applied["jit_compile"] = bool(jit_compile)
    logger.info(
        "ascend options: allow_internal_format=%s jit_compile=%s",
        applied["allow_internal_format"],
        "unchanged" if jit_compile is None else applied["jit_compile"],
    )
    return applied
