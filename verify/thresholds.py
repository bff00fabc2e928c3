"""The thresholds file (``verify/thresholds.yaml``, schema ``vtp-thresholds/2``, documented in its comments):
reading and checking it (`load_thresholds`, `validate_thresholds`), the limits for one precision and tensor
(`select_thresholds`), and its ``calibration`` section, the derivation of every number, with
`calibration_findings` listing the gates that have left their stated margin. verify.verdict applies them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Union

from omegaconf import OmegaConf


THRESHOLDS_SCHEMA = "vtp-thresholds/2"
PRECISIONS = ("fp32", "fp16", "bf16")
DEFAULT_THRESHOLDS_PATH = Path(__file__).with_name("thresholds.yaml")
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


def _known_keys(block, known, source: str, where: str) -> None:
    """ThresholdsError unless ``block`` is a mapping whose keys are all in ``known``."""
    if not isinstance(block, Mapping):
        raise ThresholdsError(f"{source}: key '{where}' must be a mapping with keys {', '.join(known)}, "
                              f"got {type(block).__name__}")
    for key in block:
        if key not in known:
            raise ThresholdsError(f"{source}: unknown key '{where}.{key}' (known: {', '.join(known)})")


def _block(block, source: str, where: str, need: str) -> dict:
    """Validate one set of limits. need: "all" keys, the "required" ones, or "none" (override)."""
    _known_keys(block, THRESHOLD_KEYS, source, where)
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
    _known_keys(entry, _CALIBRATION_ENTRY_KEYS, source, where)
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
        _known_keys(section, _CALIBRATION_KEYS, source, f"calibration.{p}")
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
