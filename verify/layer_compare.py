"""Module-output comparison for verify.locate and verify.bisection: the verdict's own judging, and cheap statistics.

- `judge_tensor` judges one candidate/reference pair with exactly the verdict's code: `verify.judge.compare_one`
  (the record, the tolerance of the thresholds, the row layout of the tensor's name) and `verify.verdict.judge`
  (the gates), with the same-precision reference's own errors for the fp16/bf16 error-ratio gates. A module
  output's name is a module name, so its rows are its last dimension (a token's or a position's features); the
  task outputs (latents, reconstructed_image, ...) get the verdict's layouts (latent position, 16x16 tile).
- `module_failures` reads a judged pair the way localisation does: every failed gate is decisive except
  ``max_rel_err`` (the mean elementwise relative error, recorded only: intermediate activations full of
  near-zero values flag approximations that the final outputs absorb, the tanh GELU of the fusion layer).
- `compare_pair` streams the statistics of each side (and the basic metrics) chunk by chunk (CHUNK elements
  at a time, float64) for the report's tables.
"""

from __future__ import annotations

import math

from verify.metrics import json_float

CHUNK = 1 << 20


def output_tensors(obj) -> list:
    """The tensors of a module output or argument list: a tensor, or those in a tuple/list/dict (one level)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        out = []
        for item in obj:
            out += [item] if isinstance(item, torch.Tensor) else output_tensors(item) if isinstance(item, (tuple, list)) else []
        return out
    return []


class _Side:
    """Streaming statistics of one tensor over its finite elements."""

    def __init__(self, t):
        self.shape, self.dtype = list(t.shape), str(t.dtype).replace("torch.", "")
        self.n = self.nan = self.inf = 0
        self.lo, self.hi, self.s, self.ss = math.inf, -math.inf, 0.0, 0.0
        self.chunk_ss = 0.0

    def add(self, x, finite, all_finite: bool):
        """Add a float64 chunk; returns its finite values (x itself when all are finite)."""
        import torch

        f = x
        if not all_finite:
            self.nan += int(torch.isnan(x).sum())
            self.inf += int(torch.isinf(x).sum())
            f = x[finite]
        self.chunk_ss = 0.0
        if f.numel():
            lo, hi = torch.aminmax(f)
            self.n += f.numel()
            self.lo, self.hi = min(self.lo, lo.item()), max(self.hi, hi.item())
            self.s += f.sum().item()
            self.chunk_ss = torch.dot(f, f).item()
            self.ss += self.chunk_ss
        return f

    def to_dict(self) -> dict:
        n = self.n
        return {"shape": self.shape, "dtype": self.dtype, "min": json_float(self.lo) if n else None,
                "max": json_float(self.hi) if n else None, "mean": self.s / n if n else None,
                "l2": math.sqrt(self.ss), "nan": self.nan, "inf": self.inf}


def _chunks(af, bf):
    """(x, y, finite x, finite y, all finite x, all finite y) float64 CPU chunks of CHUNK elements."""
    import torch

    for i in range(0, af.numel(), CHUNK):
        x, y = af[i:i + CHUNK].to("cpu", torch.float64), bf[i:i + CHUNK].to("cpu", torch.float64)
        fx, fy = torch.isfinite(x), torch.isfinite(y)
        yield x, y, fx, fy, bool(fx.all()), bool(fy.all())


def compare_pair(a, b) -> dict:
    """Candidate ``a`` vs reference ``b``, chunk by chunk: {"candidate": stats, "reference": stats, "metrics"}.

    The metrics follow verify.metrics exactly (same formulas, positions finite on both sides):
    relative_error_mean with the default guard g = max(1e-3 mean|b|, FP32_TINY), relative_l2_error,
    cosine_similarity (0/0 rules as there), max_abs_error; plus max_abs_rel_scale = max|a-b| / max|b|
    and the NaN/Inf positions of one side only. Shapes that differ give "shape_mismatch" and no metrics.
    A tensor of one chunk is converted once; larger ones take a second pass for the guarded mean.
    """
    import torch

    from verify.metrics import FP32_TINY, GUARD_FRACTION

    ca, cb = _Side(a), _Side(b)
    if tuple(a.shape) != tuple(b.shape):
        for side, t in ((ca, a), (cb, b)):
            for x, _, fx, _, ax, _ in _chunks(t.detach().reshape(-1), t.detach().reshape(-1)):
                side.add(x, fx, ax)
        return {"candidate": ca.to_dict(), "reference": cb.to_dict(), "shape_mismatch": True, "metrics": None}
    af, bf = a.detach().reshape(-1), b.detach().reshape(-1)
    n_both = c_only = r_only = 0
    sdd = sbb = saa = sab = sabs_b = 0.0
    max_d = max_b = 0.0
    last = None
    for x, y, fx, fy, ax, ay in _chunks(af, bf):
        ca.add(x, fx, ax), cb.add(y, fy, ay)
        if ax and ay:
            saa, sbb = saa + ca.chunk_ss, sbb + cb.chunk_ss
        else:
            both = fx & fy
            c_only += int((~fx & fy).sum())
            r_only += int((fx & ~fy).sum())
            x, y = x[both], y[both]
            saa, sbb = saa + torch.dot(x, x).item(), sbb + torch.dot(y, y).item()
        if not x.numel():
            continue
        d = x - y
        ad, ab = d.abs_(), y.abs()
        n_both += x.numel()
        sdd, sab, sabs_b = sdd + torch.dot(ad, ad).item(), sab + torch.dot(x, y).item(), sabs_b + ab.sum().item()
        max_d, max_b = max(max_d, ad.max().item()), max(max_b, ab.max().item())
        last = (ad, ab)
    metrics = {"relative_error_mean": math.nan, "relative_l2_error": math.nan, "cosine_similarity": math.nan,
               "max_abs_error": math.nan, "max_abs_rel_scale": math.nan}
    if n_both:
        g = max(GUARD_FRACTION * sabs_b / n_both, FP32_TINY)
        if af.numel() <= CHUNK:
            srel = (last[0] / last[1].clamp_min_(g)).sum().item()
        else:  # second pass: the guard needs mean|b| first
            srel = 0.0
            for x, y, fx, fy, ax, ay in _chunks(af, bf):
                if not (ax and ay):
                    x, y = x[fx & fy], y[fx & fy]
                srel += ((x - y).abs_() / y.abs().clamp_min_(g)).sum().item()
        na, nb, nd = math.sqrt(saa), math.sqrt(sbb), math.sqrt(sdd)
        metrics["relative_error_mean"] = srel / n_both
        metrics["relative_l2_error"] = (0.0 if nd == 0 else math.inf) if nb == 0 else nd / nb
        if na == 0 and nb == 0:
            metrics["cosine_similarity"] = 1.0
        elif na == 0 or nb == 0:
            metrics["cosine_similarity"] = 0.0
        else:
            metrics["cosine_similarity"] = min(1.0, max(-1.0, sab / (na * nb)))
        metrics["max_abs_error"] = max_d
        metrics["max_abs_rel_scale"] = (0.0 if max_d == 0 else math.inf) if max_b == 0 else max_d / max_b
    metrics = {k: json_float(v) for k, v in metrics.items()}
    metrics["candidate_only_nonfinite"], metrics["reference_only_nonfinite"] = c_only, r_only
    return {"candidate": ca.to_dict(), "reference": cb.to_dict(), "shape_mismatch": False, "metrics": metrics}


# Gates the verdict applies that localisation records but does not decide on (see the module docstring).
NOT_DECISIVE_IN_MODULES = ("max_rel_err",)


class MissingReference(ValueError):
    """A gate needs an input the caller did not give (the same-precision reference of an fp16/bf16 run)."""


def same_precision_errors(name: str, same, reference, patch: int) -> dict:
    """The same-precision reference's own errors to the fp32 reference, as `verify.judge.compare_one` attaches
    them (``record["metrics"]["same_precision"]``): relative L2 and the worst row in the tensor's row layout."""
    from verify.judge import row_layout
    from verify.metrics import relative_l2_error, row_relative_errors

    rows = row_relative_errors(same, reference, row_layout(name, patch))
    return {"relative_l2_error": json_float(relative_l2_error(same, reference)),
            "row_relative_error": {"max": json_float(float(rows.max()) if rows.numel() else math.nan)}}


