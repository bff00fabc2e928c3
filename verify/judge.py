"""Stage 3 of the certification: compare every call of every case and judge it.

`judge_case` turns one `verify.run.CaseRun` into call records (A, B and the last warm call against the
reference; every tensor compared by `verify.metrics.compare_tensors` and judged by `verify.verdict.judge`)
and a repeat check (every later answer to input A against the first one). `overall` makes the one verdict
and the failure lines, each naming the case, the call, the tensor and the gate.
"""

from __future__ import annotations

import math
from typing import Iterable, List, Optional

from verify.metrics import (compare_tensors, json_float, max_abs_error, relative_l2_error, root_mean_square,
                            row_relative_errors)
from verify.verdict import FAIL, PASS, judge, select_thresholds

PROBABILITIES = {"clip_probs"}
DEFAULT_RTOL = 1e-3


def row_layout(name: str, patch: int) -> str:
    """Where a local error lives in each tensor: a latent position, a decoder tile, else a token/row."""
    if name == "latents":
        return "channels"
    if name == "reconstructed_image":
        return f"patches:{patch}"
    return "last"


def compare_one(name: str, candidate, reference, limits: dict, patch: int, same_precision=None) -> dict:
    """The `compare_tensors` record of one tensor, with the tolerance of ``limits`` (atol scaled to the
    reference's RMS) and, for fp16/bf16, the same-precision reference's own errors to the fp32 reference."""
    rtol = limits.get("tol_rtol")
    rtol = DEFAULT_RTOL if rtol is None else rtol
    scale = root_mean_square(reference)
    atol = (limits.get("tol_atol_scaled") or 0.0) * (scale if math.isfinite(scale) else 0.0)
    layout = row_layout(name, patch)
    record = compare_tensors(candidate, reference, name, rtol=rtol, atol=atol, rows=layout,
                             probabilities=name in PROBABILITIES)
    record["tolerance"]["atol_scaled"] = limits.get("tol_atol_scaled")  # atol = atol_scaled * rms(reference)
    if same_precision is not None and record["metrics"] is not None and same_precision.shape == reference.shape:
        rows = row_relative_errors(same_precision, reference, layout)
        record["metrics"]["same_precision"] = {  # the two errors the ratio gates divide by
            "relative_l2_error": json_float(relative_l2_error(same_precision, reference)),
            "row_relative_error": {"max": json_float(float(rows.max()) if rows.numel() else math.nan)}}
    return record


def judge_call(run, call: str, thresholds: dict, precision: str, patch: int) -> dict:
    """One call record: candidate ``call`` ("A", "B" or "warm") against the reference of its inputs."""
    case = run.case
    ref_call = "A" if call == "warm" else call
    tensors = []
    for name in case.tensors:
        limits = select_thresholds(thresholds, precision, name)
        cand, ref = run.candidate[call][name], run.reference[ref_call][name]
        same = run.same_precision.get(ref_call, {}).get(name)
        record = compare_one(name, cand, ref, limits, patch, same)
        fused = run.cpu_fused.get(ref_call, {}).get(name)
        if fused is not None and cand.shape == ref.shape == fused.shape:
            record["attribution"] = {
                "total_rel_l2": record["metrics"]["relative_l2_error"] if record["metrics"] else None,
                "fusions_rel_l2": json_float(relative_l2_error(fused, ref)),
                "device_and_precision_rel_l2": json_float(relative_l2_error(cand, fused)),
            }
        judged = judge(record, thresholds, precision=precision)
        judged["metrics"] = record
        tensors.append(judged)
    failed = [t for t in tensors if t["verdict"] != PASS]
    return {
        **case.describe(), "id": f"{case.id}@{call}", "case": case.id, "call": call,
        "inputs": run.described[ref_call],
        "verdict": FAIL if failed or not tensors else PASS,
        "failed_gates": sorted({g["gate"] for t in failed for g in t["gates"] if not g["passed"]}
                               | ({"nonfinite"} if any(not t["gates"] for t in failed) else set())),
        "reasons": [f"[{case.id}@{call}] {line}" for t in failed for line in t["reasons"]],
        "tensors": tensors,
    }


def same_nonfinite_positions(a, b) -> bool:
    """True when NaN, +Inf and -Inf sit at the same positions of ``a`` and ``b`` (same shape)."""
    return bool((a.isnan() == b.isnan()).all() and (a.isposinf() == b.isposinf()).all()
                and (a.isneginf() == b.isneginf()).all())


