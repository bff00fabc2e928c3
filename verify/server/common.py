"""What every part of the whole-server run shares: file names, environment variables, the exit codes, the
pass-through options and the number of processes (``--nproc``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import uuid
from pathlib import Path

logger = logging.getLogger("verify.server")

EXIT_PASS, EXIT_FAIL, EXIT_ENV = 0, 1, 2
SUMMARY_NAME = "accuracy_summary.json"
STATUS_NAME = "status.json"
RUN_ID_ENV = "VTP_SERVER_RUN_ID"      # set by the launcher: the workers then leave the table to it
GRACE_S = 15.0                        # SIGTERM -> SIGKILL for what is left of the process tree


def selected_ranks(name: str, environ=os.environ) -> set:
    """The ranks named in environment variable ``name`` ("1" or "1,3"); empty when unset."""
    value = environ.get(name, "").strip()
    try:
        return {int(part) for part in value.split(",") if part.strip()} if value else set()
    except ValueError:
        raise SystemExit(f"error: {name}={value!r}: expected a rank number or a comma list of them") from None


def split_passthrough(argv: list) -> tuple:
    """(device request, --inject-fault spec, the other accuracy_eval options) from the pass-through.

    ``--out`` is dropped (each rank writes OUT/rank<k>); ``--device`` chooses the kind of device (the
    index is the rank's), ``--inject-fault`` is kept apart so that it can go to some ranks only.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out")
    parser.add_argument("--inject-fault")
    known, rest = parser.parse_known_args(argv)
    return known.device, known.inject_fault, rest


def count_devices(request: str) -> tuple:
    """(device kind, visible count) for ``--nproc all``: NPUs, else GPUs, else one CPU process."""
    kind = str(request).split(":")[0].strip().lower()
    if kind == "cpu":  # no torch import for that
        return "cpu", 1
    from ascend.device import _cuda_status
    from ascend.npu import npu_device_count, prepare_environment

    prepare_environment()
    if kind not in ("auto", "npu", "cuda"):
        raise SystemExit(f"error: --device {request!r}: expected auto, npu, cuda or cpu (the index is the rank's)")
    if kind in ("auto", "npu"):
        count, _ = npu_device_count()
        if count or kind == "npu":
            return "npu", count
    if kind in ("auto", "cuda"):
        count, _ = _cuda_status()
        if count or kind == "cuda":
            return "cuda", count
    return "cpu", 1


def resolve_nproc(nproc: str, request: str) -> tuple:
    """(kind, N) for ``--nproc N|all``; SystemExit (exit 2) with the reason when impossible."""
    if nproc != "all":
        try:
            wanted = int(nproc)
        except ValueError:
            raise SystemExit(f"error: --nproc {nproc!r}: expected a number or 'all'") from None
        if wanted < 1:
            raise SystemExit(f"error: --nproc {wanted}: at least 1 process")
    kind, count = count_devices(request)
    if kind != "cpu" and count == 0:
        raise SystemExit(f"error: --device {request}: no {kind.upper()} visible")
    if nproc == "all":
        if kind == "cpu":
            logger.warning("--nproc all: no NPU or GPU visible, so one CPU process (use --nproc N for N CPU "
                           "processes, e.g. to test the harness)")
        return kind, count
    if kind != "cpu" and wanted > count:
        env = "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES"
        raise SystemExit(f"error: --nproc {wanted}: only {count} {kind.upper()}(s) visible (check {env})")
    return kind, wanted


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]