def judge_tensor(name: str, candidate, reference, thresholds, precision: str, patch: int, *,
                 same_precision=None, same_errors=None, require_same: bool = True) -> dict:
    """`verify.verdict.judge`'s output for one pair, its record under "metrics", made as the verdict makes it.

    ``same_precision``: the same-precision reference's tensor, or ``same_errors``: its errors already measured
    (`same_precision_errors`). When the thresholds have an error-ratio gate (fp16/bf16) and neither is given,
    MissingReference is raised (``require_same``) or the result says ``"not_judged": ["max_error_ratio"]``:
    never a silent skip of that gate.
    """
    from verify.judge import compare_one
    from verify.verdict import judge

    limits = gate_limits(thresholds, precision, name)
    table = isinstance(thresholds, dict) and "precisions" in thresholds
    needs_same = limits.get("max_error_ratio") is not None
    if needs_same and same_precision is None and same_errors is None and require_same:
        raise MissingReference(f"{name}: the {precision} error-ratio gate (max_error_ratio) needs the same-precision "
                               f"reference (the reference model on the CPU at {precision}); none was given")
    if same_precision is not None and same_precision.shape != reference.shape:
        same_precision = None
    record = compare_one(name, candidate, reference, limits, patch, same_precision)
    if same_errors is not None and record["metrics"] is not None and same_precision is None:
        record["metrics"]["same_precision"] = same_errors
    judged = judge(record, thresholds if table else limits, precision=precision if table else None)
    judged["metrics"] = record
    if needs_same and record["metrics"] is not None and "same_precision" not in record["metrics"]:
        judged["not_judged"] = ["max_error_ratio"]
    return judged


