"""How numbers and the weights read in every report: one formatter for the console table, the HTML page,
``verify.compare`` and the server table."""

from __future__ import annotations

import math


def _num(value) -> str:
    """A metric for the table: ``-`` when absent, the JSON strings "nan"/"inf" as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) < 1e-3 or abs(value) >= 1e4:
        return f"{value:.3g}"
    return f"{value:.7f}".rstrip("0").rstrip(".")  # a cosine of 0.9999981 keeps its 9s


def _ms(value) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def weights_line(weights: dict) -> str:
    """One line on the weights, from what the summary records and nothing else."""
    kind = weights.get("kind")
    files = ""
    if weights.get("path"):
        sha = f"sha256 {str(weights['sha256'])[:16]}..., " if weights.get("sha256") else ""
        files = f"{weights['path']} ({sha}{'manifest-verified' if weights.get('manifest') else 'no manifest'})"
    if kind == "checkpoint":
        return f"weights: {files or 'checkpoint (path not recorded)'}"
    if kind == "synthetic" or weights.get("synthetic"):
        made = weights.get("source") or weights.get("preset")
        where = "; ".join(x for x in (made, f"saved in {files}" if files else "") if x)
        return (f"weights: SYNTHETIC{f' ({where})' if where else ''}: the numbers measure the computation, not "
                "the published model")
    return "weights: not recorded" if not kind else f"weights: {kind} {files}".rstrip()
