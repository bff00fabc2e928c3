"""What a run ran on: software versions, device, driver and host, as a dict and as log lines.

Every probe is fail-safe: when one cannot answer, its field is None and
``report["unavailable"][field]`` holds the reason as a string; no probe raises. On a CPU host the
whole report takes well under a second (external tools such as ``npu-smi`` run only when present,
with a short timeout).

Report schema (``schema`` = 1), keys in this order:

    schema, python, platform, torch, torch_build, torch_npu, cann, cann_source,
    device, device_type, device_name, device_count, device_memory_bytes, soc_version, soc_family,
    device_capability, driver, cpu_model, torch_threads, cpu_count, ram_total_bytes,
    env, warnings, unavailable
"""

from __future__ import annotations

import glob
import logging
import os
import platform
import re
import shutil
import subprocess
from typing import Any, Callable

import torch

from . import npu as _npu
from .device import DeviceLike, _parse, resolve_device

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TOOL_TIMEOUT_S = 5.0

# Environment variables that change what the kit measures (facts sections 2, 3 and 7).
ENV_VARS = (
    "ASCEND_RT_VISIBLE_DEVICES",
    "ASCEND_HOME_PATH",
    "ASCEND_OPP_PATH",
    "ASCEND_LAUNCH_BLOCKING",
    "TASK_QUEUE_ENABLE",
    "TORCH_DEVICE_BACKEND_AUTOLOAD",
    "TORCH_NPU_USE_COMPATIBLE_IMPL",
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
)

REPORT_KEYS = (
    "schema",
    "python",
    "platform",
    "torch",
    "torch_build",
    "torch_npu",
    "cann",
    "cann_source",
    "device",
    "device_type",
    "device_name",
    "device_count",
    "device_memory_bytes",
    "soc_version",
    "soc_family",
    "device_capability",
    "driver",
    "cpu_model",
    "torch_threads",
    "cpu_count",
    "ram_total_bytes",
    "env",
    "warnings",
    "unavailable",
)

_CANN_ROOTS = ("/usr/local/Ascend/ascend-toolkit/latest", "/usr/local/Ascend/cann")
_DRIVER_VERSION_FILE = "/usr/local/Ascend/driver/version.info"

# HiSilicon (implementer 0x48) cores, as /proc/cpuinfo on aarch64 has no "model name".
_ARM_PARTS = {("0x48", "0xd01"): "HiSilicon Kunpeng-920", ("0x48", "0xd02"): "HiSilicon Kunpeng-930"}


class Unavailable(Exception):
    """Raised inside a probe to record a plain reason (no exception type in the text)."""


def _probe(report: dict, key: str, fn: Callable[[], Any]) -> Any:
    """Store ``fn()`` under ``key``; on failure store None and the reason in ``report["unavailable"]``."""
    try:
        value = fn()
    except Unavailable as exc:
        value = None
        report["unavailable"][key] = str(exc)
    except Exception as exc:  # a probe must never raise
        value = None
        report["unavailable"][key] = f"{type(exc).__name__}: {exc}"
    report[key] = value
    return value


def _run_tool(args: list[str]) -> str:
    """stdout of a short external command; Unavailable when missing, failing or slow."""
    if shutil.which(args[0]) is None:
        raise Unavailable(f"{args[0]} not on PATH")
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"{' '.join(args)} timed out after {TOOL_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()[:200]}")
    return done.stdout


def _key_value(path: str, key: str) -> str | None:
    """Value of a ``key=value`` line (case-insensitive key) in a small text file."""
    with open(path, errors="replace") as handle:
        for line in handle:
            name, sep, value = line.partition("=")
            if sep and name.strip().lower() == key.lower():
                return value.strip().strip('"')
    return None


# ----------------------------------------------------------------------------------------------
# Individual probes


def _torch_build() -> str:
    if torch.version.cuda:
        return f"cuda {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"rocm {torch.version.hip}"
    return "cpu"


def _torch_npu_version() -> str:
    module, reason = _npu.import_torch_npu()
    if module is None:
        raise Unavailable(reason)
    return str(getattr(module, "__version__", "unknown"))


