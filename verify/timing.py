"""Latency measurement with device synchronisation: the first call on its own (operator compilation and
lazy initialisation on NPU), then warm-up, then N timed iterations -> median, p90, min."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from typing import Callable


def summarize(samples_s: list) -> dict:
    """median, p90 (nearest rank) and min of a list of seconds, in milliseconds."""
    s = sorted(samples_s)
    p90 = s[min(len(s) - 1, max(0, -(-9 * len(s) // 10) - 1))]
    return {"median_ms": statistics.median(s) * 1e3, "p90_ms": p90 * 1e3, "min_ms": s[0] * 1e3, "n": len(s)}


def time_call(fn: Callable[[], object], sync: Callable[[], None], *, warmup: int, iters: int) -> dict:
    """Time `fn` with `sync()` (device synchronisation) before starting and after each call."""
    if iters < 1:
        raise ValueError(f"iters={iters}: need at least one timed iteration")
    sync()
    t = time.perf_counter()
    fn()
    sync()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    sync()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t)
    return {"first_call_ms": first * 1e3, "warmup": warmup, **summarize(samples)}


_COLD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
from vtp import VTPModel
VTPModel.from_pretrained(sys.argv[1])
t2 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "load_s": t2 - t1}))
"""


def cold_process_load(weights: str, repeats: int = 1) -> dict:
    """Load the checkpoint in fresh Python processes: import torch, then import vtp and load (CPU)."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _COLD, str(weights)], capture_output=True, text=True,
                             check=True, timeout=600)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {"import_torch_s": statistics.median(r["import_torch_s"] for r in runs),
            "load_s": statistics.median(r["load_s"] for r in runs), "repeats": repeats}
