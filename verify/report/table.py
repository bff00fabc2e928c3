"""The console table of a vtp-accuracy-summary/2 run, grouped by case (used by ``python -m verify.report`` and the harness).

One block per case: a row per call (A, B, warm) and tensor with the decisive metrics and the smallest
margin; then the failures (each names the case, the call, the tensor and the gate), the repeat and
determinism findings, the coverage of the profile, and the timings with their stability.
"""

from __future__ import annotations

from verify.report.fmt import _num, weights_line


def _ms(value) -> str:
    return f"{value:9.1f} ms" if isinstance(value, (int, float)) else "        - ms"


def _get(d, *path):
    for p in path:
        d = d.get(p) if isinstance(d, dict) else None
    return d


def _tightest(gates) -> str:
    """The gate with the least headroom: "gate used%" for an upper limit, else "gate margin"."""
    best = None
    for g in gates or []:
        used = g.get("used")
        key = used if isinstance(used, (int, float)) else None
        if key is None:
            continue
        if best is None or key > best[0]:
            best = (key, g["gate"])
    return "-" if best is None else f"{best[1]} {best[0] * 100:.0f}%"


def case_lines(summary: dict) -> list:
    header = (f"{'case@call':<34} {'tensor':<20} {'rel_err':>9} {'cosine':>10} {'rel_l2':>9} {'row_max':>9} "
              f"{'over_tol':>9} {'abs/scale':>9}  {'tightest gate (used)':<26} verdict")
    lines = [header, "-" * len(header)]
    current = None
    for call in summary.get("cases") or []:
        if call.get("case") != current and current is not None:
            lines.append("")
        current = call.get("case")
        for t in call.get("tensors") or []:
            m = _get(t, "metrics", "metrics") or {}
            lines.append(
                f"{call.get('id', '?'):<34} {t.get('name', '?'):<20} {_num(m.get('relative_error_mean')):>9} "
                f"{_num(m.get('cosine_similarity')):>10} {_num(m.get('relative_l2_error')):>9} "
                f"{_num(_get(m, 'row_relative_error', 'max')):>9} {_num(_get(m, 'over_tolerance', 'fraction')):>9} "
                f"{_num(m.get('max_abs_scaled')):>9}  {_tightest(t.get('gates')):<26} {t.get('verdict', '?')}")
    return lines


def check_lines(summary: dict) -> list:
    lines = []
    repeats = [c for c in summary.get("checks") or [] if c.get("check") == "repeat"]
    if repeats:
        nondet = [c for c in repeats if not c.get("deterministic")]
        failed = [c for c in repeats if c.get("verdict") != "PASS"]
        lines.append(f"repeat (A, B, A again; warm calls): {len(repeats) - len(failed)}/{len(repeats)} cases "
                     f"answer A the same way; determinism: "
                     + ("bit-identical in every case" if not nondet else
                        "NOT bit-identical in " + ", ".join(f"{c['id']} (max|a-b|/max|b| {_num(c.get('max_abs_scaled'))})"
                                                            for c in nondet)))
    warm = [c for c in summary.get("checks") or [] if c.get("check") == "warmup"]
    if warm:
        bad = [c["id"] for c in warm if c.get("verdict") != "PASS"]
        lines.append(f"warm-up (last timed call vs reference): {len(warm) - len(bad)}/{len(warm)} cases pass"
                     + (f"; failing: {', '.join(bad)}" if bad else ""))
    for c in summary.get("checks") or []:
        if c.get("check") == "coverage":
            d = c.get("detail") or {}
            lines.append(f"coverage ({c.get('id')}): batches {d.get('batches')}, sizes {d.get('sizes')}, "
                         f"{d.get('prompts')} prompts up to {d.get('longest_prompt_tokens')} tokens "
                         f"({d.get('truncated_prompts')} truncated), max token id {d.get('max_token_id')}"
                         + (f"; gaps: {'; '.join(d['gaps'])}" if d.get("gaps") else ""))
            fuzz = d.get("fuzz") if isinstance(d.get("fuzz"), dict) else None
            if fuzz:
                lines.append(f"random sweep: {fuzz.get('n')} case(s) drawn from the envelope with seed "
                             f"{fuzz.get('seed')}; replay them with {fuzz.get('replay')}")
    return lines


