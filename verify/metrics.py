"""Comparison metrics between a candidate tensor and a reference tensor.

Conventions shared by every function in this module:

- ``a`` is the candidate (the run being certified: NPU, CUDA, fp16/bf16), ``b`` the reference
  (CPU fp32). Argument order matters: relative errors divide by the reference.
- Inputs may have any real dtype (float, bfloat16, integer, bool) and live on any device. Each
  function first does ``t.detach().to("cpu", torch.float64)``, so all arithmetic is float64 on
  CPU; fp16/bf16/fp32 values are exact in float64. Complex tensors are rejected (TypeError).
- Pairwise functions need equal shapes (ValueError naming both shapes); nothing is broadcast.
- The error metrics (`relative_error_mean`, `relative_l2_error`, `cosine_similarity`,
  `max_abs_error`) use only the positions where both ``a`` and ``b`` are finite. The non-finite
  positions are counted with `nonfinite_counts`; `compare_tensors` reports both and flags it.
  When no position is finite on both sides (an empty tensor included) they return NaN: "nothing
  was compared" is never reported as a perfect score.
- `fraction_over_tolerance` and `top1_agreement` look at every element or row; a non-finite value
  counts as a disagreement there (see each docstring).
- Results are plain Python numbers. `compare_tensors` returns a JSON-safe dict in which a
  non-finite float is written as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (see `json_float`).

The verdict (PASS/FAIL against thresholds) lives in `verify.verdict`, not here. This file is a little over
500 lines on purpose: every metric is a short pure function with its formula and its NaN/Inf/zero rules in
its docstring, and they belong together (one place to read what a number in a report means).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch

__all__ = [
    "COMPARE_SCHEMA",
    "FP32_TINY",
    "GUARD_FRACTION",
    "MaxAbsError",
    "compare_tensors",
    "cosine_similarity",
    "count_over_tolerance",
    "default_guard",
    "fraction_over_tolerance",
    "json_float",
    "max_abs_error",
    "nonfinite_counts",
    "parse_json_float",
    "relative_error_mean",
    "relative_l2_error",
    "root_mean_square",
    "row_relative_errors",
    "top1_agreement",
]

COMPARE_SCHEMA = "vtp-compare/1"
"""Value of the ``schema`` key of every `compare_tensors` record."""

FP32_TINY = float(torch.finfo(torch.float32).tiny)
"""Smallest positive normal fp32 number (2**-126, about 1.18e-38): the floor of the guard."""

GUARD_FRACTION = 1e-3
"""The default guard of `relative_error_mean` is this fraction of the reference's mean |b|."""

ROW_GUARD_FRACTION = 0.1
"""A row's relative error divides by at least this fraction of the reference's mean row norm."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _f64(t: torch.Tensor, role: str) -> torch.Tensor:
    """``t`` as a float64 CPU tensor (no copy when it already is one)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{role}: expected a torch.Tensor, got {type(t).__name__}")
    if t.is_complex():
        raise TypeError(f"{role}: complex tensors are not supported (dtype {t.dtype})")
    return t.detach().to("cpu", torch.float64)


