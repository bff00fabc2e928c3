"""CPU threads for a run on a shared machine: as many intra-op threads as there are free cores, and OpenMP
threads that sleep instead of spinning when the machine is oversubscribed.

Why: torch's CPU build runs its intra-op pool on GNU OpenMP (libgomp, shipped in ``torch/lib``). By default a
libgomp thread that finishes its share of a parallel region *spins* (busy-waits) for a while before it
sleeps, and torch starts one thread per core. On a 2-core machine with 4 other busy processes every one of
those spinning threads competes for a time slice with the thread that still has work, so a parallel region
ends only when the slowest thread gets the CPU back: single calls slow down far more than the load ratio.

What this module does (every decision is recorded in the returned dict, which the summary keeps):

- ``free_cores()``: the cores this process may use (``os.sched_getaffinity``) minus the load of other
  processes (the 1-minute ``os.getloadavg``, less this process's own threads when it is already running),
  rounded down, at least 1.
- ``configure_before_torch_import()``: when the machine is oversubscribed (load >= usable cores), sets
  ``OMP_WAIT_POLICY=PASSIVE`` (libgomp and Intel OpenMP: idle threads sleep at once) and
  ``OMP_NUM_THREADS`` to the free cores. Both are read by the OpenMP runtime when it starts, i.e. at
  ``import torch``: after that they have no effect and the dict says so. A value the user set is never
  overwritten.
- ``apply_threads()``: ``torch.set_num_threads(free cores)`` (works at any time before the first parallel
  region is entered on this thread and also later: torch resizes its pool), unless the user set
  ``OMP_NUM_THREADS`` or ``VTP_THREADS`` themselves.

``VTP_THREADS=N`` forces N threads; ``VTP_THREADS=off`` leaves torch's defaults alone.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Optional

OVERSUBSCRIBED_AT = 1.0  # load / usable cores at or above which the machine counts as oversubscribed
ENV_FORCE = "VTP_THREADS"


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask), else os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_1min() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def free_cores(own_threads: int = 0, load: Optional[float] = None, cores: Optional[int] = None) -> int:
    """floor(usable cores - load of the other processes), at least 1. ``own_threads``: threads of this
    process already running and so already counted in the load average (0 before the work starts). Under
    torchrun (LOCAL_WORLD_SIZE > 1) each rank gets its share of the cores."""
    cores = usable_cores() if cores is None else cores
    ranks_here = os.environ.get("LOCAL_WORLD_SIZE", "")  # torchrun: the ranks of this node share its cores
    ranks = int(ranks_here) if ranks_here.isdigit() and int(ranks_here) > 1 else 1
    load = load_1min() if load is None else load
    if load is None:
        return max(1, cores // ranks)
    others = max(0.0, load - own_threads * ranks)
    free = math.floor(cores - others + 0.25)  # a load of 0.8 on a free core still leaves it
    return max(1, min(cores, free) // ranks)


def _forced() -> Optional[str]:
    value = os.environ.get(ENV_FORCE)
    return value.strip().lower() if value else None


def configure_before_torch_import(torch_imported: Optional[bool] = None) -> dict:
    """Set OMP_WAIT_POLICY / OMP_NUM_THREADS for an oversubscribed machine; call before ``import torch``.
    Returns what it found and did. When torch is already imported (``torch_imported``; default: look in
    sys.modules) nothing is set: the variables would no longer reach this process's OpenMP runtime, only its
    child processes, which then inherit a decision made for another moment."""
    cores, load = usable_cores(), load_1min()
    free = free_cores(0, load, cores)
    forced = _forced()
    oversubscribed = load is not None and load / cores >= OVERSUBSCRIBED_AT
    imported = "torch" in sys.modules if torch_imported is None else torch_imported
    record = {"usable_cores": cores, "load_1min": load, "free_cores": free, "oversubscribed": oversubscribed,
              "torch_already_imported": imported, "set": {}, "kept_user_values": {}}
    if forced == "off":
        record["note"] = f"{ENV_FORCE}=off: the OpenMP and torch defaults are kept"
        return record
    if imported:
        record["note"] = "torch was already imported: OMP_WAIT_POLICY/OMP_NUM_THREADS not set (too late)"
        return record
    wanted = {}
    if oversubscribed:
        wanted["OMP_WAIT_POLICY"] = "PASSIVE"
    if forced and forced.isdigit() and int(forced) > 0:
        wanted["OMP_NUM_THREADS"] = forced
    elif oversubscribed:
        wanted["OMP_NUM_THREADS"] = str(free)
    for key, value in wanted.items():
        if key in os.environ:
            record["kept_user_values"][key] = os.environ[key]
        else:
            os.environ[key] = value
            record["set"][key] = value
    return record


def apply_threads(torch_module=None) -> dict:
    """torch.set_num_threads(the free cores) unless the user chose (OMP_NUM_THREADS set before this process,
    VTP_THREADS); returns {"threads", "chosen_by", ...}."""
    import torch

    torch_module = torch_module or torch
    forced = _forced()
    before = torch_module.get_num_threads()
    if forced == "off":
        return {"threads": before, "chosen_by": f"{ENV_FORCE}=off (torch's default)"}
    if forced and forced.isdigit() and int(forced) > 0:
        threads, why = int(forced), f"{ENV_FORCE}={forced}"
    elif os.environ.get("OMP_NUM_THREADS") and "OMP_NUM_THREADS" not in _SET_BY_US:
        return {"threads": before, "chosen_by": f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} (the user's)"}
    else:
        threads = free_cores(0)
        why = f"free cores: {usable_cores()} usable - load {load_1min():.2f} of other processes"
    if threads != before:
        torch_module.set_num_threads(threads)
    return {"threads": threads, "chosen_by": why, "torch_default": before}


def restore_threads(applied: Optional[dict]) -> None:
    """Give torch back the thread count it had before `apply_threads` (a harness run inside a longer
    process, e.g. a test session or the multi-card worker, leaves the process as it found it)."""
    import torch

    if applied and applied.get("torch_default") and torch.get_num_threads() != applied["torch_default"]:
        torch.set_num_threads(applied["torch_default"])


_SET_BY_US: set = set()
_FIRST: list = []


def prepare(record_to: Optional[dict] = None) -> dict:
    """configure_before_torch_import(), remembering which variables it set (so that apply_threads() does
    not mistake them for the user's). The entry points call this first, then apply_threads() later."""
    if _FIRST:
        record = _FIRST[0]  # once per process: a second call would take our own settings for the user's
    else:
        record = configure_before_torch_import()
        _SET_BY_US.update(record["set"])
        _FIRST.append(record)
    if record_to is not None:
        record_to.update(record)
    return record


def describe(record: dict, applied: Optional[dict] = None) -> str:
    """One line for the log: cores, load, what was set."""
    parts = [f"{record['usable_cores']} usable cores", f"load {record['load_1min']:.2f}"
             if record.get("load_1min") is not None else "load unknown"]
    if record.get("set"):
        parts.append("set " + " ".join(f"{k}={v}" for k, v in record["set"].items()))
    if record.get("torch_already_imported"):
        parts.append("torch already imported: OpenMP waiting policy unchanged")
    if applied:
        parts.append(f"{applied['threads']} intra-op threads ({applied['chosen_by']})")
    return "threads: " + ", ".join(parts)