def timing_lines(summary: dict) -> list:
    timings = summary.get("timings") or {}
    tasks = timings.get("tasks") or {}
    lines = []
    if tasks:
        lines.append(f"timing ({timings.get('warmup', '?')} warm-up, {timings.get('iters', '?')} timed calls; "
                     "the last timed answer is compared too):")
        for name, r in tasks.items():
            flag = "  UNSTABLE" if r.get("unstable") else ""
            lines.append(f"  {name:<28} first {_ms(r.get('first_call_ms'))}  median {_ms(r.get('median_ms'))}  "
                         f"p90 {_ms(r.get('p90_ms'))}  min {_ms(r.get('min_ms'))}  (n={r.get('n', '?')}){flag}")
        if timings.get("unstable_note"):
            lines.append(f"  NOTE: {timings['unstable_note']}")
        if timings.get("contended_note"):  # verify.levels: the calibration says the run did not have the machine
            lines.append(f"  {(timings.get('contention') or {}).get('label', 'CONTENDED')}: {timings['contended_note']}")
    else:
        lines.append("timing: not measured (--no-timing)")
    load = timings.get("machine_load") or {}
    if load.get("start") and load.get("end"):
        lines.append(f"  machine load (1 min): {load['start']['1min']:.2f} at start, {load['end']['1min']:.2f} at "
                     f"end, {load['end'].get('cpus')} CPUs")
    other = []
    if timings.get("load_in_process_s") is not None:
        other.append(f"  weights loaded in process: {timings['load_in_process_s'] * 1e3:.1f} ms")
    h = timings.get("harness")
    if isinstance(h, dict) and h.get("overhead_fraction_of_compute") is not None:
        other.append(f"  harness: {h['total_s']:.1f} s in all, {h['model_compute_s']:.1f} s model compute, "
                     f"{h['overhead_s']:.2f} s overhead ({h['overhead_fraction_of_compute'] * 100:.1f} % of compute)")
    if other:
        lines.append("run:")
        lines += other
    return lines


def brief_lines(summary: dict, source: str = "") -> list:
    """The console's short form: the header, the checks and the timings; the per-case table and the failure
    lines are counted, not printed (log.txt and report.html have them)."""
    lines = summary_lines(summary, source)
    head = lines[:next((i for i, line in enumerate(lines) if line.startswith("case@call")), len(lines))]
    n_cases = len(summary.get("cases") or [])
    reasons = (summary.get("overall") or {}).get("reasons") or []
    return head + [f"{n_cases} calls compared, {len(reasons)} failure lines (in log.txt, accuracy_summary.json and "
                   "report.html)"] + check_lines(summary) + timing_lines(summary)


def summary_lines(summary: dict, source: str = "") -> list:
    """The whole report of a vtp-accuracy-summary/2 summary: header, cases, failures, checks, timing, verdict."""
    cand, weights = summary.get("candidate") or {}, summary.get("weights") or {}
    profile = summary.get("profile") or {}
    lines = [f"VTP verification report{f' ({source})' if source else ''}, created {summary.get('created', '-')}",
             f"candidate: {cand.get('device', '-')} {cand.get('precision', '-')} fusion={cand.get('fusion', '-')}; "
             f"reference: cpu fp32 unfused; profile {profile.get('profile', '-')} (cases file "
             f"{profile.get('file', '-')}, version {profile.get('version', '-')})"]
    lines.append(weights_line(weights))
    if cand.get("injected_fault"):
        f = cand["injected_fault"]
        lines.append(f"HARNESS SELF-TEST: fault injected on the candidate at {f.get('module')} -> {f.get('fault')}")
    if cand.get("note"):
        lines.append(f"NOTE: {cand['note']}")
    lines += case_lines(summary)
    reasons = (summary.get("overall") or {}).get("reasons") or []
    if reasons:
        lines.append(f"failures ({len(reasons)}):")
        lines += [f"  {r}" for r in reasons]  # every one: this is log.txt's copy (the console gets the count)
    lines += check_lines(summary)
    lines += timing_lines(summary)
    lines.append(f"VERDICT: {summary.get('verdict', '-')}")
    return lines