def _cann_version() -> tuple[str, str]:
    """(version, where it came from)."""
    module = _npu.npu_module()
    getter = getattr(getattr(module, "utils", None), "get_cann_version", None)
    if getter is not None:
        try:
            version = getter(module="CANN")
            if version:
                return str(version), "torch.npu.utils.get_cann_version"
        except Exception as exc:
            logger.debug("get_cann_version failed: %s", exc)
    roots = [os.environ[name] for name in ("ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME") if os.environ.get(name)]
    roots += [root for root in _CANN_ROOTS if root not in roots]
    for root in roots:
        # <root>/<arch>-linux/ascend_toolkit_install.info first, then any ascend_*_install.info.
        for pattern in ("*/ascend_toolkit_install.info", "ascend_toolkit_install.info", "*/ascend_*_install.info"):
            for path in sorted(glob.glob(os.path.join(root, pattern))):
                version = _key_value(path, "version")
                if version:
                    return version, path
    if not os.environ.get("ASCEND_HOME_PATH"):
        raise Unavailable("ASCEND_HOME_PATH not set and no CANN install found under /usr/local/Ascend")
    raise Unavailable(f"no ascend_*_install.info with a version= line under {os.environ['ASCEND_HOME_PATH']}")


def _npu_driver() -> str:
    try:
        text = _run_tool(["npu-smi", "info"])
        match = re.search(r"Version:\s*([0-9A-Za-z.\-]+)", text)
        if match:
            return match.group(1)
        first = "npu-smi info printed no 'Version:'"
    except Unavailable as exc:
        first = str(exc)
    if not os.path.exists(_DRIVER_VERSION_FILE):
        raise Unavailable(f"{first}; {_DRIVER_VERSION_FILE} not found")
    version = _key_value(_DRIVER_VERSION_FILE, "Version")
    if not version:
        raise Unavailable(f"{first}; no Version= line in {_DRIVER_VERSION_FILE}")
    return version


