"""What a person reads first, in the page and on the console: the verdict, one sentence of cause and place,
the matrix of cases coloured by how much of its budget the worst gate used, and what ran.

    from verify.report.glance import cause, matrix, glance_lines
    cause(summary)        # "first divergent module: trunk.blocks.3.attn (...): relative_l2_error 0.02 against ..."
    matrix(summary)       # [(task, [cell, ...])], cell = {"case", "label", "share", "verdict", "gate"}
    glance_lines(summary, out)   # the console's last screen

The share of a gate is value / threshold for an upper limit (1 - value) / (1 - threshold) for a lower limit
such as the cosine; over 1 the gate failed. A case's share is the worst over its calls, tensors and gates.
Everything is read from accuracy_summary.json (its "divergence" section names the first divergent module).
"""

from __future__ import annotations

import math
from typing import Optional

from verify.report.fmt import _num
from verify.report.summary import _d


def _real(x) -> Optional[float]:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def gate_share(gate: dict) -> Optional[float]:
    """The share of its budget a gate used (> 1: failed; inf: a non-finite value); None when unknown."""
    used = _real(gate.get("used"))
    if used is not None:
        return used if math.isfinite(used) else math.inf
    value, threshold = _real(gate.get("value")), _real(gate.get("threshold"))
    if value is None:
        return None if gate.get("passed", True) else math.inf  # "nan"/"inf" recorded as strings
    if threshold is not None and str(gate.get("gate", "")).startswith("min_") and threshold < 1:
        return max(0.0, 1 - value) / (1 - threshold)
    return 0.0 if gate.get("passed", True) else 2.0


def worst_gate(calls) -> tuple:
    """(share, gate dict, call id, tensor name) of the gate that used the most of its budget in ``calls``."""
    best = (-1.0, None, None, None)
    for call in calls:
        for t in call.get("tensors") or []:
            gates = [g for g in t.get("gates") or [] if isinstance(g, dict)]
            if not gates and t.get("verdict") not in (None, "PASS"):  # no gate ran: NaN/Inf in the output
                best = max(best, (math.inf, {"gate": "nonfinite", "metric": "NaN/Inf", "value": "nan"},
                                  call.get("id"), t.get("name")), key=lambda b: b[0])
            for g in gates:
                share = gate_share(g)
                if share is not None and share > best[0]:
                    best = (share, g, call.get("id"), t.get("name"))
    return best


def _label(case_id: str) -> tuple:
    task, _, rest = str(case_id).partition("/")
    return task, rest.replace("/", " ") or task


def matrix(summary: dict) -> list:
    """[(task, [{"case", "label", "share", "verdict", "gate", "call", "tensor"}])], in the run's order."""
    by_case: dict = {}
    for call in summary.get("cases") or []:
        if isinstance(call, dict):
            by_case.setdefault(call.get("case") or str(call.get("id", "?")).split("@")[0], []).append(call)
    failed_checks = {c.get("id") for c in summary.get("checks") or [] if isinstance(c, dict)
                     and c.get("verdict") == "FAIL" and c.get("check") != "coverage"}
    rows: dict = {}
    for case, calls in by_case.items():
        share, gate, call_id, tensor = worst_gate(calls)
        failed = any(c.get("verdict") != "PASS" for c in calls) or case in failed_checks
        task, label = _label(case)
        rows.setdefault(task, []).append({
            "case": case, "label": label, "share": None if share < 0 else share,
            "verdict": "FAIL" if failed else "PASS", "gate": gate, "call": call_id, "tensor": tensor,
            "check": case in failed_checks})
    return list(rows.items())


def share_text(share) -> str:
    if share is None:
        return "-"
    if not math.isfinite(share):
        return "NaN/Inf"
    return f"{share * 100:.0f}%" if share < 10 else f"{share:.0f}x"


def _gate_phrase(gate: dict) -> str:
    """"relative_l2_error 0.02 against max_rel_l2 0.002" (the metric, its value, the gate and its threshold)."""
    metric = str(gate.get("metric") or gate.get("gate"))
    metric = metric.split(" (")[0]  # "relative_l2_error vs same-precision CPU (...)" keeps its words, not the numbers
    return f"{metric} {_num(gate.get('value'))} against {gate.get('gate')} {_num(gate.get('threshold'))}"


