"""Is this machine ready for the VTP verification? Python, torch, torch_npu and CANN, device, weights, disk.

    python -m verify.env_check
    python -m verify.env_check --device npu:0 --weights weights/VTP-Small-f16d64 --require-weights \\
        --out verify_out --json verify_out/env.json

Each check gives one row: ``ok``, ``warn`` (works, but read the note) or ``error`` (the verification
cannot run as asked). torch_npu and CANN are required when the device is NPU: asked for with
``--device npu[:N]``, or ``auto`` on an Ascend host (``/dev/davinci*``, ``/usr/local/Ascend/driver`` or
``npu-smi`` present); elsewhere a missing torch_npu is expected. Nothing is written except the
``--json`` report and, when a checkpoint with a manifest.json passes the weights check, its
verification stamp (``DIR/.manifest_verified.json``, which lets the next check and model load skip
re-hashing unchanged files; a failed check removes it). The report (schema ``vtp-env-check/1``,
written atomically)::

    {"schema": "vtp-env-check/1", "created": ISO time, "ok": bool,
     "options": {"device", "weights", "require_weights", "out", "min_free_gb"},
     "ascend_host": {"strict": bool, "why": str},
     "checks": [{"name", "status": "ok" | "warn" | "error", "detail", "fix": str | null}, ...],
     "environment": ascend.environment.environment_report(...) or null when torch did not import}

Exit status: 0 no error (warnings allowed); 2 an environment problem (each one is listed with what to
do) or a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as `python verify/env_check.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ascend import npu as _npu  # noqa: E402  (imports neither torch nor torch_npu)

logger = logging.getLogger("verify.env_check")

SCHEMA = "vtp-env-check/1"
EXIT_OK, EXIT_ENV = 0, 2
OK, WARN, ERROR = "ok", "warn", "error"
MIN_PYTHON = (3, 9)
MIN_TORCH = (2, 1)
DEFAULT_MIN_FREE_GB = 2.0
CANN_SET_ENV = "/usr/local/Ascend/ascend-toolkit/set_env.sh"
ASCEND_DRIVER_DIR = "/usr/local/Ascend/driver"
DOWNLOAD_HINT = "python -m vtp.weights download VTP-Small-f16d64"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: Optional[str] = None


# ------------------------------------------------------------------------------------------ helpers
def _release(version: str) -> tuple:
    """``"2.13.0+cpu"`` -> ``(2, 13, 0)``; ``"2.9.0.post2"`` -> ``(2, 9, 0)``."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(g or 0) for g in match.groups()) if match else ()


def _requested_kind(device: str) -> str:
    """``"npu:1"`` -> ``"npu"``; anything unparsable is left for the device check to refuse."""
    return device.strip().lower().split(":", 1)[0]


def ascend_host() -> tuple[bool, str]:
    """(True, why) when this machine looks like an Ascend host: NPU device nodes, the driver, or npu-smi."""
    signs = []
    if glob.glob("/dev/davinci[0-9]*"):
        signs.append("/dev/davinci* present")
    if os.path.isdir(ASCEND_DRIVER_DIR):
        signs.append(f"{ASCEND_DRIVER_DIR} present")
    if shutil.which("npu-smi"):
        signs.append("npu-smi on PATH")
    return bool(signs), ", ".join(signs) or "no /dev/davinci*, no Ascend driver, no npu-smi"


# ------------------------------------------------------------------------------------------ checks
def check_python() -> Check:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", OK, f"{version} (>= {MIN_PYTHON[0]}.{MIN_PYTHON[1]})")
    return Check("python", ERROR, f"{version} is older than {MIN_PYTHON[0]}.{MIN_PYTHON[1]}",
                 f"use Python >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]} (3.11 is what the kit is tested with)")


def check_torch() -> tuple[Check, object]:
    """(row, the torch module or None)."""
    try:
        import torch
    except Exception as exc:  # an autoloaded torch_npu without CANN raises RuntimeError here
        text = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if "torch_npu" in text:
            fix = (f"source {CANN_SET_ENV} so that torch can load torch_npu, or export "
                   "TORCH_DEVICE_BACKEND_AUTOLOAD=0 to import torch without it")
        else:
            fix = ("install torch: `pip install torch --index-url https://download.pytorch.org/whl/cpu` (CPU), or "
                   "on Ascend the torch version that matches torch_npu exactly")
        return Check("torch", ERROR, f"import torch failed: {text}", fix), None
    build = f"cuda {torch.version.cuda}" if torch.version.cuda else "cpu build"
    detail = f"{torch.__version__} ({build})"
    if _release(torch.__version__)[:2] < MIN_TORCH:
        return Check("torch", ERROR, f"{detail} is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}",
                     f"install torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}"), torch
    return Check("torch", OK, detail), torch


