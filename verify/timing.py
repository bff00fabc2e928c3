"""Latency measurement with device synchronisation: the first call on its own (operator compilation and
lazy initialisation on NPU), then warm-up, then N timed iterations -> median, p90, min."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional


# A measurement is flagged unstable when its spread says the machine was busy: a quiet machine gives
# p90/min and median/min within a few percent (seen on this kit's CPU runs: 1.01-1.05 when idle, 1.3-3.3
# with another job on the cores).
UNSTABLE_P90_OVER_MIN = 1.5
UNSTABLE_MEDIAN_OVER_MIN = 1.2
CLEAN_NUMBERS_HINT = ("for clean numbers: run on an otherwise idle machine (no other jobs on its cores or "
                      "device), more iterations (--iters), and compare min and median rather than single calls")


def summarize(samples_s: list) -> dict:
    """median, p10 and p90 (nearest rank) and min of a list of seconds, in milliseconds, and the spread flags:
    ``unstable`` is True when p90/min > UNSTABLE_P90_OVER_MIN or median/min > UNSTABLE_MEDIAN_OVER_MIN."""
    s = sorted(samples_s)
    p90 = s[min(len(s) - 1, max(0, -(-9 * len(s) // 10) - 1))]
    p10 = s[min(len(s) - 1, max(0, -(-len(s) // 10) - 1))]
    median = statistics.median(s)
    lo = s[0] if s[0] > 0 else float("nan")
    p90_over_min, median_over_min = p90 / lo, median / lo
    unstable = p90_over_min > UNSTABLE_P90_OVER_MIN or median_over_min > UNSTABLE_MEDIAN_OVER_MIN
    return {"median_ms": median * 1e3, "p10_ms": p10 * 1e3, "p90_ms": p90 * 1e3, "min_ms": s[0] * 1e3, "n": len(s),
            "p90_over_min": p90_over_min, "median_over_min": median_over_min, "unstable": bool(unstable)}


def load_average() -> Optional[dict]:
    """The machine's 1/5/15-minute load average and CPU count (None where the OS has no load average)."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return None
    return {"1min": one, "5min": five, "15min": fifteen, "cpus": os.cpu_count()}


def time_calls(fn: Callable[[], object], sync: Callable[[], None], *, warmup: int, iters: int) -> tuple:
    """(timing dict, the last call's result): `fn` once (the first call, timed alone), ``warmup`` more
    untimed calls, then ``iters`` timed calls, with `sync()` (device synchronisation) around each."""
    if iters < 1:
        raise ValueError(f"iters={iters}: need at least one timed iteration")
    sync()
    t = time.perf_counter()
    result = fn()
    sync()
    first = time.perf_counter() - t
    for _ in range(warmup):
        result = fn()
    sync()
    samples = []
    for _ in range(iters):
        t = time.perf_counter()
        result = fn()
        sync()
        samples.append(time.perf_counter() - t)
    return {"first_call_ms": first * 1e3, "warmup": warmup, **summarize(samples)}, result


def time_call(fn: Callable[[], object], sync: Callable[[], None], *, warmup: int, iters: int) -> dict:
    """`time_calls` without the result."""
    return time_calls(fn, sync, warmup=warmup, iters=iters)[0]


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