def spread(summary: dict) -> str:
    """Which tasks fail and at how many of their cases: "3 of 4 tasks fail (...); clip_text passes"."""
    rows = matrix(summary)
    bad = [(task, sum(c["verdict"] == "FAIL" for c in cells), len(cells)) for task, cells in rows]
    failing = [(t, n, m) for t, n, m in bad if n]
    if not failing:
        return ""
    ok = [t for t, n, _ in bad if not n]
    text = f"{len(failing)} of {len(rows)} tasks fail (" + ", ".join(
        f"{t}: {'every case' if n == m else f'{n} of {m} cases'}" for t, n, m in failing) + ")"
    return text + (f"; {', '.join(ok)} pass{'es' if len(ok) == 1 else ''}" if ok else "")


def cause(summary: dict) -> str:
    """One sentence: where the failure starts and by which gate, or why the run passed."""
    div = _d(summary.get("divergence"))
    first, nonfinite = _d(div.get("first_divergent")), _d(div.get("first_nonfinite"))
    overall = _d(summary.get("overall"))
    if str(summary.get("verdict")) == "PASS":
        share, gate, call, tensor = worst_gate(summary.get("cases") or [])
        n_calls, n_cases = overall.get("calls", len(summary.get("cases") or [])), len(matrix_cases(summary))
        tight = (f"; the tightest gate used {share_text(share)} of its budget ({gate.get('gate')}, {call} {tensor})"
                 if gate else "")
        return f"Every case passed: {n_calls} calls of {n_cases} cases within their gates{tight}."
    if nonfinite:
        return (f"NaN/Inf first appear in {nonfinite.get('module')} (task {nonfinite.get('task')}"
                f"{', case ' + str(nonfinite['case']) if nonfinite.get('case') else ''}): "
                f"{nonfinite.get('count', '?')} non-finite values, gate nonfinite.")
    if first:
        where = f"{first.get('case') or first.get('task')}"
        gate = {"metric": first.get("metric"), "value": first.get("value"),
                "gate": first.get("gate") or first.get("metric"), "threshold": first.get("threshold")}
        if first.get("scope") == "before_first_module":
            return (f"The model's inputs differ: the first module of task {first.get('task')} "
                    f"({first.get('module')}) already gets different inputs in {where}: {_gate_phrase(gate)}.")
        cls = f" ({first['class']})" if first.get("class") else ""
        agree = {True: "; its inputs agree", False: "; its inputs already differ"}.get(first.get("inputs_agree"), "")
        inside = (f", in its own code after {first['between'][0]}" if first.get("scope") == "between"
                  and isinstance(first.get("between"), list) and first["between"] and first["between"][0] else "")
        return f"First divergent module: {first.get('module')}{cls} in {where}: {_gate_phrase(gate)}{agree}{inside}."
    checks = [c for c in summary.get("checks") or [] if isinstance(c, dict) and c.get("verdict") == "FAIL"
              and c.get("check") in ("repeat", "determinism")]
    if checks:
        c = checks[0]
        return (f"The {c['check']} check fails: {c.get('id')} answered input A differently on a later call "
                f"(max|a-b|/max|b| {_num(c.get('max_abs_scaled'))}, gate repeat_max_abs_scaled).")
    share, gate, call, tensor = worst_gate([c for c in summary.get("cases") or [] if c.get("verdict") != "PASS"])
    if gate:
        calls = {c.get("call") for c in summary.get("cases") or [] if c.get("verdict") != "PASS"}
        only_warm = " (only the warm calls fail: wrong after warm-up)" if calls == {"warm"} else ""
        return f"Worst failure: {call} {tensor}: {_gate_phrase(gate)}{only_warm}; the first divergent module was " \
               f"{'not located (--locate never)' if not div else 'not found inside the model'}."
    reasons = overall.get("reasons") or []
    return f"FAIL: {reasons[0]}" if reasons else "FAIL: no case was compared."


def matrix_cases(summary: dict) -> list:
    return [cell["case"] for _, cells in matrix(summary) for cell in cells]


def ran(summary: dict) -> list:
    """[(label, value)]: device, precision, fusion, weights, profile, duration, when."""
    cand, weights, profile = _d(summary.get("candidate")), _d(summary.get("weights")), _d(summary.get("profile"))
    env = _d(summary.get("environment"))
    harness = _d(_d(summary.get("timings")).get("harness"))
    total = _real(harness.get("total_s"))
    kind = weights.get("kind") or "-"
    if kind == "synthetic" or summary.get("synthetic_weights"):
        kind = "SYNTHETIC (random; the numbers measure the computation)"
    elif weights.get("path"):
        kind = f"checkpoint {weights['path']}"
    device = str(cand.get("device", "-"))
    name = env.get("device_name") or env.get("soc_version")
    items = [("device", f"{device}{f' ({name})' if name else ''}"), ("precision", cand.get("precision", "-")),
             ("fusion", cand.get("fusion", "-")), ("weights", kind),
             ("profile", f"{profile.get('profile', '-')} ({len(matrix_cases(summary))} cases, "
                         f"{len(summary.get('cases') or [])} calls)"),
             ("duration", f"{total:.0f} s" if total is not None else "-"), ("created", summary.get("created", "-"))]
    if cand.get("injected_fault"):
        f = _d(cand["injected_fault"])
        items.insert(0, ("injected fault", f"{f.get('module')} x {f.get('fault')} (harness self-test: must FAIL)"))
    return items