def _pair(a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Candidate and reference as float64 CPU tensors, after checking that the shapes agree."""
    a64, b64 = _f64(a, "candidate"), _f64(b, "reference")
    if a64.shape != b64.shape:
        raise ValueError(
            f"shape mismatch: candidate {tuple(a64.shape)} vs reference {tuple(b64.shape)}"
        )
    return a64, b64


def _finite_pair(a64: torch.Tensor, b64: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The values at positions finite on both sides, flattened (1-D, possibly empty)."""
    both = torch.isfinite(a64) & torch.isfinite(b64)
    if bool(both.all()):  # the usual case: no boolean gather (it costs ~100x an elementwise op)
        return a64.reshape(-1), b64.reshape(-1)
    return a64[both], b64[both]


def _check_tolerances(rtol: float, atol: float) -> None:
    for key, value in (("rtol", rtol), ("atol", atol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{key} must be a number, got {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{key} must be finite and >= 0, got {value!r}")


def _unravel(flat: int, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Row-major (C order) multi-index of a flat index; ``()`` for a 0-d shape."""
    index = []
    for size in reversed(shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


# --------------------------------------------------------------------------------------------
# JSON encoding of floats
# --------------------------------------------------------------------------------------------
def json_float(x: float):
    """A float as JSON can carry it: finite -> float; NaN -> ``"nan"``; +Inf -> ``"inf"``;
    -Inf -> ``"-inf"``.

    ``json.dumps(..., allow_nan=False)`` accepts the result. `parse_json_float` inverts it.
    """
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def parse_json_float(v) -> Optional[float]:
    """Inverse of `json_float`: a number or ``"nan"``/``"inf"``/``"-inf"`` -> float; None -> None.

    Raises ValueError for anything else (bool, other strings, containers), naming the value.
    """
    if v is None:
        return None
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got bool {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    raise ValueError(f"expected a number or 'nan'/'inf'/'-inf', got {v!r}")


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def default_guard(reference: torch.Tensor) -> float:
    """Default denominator floor for `relative_error_mean`.

    Formula: ``g = max(GUARD_FRACTION * mean(|b|), FP32_TINY)`` with ``GUARD_FRACTION = 1e-3``,
    the mean taken over the finite elements of ``reference``.

    - Zeros: an all-zero reference has mean 0, so ``g = FP32_TINY`` (about 1.18e-38), still > 0.
    - NaN/Inf in ``reference`` are left out of the mean; with no finite element at all (or an
      empty tensor) ``g = FP32_TINY``.
    - Scales with the data: multiplying the reference by c > 0 multiplies g by c.
    """
    b = _f64(reference, "reference")
    finite = torch.isfinite(b)
    if not bool(finite.all()):
        b = b[finite]
    scale = b.abs().mean().item() if b.numel() else 0.0
    return max(GUARD_FRACTION * scale, FP32_TINY)


def relative_error_mean(a: torch.Tensor, b: torch.Tensor, guard: Optional[float] = None) -> float:
    """Mean elementwise relative error, the original Ascend port's metric, with a zero guard.

    Formula, over the positions i where a_i and b_i are both finite::

        mean_i( |a_i - b_i| / max(|b_i|, g) ),   g = default_guard(b at those positions)

    i.e. ``g = max(1e-3 * mean|b|, FP32_TINY)`` unless ``guard`` is given (must be finite, > 0).

    Why this guard: the unguarded |a-b|/|b| is infinite at an exact zero of the reference and
    arbitrarily large near one, so a handful of near-zero reference values (ReLU/GELU outputs,
    centred features) decides the mean. msprobe instead adds fp32 eps at exact zeros, which still
    gives |a|/1.2e-7 there. Below 0.1 % of the tensor's mean magnitude, an element carries no
    relative information, so its error is measured against that scale instead: the contribution
    of any element is at most 1000 * |a_i - b_i| / mean|b|. For every element with |b_i| >= g the
    term is exactly the original |a_i - b_i| / |b_i|, and the metric is unchanged when a and b are
    scaled by the same factor.

    - Zeros: 0 vs 0 contributes 0; a nonzero candidate vs a zero reference contributes
      |a_i| / g, large but finite; an all-zero reference uses g = FP32_TINY.
    - NaN/Inf: positions not finite on both sides are skipped (count them with
      `nonfinite_counts`); if none is left, or the tensors are empty, the result is NaN.
    - dtype: computed in float64 on CPU.
    """
    a64, b64 = _pair(a, b)
    af, bf = _finite_pair(a64, b64)
    if af.numel() == 0:
        return math.nan
    if guard is None:
        g = default_guard(bf)
    else:
        g = float(guard)
        if not math.isfinite(g) or g <= 0:
            raise ValueError(f"guard must be finite and > 0, got {guard!r}")
    return ((af - bf).abs() / bf.abs().clamp_min(g)).mean().item()


def relative_l2_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Euclidean error ``||a - b||_2 / ||b||_2``, over positions finite on both sides.

    - Zeros: 0/0 (both all-zero) -> 0.0; x/0 with x > 0 (zero reference, nonzero candidate) -> inf.
    - NaN/Inf: positions not finite on both sides are skipped; none left or empty -> NaN.
    - dtype: float64 on CPU; the norms are computed with `torch.linalg.vector_norm`.
    """
    a64, b64 = _pair(a, b)
    af, bf = _finite_pair(a64, b64)
    if af.numel() == 0:
        return math.nan
    num = torch.linalg.vector_norm(af - bf).item()
    den = torch.linalg.vector_norm(bf).item()
    if den == 0.0:
        return 0.0 if num == 0.0 else math.inf
    return num / den


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between the flattened tensors: ``a.b / (||a||_2 ||b||_2)``.

    Computed as ``(a/||a||) . (b/||b||)`` so tiny or huge norms neither underflow nor overflow,
    and clamped to [-1, 1] against rounding. Uses positions finite on both sides.

    - Zeros: both all-zero -> 1.0 (identical); exactly one all-zero -> 0.0 (no agreement).
      msprobe reports "Nan" in the second case; 0.0 fails any cosine gate just the same and keeps
      the value numeric.
    - NaN/Inf: positions not finite on both sides are skipped; none left or empty -> NaN.
    - A single element gives +1 or -1 (sign agreement), or the zero rules above.
    - dtype: float64 on CPU.
    """
    a64, b64 = _pair(a, b)
    af, bf = _finite_pair(a64, b64)
    if af.numel() == 0:
        return math.nan
    na = torch.linalg.vector_norm(af).item()
    nb = torch.linalg.vector_norm(bf).item()
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    c = torch.dot(af / na, bf / nb).item()
    return min(1.0, max(-1.0, c))


class MaxAbsError(NamedTuple):
    """Result of `max_abs_error`."""

    value: float
    """max |a - b| over positions finite on both sides (NaN when there is none)."""
    index: Optional[Tuple[int, ...]]
    """Where it sits, in the tensors' shape (``()`` for 0-d); None when there is none."""
    a: float
    """The candidate's value there (NaN when index is None)."""
    b: float
    """The reference's value there (NaN when index is None)."""


def max_abs_error(a: torch.Tensor, b: torch.Tensor) -> MaxAbsError:
    """Largest absolute difference ``max_i |a_i - b_i|``, where it is, and a and b there.

    - The index is the row-major multi-index in the tensors' shape; on ties the first position
      in row-major order is reported.
    - Zeros need no special treatment.
    - NaN/Inf: only positions finite on both sides are considered; if there is none, or the
      tensors are empty, the result is ``MaxAbsError(nan, None, nan, nan)``.
    - dtype: float64 on CPU; the reported a and b are the input values converted exactly.
    """
    a64, b64 = _pair(a, b)
    both = torch.isfinite(a64) & torch.isfinite(b64)
    if not bool(both.any()):
        return MaxAbsError(math.nan, None, math.nan, math.nan)
    diff = torch.where(both, (a64 - b64).abs(), torch.full_like(a64, -1.0)).reshape(-1)
    flat = int(torch.argmax(diff))  # first maximum on ties
    return MaxAbsError(
        value=diff[flat].item(),
        index=_unravel(flat, tuple(a64.shape)),
        a=a64.reshape(-1)[flat].item(),
        b=b64.reshape(-1)[flat].item(),
    )


def count_over_tolerance(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> int:
    """Number of elements that are not close: ``not torch.isclose(a, b, rtol, atol)``.

    An element is close when ``|a_i - b_i| <= atol + rtol * |b_i|`` (b is the reference), or
    when a_i == b_i (this makes an infinity of the same sign on both sides close).

    - NaN on either side counts as over tolerance (``equal_nan=False``), NaN vs NaN included.
    - Inf vs a finite value, or vs an infinity of the other sign, counts as over tolerance.
    - Zeros: against a zero reference only ``atol`` applies.
    - Empty tensors -> 0. rtol and atol must be finite and >= 0. dtype: float64 on CPU.
    """
    _check_tolerances(rtol, atol)
    a64, b64 = _pair(a, b)
    close = torch.isclose(a64, b64, rtol=float(rtol), atol=float(atol), equal_nan=False)
    return int((~close).sum())


def fraction_over_tolerance(a: torch.Tensor, b: torch.Tensor, rtol: float, atol: float) -> float:
    """``count_over_tolerance(a, b, rtol, atol) / numel``: share of elements not close.

    Same rules as `count_over_tolerance` (torch.isclose semantics, NaN counted as over, every
    element counted, non-finite ones included). Empty tensors -> NaN (no elements to judge).
    """
    count = count_over_tolerance(a, b, rtol, atol)
    numel = a.numel()
    return count / numel if numel else math.nan


def nonfinite_counts(t: torch.Tensor) -> dict:
    """How many elements are NaN, +Inf and -Inf: ``{"nan": int, "posinf": int, "neginf": int}``.

    Integer and bool tensors have none. An empty tensor gives all zeros.
    """
    x = _f64(t, "tensor")
    return {
        "nan": int(torch.isnan(x).sum()),
        "posinf": int(torch.isposinf(x).sum()),
        "neginf": int(torch.isneginf(x).sum()),
    }


def top1_agreement(pa: torch.Tensor, pb: torch.Tensor, dim: int = -1) -> float:
    """Fraction of rows whose argmax along ``dim`` is the same in candidate and reference.

    A row is every slice along ``dim`` (for probabilities of shape (B, C) and dim=-1: each of the
    B rows of C classes). Formula: ``mean_rows[ argmax(pa_row) == argmax(pb_row) ]``.

    - Ties: argmax returns the first maximal index, on both sides; a candidate that picks another
      of the tied classes counts as a disagreement.
    - NaN/Inf: a row with any non-finite value on either side counts as a disagreement.
    - Empty (no rows, or zero classes) -> NaN. A 0-d tensor has no class dimension: ValueError.
    - Works on logits as well as probabilities. dtype: float64 on CPU.
    """
    a64, b64 = _pair(pa, pb)
    if a64.dim() == 0:
        raise ValueError("top1_agreement needs a tensor with a class dimension, got a 0-d tensor")
    classes = a64.size(dim)  # IndexError for a dim out of range
    if a64.numel() == 0:
        return math.nan
    rows_a = a64.movedim(dim, -1).reshape(-1, classes)  # (..., C) -> (rows, C)
    rows_b = b64.movedim(dim, -1).reshape(-1, classes)
    finite = torch.isfinite(rows_a).all(dim=-1) & torch.isfinite(rows_b).all(dim=-1)
    agree = (rows_a.argmax(dim=-1) == rows_b.argmax(dim=-1)) & finite
    return agree.to(torch.float64).mean().item()


def root_mean_square(t: torch.Tensor) -> float:
    """``sqrt(mean(t**2))`` over the finite elements; NaN when there are none."""
    x = _f64(t, "tensor")
    x = x[torch.isfinite(x)]
    return math.sqrt(float((x * x).mean())) if x.numel() else math.nan


def _rows(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` as (rows, features) for a row layout (see `row_relative_errors`)."""
    if layout == "last" or x.dim() < 2:
        return x.reshape(-1, x.shape[-1] if x.dim() else 1)
    if layout == "channels":  # (B, C, ...) -> one row per position, over the channels
        return x.movedim(1, -1).reshape(-1, x.shape[1])
    if layout.startswith("patches:"):  # (B, C, H, W) -> one row per P x P tile, over C*P*P values
        p = int(layout.split(":", 1)[1])
        b, c, h, w = x.shape
        if h % p or w % p:
            return x.movedim(1, -1).reshape(-1, c)
        return x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(-1, c * p * p)
    raise ValueError(f"unknown row layout {layout!r}: use 'last', 'channels' or 'patches:P'")


def row_relative_errors(a: torch.Tensor, b: torch.Tensor, layout: str = "last") -> torch.Tensor:
    """Relative L2 error of every row: ``||a_i - b_i|| / max(||b_i||, g)``, float64 on CPU.

    Rows are the vectors a local error lives in: ``"last"`` the last dimension (a token's features, a
    sample's feature vector, an image's class probabilities), ``"channels"`` dimension 1 of (B, C, ...)
    (a latent position), ``"patches:P"`` the P x P tiles of (B, C, H, W) images (a decoder tile).
    ``g = ROW_GUARD_FRACTION * mean_i ||b_i||`` keeps near-zero rows from dominating. Non-finite
    elements are set to 0 on both sides (they are judged by the NaN/Inf rules). Empty -> empty.
    """
    a64, b64 = _pair(a, b)
    both = torch.isfinite(a64) & torch.isfinite(b64)
    a64, b64 = torch.where(both, a64, 0.0), torch.where(both, b64, 0.0)
    ra, rb = _rows(a64, layout), _rows(b64, layout)
    if ra.numel() == 0:
        return torch.zeros(0, dtype=torch.float64)
    ref_norm = rb.norm(dim=-1)
    guard = max(ROW_GUARD_FRACTION * float(ref_norm.mean()), FP32_TINY)
    return (ra - rb).norm(dim=-1) / ref_norm.clamp_min(guard)


# --------------------------------------------------------------------------------------------
# One record per tensor
# --------------------------------------------------------------------------------------------
def _describe(t: torch.Tensor, role: str) -> dict:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{role}: expected a torch.Tensor, got {type(t).__name__}")
    return {
        "shape": list(t.shape),
        "dtype": str(t.dtype).replace("torch.", ""),
        "device": str(t.device),
        "numel": int(t.numel()),
        "nonfinite": nonfinite_counts(t),
    }


def compare_tensors(
    a: torch.Tensor,
    b: torch.Tensor,
    name: str,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    *,
    probabilities: bool = False,
    dim: int = -1,
    guard: Optional[float] = None,
    rows: str = "last",
) -> dict:
    """Every metric of this module for one candidate/reference pair, as a JSON-safe dict.

    ``rtol``/``atol`` only set the informative over-tolerance count (torch.isclose semantics,
    default 1e-3/1e-5, in the spirit of msprobe's "one-thousandth" ratio); ``guard`` is passed to
    `relative_error_mean`; ``probabilities=True`` adds `top1_agreement` along ``dim``.

    Returned dict (schema ``"vtp-compare/1"``)::

        {
          "schema": "vtp-compare/1",
          "name": str,
          "candidate": {"shape": [int], "dtype": str, "device": str, "numel": int,
                        "nonfinite": {"nan": int, "posinf": int, "neginf": int}},
          "reference": {same keys},
          "shape_mismatch": bool,      # shapes differ: nothing below is computed
          "empty": bool,               # either side has no element: nothing below is computed
          "probabilities": bool,
          "tolerance": {"rtol": float, "atol": float},
          "nonfinite_present": bool,   # NaN/Inf anywhere, on either side
          "nonfinite_mismatch": null | {
              "candidate_only": int,   # candidate NaN/Inf where the reference is finite
              "reference_only": int,   # reference NaN/Inf where the candidate is finite
              "kind_differs": int},    # both non-finite but not the same (NaN vs Inf, +Inf vs -Inf)
          "finite_both": null | int,   # positions finite on both sides: the error metrics use these
          "metrics": null | {
              "relative_error_mean": num,
              "relative_error_guard": num,        # the g used by relative_error_mean
              "relative_l2_error": num,
              "cosine_similarity": num,
              "max_abs_error": {"value": num, "index": null | [int],
                                "candidate": num, "reference": num},
              "over_tolerance": {"count": int, "fraction": num},   # counts every element
              "row_relative_error": {"max": num, "row": null | int, "rows": int, "layout": str},
              "max_abs_scaled": num,   # max |a-b| / max |b| (finite positions)
              "top1_agreement": num,   # only with probabilities=True
              "top1_rows": int}        # only with probabilities=True
        }

    ``rows`` is the row layout of `row_relative_errors` ("last", "channels", "patches:P").

    ``num`` is a float, or the string "nan", "inf" or "-inf" (`json_float`), so the dict passes
    ``json.dumps(..., allow_nan=False)``. ``null`` entries are None when shape_mismatch or empty.
    """
    _check_tolerances(rtol, atol)
    record = {
        "schema": COMPARE_SCHEMA,
        "name": str(name),
        "candidate": _describe(a, "candidate"),
        "reference": _describe(b, "reference"),
        "shape_mismatch": tuple(a.shape) != tuple(b.shape),
        "empty": a.numel() == 0 or b.numel() == 0,
        "probabilities": bool(probabilities),
        "tolerance": {"rtol": float(rtol), "atol": float(atol)},
        "nonfinite_present": False,
        "nonfinite_mismatch": None,
        "finite_both": None,
        "metrics": None,
    }
    record["nonfinite_present"] = any(
        n > 0 for side in ("candidate", "reference") for n in record[side]["nonfinite"].values()
    )
    if record["shape_mismatch"] or record["empty"]:
        return record

    a64, b64 = _pair(a, b)
    fa, fb = torch.isfinite(a64), torch.isfinite(b64)
    neither = ~fa & ~fb
    same_kind = (torch.isnan(a64) & torch.isnan(b64)) | (a64 == b64)  # NaN-NaN or equal infinities
    record["nonfinite_mismatch"] = {
        "candidate_only": int((~fa & fb).sum()),
        "reference_only": int((fa & ~fb).sum()),
        "kind_differs": int((neither & ~same_kind).sum()),
    }
    record["finite_both"] = int((fa & fb).sum())

    g = default_guard(_finite_pair(a64, b64)[1]) if guard is None else guard
    worst = max_abs_error(a64, b64)
    metrics = {
        "relative_error_mean": json_float(relative_error_mean(a64, b64, guard=g)),
        "relative_error_guard": json_float(g),
        "relative_l2_error": json_float(relative_l2_error(a64, b64)),
        "cosine_similarity": json_float(cosine_similarity(a64, b64)),
        "max_abs_error": {
            "value": json_float(worst.value),
            "index": None if worst.index is None else list(worst.index),
            "candidate": json_float(worst.a),
            "reference": json_float(worst.b),
        },
        "over_tolerance": {
            "count": count_over_tolerance(a64, b64, rtol, atol),
            "fraction": json_float(fraction_over_tolerance(a64, b64, rtol, atol)),
        },
    }
    row_err = row_relative_errors(a64, b64, rows)
    worst_row = int(row_err.argmax()) if row_err.numel() else None
    metrics["row_relative_error"] = {
        "max": json_float(float(row_err.max()) if row_err.numel() else math.nan),
        "row": worst_row, "rows": int(row_err.numel()), "layout": rows,
    }
    fb_vals = _finite_pair(a64, b64)[1]
    scale = float(fb_vals.abs().max()) if fb_vals.numel() else math.nan
    metrics["max_abs_scaled"] = json_float(worst.value / scale if scale and scale > 0 else
                                           (0.0 if worst.value == 0 else math.inf))
    if probabilities:
        metrics["top1_agreement"] = json_float(top1_agreement(a64, b64, dim=dim))
        metrics["top1_rows"] = a64.numel() // a64.size(dim)
    record["metrics"] = metrics
    return record
