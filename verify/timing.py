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


# The child of `cold_process`. Peak RSS is VmHWM from /proc/self/status: it belongs to the process image
# and starts afresh at exec, unlike ru_maxrss, which a child inherits from a bigger parent.
_CHILD = r"""
import json, resource, sys, time

def peak_rss():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
rss_torch = peak_rss()
mode, folder = sys.argv[1], sys.argv[2]
if mode != "torch":
    from vtp import VTPModel
    model = VTPModel.from_pretrained(folder)
    if mode == "touch":  # read every weight once, as a forward pass would
        with torch.no_grad():
            s = sum(float(p.float().sum()) for p in model.state_dict().values())
t2 = time.perf_counter()
print(json.dumps({"import_torch_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0,
                  "rss_torch": rss_torch, "rss_peak": peak_rss()}))
"""


def cold_process(mode: str, weights: str) -> dict:
    """One fresh Python process: import torch ("torch"), then also import vtp and load the checkpoint
    ("load"), then also read every weight ("touch"). Seconds and peak RSS in bytes (None off Linux)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(weights)], capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cold_process_load(weights: str, repeats: int = 1) -> dict:
    """Load the checkpoint in fresh Python processes: import torch, then import vtp and load (CPU)."""
    runs = [cold_process("load", weights) for _ in range(repeats)]
    return {"import_torch_s": statistics.median(r["import_torch_s"] for r in runs),
            "load_s": statistics.median(r["load_s"] for r in runs), "repeats": repeats}