def matrix_lines(summary: dict, width: int = 100) -> list:
    """The matrix as text: one line per task, each case with the share of its worst gate."""
    lines = []
    for task, cells in matrix(summary):
        text = "  ".join(f"{c['label']} {'FAIL' if c['verdict'] == 'FAIL' else 'ok'} {share_text(c['share'])}"
                         for c in cells)
        lines.append(f"  {task:<15} {text}"[:width * 2])
    return lines


def glance_lines(summary: dict, out=None, verdict: bool = True) -> list:
    """The console's closing block: verdict, cause and place, the matrix, the failure count, where to look
    (``verdict`` False: without the VERDICT line, for a caller that prints its own)."""
    if isinstance(summary.get("server"), dict):
        return server_glance_lines(summary, out, verdict)
    reasons = _d(summary.get("overall")).get("reasons") or []
    lines = ([f"VERDICT: {summary.get('verdict') or '-'}"] if verdict else []) + [cause(summary)]
    if spread(summary):
        lines.append(spread(summary) + ".")
    lines.append("cases (worst gate's share of its budget; over 100% fails):")
    lines += matrix_lines(summary)
    if reasons:
        where = f"{out}/log.txt and accuracy_summary.json" if out else "log.txt and accuracy_summary.json"
        lines.append(f"{len(reasons)} failure lines (case, call, tensor, gate) are in {where}")
    fuzz = _d(_d(summary.get("profile")).get("fuzz"))
    if fuzz.get("replay") and summary.get("verdict") != "PASS":
        lines.append(f"random sweep seed {fuzz.get('seed')}: replay these cases with {fuzz['replay']}")
    if out is not None:
        lines.append(f"open the report: xdg-open {out}/report.html   (or open it in any browser)")
    return lines


# --------------------------------------------------------------------------------------------- the page
def case_anchor(case: str) -> str:
    """The id of a case's details in report.html ("case-reconstruction-b1-256x256")."""
    return "case-" + "".join(ch if ch.isalnum() else "-" for ch in str(case))


def _colour(cell: dict) -> str:
    share = cell["share"]
    if cell["verdict"] == "FAIL" and (share is None or share <= 1):
        return "c-fail"  # failed by a check (repeat, warm-up), not by a gate's budget
    if share is None:
        return "c-none"
    if not math.isfinite(share):
        return "c-nan"
    return "c-ok" if share <= 0.5 else "c-warn" if share <= 1 else "c-fail"


def _worst_title(cell: dict, esc) -> str:
    gate = cell["gate"]
    return f"; worst gate {esc(gate.get('gate'))} in {esc(cell['call'])} {esc(cell['tensor'])}" if gate else ""


def glance_html(summary: dict, esc) -> str:
    """The first screen of report.html (``esc``: the page's HTML escaper): verdict, cause and place, the
    matrix (each cell links to its case's gate tables), what ran."""
    verdict = str(summary.get("verdict") or "-")
    cls = verdict if verdict in ("PASS", "FAIL") else "other"
    rows = []
    for task, cells in matrix(summary):
        tds = "".join(
            f'<td class="cell {_colour(c)}"><a href="#{case_anchor(c["case"])}" title="'
            f'{esc(c["case"])}: {esc(c["verdict"])}'
            f'{_worst_title(c, esc)}'
            f'"><span class="lbl">{esc(c["label"])}</span><b>{"FAIL" if c["verdict"] == "FAIL" else "ok"}'
            f'</b> <span class="num">{esc(share_text(c["share"]))}</span></a></td>' for c in cells)
        rows.append(f"<tr><th>{esc(task)}</th>{tds}</tr>")
    what = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in ran(summary))
    spread_text = spread(summary)
    return (
        f'<section id="glance"><div class="head"><span class="verdict {cls}" id="verdict">{esc(verdict)}</span>'
        f'<h1>VTP certification report</h1></div>'
        f'<p class="cause" id="cause">{esc(cause(summary))}</p>'
        + (f'<p class="spread">{esc(spread_text)}.</p>' if spread_text else "")
        + '<div class="glance"><div><h2 class="small">Cases: the worst gate\'s share of its budget '
          '(over 100% fails; click a cell for its gates)</h2>'
        f'<table class="matrix">{"".join(rows) or "<tr><td>no case was compared</td></tr>"}</table>'
        '<p class="legend"><span class="cell c-ok">&le; 50%</span> <span class="cell c-warn">&le; 100%</span> '
        '<span class="cell c-fail">failed</span> <span class="cell c-nan">NaN/Inf</span></p></div>'
        f'<div><h2 class="small">What ran</h2><table class="ran">{what}</table></div></div></section>')


