"""Cards that are right but slow: each rank's figures against the median of the other ranks.

A card that answers correctly but 40 % slower than its neighbours (thermal throttling, a bad link, a wrong
power mode) passes every accuracy gate. In a multi-card run every rank times the same tasks on the same
inputs, so the other cards are the baseline: for each task, rank r's latency over the median of the others'
latencies; for each spot-check figure (throughput, higher is better), the median of the others over rank r's.
The rank is a suspect when the median of its latency ratios is above ``SLOW_RATIO`` (1.25): a throttled or
misconfigured card is slow at every task, while one noisy task is not a card; or when a spot-check figure is
(on a device any one of them: a bad link shows in the copies only; on the CPU their median, since ranks that
share the host's cores measure each other's noise). From level 3 on a suspect fails.

Inputs are plain dicts, so the function serves the server summary and the tests alike::

    latency    {rank: {task_or_case: milliseconds}}         (median latency of the rank's timed calls)
    throughput {rank: {figure: value, higher is better}}    (e.g. the spot checks' matmul TFLOPS, GB/s)
"""

from __future__ import annotations

import statistics
from typing import Dict, Mapping, Optional

SLOW_RATIO = 1.25
FAIL_FROM_LEVEL = 3


def _ratios(values: Mapping[int, float], higher_is_better: bool) -> Dict[int, Optional[float]]:
    """rank -> (its value / median of the others) for latencies, the inverse for throughputs; None where a
    value is missing or the others have none."""
    out = {}
    for rank, value in values.items():
        others = [v for r, v in values.items() if r != rank and v is not None and v > 0]
        if value is None or value <= 0 or not others:
            out[rank] = None
            continue
        median = statistics.median(others)
        out[rank] = median / value if higher_is_better else value / median
    return out


def slow_ranks(latency: Mapping[int, Mapping[str, float]],
               throughput: Optional[Mapping[int, Mapping[str, float]]] = None,
               ratio: float = SLOW_RATIO, level: int = 2, contention: Optional[Mapping[int, dict]] = None,
               on_cpu: bool = False) -> dict:
    """The ``slow_ranks`` section: per rank and figure the ratio to the median of the others; suspects (module
    docstring), with the figure that is worst; verdict FAIL at ``level`` >= FAIL_FROM_LEVEL when there
    is a suspect, else PASS (a finding below that level). With fewer than two ranks nothing is compared.
    ``contention``: {rank: verify.spot_checks.contention(...)} when known; a suspect whose own calibration says
    CONTENDED is still named, and the reason says the machine, not only the card, may be at fault."""
    ranks = sorted(set(latency) | set(throughput or {}))
    section = {"ratio": ratio, "level": level, "fail_from_level": FAIL_FROM_LEVEL, "ranks": {},
               "suspects": [], "reasons": [], "verdict": "PASS",
               "rule": (f"a rank is a suspect when the median of its task latencies over the other ranks' is above "
                        f"{ratio:g}x, or {'the median of its' if on_cpu else 'any of its'} spot-check throughputs "
                        f"is below 1/{ratio:g} of theirs; a suspect fails from level {FAIL_FROM_LEVEL}")}
    if len(ranks) < 2:
        section["note"] = "fewer than two ranks: nothing to compare with"
        return section
    figures = {r: {} for r in ranks}
    for kind, table, higher in (("latency", latency, False), ("throughput", throughput or {}, True)):
        keys = sorted({k for r in ranks for k in (table.get(r) or {})})
        for key in keys:
            values = {r: (table.get(r) or {}).get(key) for r in ranks}
            for r, q in _ratios(values, higher).items():
                figures[r][f"{kind}:{key}"] = {"value": values[r], "ratio_to_others": q}
    for r in ranks:
        worst_key, worst = None, None
        for key, fig in figures[r].items():
            q = fig["ratio_to_others"]
            if q is not None and (worst is None or q > worst):
                worst_key, worst = key, q
        lat = [f["ratio_to_others"] for k, f in figures[r].items() if k.startswith("latency:")
               and f["ratio_to_others"] is not None]
        thr = [f["ratio_to_others"] for k, f in figures[r].items() if k.startswith("throughput:")
               and f["ratio_to_others"] is not None]
        latency_ratio = statistics.median(lat) if lat else None
        throughput_ratio = (statistics.median(thr) if on_cpu else max(thr)) if thr else None
        suspect = any(q is not None and q > ratio for q in (latency_ratio, throughput_ratio))
        section["ranks"][str(r)] = {"figures": figures[r], "worst": worst_key, "worst_ratio": worst,
                                    "latency_ratio": latency_ratio, "throughput_ratio": throughput_ratio,
                                    "suspect": suspect}
        if suspect:
            section["suspects"].append(r)
            kind, key = worst_key.split(":", 1)
            what = "slower" if kind == "latency" else "lower throughput"
            line = (f"rank {r}: {len(lat)} task latencies a median {latency_ratio or 0:.2f}x those of the other "
                    f"ranks, worst {key} {worst:.2f}x {what} (bound {ratio:g}x): right but slow; check its "
                    f"clocks, temperature, power mode and link")
            cont = (contention or {}).get(r)
            if cont and cont.get("contended"):
                line += f" (its host was {cont.get('label')} during the run)"
            section["reasons"].append(line)
    if section["suspects"] and level >= FAIL_FROM_LEVEL:
        section["verdict"] = "FAIL"
    elif section["suspects"]:
        section["note"] = f"suspects are a finding below level {FAIL_FROM_LEVEL}"
    return section