def check_torch_npu(strict: bool, torch_version: Optional[str]) -> Check:
    """torch_npu must import (and match torch) when ``strict``; otherwise its absence is fine."""
    installed = _npu.torch_npu_installed()
    module, reason = _npu.import_torch_npu() if installed else (None, "torch_npu is not installed")
    if module is not None:
        version = str(getattr(module, "__version__", "unknown"))
        if torch_version and _release(version)[:3] != _release(torch_version)[:3]:
            return Check("torch_npu", ERROR if strict else WARN,
                         f"{version} does not match torch {torch_version} (major.minor.patch must be equal)",
                         f"install the torch_npu release built for torch {torch_version} (or the torch that "
                         f"torch_npu {version} was built for)")
        return Check("torch_npu", OK, version)
    if not strict:
        if not installed:
            return Check("torch_npu", OK, "not installed (ok: not an Ascend host)")
        return Check("torch_npu", WARN, f"installed but does not import (harmless off Ascend): {reason}",
                     "uninstall torch_npu on a machine without an NPU, or export TORCH_DEVICE_BACKEND_AUTOLOAD=0")
    if not installed:
        return Check("torch_npu", ERROR, "not installed, but the device is NPU",
                     f"pip install torch_npu (the release matching torch {torch_version or '?'}; "
                     "see the README's Ascend install), then source " + CANN_SET_ENV)
    return Check("torch_npu", ERROR, f"installed but does not import: {reason}",
                 f"source {CANN_SET_ENV} (CANN) and check that the driver is mounted "
                 f"({ASCEND_DRIVER_DIR}); torch and torch_npu versions must match")


def check_cann(strict: bool, report: Optional[dict]) -> Check:
    version = (report or {}).get("cann")
    reason = ((report or {}).get("unavailable") or {}).get("cann")
    missing_env = _npu.missing_cann_env()
    if version:
        detail = f"{version} (from {report.get('cann_source')})"
        if strict and missing_env:
            return Check("CANN", WARN, f"{detail}; but {', '.join(missing_env)} not set",
                         f"source {CANN_SET_ENV} before running")
        return Check("CANN", OK, detail)
    if not strict:
        return Check("CANN", OK, "not needed (not an Ascend host)")
    return Check("CANN", ERROR, f"not found: {reason or 'no version found'}",
                 f"install the CANN toolkit and source {CANN_SET_ENV} (sets ASCEND_HOME_PATH)")


def check_device(requested: str, report: Optional[dict]) -> Check:
    from ascend.device import DeviceError, resolve_device

    try:
        device = resolve_device(requested)
    except DeviceError as exc:
        if str(exc).startswith("unknown device"):
            return Check("device", ERROR, str(exc), "pass --device auto, cpu, npu, npu:N, cuda or cuda:N")
        return Check("device", ERROR, str(exc),
                     "check `npu-smi info` and ASCEND_RT_VISIBLE_DEVICES (NPU) or CUDA_VISIBLE_DEVICES (GPU), or "
                     "pass --device cpu")
    name = (report or {}).get("device_name")
    how = " (auto-detected)" if requested == "auto" else ""
    return Check("device", OK, f"{device}{how}" + (f": {name}" if name else ""))


def check_weights(weights: Optional[Path], require: bool) -> Check:
    from ascend.runtime import default_weights_dir
    from vtp.layout import missing_files, unreadable_files
    from vtp.weights import WeightsError, verify_manifest

    folder = weights if weights is not None else default_weights_dir()
    if weights is None and not (folder / "config.json").is_file():  # the rule of ascend.runtime.load_weights
        where = f"{folder} has no config.json" if folder.is_dir() else f"no checkpoint at {folder}"
        if require:
            return Check("weights", ERROR, f"{where} and --require-weights is set",
                         f"download the checkpoint ({DOWNLOAD_HINT}) or pass --weights DIR")
        status = WARN if folder.is_dir() else OK
        return Check("weights", status, f"synthetic (no weights: {where})",
                     None if status == OK else f"complete the download ({DOWNLOAD_HINT}) or remove {folder}")
    if not folder.is_dir():
        return Check("weights", ERROR, f"weights folder not found: {folder}",
                     f"pass the folder that holds config.json and model.safetensors ({DOWNLOAD_HINT})")
    missing = missing_files(folder)  # the loader's own rules (vtp.layout)
    if missing:
        return Check("weights", ERROR, f"{folder} lacks {', '.join(missing)}",
                     f"download the checkpoint again ({DOWNLOAD_HINT} --dest {folder})")
    unreadable = unreadable_files(folder)
    if unreadable:
        return Check("weights", ERROR, unreadable[0],
                     f"download the checkpoint again ({DOWNLOAD_HINT} --dest {folder})")
    try:
        json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return Check("weights", ERROR, f"{folder / 'config.json'} is not valid JSON: {exc}",
                     f"download the checkpoint again ({DOWNLOAD_HINT} --dest {folder})")
    try:
        verified = verify_manifest(folder, full="auto")
    except (WeightsError, OSError) as exc:
        return Check("weights", ERROR, str(exc).splitlines()[0], "\n".join(str(exc).splitlines()[1:]) or None)
    if verified is None:
        return Check("weights", WARN, f"{folder}: present, but no manifest.json, so the files are not verified",
                     f"record one once you trust the files: python -m vtp.weights verify {folder} --write-manifest")
    how = (f"sha256 of {verified['hashed']} file(s) checked" if verified["verified"] == "sha256"
           else "sizes checked, sha256 unchanged since the last check")
    return Check("weights", OK, f"{folder}: {verified['files']} files match manifest.json ({how})")