GLANCE_CSS = """
#glance .head{display:flex;align-items:center;gap:16px}#glance h1{font-size:24px;margin:0}
p.cause{font-size:17px;font-weight:600;margin:10px 0 4px;max-width:1300px}p.spread{margin:2px 0 10px}
.glance{display:flex;gap:28px;align-items:flex-start;flex-wrap:wrap}h2.small{font-size:14px;border:0;margin:6px 0}
table.matrix td.cell{padding:0;border:1px solid #fff}table.matrix th{background:none;border:0;text-align:right}
td.cell a{display:block;padding:5px 9px;color:#1d2330;text-decoration:none;white-space:nowrap;font-size:13px}
td.cell .lbl{display:block;font-size:11px;color:#444}span.cell{padding:2px 7px;font-size:12px}
.c-ok{background:#cdeed5}.c-warn{background:#ffe9a6}.c-fail{background:#f6b9b9}.c-nan{background:#8d1a1a;color:#fff}
.c-nan a,.c-nan .lbl{color:#fff}.c-none{background:#eee}table.ran th{text-align:right;font-weight:600}
table.ran td{white-space:nowrap}
"""


# --------------------------------------------------------------------------------------------- a server run
def rank_summaries(out) -> dict:
    """{rank: its own accuracy summary} read from OUT/rank<k>/accuracy_summary.json (missing ones left out)."""
    import json
    from pathlib import Path

    found = {}
    for folder in sorted(Path(out).glob("rank[0-9]*")) if out is not None else []:
        try:
            found[int(folder.name[4:])] = json.loads((folder / "accuracy_summary.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return found


def rank_cause(row: dict, own: Optional[dict]) -> str:
    """One card's cause: its own summary's sentence when it has one, else what happened to the rank."""
    if own is not None and row.get("verdict") in ("PASS", "FAIL"):
        return cause(own)
    return str(row.get("error") or "; ".join(row.get("failed_gates") or []) or row.get("verdict"))


def server_cause(summary: dict, ranks: dict) -> str:
    rows = summary.get("ranks") or []
    bad = [r for r in rows if r.get("verdict") != "PASS"]
    server = _d(summary.get("server"))
    if not bad:
        extra = []
        if _d(server.get("consistency")).get("verdict") == "FAIL":
            extra.append("but the cards' outputs differ: " + "; ".join(server["consistency"].get("reasons") or []))
        if _d(server.get("collectives")).get("verdict") in ("FAIL", "ERROR"):
            extra.append("but the collective check failed")
        if extra:
            return f"Every card passed its own certification, {' and '.join(extra)}."
        agree = _d(server.get("consistency")).get("verdict", "-")
        return f"All {len(rows)} cards passed; their outputs agree (cross-card consistency {agree})."
    first = bad[0]
    return (f"{len(bad)} of {len(rows)} cards fail; rank {first['rank']} ({first.get('device') or '?'}) "
            f"{first.get('verdict')}: {rank_cause(first, ranks.get(first['rank']))}")


def server_glance_lines(summary: dict, out=None, verdict: bool = True) -> list:
    ranks = rank_summaries(out)
    lines = ([f"VERDICT: {summary.get('verdict') or '-'}"] if verdict else []) + [server_cause(summary, ranks)]
    lines.append("cards:")
    for r in summary.get("ranks") or []:
        own = ranks.get(r["rank"])
        lines.append(f"  rank {r['rank']} {str(r.get('device') or '-'):<8} {r.get('verdict'):<8} "
                     f"{rank_cause(r, own)[:150] if r.get('verdict') != 'PASS' else ''}".rstrip())
    if out is not None:
        lines.append(f"open the report: xdg-open {out}/report.html   (a row per card; each card's own: "
                     f"{out}/rank<k>/report.html)")
    return lines