def rank_latencies(rank_summaries: Mapping[int, Mapping]) -> Dict[int, Dict[str, float]]:
    """{rank: {case id: median ms}} from each rank's accuracy summary (timings.tasks), plus the burn-in's
    per-task p50 where the summary has a burn-in section."""
    out = {}
    for rank, summary in rank_summaries.items():
        tasks = ((summary or {}).get("timings") or {}).get("tasks") or {}
        row = {case: t.get("median_ms") for case, t in tasks.items() if isinstance(t, Mapping)}
        burn = (summary or {}).get("burn_in") or {}
        for task_id, stats in (burn.get("latency_by_task") or {}).items():
            if isinstance(stats, Mapping) and stats.get("p50_ms") is not None:
                row[f"burn-in {task_id}"] = stats["p50_ms"]
        out[rank] = row
    return out


def rank_throughputs(rank_summaries: Mapping[int, Mapping]) -> Dict[int, Dict[str, float]]:
    """{rank: {figure: value}} from each rank's spot_checks section (matmul TFLOPS, copy GB/s)."""
    out = {}
    for rank, summary in rank_summaries.items():
        figs = (((summary or {}).get("spot_checks") or {}).get("figures")) or {}
        out[rank] = {k: f.get("tflops", f.get("gbps")) for k, f in figs.items() if isinstance(f, Mapping)
                     and f.get("tflops", f.get("gbps")) is not None}
    return out


def from_rank_folders(out, ranks) -> dict:
    """`slow_ranks` over the ranks' own summaries (OUT/rank<k>/accuracy_summary.json) of a multi-card run, at
    the highest level the ranks ran (their ``level`` section; 2 when none says)."""
    import json
    from pathlib import Path

    summaries = {}
    for rank in ranks:
        try:
            summaries[rank] = json.loads((Path(out) / f"rank{rank}" / "accuracy_summary.json").read_text())
        except (OSError, ValueError):
            continue
    level = max([((s.get("level") or {}).get("level") or 2) for s in summaries.values()] or [2])
    contention = {r: (s.get("timings") or {}).get("contention") for r, s in summaries.items()}
    on_cpu = any(str((s.get("candidate") or {}).get("device", "")).startswith("cpu") for s in summaries.values())
    return slow_ranks(rank_latencies(summaries), rank_throughputs(summaries), level=level, contention=contention,
                      on_cpu=on_cpu)