def repeat_check(run, thresholds: dict, precision: str) -> Optional[dict]:
    """Every later answer to input A (the repeat "A2" and the last warm call) against the first one:
    bit-identical is deterministic; a difference beyond the threshold repeat_max_abs_scaled fails, and so
    does a NaN/Inf that appears, moves or disappears (the finite-only max|a-b| cannot see those)."""
    later = [c for c in ("A2", "warm") if c in run.candidate]
    if not later:
        return None
    first = run.candidate["A"]
    detail, reasons, worst = {}, [], 0.0
    for call in later:
        for name in run.case.tensors:
            limit = select_thresholds(thresholds, precision, name).get("repeat_max_abs_scaled")
            a, b = run.candidate[call][name], first[name]
            if a.shape != b.shape:
                reasons.append(f"[{run.case.id}] {name}: call {call} has shape {tuple(a.shape)}, the first "
                               f"answer {tuple(b.shape)}")
                continue
            diff = max_abs_error(a, b).value
            same_nonfinite = same_nonfinite_positions(a, b)  # NaN, +Inf and -Inf must repeat where they were
            if math.isnan(diff) and same_nonfinite:  # no position finite on both sides, and they agree
                diff = 0.0
            finite = b[b.isfinite()]
            scale = float(finite.abs().max()) if finite.numel() else 0.0
            scaled = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
            if not same_nonfinite or not math.isfinite(diff):
                scaled = math.inf
            detail[f"{call}/{name}"] = {"max_abs": json_float(diff), "max_abs_scaled": json_float(scaled),
                                        "same_nonfinite_positions": same_nonfinite,
                                        "bit_identical": bool(same_nonfinite and diff == 0), "limit": limit}
            worst = max(worst, scaled) if not math.isnan(scaled) else math.inf
            if limit is not None and not scaled <= limit:
                reasons.append(f"[{run.case.id}] {name}: input A answered differently on call {call} than on "
                               f"the first call: max|a-b|/max|b| {scaled:.3g} > {limit:g} (threshold "
                               f"repeat_max_abs_scaled): a stale, stateful or nondeterministic kernel")
    return {"check": "repeat", "id": run.case.id, "verdict": FAIL if reasons else PASS,
            "deterministic": all(d["bit_identical"] for d in detail.values()),
            "max_abs_scaled": json_float(worst), "calls": ["A"] + later, "detail": detail, "reasons": reasons}


def judge_case(run, thresholds: dict, precision: str, patch: int) -> tuple:
    """(call records, checks) of one case. Checks: "repeat" (decisive), "determinism" (the same data as a
    finding: bit-identical or the largest difference) and "warmup" (the last warm call's verdict)."""
    calls = [judge_call(run, call, thresholds, precision, patch) for call in ("A", "B", "warm")
             if call in run.candidate]
    checks = []
    repeat = repeat_check(run, thresholds, precision)
    if repeat:
        checks.append(repeat)
        finding = None if repeat["deterministic"] else (
            f"[{run.case.id}] input A answered differently across calls {', '.join(repeat['calls'])}: "
            f"max|a-b|/max|b| {repeat['max_abs_scaled']}")
        checks.append({"check": "determinism", "id": run.case.id, "verdict": repeat["verdict"],
                       "deterministic": repeat["deterministic"], "max_abs_scaled": repeat["max_abs_scaled"],
                       "finding": finding, "reasons": []})
    warm = next((c for c in calls if c["call"] == "warm"), None)
    if warm is not None:
        checks.append({"check": "warmup", "id": run.case.id, "verdict": warm["verdict"],
                       "detail": f"the last of the warm/timed calls against the reference ({warm['id']})",
                       "reasons": []})  # its failures are the warm call record's own
    return calls, checks


def overall(calls: Iterable[dict], checks: Iterable[dict]) -> dict:
    """One verdict: PASS only when at least one call was judged and every call and check passed."""
    calls, checks = list(calls), list(checks)
    failed_calls = [c for c in calls if c["verdict"] != PASS]
    failed_checks = [c for c in checks if c["verdict"] == FAIL]
    reasons: List[str] = [r for c in failed_calls for r in c["reasons"]]
    reasons += [r for c in failed_checks for r in c.get("reasons", [])]
    if not calls:
        reasons.append("no case was compared; cannot PASS")
    failed_cases = sorted({c["case"] for c in failed_calls}
                          | {c["id"] for c in failed_checks})
    return {
        "verdict": FAIL if reasons else PASS,
        "calls": len(calls), "failed_calls": len(failed_calls),
        "checks": len(checks), "failed_checks": len(failed_checks),
        "failed_cases": failed_cases,
        "failed_gates": sorted({g for c in failed_calls for g in c["failed_gates"]}
                               | {c["check"] for c in failed_checks}),
        "reasons": reasons,
    }
