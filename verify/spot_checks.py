"""Device spot checks: what the card achieves on a matmul and on copies, next to its published peak.

Measured with torch operations only (seconds in all):

- matmul throughput at fp32 / fp16 / bf16: a square (n, n) @ (n, n) product, TFLOPS = 2 n^3 / seconds per
  call (n = 4096 on a device, 512 on the CPU), fp32 strict (no TF32/HF32);
- copy bandwidth, GB/s (1e9 bytes per second): H2D (pinned host -> device) and D2H (device -> pinned
  host), bytes / seconds, one direction; D2D (``dst.copy_(src)`` on the device) counts the bytes read and
  the bytes written, 2 x bytes / seconds, as memory bandwidth is quoted.

Each figure is compared with the card's entry in ``verify/peaks.yaml`` (published peaks, the source kind per
entry) as a fraction of peak; a figure below ``flag_fraction`` (0.5) of its peak is flagged (a finding, not a
failure). On the CPU there is no published figure: the table entry *is* the measurement, H2D/D2H do not
apply, and the output says so.

Calibration: `calibration()` measures, in short bursts, how much of its best throughput the machine gives
this process now (``share``: median burst over best burst; 1.0 on an idle machine). Measured at the start
and at the end of a run, `contention()` turns the two into the share of normal throughput the run had;
below ``CONTENDED_BELOW`` the run's timings are marked CONTENDED with that factor: they are the machine's
figures under other jobs, not the card's.
"""

from __future__ import annotations

import logging
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger(__name__)

PEAKS_PATH = Path(__file__).with_name("peaks.yaml")
PEAKS_SCHEMA = "vtp-peaks/1"
CONTENDED_BELOW = 0.8  # share of normal throughput under which timings are marked CONTENDED
DTYPES = ("fp32", "fp16", "bf16")
CPU_NOTE = ("CPU: no published peak; the figures are measured on this machine and serve as its own "
            "baseline (fraction of peak not applicable)")


class PeaksError(ValueError):
    """A peaks file that cannot be used."""


