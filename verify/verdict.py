"""PASS/FAIL decisions on `verify.metrics.compare_tensors` records, against versioned thresholds.

The metrics are computed in `verify.metrics`; this module only reads the records and applies the
rules. Thresholds come from a YAML file (default: ``verify/thresholds.yaml``, schema
``vtp-thresholds/2``, documented in the file's comments) read by `load_thresholds`; its optional
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
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from omegaconf import OmegaConf

from .metrics import COMPARE_SCHEMA, parse_json_float

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

THRESHOLDS_SCHEMA = "vtp-thresholds/2"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_THRESHOLDS_PATH = Path(__file__).with_name("thresholds.yaml")
PASS, FAIL = "PASS", "FAIL"

# key -> (required: null not allowed, lowest value, highest value, lowest value allowed itself)
_KEY_SPECS = {
    "max_rel_err": (True, 0.0, math.inf, False),
    "min_cosine": (True, -1.0, 1.0, True),
    "max_rel_l2": (False, 0.0, math.inf, True),
    "max_row_rel_err": (False, 0.0, math.inf, True),
    "max_frac_over_tol": (False, 0.0, 1.0, True),
    "tol_rtol": (False, 0.0, math.inf, True),
    "tol_atol_scaled": (False, 0.0, math.inf, True),
    "max_abs_scaled": (False, 0.0, math.inf, True),
    "min_top1": (False, 0.0, 1.0, True),
    "max_prob_abs": (False, 0.0, math.inf, True),
    "max_error_ratio": (False, 1.0, math.inf, True),
    "error_ratio_floor": (False, 0.0, math.inf, True),
    "repeat_max_abs_scaled": (False, 0.0, math.inf, True),
}
THRESHOLD_KEYS = tuple(_KEY_SPECS)
REQUIREMENT_KEYS = ("max_rel_err", "min_cosine")  # the user's stated requirement: a floor, reported as such
_TOP_LEVEL_KEYS = ("schema", "version", "precisions", "overrides", "calibration")
# The optional calibration section: per precision, where the clean errors were measured and, per gate, the
# measured clean worst value with the margin range the derivation claims, or the stated reason for a number
# that has no measured basis. Lower-bound gates (min_cosine, min_top1) are calibrated as 1 - value.
_CALIBRATION_KEYS = ("measured_on", "gates")
_CALIBRATION_ENTRY_KEYS = ("measured", "tensor", "case", "margin", "reason")
_ONE_MINUS = ("min_cosine", "min_top1")


class ThresholdsError(ValueError):
    """A threshold file or dict that cannot be used; the message names the file and the key."""


# --------------------------------------------------------------------------------------------
# Thresholds
# --------------------------------------------------------------------------------------------
def _number(value, source: str, key: str, required: bool) -> Optional[float]:
    if value is None:
        if required:
            raise ThresholdsError(f"{source}: key '{key}' is null; it needs a number")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ThresholdsError(
            f"{source}: key '{key}' must be a number, got {type(value).__name__} {value!r}"
        )
    v = float(value)
    _, low, high, low_ok = _KEY_SPECS[key.rsplit(".", 1)[-1]]
    if not math.isfinite(v) or v > high or v < low or (v == low and not low_ok):
        bound = f"{'>=' if low_ok else '>'} {low:g}"
        if high < math.inf:
            bound += f" and <= {high:g}"
        raise ThresholdsError(f"{source}: key '{key}' must be finite and {bound}, got {v!r}")
    return v


def _block(block, source: str, where: str, need: str) -> dict:
    """Validate one set of limits. need: "all" keys, the "required" ones, or "none" (override)."""
    if not isinstance(block, Mapping):
        raise ThresholdsError(
            f"{source}: key '{where}' must be a mapping with keys {', '.join(THRESHOLD_KEYS)}, "
            f"got {type(block).__name__}"
        )
    for key in block:
        if key not in _KEY_SPECS:
            raise ThresholdsError(
                f"{source}: unknown key '{where}.{key}' (known: {', '.join(THRESHOLD_KEYS)})"
            )
    out = {}
    for key, (required, *_rest) in _KEY_SPECS.items():
        if key not in block:
            if need == "all" or (need == "required" and required):
                raise ThresholdsError(f"{source}: missing key '{where}.{key}'")
            if need == "required":
                out[key] = None
            continue
        out[key] = _number(block[key], source, f"{where}.{key}", required)
    return out


def _calibration_entry(entry, source: str, where: str) -> dict:
    """One gate's calibration: a measured clean worst value with its claimed margin range, or a reason."""
    if not isinstance(entry, Mapping):
        raise ThresholdsError(f"{source}: key '{where}' must be a mapping with keys "
                              f"{', '.join(_CALIBRATION_ENTRY_KEYS)}, got {type(entry).__name__}")
    for key in entry:
        if key not in _CALIBRATION_ENTRY_KEYS:
            raise ThresholdsError(f"{source}: unknown key '{where}.{key}' "
                                  f"(known: {', '.join(_CALIBRATION_ENTRY_KEYS)})")
    out = {key: entry.get(key) for key in _CALIBRATION_ENTRY_KEYS}
    for key in ("tensor", "case", "reason"):
        if out[key] is not None and (not isinstance(out[key], str) or not out[key].strip()):
            raise ThresholdsError(f"{source}: key '{where}.{key}' must be a non-empty string, got {out[key]!r}")
    measured = out["measured"]
    if measured is not None:
        if isinstance(measured, bool) or not isinstance(measured, (int, float)) or not math.isfinite(measured) \
                or measured < 0:
            raise ThresholdsError(f"{source}: key '{where}.measured' must be a finite number >= 0, got {measured!r}")
        out["measured"] = float(measured)
    margin = out["margin"]
    if margin is not None:
        if (not isinstance(margin, (list, tuple)) or len(margin) != 2
                or any(isinstance(m, bool) or not isinstance(m, (int, float)) for m in margin)
                or not 0 < margin[0] <= margin[1] < math.inf):
            raise ThresholdsError(f"{source}: key '{where}.margin' must be [low, high] with 0 < low <= high, "
                                  f"got {margin!r}")
        if out["measured"] is None or out["measured"] == 0:
            raise ThresholdsError(f"{source}: key '{where}.margin' needs a measured value > 0 to be a margin over "
                                  f"(measured: {measured!r}); state a reason instead")
        out["margin"] = [float(margin[0]), float(margin[1])]
    if out["margin"] is None and out["reason"] is None:
        raise ThresholdsError(f"{source}: key '{where}' has neither a measured value with a margin nor a reason")
    return out