def check_disk(out: Path, min_free_gb: float) -> Check:
    existing = out.resolve()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free
    except OSError as exc:
        return Check("disk", ERROR, f"cannot read the free space of {existing}: {exc}", "choose another --out")
    where = str(existing) if existing == out.resolve() else f"{existing} (for {out})"
    detail = f"{free / 1e9:.1f} GB free in {where} (minimum {min_free_gb:g} GB)"
    if free < min_free_gb * 1e9:
        return Check("disk", ERROR, detail, "free some space or put the outputs on another disk (--out DIR)")
    return Check("disk", OK, detail)


def run_checks(args) -> dict:
    """Every check, in table order, and the facts behind them (the --json report)."""
    checks = [check_python()]
    _npu.prepare_environment()  # before the first `import torch`
    torch_row, torch = check_torch()
    checks.append(torch_row)
    host, why = ascend_host()
    kind = _requested_kind(args.device)
    strict = kind == "npu" or (kind == "auto" and host)
    why = f"device {args.device!r} requested" if kind == "npu" else why
    report = None
    if torch is not None:
        from ascend.environment import environment_report

        report = environment_report(args.device)
    checks.append(check_torch_npu(strict, torch.__version__ if torch is not None else None))
    checks.append(check_cann(strict, report))
    if torch is not None:
        checks.append(check_device(args.device, report))
        checks.append(check_weights(args.weights, args.require_weights))
    else:
        checks.append(Check("device", ERROR, "not checked: torch did not import", "fix the torch row first"))
        checks.append(Check("weights", ERROR, "not checked: torch did not import", "fix the torch row first"))
    checks.append(check_disk(args.out, args.min_free_gb))
    return {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ok": not any(c.status == ERROR for c in checks),
        "options": {"device": args.device, "weights": None if args.weights is None else str(args.weights),
                    "require_weights": args.require_weights, "out": str(args.out), "min_free_gb": args.min_free_gb},
        "ascend_host": {"strict": strict, "why": why},
        "checks": [asdict(c) for c in checks],
        "environment": report,
    }


# ------------------------------------------------------------------------------------------ output
def table_lines(result: dict) -> list:
    rows = result["checks"]
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'check':{width}s}  {'status':6s}  detail", f"{'-' * width}  ------  {'-' * 40}"]
    for r in rows:
        lines.append(f"{r['name']:{width}s}  {r['status'].upper():6s}  {r['detail']}")
    errors = [r for r in rows if r["status"] == ERROR]
    notes = [r for r in rows if r["status"] == WARN and r["fix"]]
    if errors:
        lines.append(f"environment: {len(errors)} problem(s); what to do:")
        for r in errors:
            lines.append(f"  - {r['name']}: {r['detail']}")
            for fix_line in (r["fix"] or "no fix known").splitlines():
                lines.append(f"      {fix_line}")
    for r in notes:
        lines.append(f"note: {r['name']}: {r['fix']}")
    lines.append("environment: OK" if result["ok"] else "environment: NOT READY (exit 2)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verify.env_check", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  python -m verify.env_check\n"
                "  python -m verify.env_check --device npu:0 --weights weights/VTP-Small-f16d64 "
                "--require-weights --out verify_out --json verify_out/env.json\n"
                "exit status: 0 ready (warnings allowed), 2 an environment problem or a usage error"))
    parser.add_argument("--device", default="auto", help="auto (NPU > CUDA > CPU), npu[:N], cuda[:N] or cpu "
                                                         "(default auto)")
    parser.add_argument("--weights", type=Path, metavar="DIR",
                        help="checkpoint folder (default weights/VTP-Small-f16d64; absent = synthetic weights)")
    parser.add_argument("--require-weights", action="store_true",
                        help="a missing checkpoint is an error instead of synthetic weights")
    parser.add_argument("--out", type=Path, default=Path("."), metavar="DIR",
                        help="where the outputs will go; its free space is checked (default .)")
    parser.add_argument("--min-free-gb", type=float, default=DEFAULT_MIN_FREE_GB, metavar="N",
                        help=f"minimum free disk space in --out, in GB of 10^9 bytes (default {DEFAULT_MIN_FREE_GB:g})")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON (atomically)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.min_free_gb < 0:
        parser.error(f"--min-free-gb must be >= 0, got {args.min_free_gb:g}")
    result = run_checks(args)
    if args.json is not None:
        from vtp.io_utils import atomic_write_json

        try:
            atomic_write_json(args.json, result)
        except (OSError, ValueError) as exc:
            logger.error("cannot write %s: %s", args.json, exc)
            return EXIT_ENV
    print("\n".join(table_lines(result)))
    return EXIT_OK if result["ok"] else EXIT_ENV


if __name__ == "__main__":
    sys.exit(main())