def load_peaks(path=None) -> dict:
    """The peaks table (validated): {"flag_fraction": float, "parts": [entry, ...], "file": str}."""
    import yaml

    path = Path(path or PEAKS_PATH)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PeaksError(f"{path}: cannot read the peaks table ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != PEAKS_SCHEMA:
        raise PeaksError(f"{path}: schema must be {PEAKS_SCHEMA!r}")
    frac = doc.get("flag_fraction")
    if not isinstance(frac, (int, float)) or not 0 < frac <= 1:
        raise PeaksError(f"{path}: flag_fraction must be a number in (0, 1], got {frac!r}")
    parts = doc.get("parts")
    if not isinstance(parts, list) or not parts:
        raise PeaksError(f"{path}: 'parts' must be a non-empty list")
    for i, part in enumerate(parts):
        where = f"{path}: parts[{i}]"
        if not isinstance(part, dict) or not part.get("name") or not isinstance(part.get("match"), list):
            raise PeaksError(f"{where}: needs 'name' and a list 'match'")
        if part.get("source") not in ("datasheet", "vendor-press", "third-party"):
            raise PeaksError(f"{where} ({part['name']}): source must be datasheet, vendor-press or third-party")
        for key in ("fp32_tflops", "fp16_tflops", "bf16_tflops", "memory_gbps", "host_link_gbps"):
            value = part.get(key)
            if value is not None and (not isinstance(value, (int, float)) or value <= 0):
                raise PeaksError(f"{where} ({part['name']}): {key} must be a positive number or null")
    return {"flag_fraction": float(frac), "parts": parts, "file": str(path)}


def find_part(device_name: str, peaks: dict) -> Optional[dict]:
    """The first entry whose ``match`` patterns find ``device_name`` (case-insensitive), else None."""
    for part in peaks["parts"]:
        if any(re.search(p, device_name or "", re.IGNORECASE) for p in part["match"]):
            return part
    return None


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "npu":
        return torch.npu.get_device_name(device.index)
    import platform

    return f"CPU {platform.processor() or platform.machine()}"


# --------------------------------------------------------------------------------------------- measurements
def _sync_for(device) -> Callable[[], None]:
    from ascend.device import synchronize

    return lambda: synchronize(device)


def _timed(fn: Callable[[], object], sync: Callable[[], None], budget_s: float, max_iters: int = 50) -> float:
    """Seconds per call of ``fn``: one untimed call, one timed call to size the loop, then as many calls as fit
    in ``budget_s`` (1..max_iters), timed together."""
    fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    one = max(time.perf_counter() - t, 1e-9)
    n = int(max(1, min(max_iters, budget_s / one)))
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def matmul_tflops(device, dtype: str, n: Optional[int] = None, budget_s: float = 0.3) -> dict:
    """Achieved TFLOPS of an (n, n) @ (n, n) matmul at ``dtype`` (strict fp32 for fp32)."""
    import torch

    from ascend.device import strict_fp32

    n = n or (512 if device.type == "cpu" else 4096)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    gen = torch.Generator().manual_seed(0)
    try:
        a = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
        b = torch.randn(n, n, generator=gen).to(device=device, dtype=torch_dtype)
        with strict_fp32(device):
            seconds = _timed(lambda: torch.matmul(a, b), _sync_for(device), budget_s)
    except (RuntimeError, TypeError) as e:  # a dtype the device or build does not support
        return {"dtype": dtype, "n": n, "tflops": None, "error": f"{type(e).__name__}: {e}"[:300]}
    return {"dtype": dtype, "n": n, "tflops": 2.0 * n ** 3 / seconds / 1e12, "seconds_per_call": seconds}


def copy_gbps(device, direction: str, megabytes: Optional[int] = None, budget_s: float = 0.3) -> dict:
    """Achieved GB/s of one copy direction: "h2d", "d2h" (bytes / s) or "d2d" (2 x bytes / s)."""
    import torch

    if device.type == "cpu" and direction != "d2d":
        return {"direction": direction, "gbps": None, "note": "not applicable on the CPU (no device)"}
    megabytes = megabytes or (32 if device.type == "cpu" else 256)
    numel = megabytes * 2 ** 20 // 4
    pinned = device.type != "cpu"
    try:
        if direction == "h2d":
            src = torch.empty(numel, pin_memory=pinned)
            dst = torch.empty(numel, device=device)
        elif direction == "d2h":
            src = torch.empty(numel, device=device)
            dst = torch.empty(numel, pin_memory=pinned)
        else:
            src = torch.empty(numel, device=device)
            dst = torch.empty(numel, device=device)
        src.fill_(1.0)
        seconds = _timed(lambda: dst.copy_(src, non_blocking=pinned and direction != "d2d"),
                         _sync_for(device), budget_s)
    except RuntimeError as e:
        return {"direction": direction, "gbps": None, "error": f"{type(e).__name__}: {e}"[:300]}
    moved = numel * 4 * (2 if direction == "d2d" else 1)
    return {"direction": direction, "megabytes": megabytes, "gbps": moved / seconds / 1e9, "pinned": pinned,
            "counted": "read + write bytes" if direction == "d2d" else "bytes moved, one direction"}


def compare_to_peak(label: str, value, part: Optional[dict], peak_key: str, flag_fraction: float) -> tuple:
    """({"peak", "fraction_of_peak", "flagged"}, the flag line or None) of one achieved figure against the
    published peak ``part[peak_key]`` (no part or no peak: no fraction, never flagged)."""
    peak = part.get(peak_key) if part else None
    fraction = value / peak if (value is not None and peak) else None
    flagged = fraction is not None and fraction < flag_fraction
    line = (f"{label}: {value:.3g} is {fraction:.0%} of the published {peak:g} ({part['name']}, {part['source']}), "
            f"below the flag fraction {flag_fraction:g}") if flagged else None
    return {"peak": peak, "fraction_of_peak": fraction, "flagged": flagged}, line


def spot_checks(device, peaks: Optional[dict] = None, dtypes=DTYPES, budget_s: float = 0.3) -> dict:
    """The ``spot_checks`` section: matmul TFLOPS per dtype, copy GB/s per direction, each with the published
    peak, the fraction of it, and a flag under the table's flag_fraction (none on the CPU)."""
    peaks = peaks or load_peaks()
    t0 = time.perf_counter()
    name = device_name(device)
    part = None if device.type == "cpu" else find_part(name, peaks)
    frac = peaks["flag_fraction"]
    figures, flags = {}, []

    def judged(key: str, value, peak_key: str):
        result, flag = compare_to_peak(key, value, part, peak_key, frac)
        if flag:
            flags.append(flag)
        return result

    for dtype in dtypes:
        m = matmul_tflops(device, dtype, budget_s=budget_s)
        figures[f"matmul_{dtype}_tflops"] = {**m, **judged(f"matmul {dtype} TFLOPS", m["tflops"], f"{dtype}_tflops")}
    for direction, peak_key in (("h2d", "host_link_gbps"), ("d2h", "host_link_gbps"), ("d2d", "memory_gbps")):
        c = copy_gbps(device, direction, budget_s=budget_s)
        figures[f"{direction}_gbps"] = {**c, **judged(f"{direction.upper()} GB/s", c["gbps"], peak_key)}
    if device.type == "cpu":
        peak_note = CPU_NOTE
    elif part is None:
        peak_note = f"no entry of {peaks['file']} matches {name!r}: achieved figures only"
    else:
        peak_note = f"published peaks of {part['name']} ({part['source']}, confidence {part.get('confidence')})"
    return {"device": str(device), "device_name": name, "part": part["name"] if part else None,
            "peaks_file": peaks["file"], "peak_note": peak_note, "flag_fraction": frac,
            "figures": figures, "flags": flags, "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------------------------- calibration
def host_share(bursts: int = 40, burst_s: float = 0.005) -> dict:
    """The share of one core this process's thread gets now: ``bursts`` short single-threaded compute bursts,
    share = the thread's CPU time / wall time over all of them (1.0 on an idle core; about cores / (runnable
    threads) on a busy machine). Independent of torch's thread pool, so a pool that busy-waits does not hide
    the contention from it (about ``bursts x burst_s`` seconds)."""
    cpu = wall = 0.0
    work = 0
    for _ in range(bursts):
        w0, c0 = time.perf_counter(), time.thread_time()
        x = 0
        while time.perf_counter() - w0 < burst_s:
            for i in range(2000):
                x += i
            work += 2000
        wall += time.perf_counter() - w0
        cpu += time.thread_time() - c0
    return {"share": min(1.0, cpu / wall) if wall else None, "cpu_s": cpu, "wall_s": wall,
            "work_per_cpu_s": work / cpu if cpu else None}


def device_share(device, bursts: int = 20, n: int = 2048, burst_s: float = 0.01) -> dict:
    """A device's matmul throughput in short bursts: best, median and median / best (a shared or throttling
    card shows a spread), GFLOPS."""
    import torch

    a = torch.randn(n, n, generator=torch.Generator().manual_seed(0)).to(device)
    sync = _sync_for(device)
    t = time.perf_counter()
    torch.matmul(a, a)
    sync()
    one = max(time.perf_counter() - t, 1e-9)
    per_burst = max(1, int(burst_s / one))
    rates = []
    for _ in range(bursts):
        t = time.perf_counter()
        for _ in range(per_burst):
            torch.matmul(a, a)
        sync()
        rates.append(2.0 * n ** 3 * per_burst / (time.perf_counter() - t) / 1e9)
    best, median = max(rates), statistics.median(rates)
    return {"gflops_best": best, "gflops_median": median, "share": median / best if best else None, "n": n}


def calibration(device) -> dict:
    """The machine's state now (about 0.2 s): the host share (`host_share`) and, on a device, the matmul
    bursts (`device_share`); with the load average and the time."""
    from verify.timing import load_average

    return {"host": host_share(), "device": None if device.type == "cpu" else device_share(device),
            "load": load_average(), "at": time.time()}


def contention(start: Optional[dict], end: Optional[dict], below: float = CONTENDED_BELOW) -> dict:
    """The share of normal throughput a run had, from a calibration at its start and one at its end: the
    mean of the two host shares; on a device also the device's (each end's median burst against the best
    burst of both), and the smaller of host and device. ``contended`` when the share is under ``below``;
    ``factor`` = 1 / share: how much slower the run's timings are than the machine's normal figures."""
    if not start or not end or start["host"].get("share") is None or end["host"].get("share") is None:
        return {"share": None, "contended": None, "factor": None, "note": "no calibration"}
    host = (start["host"]["share"] + end["host"]["share"]) / 2
    share, dev = host, None
    if start.get("device") and end.get("device"):
        best = max(start["device"]["gflops_best"], end["device"]["gflops_best"])
        dev = (start["device"]["gflops_median"] + end["device"]["gflops_median"]) / 2 / best
        share = min(host, dev)
    contended = share < below
    return {"share": share, "host_share": host, "device_share": dev,
            "host_share_start": start["host"]["share"], "host_share_end": end["host"]["share"],
            "contended": contended, "factor": 1.0 / share if share else None, "threshold": below,
            "label": f"CONTENDED x{1.0 / share:.1f}" if contended else "clean",
            "note": (f"the run had about {share:.0%} of this machine's normal throughput (calibration at start "
                     f"and end); its timings are this machine's under other jobs, not the card's figures"
                     if contended else f"the run had about {share:.0%} of this machine's normal throughput")}


def spot_lines(section: dict) -> list:
    """Console lines: one per figure, with the fraction of peak where there is one."""
    lines = [f"spot checks on {section['device_name']} ({section['peak_note']})"]
    for key, fig in section["figures"].items():
        value = fig.get("tflops", fig.get("gbps"))
        unit = "TFLOPS" if "tflops" in fig else "GB/s"
        if value is None:
            lines.append(f"  {key:<20} {fig.get('note') or fig.get('error') or 'n/a'}")
            continue
        frac = fig.get("fraction_of_peak")
        tail = f"  {frac:.0%} of {fig['peak']:g}" if frac is not None else ""
        lines.append(f"  {key:<20} {value:10.3f} {unit}{tail}{'  FLAGGED' if fig.get('flagged') else ''}")
    return lines
