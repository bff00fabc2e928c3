"""Burn-in: the certified tasks back to back for a duration, every answer checked, memory and latency watched.

After the certification's cases have run (verify.run), `burn_in` calls the candidate on the tasks of the
timed cases (input A of each, in turn) until the duration is spent, and for every call:

- **repeat**: the answer is compared bit for bit (raw output, on the device) with the burn-in's first answer
  to the same input; the first one is itself judged against the certification's first answer. An answer
  that is not bit-identical goes to `verify.judge.repeat_check` (threshold ``repeat_max_abs_scaled``, NaN
  and Inf positions must repeat), the same gate the certification applies to its repeats.
- **reference**: every K-th call (``judge_every``, 10) is judged against the reference's answer, computed
  once by the certification, with `verify.judge.judge_call` (every gate of thresholds.yaml). The interval
  stretches when judging would cost more than ``JUDGE_BUDGET`` (2.5 %) of the model's compute; the section
  records the effective interval.
- **memory** after each call: on NPU/CUDA the caching allocator's allocated and reserved bytes; on the CPU
  the process RSS (``/proc/self/statm``), with the live tensors counted (gc) at the start and the end. A
  leak: any task's memory in the last quarter of the run above its first quarter by more than the bound
  (``LEAK_BOUND_DEVICE`` 64 MiB allocated on a device; ``LEAK_BOUND_CPU`` 32 MiB RSS, or 64 MiB of live
  tensor bytes, on the CPU; a clean CPU run moves its RSS by well under 1 MiB), named by the first call over the bound.
- **latency** per time window (p50/p99 per task, and of every call divided by its task's median in the
  first quarter): the drift is the median of those ratios in the last quarter of the windows; above
  ``DRIFT_BOUND`` (1.25) it is a finding; on a device it fails, on the CPU (a shared machine, the latency
  is the machine's) it is reported only.
- **sensors** once per window: temperature, clocks and power where NVML (pynvml, optional), nvidia-smi or
  npu-smi expose them; otherwise recorded as "not available" with the reason, never estimated.

The section also has the first failing call (number, seconds since the start, task, check), the harness's
own overhead (wall time outside the model's calls over the model's compute; target ``OVERHEAD_TARGET``,
5 %), and a calibration (verify.spot_checks) at the start and the end.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import statistics
import time
from typing import Callable, List, Optional

logger = logging.getLogger(__name__)

from verify.probes import MemoryProbe, SensorProbe, live_tensors  # noqa: E402

JUDGE_EVERY = 10
JUDGE_BUDGET = 0.025
DRIFT_BOUND = 1.25
LEAK_BOUND_DEVICE = 64 * 2 ** 20
LEAK_BOUND_CPU = 32 * 2 ** 20
LEAK_BOUND_TENSORS = 64 * 2 ** 20
OVERHEAD_TARGET = 0.05
MAX_REASONS = 20
CPU_BURN_IN_S = 60.0        # level 3 on the CPU (stated: the machine is shared, 15 minutes would be hours of load)
DEVICE_BURN_IN_S = 15 * 60.0  # level 3 on a device


# --------------------------------------------------------------------------------------------- durations
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_duration(text: str) -> float:
    """"90", "90s", "15m", "2h", "1h30m" -> seconds (> 0); ValueError with the accepted forms otherwise."""
    spec = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", spec):
        seconds = float(spec)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*(h|hr|min|m|sec|s)", spec)
        if not parts or re.sub(r"\s+", "", "".join(n + u for n, u in parts)) != re.sub(r"\s+", "", spec):
            raise ValueError(f"{text!r} is not a duration: write e.g. 60s, 15m, 2h or 1h30m")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"{text!r}: a duration must be more than 0 seconds")
    return seconds


# --------------------------------------------------------------------------------------------- tasks
@dataclasses.dataclass
class BurnTask:
    """One task of the burn-in: a certified case's input A (on the device, prepared once), the case's run
    (its reference answers and the first candidate answer), and its own first raw answer once made."""

    id: str
    task: str
    run: object
    inputs: dict
    first_raw: Optional[dict] = None


def burn_tasks(runs, candidate, device, precision: str, timed_only: bool = True) -> List[BurnTask]:
    """The burn-in's tasks from the certification's case runs: the timed cases (those with warm calls), or
    every case when none is timed or ``timed_only`` is False. The clip task's classifier is computed once."""
    from verify.run import _to_device, classifier

    chosen = [r for r in runs if r.timing is not None or "warm" in r.candidate] if timed_only else list(runs)
    chosen = chosen or list(runs)
    tasks = []
    for run in chosen:
        inputs = dict(run.inputs["A"])
        if run.case.task == "clip" and inputs.get("text") is not None:
            inputs["text_features"] = classifier(candidate, inputs["text"], device, precision)
        tasks.append(BurnTask(id=run.case.id, task=run.case.task, run=run, inputs=_to_device(inputs, device)))
    return tasks