def _calibration(raw, source: str) -> dict:
    """The optional ``calibration`` section, validated: {precision: {"measured_on": {...}, "gates": {...}}}."""
    if not isinstance(raw, Mapping):
        raise ThresholdsError(f"{source}: key 'calibration' must be a mapping of precisions, "
                              f"got {type(raw).__name__}")
    out = {}
    for p, section in raw.items():
        if p not in PRECISIONS:
            raise ThresholdsError(f"{source}: unknown precision 'calibration.{p}' (known: {', '.join(PRECISIONS)})")
        if not isinstance(section, Mapping):
            raise ThresholdsError(f"{source}: key 'calibration.{p}' must be a mapping with keys "
                                  f"{', '.join(_CALIBRATION_KEYS)}, got {type(section).__name__}")
        for key in section:
            if key not in _CALIBRATION_KEYS:
                raise ThresholdsError(f"{source}: unknown key 'calibration.{p}.{key}' "
                                      f"(known: {', '.join(_CALIBRATION_KEYS)})")
        measured_on, gates = section.get("measured_on") or {}, section.get("gates")
        if not isinstance(measured_on, Mapping) or any(
                isinstance(v, bool) or not isinstance(v, (str, int, float)) for v in measured_on.values()):
            raise ThresholdsError(f"{source}: key 'calibration.{p}.measured_on' must map names to strings or "
                                  f"numbers, got {measured_on!r}")
        if not isinstance(gates, Mapping):
            raise ThresholdsError(f"{source}: key 'calibration.{p}.gates' must map gate keys to entries, "
                                  f"got {type(gates).__name__}")
        entries = {}
        for key, entry in gates.items():
            if key not in _KEY_SPECS:
                raise ThresholdsError(f"{source}: unknown key 'calibration.{p}.gates.{key}' "
                                      f"(known: {', '.join(THRESHOLD_KEYS)})")
            entries[key] = _calibration_entry(entry, source, f"calibration.{p}.gates.{key}")
        if any(e["measured"] is not None for e in entries.values()):
            for key in ("date", "cases"):
                if not measured_on.get(key):
                    raise ThresholdsError(f"{source}: missing key 'calibration.{p}.measured_on.{key}' "
                                          f"(where the measured values come from)")
        out[p] = {"measured_on": dict(measured_on), "gates": entries}
    return out