def _cuda_driver() -> str:
    text = _run_tool(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise Unavailable("nvidia-smi printed no driver version")
    return lines[0]


def _cpu_model() -> str:
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", errors="replace") as handle:
            for line in handle:
                name, sep, value = line.partition(":")
                name = name.strip().lower()
                if sep and name not in fields:
                    fields[name] = value.strip()
    except OSError:
        pass
    if fields.get("model name"):
        return fields["model name"]
    implementer, part = fields.get("cpu implementer"), fields.get("cpu part")
    if implementer and part:
        return _ARM_PARTS.get((implementer, part), f"ARM implementer {implementer} part {part}")
    if fields.get("hardware"):
        return fields["hardware"]
    name = platform.processor() or platform.machine()
    if not name:
        raise Unavailable("no model name in /proc/cpuinfo and platform.processor() is empty")
    return name


def _ram_total_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        pass
    with open("/proc/meminfo") as handle:
        for line in handle:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise Unavailable("neither sysconf nor /proc/meminfo gives the RAM size")


def _device_facts(report: dict, device: torch.device) -> None:
    """Name, count, memory, SoC and capability of the selected device."""
    index = device.index
    if device.type == "npu":
        module = _npu.npu_module()
        if index is None:
            index = int(module.current_device())
        _probe(report, "device_name", lambda: str(module.get_device_name(index)))
        _probe(report, "device_count", lambda: _npu.npu_device_count()[0])
        _probe(report, "device_memory_bytes", lambda: int(module.get_device_properties(index).total_memory))
        soc = _probe(report, "soc_version", _soc_version)
        report["soc_family"] = _npu.soc_family(soc)
    elif device.type == "cuda":
        if index is None:
            index = torch.cuda.current_device()
        _probe(report, "device_name", lambda: torch.cuda.get_device_name(index))
        _probe(report, "device_count", torch.cuda.device_count)
        _probe(report, "device_memory_bytes", lambda: int(torch.cuda.get_device_properties(index).total_memory))
        _probe(report, "device_capability", lambda: "%d.%d" % torch.cuda.get_device_capability(index))
    else:
        report["device_name"] = report["cpu_model"]


def _soc_version() -> int:
    version = _npu.soc_version()
    if version is None:
        raise Unavailable("get_soc_version is missing or failed")
    return version


def _release(version: str) -> str:
    """``"2.9.0.post2"`` -> ``"2.9.0"``, ``"2.13.0+cpu"`` -> ``"2.13.0"``."""
    match = re.match(r"\d+\.\d+\.\d+", version)
    return match.group(0) if match else version


def _warnings(report: dict) -> list[str]:
    notes = []
    torch_npu_version, torch_version = report.get("torch_npu"), report.get("torch")
    if torch_npu_version and torch_version:
        if _release(torch_npu_version) != _release(torch_version):
            notes.append(
                f"torch_npu {torch_npu_version} does not match torch {torch_version}: "
                "their major.minor.patch must be equal"
            )
    if os.environ.get("ASCEND_LAUNCH_BLOCKING") == "1":
        notes.append("ASCEND_LAUNCH_BLOCKING=1 makes every NPU op synchronous: timings are not representative")
    return notes


# ----------------------------------------------------------------------------------------------
# Public API


def environment_report(device: DeviceLike = None) -> dict:
    """Collect the environment as a JSON-serialisable dict (schema in the module docstring).

    ``device`` is resolved with :func:`ascend.device.resolve_device` (None = auto-detect); a device
    that cannot be used is recorded under ``unavailable["device"]`` instead of raising.
    """
    report: dict[str, Any] = {key: None for key in REPORT_KEYS}
    report.update(schema=SCHEMA_VERSION, unavailable={}, warnings=[])
    _probe(report, "python", lambda: f"{platform.python_version()} ({platform.python_implementation()})")
    _probe(report, "platform", platform.platform)
    _probe(report, "torch", lambda: torch.__version__)
    _probe(report, "torch_build", _torch_build)
    _probe(report, "torch_npu", _torch_npu_version)
    cann = _probe(report, "cann", _cann_version)
    if cann is not None:
        report["cann"], report["cann_source"] = cann
    _probe(report, "cpu_model", _cpu_model)
    _probe(report, "torch_threads", torch.get_num_threads)
    _probe(report, "cpu_count", os.cpu_count)
    _probe(report, "ram_total_bytes", _ram_total_bytes)
    _probe(report, "env", lambda: {name: os.environ[name] for name in ENV_VARS if name in os.environ})

    selected = _probe(report, "device", lambda: resolve_device(device))
    if selected is not None:
        report["device"] = str(selected)
        report["device_type"] = selected.type
        try:
            _device_facts(report, selected)
        except Exception as exc:
            report["unavailable"]["device_facts"] = f"{type(exc).__name__}: {exc}"
    else:
        try:
            report["device_type"] = _parse(device)[0]
        except Exception:
            pass
    if report["device_type"] == "cuda":
        _probe(report, "driver", _cuda_driver)
    else:
        _probe(report, "driver", _npu_driver)
    report["warnings"] = _warnings(report)
    return report




def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def format_environment(report: dict) -> list[str]:
    """Log lines for a report, one fact per line: ``"torch: 2.13.0+cpu (cpu)"``.

    A field that could not be probed reads ``"<field>: unavailable (<reason>)"``; fields that do not
    apply to the device (e.g. soc_version on CPU) are left out.
    """
    unavailable = report.get("unavailable", {})

    def field(label: str, key: str, render: Callable[[Any], str] = str) -> list[str]:
        value = report.get(key)
        if value is not None:
            return [f"{label}: {render(value)}"]
        if key in unavailable:
            return [f"{label}: unavailable ({unavailable[key]})"]
        return []

    lines = []
    lines += field("python", "python")
    lines += field("platform", "platform")
    lines += [f"torch: {report.get('torch')} ({report.get('torch_build')})"]
    lines += field("torch_npu", "torch_npu")
    lines += field("CANN", "cann", lambda v: f"{v} (from {report.get('cann_source')})")
    lines += field("device", "device", lambda v: f"{v} (type {report.get('device_type')})")
    lines += field("device name", "device_name")
    lines += field("device count", "device_count")
    lines += field("device memory", "device_memory_bytes", _gib)
    lines += field("SoC version", "soc_version", lambda v: f"{v} (family {report.get('soc_family')})")
    lines += field("compute capability", "device_capability")
    lines += field("driver", "driver")
    lines += field("CPU", "cpu_model")
    lines += [f"threads: torch {report.get('torch_threads')}, os.cpu_count {report.get('cpu_count')}"]
    lines += field("RAM", "ram_total_bytes", _gib)
    env = report.get("env") or {}
    if env:
        lines.append("env: " + ", ".join(f"{name}={value}" for name, value in env.items()))
    lines += [f"warning: {note}" for note in report.get("warnings", [])]
    for key, reason in unavailable.items():
        if key not in _FORMATTED:
            lines.append(f"{key}: unavailable ({reason})")
    return lines


_FORMATTED = {
    "python", "platform", "torch_npu", "cann", "device", "device_name", "device_count",
    "device_memory_bytes", "soc_version", "device_capability", "driver", "cpu_model", "ram_total_bytes",
}