def _bits_equal(a, b) -> bool:
    """True when two tensors have the same shape, dtype and bytes (NaN payloads included)."""
    import torch

    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return bool(torch.equal(a, b))
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return bool(torch.equal(a.contiguous().view(as_int), b.contiguous().view(as_int)))


def _to_cpu(out: dict) -> dict:
    import torch

    return {k: v.detach().to("cpu", torch.float32) for k, v in out.items()}


def _percentile(values: List[float], q: float) -> Optional[float]:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


# --------------------------------------------------------------------------------------------- the loop
def burn_in(tasks: List[BurnTask], *, model, device, precision: str, thresholds: dict, patch: int,
            duration_s: float, judge_every: int = JUDGE_EVERY, sync: Callable[[], None] = lambda: None,
            fail_latency_drift: Optional[bool] = None, window_s: Optional[float] = None,
            sensors: Optional[SensorProbe] = None, calibrate: bool = True, leak_bound: Optional[int] = None,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run the burn-in (module docstring) and return its JSON-able section. ``fail_latency_drift``: whether
    a latency drift fails (default: on a device yes, on the CPU no). ``leak_bound``: bytes (default: the
    module's bound for the device kind); the live-tensor bound on the CPU is min(it, LEAK_BOUND_TENSORS)."""
    import torch

    from ascend.device import autocast
    from verify.judge import judge_call, repeat_check
    from verify.run import _raw_task
    from verify.spot_checks import calibration, contention

    if not tasks:
        raise ValueError("burn-in: no task to run")
    if judge_every < 1:
        raise ValueError(f"burn-in: judge_every must be at least 1, got {judge_every}")
    on_cpu = device.type == "cpu"
    fail_latency_drift = (not on_cpu) if fail_latency_drift is None else fail_latency_drift
    window_s = window_s or min(60.0, max(2.0, duration_s / 20))
    probe = MemoryProbe(device)
    sensors = sensors or SensorProbe(device)
    leak_bound = leak_bound or (LEAK_BOUND_CPU if probe.module is None else LEAK_BOUND_DEVICE)

    calib_start = calibration(device) if calibrate else None
    tensors_start = live_tensors() if probe.module is None else None
    samples = []          # (t, task index, latency s, allocated, reserved)
    sensor_samples = []   # (t, reading)
    failures = {"repeat": [], "reference": []}
    counts = {"bit_identical": 0, "within_bound": 0, "repeat_failed": 0, "judged": 0, "reference_failed": 0}
    model_s = judge_s = 0.0
    since_judge, n = 0, 0
    next_sensor = 0.0

    def record_failure(kind, call, t, task, reasons):
        if len(failures[kind]) < MAX_REASONS:
            failures[kind].append({"call": call, "t_s": round(t, 3), "task": task.id, "check": kind,
                                   "reasons": reasons[:3]})

    logger.info("burn-in: %d tasks (%s) for %.0f s; reference every %d calls; memory: %s; sensors: %s",
                len(tasks), ", ".join(t.id for t in tasks), duration_s, judge_every, probe.kind,
                sensors.source or sensors.note)
    t_start = clock()
    deadline = t_start + duration_s
    next_log = t_start + max(10.0, duration_s / 10)
    with torch.no_grad():
        while clock() < deadline:
            for i, task in enumerate(tasks):
                now = clock()
                if now >= deadline:
                    break
                if now - t_start >= next_sensor and sensors.available:
                    sensor_samples.append((now - t_start, sensors.sample()))
                    next_sensor += window_s
                n += 1
                sync()
                t0 = clock()
                with autocast(device, precision):
                    out = _raw_task(model, task.task, task.inputs)
                sync()
                latency = clock() - t0
                model_s += latency
                allocated, reserved = probe.sample()
                t_rel = t0 - t_start
                samples.append((t_rel, i, latency, allocated, reserved))

                cpu = None
                if task.first_raw is None or not all(_bits_equal(out[k], task.first_raw[k]) for k in out):
                    cpu = _to_cpu(out)
                    first_call = task.first_raw is None
                    if first_call:
                        task.first_raw = {k: v.detach().clone() for k, v in out.items()}
                    check = repeat_check(dataclasses.replace(task.run, candidate={"A": task.run.candidate["A"],
                                                                                  "A2": cpu}),
                                         thresholds, precision)
                    if check["verdict"] == "FAIL":
                        counts["repeat_failed"] += 1
                        reasons = [r.replace("on call A2 than", f"on burn-in call {n} than")
                                   for r in check["reasons"]]
                        record_failure("repeat", n, t_rel, task, reasons)
                    elif check["deterministic"]:
                        counts["bit_identical"] += 1
                    else:
                        counts["within_bound"] += 1
                else:
                    counts["bit_identical"] += 1
                since_judge += 1
                if since_judge >= judge_every and judge_s <= JUDGE_BUDGET * model_s:
                    tj = clock()
                    judged = judge_call(dataclasses.replace(task.run, candidate={"A": cpu or _to_cpu(out)}), "A",
                                        thresholds, precision, patch)
                    counts["judged"] += 1
                    since_judge = 0
                    if judged["verdict"] != "PASS":
                        counts["reference_failed"] += 1
                        record_failure("reference", n, t_rel, task,
                                       [r.replace(f"[{task.id}@A]", f"[{task.id} burn-in call {n}]")
                                        for r in judged["reasons"]])
                    judge_s += clock() - tj
                del out, cpu
                if clock() >= next_log:
                    next_log += max(10.0, duration_s / 10)
                    logger.info("burn-in %.0f/%.0f s: %d calls, %d repeat and %d reference failures", clock() - t_start,
                                duration_s, n, counts["repeat_failed"], counts["reference_failed"])
    elapsed = clock() - t_start
    tensors_end = live_tensors() if probe.module is None else None
    calib_end = calibration(device) if calibrate else None
    return _section(tasks, samples, sensor_samples, failures, counts, elapsed=elapsed, duration_s=duration_s,
                    model_s=model_s, judge_s=judge_s, judge_every=judge_every, window_s=window_s, probe=probe,
                    leak_bound=leak_bound, tensors=(tensors_start, tensors_end), sensors=sensors,
                    calibration=(calib_start, calib_end, contention(calib_start, calib_end) if calibrate else None),
                    fail_latency_drift=fail_latency_drift, on_cpu=on_cpu)


# --------------------------------------------------------------------------------------------- the section
def _windows(samples, tasks, window_s, baseline_ms) -> list:
    count = max(1, math.ceil((samples[-1][0] + 1e-9) / window_s)) if samples else 0
    rows = []
    for w in range(count):
        lo, hi = w * window_s, (w + 1) * window_s
        inside = [s for s in samples if lo <= s[0] < hi]
        if not inside:
            continue
        ratios = [s[2] * 1e3 / baseline_ms[s[1]] for s in inside if baseline_ms.get(s[1])]
        by_task = {}
        for i, task in enumerate(tasks):
            lat = [s[2] * 1e3 for s in inside if s[1] == i]
            if lat:
                by_task[task.id] = {"p50_ms": _percentile(lat, 50), "p99_ms": _percentile(lat, 99), "n": len(lat)}
        mem = [s[3] for s in inside if s[3] is not None]
        res = [s[4] for s in inside if s[4] is not None]
        rows.append({"t_start_s": lo, "t_end_s": min(hi, samples[-1][0] + inside[-1][2]), "calls": len(inside),
                     "p50_ratio": _percentile(ratios, 50), "p99_ratio": _percentile(ratios, 99),
                     "tasks": by_task, "memory_max_bytes": max(mem) if mem else None,
                     "memory_median_bytes": statistics.median(mem) if mem else None,
                     "reserved_max_bytes": max(res) if res else None})
    return rows


def _quarter(items: list, last: bool) -> list:
    k = max(1, len(items) // 4)
    return items[-k:] if last else items[:k]


def _leak(samples, tasks, bound, probe_kind) -> dict:
    """Per task: median memory in the first and last quarter of its calls; a leak when a growth exceeds the
    bound, named by the first call whose memory exceeds its task's first-quarter median by the bound."""
    per_task, worst, first = {}, 0, None
    for i, task in enumerate(tasks):
        mem = [(k + 1, s[3], s[0]) for k, s in enumerate(samples) if s[1] == i and s[3] is not None]
        if not mem:
            continue
        base = statistics.median(m for _, m, _ in _quarter(mem, False))
        end = statistics.median(m for _, m, _ in _quarter(mem, True))
        per_task[task.id] = {"first_quarter_median_bytes": base, "last_quarter_median_bytes": end,
                             "growth_bytes": end - base, "calls": len(mem)}
        worst = max(worst, end - base)
        if end - base > bound:
            over = next(((call, t) for call, m, t in mem if m - base > bound), None)
            if over and (first is None or over[0] < first["call"]):
                first = {"call": over[0], "t_s": round(over[1], 3), "task": task.id, "check": "leak"}
    return {"kind": probe_kind, "per_task": per_task, "growth_bytes": worst, "bound_bytes": bound,
            "leak": worst > bound, "first_failure": first}


def _section(tasks, samples, sensor_samples, failures, counts, *, elapsed, duration_s, model_s, judge_s,
             judge_every, window_s, probe, leak_bound, tensors, sensors, calibration, fail_latency_drift,
             on_cpu) -> dict:
    # latency: each task's median over the first quarter of the run is its baseline
    first_quarter_end = (samples[-1][0] / 4) if samples else 0
    baseline_ms = {}
    for i in range(len(tasks)):
        lat = [s[2] * 1e3 for s in samples if s[1] == i and s[0] <= max(first_quarter_end, window_s)]
        lat = lat or [s[2] * 1e3 for s in samples if s[1] == i]
        if lat:
            baseline_ms[i] = statistics.median(lat)
    windows = _windows(samples, tasks, window_s, baseline_ms)
    p50s = [w["p50_ratio"] for w in windows if w["p50_ratio"] is not None]
    drift = (statistics.median(_quarter(p50s, True)) / statistics.median(_quarter(p50s, False))) if p50s else None
    by_task = {}
    for i, task in enumerate(tasks):
        lat = [s[2] * 1e3 for s in samples if s[1] == i]
        by_task[task.id] = {"p50_ms": _percentile(lat, 50), "p99_ms": _percentile(lat, 99), "n": len(lat),
                            "baseline_ms": baseline_ms.get(i)}

    memory = _leak(samples, tasks, leak_bound, probe.kind)
    if tensors[0] is not None and tensors[1] is not None:
        grew = tensors[1]["bytes"] - tensors[0]["bytes"]
        tensor_bound = min(leak_bound, LEAK_BOUND_TENSORS)
        memory["live_tensors"] = {"start": tensors[0], "end": tensors[1], "growth_bytes": grew,
                                  "bound_bytes": tensor_bound}
        if grew > tensor_bound and not memory["leak"]:
            memory["leak"] = True
            memory["first_failure"] = {"call": None, "t_s": None, "task": None, "check": "leak",
                                       "note": "live tensor bytes grew between the first and the last call"}

    reasons, findings = [], []
    first_failures = [f[0] for f in failures.values() if f]
    for kind in ("repeat", "reference"):
        for f in failures[kind][:5]:
            reasons += [f"burn-in call {f['call']} ({f['t_s']:.1f} s, {f['task']}): {r}" for r in f["reasons"][:1]]
    if memory["leak"]:
        ff = memory["first_failure"] or {}
        where = (f"call {ff['call']} ({ff['t_s']:.1f} s, {ff['task']}) is the first over the bound"
                 if ff.get("call") else ff.get("note", ""))
        live = memory.get("live_tensors")
        grew = max(memory["growth_bytes"], live["growth_bytes"] if live else 0)
        reasons.append(f"burn-in: memory leak: grew {grew / 2 ** 20:.1f} MiB from the first to the last quarter "
                       f"of the run (bound {memory['bound_bytes'] / 2 ** 20:.0f} MiB, {probe.kind.split(';')[0]}); "
                       f"{where}")
        if ff.get("call"):
            first_failures.append(ff)
    contention = calibration[2]
    drift_finding = None
    if drift is not None and drift > DRIFT_BOUND:
        drift_finding = (f"burn-in: latency drifted {drift:.2f}x from the first to the last quarter of the run "
                         f"(bound {DRIFT_BOUND:g}x)")
        if contention and contention.get("share") is not None:
            drift_finding += (f"; host share {contention['host_share_start']:.0%} at the start, "
                              f"{contention['host_share_end']:.0%} at the end")
        (reasons if fail_latency_drift else findings).append(drift_finding)
    if counts["judged"] == 0:
        findings.append(f"burn-in: no call was judged against the reference (fewer than {judge_every} calls)")

    loop_s = elapsed
    overhead = max(0.0, loop_s - model_s)
    frac = overhead / model_s if model_s else None
    if frac is not None and frac > OVERHEAD_TARGET:
        findings.append(f"burn-in overhead {frac:.1%} of the model's compute, above the {OVERHEAD_TARGET:.0%} target")
    first = min(first_failures, key=lambda f: f["call"]) if first_failures else None
    sensor_info = sensors.describe()
    sensor_info["samples"] = [{"t_s": round(t, 2), **(r or {})} for t, r in sensor_samples]
    return {
        "version": 1,
        "verdict": "FAIL" if reasons else "PASS",
        "duration_s": duration_s, "elapsed_s": elapsed, "calls": len(samples),
        "tasks": [t.id for t in tasks],
        "rules": {
            "repeat": "every answer bit for bit against the first answer to the same input; when not identical, "
                      "verify.judge.repeat_check (threshold repeat_max_abs_scaled, NaN/Inf positions)",
            "reference": f"every {judge_every}th call judged against the reference (verify.judge.judge_call), "
                         f"stretched to keep judging under {JUDGE_BUDGET:.1%} of the model's compute",
            "leak": f"memory growth from the first to the last quarter of a task's calls above "
                    f"{leak_bound / 2 ** 20:.0f} MiB ({probe.kind.split(';')[0]})"
                    + (f", or live tensor bytes grown above {LEAK_BOUND_TENSORS / 2 ** 20:.0f} MiB" if on_cpu else ""),
            "latency_drift": f"median per-call latency (each over its task's first-quarter median) in the last "
                             f"quarter of the windows over the first quarter above {DRIFT_BOUND:g}x: "
                             + ("fails (device)" if fail_latency_drift else "a finding only (CPU: shared machine)"),
        },
        "repeat": {"bit_identical": counts["bit_identical"], "within_bound": counts["within_bound"],
                   "failed": counts["repeat_failed"], "failures": failures["repeat"]},
        "reference": {"every": judge_every, "judged": counts["judged"],
                      "effective_every": (len(samples) / counts["judged"]) if counts["judged"] else None,
                      "failed": counts["reference_failed"], "failures": failures["reference"]},
        "memory": memory,
        "latency": {"window_s": window_s, "windows": windows, "drift_ratio": drift, "bound": DRIFT_BOUND,
                    "fails": bool(fail_latency_drift), "finding": drift_finding},
        "latency_by_task": by_task,
        "sensors": sensor_info,
        "overhead": {"model_compute_s": model_s, "loop_s": loop_s, "overhead_s": overhead,
                     "judging_s": judge_s, "fraction_of_compute": frac, "target": OVERHEAD_TARGET,
                     "note": "overhead = the burn-in loop's wall time outside the model's calls (bit comparison, "
                             "memory sampling, repeat and reference judging, sensors, logging); the calibrations "
                             "at start and end (about 0.2 s each) are not in it"},
        "calibration": {"start": calibration[0], "end": calibration[1], "contention": contention},
        "first_failure": first,
        "reasons": reasons,
        "findings": findings,
    }


def burn_in_lines(section: dict) -> list:
    """Console lines of a burn-in section."""
    if not section:
        return []
    mem = section["memory"]
    lat = section["latency"]
    over = section["overhead"]
    lines = [f"burn-in {section['verdict']}: {section['calls']} calls in {section['elapsed_s']:.0f} s over "
             f"{len(section['tasks'])} tasks; repeat {section['repeat']['bit_identical']} bit-identical, "
             f"{section['repeat']['within_bound']} within bound, {section['repeat']['failed']} failed; reference "
             f"{section['reference']['judged']} judged, {section['reference']['failed']} failed",
             f"  memory growth {mem['growth_bytes'] / 2 ** 20:.1f} MiB (bound {mem['bound_bytes'] / 2 ** 20:.0f} MiB); "
             f"latency drift {lat['drift_ratio'] if lat['drift_ratio'] is not None else float('nan'):.2f}x "
             f"(bound {lat['bound']:g}x); overhead "
             + (f"{over['fraction_of_compute']:.1%}" if over["fraction_of_compute"] is not None else "n/a")
             + f" of compute; sensors: {section['sensors']['source'] or section['sensors']['note']}"]
    if section.get("first_failure"):
        f = section["first_failure"]
        lines.append(f"  first failing call: {f['call']} at {f['t_s']:.1f} s ({f['task']}, {f['check']})")
    lines += [f"  {r}" for r in section["reasons"][:8]]
    lines += [f"  finding: {r}" for r in section["findings"]]
    return lines