def validate_thresholds(raw, source: str = "<thresholds>") -> dict:
    """Check a parsed threshold document and return it normalised (see `load_thresholds`).

    ``source`` names the document in error messages (the file path for `load_thresholds`).
    Raises ThresholdsError naming ``source`` and the offending key for: a non-mapping document,
    an unknown or missing top-level key, a schema other than ``vtp-thresholds/1``, a version that
    is not an integer >= 1, an unknown or missing precision, a missing or unknown limit key, a
    value that is not a number (strings and booleans included) or is out of range.
    """
    if not isinstance(raw, Mapping):
        raise ThresholdsError(f"{source}: the document must be a mapping, got {type(raw).__name__}")
    for key in raw:
        if key not in _TOP_LEVEL_KEYS:
            raise ThresholdsError(
                f"{source}: unknown top-level key '{key}' (known: {', '.join(_TOP_LEVEL_KEYS)})"
            )
    for key in ("schema", "version", "precisions"):
        if key not in raw:
            raise ThresholdsError(f"{source}: missing key '{key}'")
    if raw["schema"] != THRESHOLDS_SCHEMA:
        raise ThresholdsError(
            f"{source}: key 'schema' is {raw['schema']!r}; this reader supports "
            f"{THRESHOLDS_SCHEMA!r} only"
        )
    version = raw["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ThresholdsError(f"{source}: key 'version' must be an integer >= 1, got {version!r}")

    def known_precisions(mapping, where):
        if not isinstance(mapping, Mapping):
            raise ThresholdsError(
                f"{source}: key '{where}' must be a mapping of precisions, "
                f"got {type(mapping).__name__}"
            )
        for p in mapping:
            if p not in PRECISIONS:
                raise ThresholdsError(
                    f"{source}: unknown precision '{where}.{p}' (known: {', '.join(PRECISIONS)})"
                )

    known_precisions(raw["precisions"], "precisions")
    precisions = {}
    for p in PRECISIONS:
        if p not in raw["precisions"]:
            raise ThresholdsError(f"{source}: missing key 'precisions.{p}'")
        precisions[p] = _block(raw["precisions"][p], source, f"precisions.{p}", need="all")

    raw_overrides = raw.get("overrides") or {}
    known_precisions(raw_overrides, "overrides")
    overrides = {p: {} for p in PRECISIONS}
    for p, per_tensor in raw_overrides.items():
        if per_tensor is None:
            continue
        if not isinstance(per_tensor, Mapping):
            raise ThresholdsError(
                f"{source}: key 'overrides.{p}' must map tensor names to limits, "
                f"got {type(per_tensor).__name__}"
            )
        for name, block in per_tensor.items():
            overrides[p][str(name)] = _block(block, source, f"overrides.{p}.{name}", need="none")

    return {
        "schema": THRESHOLDS_SCHEMA,
        "version": version,
        "source": source,
        "precisions": precisions,
        "overrides": overrides,
        "calibration": _calibration(raw["calibration"], source) if raw.get("calibration") is not None else None,
    }


def load_thresholds(path: Union[str, Path, None] = None) -> dict:
    """Read and validate a threshold file (default ``verify/thresholds.yaml``) with OmegaConf.

    Returns ``{"schema": "vtp-thresholds/2", "version": int, "source": str (the path),
    "precisions": {"fp32" | "fp16" | "bf16": {key: float | None}},
    "overrides": {precision: {tensor name: {key: float | None}}},
    "calibration": None | {precision: {"measured_on": {name: str | number},
                                       "gates": {key: {"measured", "tensor", "case", "margin", "reason"}}}}}``,
    every precision present in ``overrides`` (possibly empty). Keys: `THRESHOLD_KEYS`; None means "not
    checked". Integers become floats. The optional calibration section is checked for its form only (each
    entry a measured value >= 0 with a margin range [low, high], or a reason); `calibration_findings` says
    which gates sit outside the margin their derivation states.

    Raises FileNotFoundError for a missing file, ThresholdsError (a ValueError) naming the file
    and the key for anything `validate_thresholds` rejects and for YAML that does not parse.
    """
    path = Path(path) if path is not None else DEFAULT_THRESHOLDS_PATH
    source = str(path)
    if not path.is_file():
        raise FileNotFoundError(f"{source}: threshold file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True, throw_on_missing=True)
    except Exception as e:  # YAML syntax, duplicate keys, bad interpolation, '???' values
        raise ThresholdsError(f"{source}: cannot read the threshold file: {e}") from e
    return validate_thresholds(raw, source)


def select_thresholds(table: Mapping, precision: str, name: Optional[str] = None) -> dict:
    """The limits for one tensor: ``table["precisions"][precision]`` with the overrides for
    ``name`` (if any) merged over it. ``table`` comes from `load_thresholds`.

    Raises ThresholdsError for a precision other than fp32, fp16, bf16.
    """
    if precision not in PRECISIONS:
        raise ThresholdsError(
            f"{table.get('source', '<thresholds>')}: unknown precision {precision!r} "
            f"(known: {', '.join(PRECISIONS)})"
        )
    limits = dict(table["precisions"][precision])
    if name is not None:
        limits.update(table.get("overrides", {}).get(precision, {}).get(name, {}))
    return limits


def calibration_margin(key: str, threshold: float, measured: float) -> float:
    """The margin a gate leaves over its measured clean worst value: threshold / measured for upper limits,
    (1 - threshold) / measured for min_cosine and min_top1, whose measured value is already 1 - value."""
    return ((1.0 - threshold) if key in _ONE_MINUS else threshold) / measured


def calibration_findings(table: Mapping) -> list:
    """Where the gates of ``table`` (from `load_thresholds`) leave the derivation in its calibration section:
    one line per gate that has neither a measured value nor a reason, that is switched off (null) while a
    margin is claimed, or whose margin over the measured clean worst value lies outside the claimed range.
    An empty list means every number sits where its derivation says."""
    source, calibration = table.get("source", "<thresholds>"), table.get("calibration")
    if not calibration:
        return [f"{source}: no calibration section: no gate has a stated derivation"]
    findings = []
    for p in PRECISIONS:
        gates = (calibration.get(p) or {}).get("gates") or {}
        for key in THRESHOLD_KEYS:
            threshold, entry = table["precisions"][p][key], gates.get(key)
            where = f"{source}: precisions.{p}.{key}"
            if entry is None:
                findings.append(f"{where}: no calibration entry (neither a measured value nor a stated reason)")
            elif entry["margin"] is not None and threshold is None:
                findings.append(f"{where} is null (off) but calibration.{p}.gates.{key} claims a margin")
            elif entry["margin"] is not None:
                low, high = entry["margin"]
                margin = calibration_margin(key, threshold, entry["measured"])
                if not low <= margin <= high:
                    what = "1 - threshold" if key in _ONE_MINUS else "threshold"
                    findings.append(f"{where}: {what} {_fmt(1.0 - threshold if key in _ONE_MINUS else threshold)} is "
                                    f"{margin:.3g}x the measured clean worst {_fmt(entry['measured'])}, outside the "
                                    f"stated margin [{low:g}, {high:g}]")
    return findings


def _resolve(thresholds: Mapping, precision: Optional[str], name: str) -> dict:
    if not isinstance(thresholds, Mapping):
        raise TypeError(f"thresholds must be a dict, got {type(thresholds).__name__}")
    if "precisions" in thresholds:
        if precision is None:
            raise ValueError(
                "thresholds is a full table from load_thresholds(); pass precision="
                + " | ".join(repr(p) for p in PRECISIONS)
            )
        return select_thresholds(thresholds, precision, name)
    return _block(thresholds, "<thresholds argument>", "thresholds", need="required")


# --------------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------------
def _fmt(value: float, other: Optional[float] = None) -> str:
    """``value`` with 6 significant digits, more when needed for the printed number to compare
    with ``other`` (a threshold) the way ``value`` does: 0.99989999 vs 0.9999 is not "0.9999"."""
    text = f"{value:.6g}"
    if other is None or not math.isfinite(value) or not math.isfinite(other):
        return text
    for digits in range(6, 18):
        text = f"{value:.{digits}g}"
        shown = float(text)
        if (shown < other, shown > other) == (value < other, value > other):
            return text
    return repr(value)


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