def module_failures(judged: dict) -> list:
    """[{"gate", "metric", "value", "threshold"}] that decide a module output: every failed gate of the verdict
    but NOT_DECISIVE_IN_MODULES, plus "nonfinite"/"shape"/"metrics" for a reason that is not a gate."""
    failed = [g for g in judged["gates"] if not g["passed"]]
    out = [{"gate": g["gate"], "metric": g["metric"], "value": g["value"], "threshold": g["threshold"]}
           for g in failed if g["gate"] not in NOT_DECISIVE_IN_MODULES]
    extra = len(judged["reasons"]) - len(failed)  # reasons without a gate: NaN/Inf, shape, missing metrics
    if extra > 0:
        rec = judged.get("metrics") or {}
        mm = rec.get("nonfinite_mismatch") or {}
        if rec.get("shape_mismatch"):
            out.insert(0, {"gate": "shape", "metric": "shape", "value": rec["candidate"]["shape"],
                           "threshold": rec["reference"]["shape"]})
        elif any(mm.get(k) for k in ("candidate_only", "kind_differs", "reference_only")) or rec.get("nonfinite_present"):
            out.insert(0, {"gate": "nonfinite", "metric": "nonfinite", "value": mm.get("candidate_only", 0),
                           "threshold": 0})
        else:
            out.insert(0, {"gate": "metrics", "metric": "metrics", "value": judged["reasons"][0], "threshold": None})
    return out


def gate_limits(thresholds, precision: str, name=None) -> dict:
    """The limits used: a table from load_thresholds (per precision, per tensor name) or a flat dict."""
    from verify.verdict import select_thresholds

    if isinstance(thresholds, dict) and "precisions" in thresholds:
        return dict(select_thresholds(thresholds, precision, name))
    return dict(thresholds or {})


def failed_gates(pair: dict, limits: dict) -> list:
    """[{"metric", "value", "threshold"}] for each localisation gate that ``pair`` breaks."""
    if pair["shape_mismatch"]:
        return [{"metric": "shape", "value": pair["candidate"]["shape"], "threshold": pair["reference"]["shape"]}]
    m = pair["metrics"]
    out = []
    if m["candidate_only_nonfinite"]:
        out.append({"metric": "nonfinite", "value": m["candidate_only_nonfinite"], "threshold": 0})
    for metric, key, fails in (("relative_l2_error", "max_rel_l2", lambda v, t: v > t),
                               ("cosine_similarity", "min_cosine", lambda v, t: v < t),
                               ("max_abs_rel_scale", "max_abs_scaled", lambda v, t: v > t)):
        limit, value = limits.get(key), m[metric]
        if limit is None:
            continue
        if isinstance(value, str):  # "nan"/"inf": nothing comparable, or an infinite error
            if value != "nan" or not m["candidate_only_nonfinite"]:
                out.append({"metric": metric, "value": value, "threshold": limit})
        elif fails(value, limit):
            out.append({"metric": metric, "value": value, "threshold": limit})
    return out


