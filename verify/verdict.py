"""PASS/FAIL decisions on `verify.metrics.compare_tensors` records, against versioned thresholds.

The metrics are computed in `verify.metrics`; this module only reads the records and applies the
rules. Thresholds come from a YAML file (default: ``verify/thresholds.yaml``, schema
``vtp-thresholds/2``, documented in the file's comments) read by verify.thresholds' `load_thresholds`; its optional
``calibration`` section states each number's derivation, and `calibration_findings` lists the gates
that have left it.

Rules for one tensor (`judge`); any one of them makes it FAIL, and each gives one reason line:

- the record is not a ``vtp-compare/1`` record, or its shapes differ, or a side is empty;
- the candidate is NaN/Inf where the reference is finite, or has more NaN/Inf than the
  reference, or both are non-finite but of a different kind (NaN vs Inf, +Inf vs -Inf), or the
  reference is NaN/Inf where the candidate is finite (the reference is no baseline there);
- ``relative_error_mean >= max_rel_err``; ``cosine_similarity < min_cosine``;
  ``relative_l2_error > max_rel_l2`` (when set);
- for records made with ``probabilities=True``: ``top1_agreement < min_top1`` (when set),
  ``max_abs_error > max_prob_abs`` (when set);
- a metric that a rule needs is missing, unreadable or NaN: never PASS without a number.

Positions that are non-finite identically on both sides are left out of the metrics (as msprobe
does) and do not fail by themselves; the PASS summary says how many there were.

Output shapes (plain dicts, JSON-serialisable)::

    judge      -> {"name": str, "precision": str | None, "verdict": "PASS" | "FAIL",
                   "reasons": [str],            # empty on PASS
                   "summary": str,              # one line, PASS or FAIL
                   "thresholds": {key: float | None}}   # the limits applied, overrides merged
    judge_task -> {"task": str | None, "precision": str | None, "verdict": "PASS" | "FAIL",
                   "passed": int, "failed": int, "failed_tensors": [str],
                   "reasons": [str],            # every tensor's reasons, "[task] "-prefixed
                   "tensors": [judge output]}
    overall_verdict -> {"verdict": "PASS" | "FAIL", "tasks": int, "passed": int, "failed": int,
                        "failed_tasks": [str], "reasons": [str]}

A reason line names the tensor, the metric, its value, the comparison and the threshold key, and
adds where the worst element sits, e.g.::

    clip_image: cosine_similarity 0.99812 < 0.9999 (threshold min_cosine); 12/768 elements over
    tolerance (rtol=0.001, atol=1e-05); worst |a-b|=0.0031 at (0, 17): a=0.5102 b=0.5133
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Optional

from .metrics import COMPARE_SCHEMA, parse_json_float
from .thresholds import (DEFAULT_THRESHOLDS_PATH, PRECISIONS, REQUIREMENT_KEYS, THRESHOLD_KEYS,  # noqa: F401
                         THRESHOLDS_SCHEMA, ThresholdsError, _fmt, _resolve, calibration_findings,
                         calibration_margin, load_thresholds, select_thresholds, validate_thresholds)

__all__ = [
    "DEFAULT_THRESHOLDS_PATH",
    "FAIL",
    "PASS",
    "PRECISIONS",
    "THRESHOLD_KEYS",
    "THRESHOLDS_SCHEMA",
    "ThresholdsError",
    "calibration_findings",
    "calibration_margin",
    "judge",
    "judge_task",
    "load_thresholds",
    "overall_verdict",
    "select_thresholds",
    "validate_thresholds",
]

PASS, FAIL = "PASS", "FAIL"


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------
def _fmt_limit(limit: float) -> str:
    """A threshold exactly as written in the file: the shortest text that reads back as it."""
    text = f"{limit:g}"
    return text if float(text) == limit else repr(limit)


def _shape(side: Mapping) -> str:
    shape = side.get("shape")
    return str(tuple(shape)) if isinstance(shape, (list, tuple)) else "?"


def _nonfinite_text(counts: Mapping) -> str:
    return ", ".join(f"{k}={counts.get(k, '?')}" for k in ("nan", "posinf", "neginf"))


def _short(x) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "?"


def _where_worst(record: Mapping) -> str:
    """'; 12/768 elements over tolerance (...); worst |a-b|=... at (0, 17): a=.. b=..' or ''."""
    m = record.get("metrics") or {}
    parts = []
    over, tol = m.get("over_tolerance"), record.get("tolerance") or {}
    numel = (record.get("reference") or {}).get("numel", "?")
    if isinstance(over, Mapping) and "count" in over:
        parts.append(
            f"{over['count']}/{numel} elements over tolerance "
            f"(rtol={_short(tol.get('rtol'))}, atol={_short(tol.get('atol'))})"
        )
    worst = m.get("max_abs_error")
    if isinstance(worst, Mapping) and worst.get("index") is not None:
        try:
            value, a, b = (parse_json_float(worst[k]) for k in ("value", "candidate", "reference"))
            parts.append(
                f"worst |a-b|={_fmt(value)} at {tuple(worst['index'])}: a={_fmt(a)} b={_fmt(b)}"
            )
        except (KeyError, TypeError, ValueError):
            pass
    return "".join("; " + p for p in parts)


# (metric path in record["metrics"], its name in reason lines, threshold key, comparison that FAILS,
#  probabilities only)
_RULES = (
    ("relative_error_mean", "relative_error_mean", "max_rel_err", ">=", False),
    ("cosine_similarity", "cosine_similarity", "min_cosine", "<", False),
    ("relative_l2_error", "relative_l2_error", "max_rel_l2", ">", False),
    ("row_relative_error.max", "worst_row_relative_error", "max_row_rel_err", ">", False),
    ("over_tolerance.fraction", "fraction_over_tolerance", "max_frac_over_tol", ">", False),
    ("max_abs_scaled", "max_abs_error/max|reference|", "max_abs_scaled", ">", False),
    ("top1_agreement", "top1_agreement", "min_top1", "<", True),
    ("max_abs_error.value", "max_abs_error", "max_prob_abs", ">", True),
)
# fp16/bf16: the candidate's error against the same fused model on the CPU at that precision (its own error to
# the fp32 reference): value = candidate error / max(same-precision error, error_ratio_floor)
_RATIO_RULES = (("relative_l2_error", "error_ratio_rel_l2"), ("row_relative_error.max", "error_ratio_row"))
_FAILS = {">=": lambda v, t: v >= t, "<": lambda v, t: v < t, ">": lambda v, t: v > t}
_PASSES_AS = {">=": "<", "<": ">=", ">": "<="}


def _same_tolerance(record: Mapping, limits: Mapping) -> bool:
    """The over-tolerance share is decisive only when it was counted at the thresholds' own tolerance
    (verify.judge.compare_one does so; a record made with compare_tensors' defaults is not judged by it)."""
    tol = record.get("tolerance") or {}
    rtol, scaled = limits.get("tol_rtol"), limits.get("tol_atol_scaled")
    return (rtol is not None and scaled is not None and tol.get("rtol") == rtol
            and tol.get("atol_scaled") == scaled)


def _metric(metrics: Mapping, path: str):
    value = metrics
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _gate(gate: str, metric: str, value: float, limit: float, fails_as: str, failed: bool) -> dict:
    """One gate's outcome. margin > 0 passes: limit - value for upper limits, value - limit for lower
    ones; used = value / limit (the share of an upper limit's budget the value takes)."""
    upper = fails_as != "<"
    return {"gate": gate, "metric": metric, "value": _json(value), "threshold": limit,
            "margin": _json(limit - value if upper else value - limit),
            "used": _json(value / limit) if upper and limit > 0 else None,
            "kind": "requirement" if gate in REQUIREMENT_KEYS else "gate", "passed": not failed}


def _json(x: float):
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def _nonfinite_reasons(name: str, record: Mapping) -> list:
    cand, ref = record.get("candidate") or {}, record.get("reference") or {}
    cnf, rnf, mm = cand.get("nonfinite"), ref.get("nonfinite"), record.get("nonfinite_mismatch")
    if not isinstance(cnf, Mapping) or not isinstance(rnf, Mapping) or not isinstance(mm, Mapping):
        return [f"{name}: non-finite counts missing from the record; cannot PASS"]
    counts = f"(candidate {_nonfinite_text(cnf)}; reference {_nonfinite_text(rnf)})"
    reasons = []
    only_c, only_r, kind = (
        mm.get(k, 0) for k in ("candidate_only", "reference_only", "kind_differs")
    )
    if only_c:
        reasons.append(
            f"{name}: candidate has {only_c} NaN/Inf value(s) where the reference is finite "
            f"{counts}"
        )
    elif sum(cnf.values()) > sum(rnf.values()):
        reasons.append(
            f"{name}: candidate has more NaN/Inf values than the reference "
            f"({sum(cnf.values())} vs {sum(rnf.values())}) {counts}"
        )
    if kind:
        reasons.append(
            f"{name}: {kind} position(s) are non-finite on both sides but differ "
            f"(NaN vs Inf or +Inf vs -Inf) {counts}"
        )
    if only_r:
        reasons.append(
            f"{name}: reference has {only_r} NaN/Inf value(s) where the candidate is finite; "
            f"the reference is no baseline there {counts}"
        )
    return reasons


def _reasons_and_checks(name: str, record, limits: Mapping):
    """(failure reasons, passing comparisons as text) for one record."""
    if not isinstance(record, Mapping) or record.get("schema") != COMPARE_SCHEMA:
        got = record.get("schema") if isinstance(record, Mapping) else type(record).__name__
        return [f"{name}: not a compare_tensors record (schema {got!r}, expected "
                f"{COMPARE_SCHEMA!r}); cannot PASS"], [], []
    cand, ref = record.get("candidate") or {}, record.get("reference") or {}
    if record.get("shape_mismatch"):
        return [f"{name}: shape mismatch: candidate {_shape(cand)} vs reference {_shape(ref)}; "
                f"no metrics computed"], [], []
    if record.get("empty"):
        return [f"{name}: empty output: candidate numel {cand.get('numel', '?')}, reference numel "
                f"{ref.get('numel', '?')}; nothing to certify"], [], []

    reasons = _nonfinite_reasons(name, record)
    metrics = record.get("metrics")
    if not isinstance(metrics, Mapping):
        return reasons + [f"{name}: metrics missing from the record; cannot PASS"], [], []
    where = _where_worst(record)
    checks, gates = [], []

    def apply(metric, key, fails_as, raw, limit, gate_name=None):
        gate_name = gate_name or key
        try:
            value = parse_json_float(raw)
        except ValueError:
            reasons.append(f"{name}: {metric} is unreadable ({raw!r}); cannot PASS "
                           f"(threshold {key} {_fmt_limit(limit)})")
            return
        if value is None:
            reasons.append(f"{name}: {metric} missing; cannot PASS (threshold {key} {_fmt_limit(limit)})")
        elif math.isnan(value):
            reasons.append(f"{name}: {metric} is NaN (no position finite on both sides?); cannot "
                           f"PASS (threshold {key} {_fmt_limit(limit)}){where}")
            gates.append(_gate(gate_name, metric, value, limit, fails_as, True))
        elif _FAILS[fails_as](value, limit):
            reasons.append(f"{name}: {metric} {_fmt(value, limit)} {fails_as} {_fmt_limit(limit)} "
                           f"(threshold {key}){where}")
            gates.append(_gate(gate_name, metric, value, limit, fails_as, True))
        else:
            checks.append(f"{metric} {_fmt(value, limit)} {_PASSES_AS[fails_as]} {_fmt_limit(limit)}")
            gates.append(_gate(gate_name, metric, value, limit, fails_as, False))

    for path, label, key, fails_as, probabilities_only in _RULES:
        limit = limits.get(key)
        if limit is None or (probabilities_only and not record.get("probabilities")):
            continue
        if key == "max_frac_over_tol" and not _same_tolerance(record, limits):
            checks.append(f"{label} not judged: the record was counted at another tolerance than tol_rtol/"
                          f"tol_atol_scaled")
            continue
        apply(label, key, fails_as, _metric(metrics, path), limit)
    ratio_limit, same = limits.get("max_error_ratio"), metrics.get("same_precision")
    if ratio_limit is not None and isinstance(same, Mapping):
        floor = limits.get("error_ratio_floor") or 0.0
        for path, gate_name in _RATIO_RULES:
            try:
                cand, own = parse_json_float(_metric(metrics, path)), parse_json_float(_metric(same, path))
            except ValueError:
                cand = own = None
            if cand is None or own is None:
                reasons.append(f"{name}: {gate_name}: {path} missing for the candidate or the same-precision "
                               f"reference; cannot PASS")
                continue
            ratio = cand / max(own, floor) if max(own, floor) > 0 else (0.0 if cand == 0 else math.inf)
            metric = f"{path.split('.')[0]} vs same-precision CPU ({_fmt(cand)} vs {_fmt(own)}, floor {floor:g})"
            apply(metric, "max_error_ratio", ">", ratio, ratio_limit, gate_name)
    return reasons, checks, gates


def judge(metrics: Mapping, thresholds: Mapping, *, precision: Optional[str] = None) -> dict:
    """PASS or FAIL for one `compare_tensors` record, with a reason line per failed rule.

    ``thresholds`` is either the table from `load_thresholds` (then ``precision`` is required and
    the per-tensor overrides for ``metrics["name"]`` apply) or a flat dict of limits such as
    ``{"max_rel_err": 0.01, "min_cosine": 0.9999}`` (``max_rel_err`` and ``min_cosine``
    required, the other keys optional, None = not checked). The rules and the output shape are in
    the module docstring. Malformed records FAIL with a reason; malformed thresholds raise.
    """
    name = str(metrics.get("name", "<unnamed>")) if isinstance(metrics, Mapping) else "<unnamed>"
    limits = _resolve(thresholds, precision, name)
    reasons, checks, gates = _reasons_and_checks(name, metrics, limits)
    verdict = FAIL if reasons else PASS
    if verdict == PASS:
        excluded = ""
        if metrics.get("nonfinite_present"):
            n = sum((metrics.get("candidate") or {}).get("nonfinite", {}).values())
            excluded = f"; {n} matching NaN/Inf position(s) excluded from the metrics"
        summary = f"{name}: PASS ({precision or 'given thresholds'}): {', '.join(checks)}{excluded}"
    else:
        summary = f"{name}: FAIL ({len(reasons)} reason(s))"
    return {
        "name": name,
        "precision": precision,
        "verdict": verdict,
        "reasons": reasons,
        "summary": summary,
        "thresholds": dict(limits),
        "gates": gates,
    }


def judge_task(
    tensor_metrics: Iterable[Mapping],
    thresholds: Mapping,
    *,
    precision: Optional[str] = None,
    task: Optional[str] = None,
) -> dict:
    """Judge every tensor of one task (e.g. "reconstruction"); FAIL if any tensor fails, or if
    there is no tensor at all. Reasons are prefixed with ``[task]`` when ``task`` is given.
    Output shape: see the module docstring."""
    results = [judge(m, thresholds, precision=precision) for m in tensor_metrics]
    prefix = f"[{task}] " if task else ""
    failed = [r["name"] for r in results if r["verdict"] != PASS]
    reasons = [prefix + line for r in results for line in r["reasons"]]
    if not results:
        reasons.append(f"{prefix}no tensors were compared; cannot PASS")
    return {
        "task": task,
        "precision": precision,
        "verdict": FAIL if (failed or not results) else PASS,
        "passed": len(results) - len(failed),
        "failed": len(failed),
        "failed_tensors": failed,
        "reasons": reasons,
        "tensors": results,
    }


def overall_verdict(task_verdicts: Iterable[Mapping]) -> dict:
    """PASS only if there is at least one task and every task's verdict is exactly "PASS".

    A task with a verdict that is neither PASS nor FAIL fails with a reason. Output shape: see
    the module docstring.
    """
    tasks = list(task_verdicts)
    reasons, failed = [], []
    for i, t in enumerate(tasks):
        label = (t.get("task") if isinstance(t, Mapping) else None) or f"task #{i}"
        verdict = t.get("verdict") if isinstance(t, Mapping) else None
        if verdict == PASS:
            continue
        failed.append(label)
        if verdict == FAIL:
            reasons.extend(t.get("reasons") or [f"{label}: FAIL (no reason recorded)"])
        else:
            reasons.append(f"{label}: verdict {verdict!r} is neither PASS nor FAIL; cannot PASS")
    if not tasks:
        reasons.append("no tasks were run; cannot PASS")
    return {
        "verdict": FAIL if (failed or not tasks) else PASS,
        "tasks": len(tasks),
        "passed": len(tasks) - len(failed),
        "failed": len(failed),
        "failed_tasks": failed,
        "reasons": reasons,
    }
