"""What a long run watches besides the answers: device memory (the caching allocator on NPU/CUDA, the process
RSS and the live tensors on the CPU) and the card's sensors (temperature, clocks, power) where NVML, nvidia-smi
or npu-smi expose them; "not available", with the reason, otherwise, never an estimate. Used by
verify.burn_in."""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import subprocess
import warnings
from typing import Optional

logger = logging.getLogger("verify.burn_in")


class MemoryProbe:
    """Memory after a call: (allocated, reserved) bytes of the device's caching allocator, or (RSS, None) on the
    CPU. ``kind`` says which."""

    def __init__(self, device):
        from ascend.device import _backend

        self.device = device
        _, self.index, self.module = _backend(device)
        if self.module is not None:
            self.kind = f"{device.type} caching allocator: memory_allocated / memory_reserved"
        else:
            self.kind = "process RSS (/proc/self/statm); live tensors counted with gc at start and end"
            self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def sample(self):
        if self.module is not None:
            return int(self.module.memory_allocated(self.index)), int(self.module.memory_reserved(self.index))
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self._page, None
        except (OSError, ValueError, IndexError):
            return None, None


def live_tensors() -> dict:
    """Tensors reachable by the garbage collector: count and bytes of their distinct storages (CPU and
    device). Tensors held only by C++ are not seen; RSS covers those."""
    import torch

    seen, count, total = set(), 0, 0
    with warnings.catch_warnings():  # isinstance on deprecated module proxies warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        tensors = [o for o in objects if isinstance(o, torch.Tensor)]
    del objects
    for obj in tensors:
        try:
            if obj.is_meta:
                continue
            storage = obj.untyped_storage()
            key = (storage.data_ptr(), obj.device.type)
        except (RuntimeError, ReferenceError, AttributeError, NotImplementedError):
            continue
        count += 1
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return {"tensors": count, "bytes": total}


class SensorProbe:
    """Temperature, clocks and power of the device, where something exposes them: NVML through pynvml
    (optional, CUDA), else ``nvidia-smi --query-gpu`` (CUDA), ``npu-smi info`` (NPU). ``available`` False with
    ``note`` saying why otherwise; nothing is estimated."""

    NVSMI_FIELDS = "temperature.gpu,clocks.sm,clocks.mem,power.draw,clocks_throttle_reasons.active"

    def __init__(self, device, allow_tools: bool = True):
        self.device, self.source, self.note, self._read = device, None, None, None
        if device.type == "cpu":
            self.note = "not available: the candidate is the CPU (no device sensors)"
        elif device.type == "cuda":
            self._init_cuda(allow_tools)
        elif device.type == "npu":
            self._init_npu(allow_tools)
        else:
            self.note = f"not available: no sensor source for {device.type}"
        self.available = self._read is not None

    def _init_cuda(self, allow_tools):
        index = self.device.index or 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)  # [I] the index under CUDA_VISIBLE_DEVICES

            def read():
                out = {"temperature_c": pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
                       "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                       "mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
                       "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3}
                reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                    pynvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
                if reasons is not None:
                    out["clock_event_reasons"] = hex(reasons(handle))
                return out

            read()
            self._read, self.source = read, f"NVML (pynvml), device index {index}"
            return
        except Exception as e:  # pynvml missing, or NVML not usable
            why = f"pynvml: {type(e).__name__}: {e}"[:200]
        smi = shutil.which("nvidia-smi") if allow_tools else None
        if smi is None:
            self.note = f"not available: {why}; nvidia-smi not found"
            return

        def read_smi():
            out = subprocess.run([smi, f"--id={index}", f"--query-gpu={self.NVSMI_FIELDS}",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10)
            values = [v.strip() for v in out.stdout.strip().split(",")]
            keys = ("temperature_c", "sm_clock_mhz", "mem_clock_mhz", "power_w", "clock_event_reasons")
            if out.returncode != 0 or len(values) != len(keys):
                raise RuntimeError(out.stderr.strip() or out.stdout.strip())
            return {k: _number_or_text(v) for k, v in zip(keys, values)}

        try:
            read_smi()
        except Exception as e:
            self.note = f"not available: {why}; nvidia-smi: {e}"[:300]
            return
        self._read = read_smi
        self.source = f"nvidia-smi --id={index} (physical index; may differ under CUDA_VISIBLE_DEVICES)"

    def _init_npu(self, allow_tools):
        # [U] npu-smi's "info -t common" key names (Temperature(C), Aicore Freq(MHZ), Power...) are parsed as
        # "key : value" lines and kept under the tool's own key names; not verified on a device here.
        smi = shutil.which("npu-smi") if allow_tools else None
        if smi is None:
            self.note = ("not available: torch_npu exposes no temperature, clock or power API and npu-smi is not "
                         "on PATH (it ships with the driver; containers often lack it)")
            return
        index = self.device.index or 0

        def read_npu():
            out = subprocess.run([smi, "info", "-t", "common", "-i", str(index)], capture_output=True, text=True,
                                 timeout=10)
            found = {}
            for line in out.stdout.splitlines():
                if ":" in line:
                    key, value = (p.strip() for p in line.split(":", 1))
                    if re.search(r"temp|freq|power|health|aicore", key, re.IGNORECASE):
                        found[key] = _number_or_text(value)
            if not found:
                raise RuntimeError(f"output not understood: {out.stdout.strip()[:120]!r} {out.stderr.strip()[:80]}")
            return found

        try:
            read_npu()
        except Exception as e:
            self.note = f"not available: npu-smi info -t common -i {index}: {e}"[:300]
            return
        self._read, self.source = read_npu, f"npu-smi info -t common -i {index} (npu-smi's card id)"

    def sample(self) -> Optional[dict]:
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception as e:
            return {"error": f"{type(e).__name__}: {e}"[:200]}

    def describe(self) -> dict:
        return {"available": self.available, "source": self.source, "note": self.note}


def _number_or_text(value: str):
    try:
        return float(value)
    except ValueError:
        return value
