"""Two verification runs side by side, what changed first: the verdict, injected faults, the first divergent
module, the metrics that moved, timing ratios, environment differences; then the rows that moved.

    python -m verify.compare verify_out/cann8 verify_out/cann9
    python -m verify.compare verify_out/single verify_out/server        # a single-card run and an --nproc run
    python -m verify.compare old/accuracy_summary.json new/accuracy_summary.json --json diff.json

For regressions across CANN, driver or torch_npu versions: run A is the baseline, run B the new one. A run is
a folder (or its accuracy_summary.json) of a single-card run or of a whole-server run (``--nproc``: its rows
are those of its representative card, rank<k>/accuracy_summary.json, and every card's verdict is listed).
Reads accuracy summaries of schema ``vtp-accuracy-summary/1`` (one row per task and tensor) and ``/2`` (one
row per case, call and tensor, with gates); a field that is missing prints as ``-``. Rows are matched by
(case, tensor): for /1 the case is the task name. A row "moved" when its verdict changed or the worst gate's
share of its budget changed by more than 10 points (a share is value/threshold; over 100 % fails).

Writes compare.html (self-contained) into B's folder unless --html PATH or --no-html says otherwise.
Exit status: 0 no regression; 1 a regression (B fails a row, or the overall verdict, that A passes, or a row
of A is missing in B); 2 a file is missing or is not an accuracy summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verify.report.fmt import _ms, _num  # noqa: E402
from verify.report.glance import cause, gate_share, server_cause, share_text  # noqa: E402
from verify.report.page import document, esc  # noqa: E402
from verify.report.summary import (ENV_KEYS, SUMMARY_NAME, SummaryError, _d, environment_of,  # noqa: E402
                                   read_summary, tensor_rows, timing_rows, verdict_of)

EXIT_SAME, EXIT_REGRESSION, EXIT_ENV = 0, 1, 2
MOVED_SHARE = 0.10   # a row moved: its worst gate's share of the budget changed by more than 10 points
TIMING_RATIO = 1.10  # a timing moved: the median changed by more than 10 %
ROWS_SHOWN = 25


def load_run(path: Path) -> dict:
    """{"summary", "rows_from", "kind", "cards"}: the summary to compare rows with and what kind of run it is.
    A server run (its summary has a "server" section) gives the rows of its representative card."""
    summary = read_summary(path)
    folder = path if path.is_dir() else path.parent
    if not isinstance(summary.get("server"), dict):
        return {"summary": summary, "rows": summary, "kind": "single run", "cards": None}
    rep = summary.get("representative_rank")
    rows = summary
    if rep is not None and (folder / f"rank{rep}" / SUMMARY_NAME).is_file():
        rows = read_summary(folder / f"rank{rep}")
    cards = [f"rank {r.get('rank')} {r.get('device') or '?'} {r.get('verdict')}" for r in summary.get("ranks") or []]
    kind = f"server run, {len(cards)} cards" + (f" (rows of rank {rep})" if rows is not summary else "")
    return {"summary": summary, "rows": rows, "kind": kind, "cards": cards}


def _worst_share(row) -> float | None:
    shares = [gate_share(g) for g in (row or {}).get("gates") or []]
    shares = [s for s in shares if s is not None]
    return max(shares) if shares else None


def _first_divergent(summary: dict) -> str:
    first = _d(_d(summary.get("divergence")).get("first_divergent"))
    if not first:
        return "-" if not summary.get("divergence") else "none found"
    return (f"{first.get('module')} ({first.get('gate') or first.get('metric')} {_num(first.get('value'))} against "
            f"{_num(first.get('threshold'))})")


def _cause(summary: dict) -> str:
    """The run's one sentence of cause and place (a server run's names its cards)."""
    return server_cause(summary, {}) if isinstance(summary.get("server"), dict) else cause(summary)


def _fault(summary: dict) -> str:
    f = _d(summary.get("candidate")).get("injected_fault")
    return f"{_d(f).get('module')} x {_d(f).get('fault')}" if f else "none"


def compare_summaries(a: dict, b: dict, rows_a: dict | None = None, rows_b: dict | None = None) -> dict:
    """The comparison as data: {"verdicts", "changes", "rows", "timings", "environment", "regressions"}.
    ``rows_a``/``rows_b``: the summaries whose tensor rows are compared (a server run's representative card)."""
    ra_all = {(r["case"], r["tensor"]): r for r in tensor_rows(rows_a or a)}
    rb_all = {(r["case"], r["tensor"]): r for r in tensor_rows(rows_b or b)}
    rows, regressions = [], []
    same_schema = (rows_a or a).get("schema") == (rows_b or b).get("schema")  # across /1 and /2 keys cannot match
    for key in list(ra_all) + [k for k in rb_all if k not in ra_all]:
        ra, rb = ra_all.get(key), rb_all.get(key)
        sa, sb = _worst_share(ra), _worst_share(rb)
        moved = bool(ra and rb and (ra["verdict"] != rb["verdict"] or (
            sa is not None and sb is not None and abs(sb - sa) > MOVED_SHARE)))
        rows.append({"case": key[0], "tensor": key[1], "a": ra, "b": rb, "share_a": sa, "share_b": sb,
                     "moved": moved})
        if ra and ra["verdict"] == "PASS" and ((rb is None and same_schema) or (rb and rb["verdict"] != "PASS")):
            regressions.append(f"{key[0]} {key[1]}: {'missing in B' if rb is None else 'PASS -> ' + str(rb['verdict'])}"
                               + (f" ({rb['reasons'][0]})" if rb and rb["reasons"] else ""))
    va, vb = verdict_of(a, "-"), verdict_of(b, "-")
    if va == "PASS" and vb != "PASS":
        regressions.insert(0, f"overall verdict PASS -> {vb}")
    if not same_schema:
        regressions = [r for r in regressions if "missing in B" not in r]
    ta, tb = timing_rows(a), timing_rows(b)
    timings = []
    for n in list(ta) + [n for n in tb if n not in ta]:
        ma, mb = _d(ta.get(n)).get("median_ms"), _d(tb.get(n)).get("median_ms")
        ratio = mb / ma if isinstance(ma, (int, float)) and isinstance(mb, (int, float)) and ma else None
        timings.append({"name": n, "a": ta.get(n), "b": tb.get(n), "ratio": ratio})
    ea, eb = environment_of(a), environment_of(b)
    env = [{"key": k, "a": ea.get(k), "b": eb.get(k), "differs": ea.get(k) != eb.get(k)} for k in ENV_KEYS]
    moved = [r for r in rows if r["moved"]]
    changes = []
    if va != vb:
        changes.append(f"verdict: {va} -> {vb}")
    if _fault(a) != _fault(b):
        changes.append(f"injected fault: {_fault(a)} -> {_fault(b)}")
    if _first_divergent(a) != _first_divergent(b):
        changes.append(f"first divergent module: {_first_divergent(a)} -> {_first_divergent(b)}")
    if moved:
        top = max(moved, key=lambda r: abs((r["share_b"] or 0) - (r["share_a"] or 0)))
        changes.append(f"metrics that moved: {len(moved)} of {len(rows)} tensor results; the most: {top['case']} "
                       f"{top['tensor']}, worst gate {share_text(top['share_a'])} -> {share_text(top['share_b'])} "
                       "of its budget")
    slower = [t for t in timings if t["ratio"] and (t["ratio"] > TIMING_RATIO or t["ratio"] < 1 / TIMING_RATIO)]
    if slower:
        changes.append("timing (median B/A): " + ", ".join(f"{t['name']} {t['ratio']:.2f}x" for t in slower))
    for label, key in (("device", "device"), ("precision", "precision"), ("fusion", "fusion")):
        xa, xb = (str(_d(x.get("candidate")).get(key, "-")) for x in (a, b))
        if xa != xb:
            changes.append(f"candidate {label}: {xa} -> {xb}")
    changes += [f"environment {e['key']}: {e['a'] if e['a'] is not None else '-'} -> "
                f"{e['b'] if e['b'] is not None else '-'}" for e in env if e["differs"]]
    return {"schema": "vtp-compare-runs/2", "schemas": [a.get("schema"), b.get("schema")], "verdicts": [va, vb],
            "candidates": [_d(a.get("candidate")), _d(b.get("candidate"))], "causes": [_cause(a), _cause(b)],
            "changes": changes, "rows": rows, "timings": timings, "environment": env, "regressions": regressions}


def _ratio(t: dict) -> str:
    return f"{t['ratio']:.2f}x" if t["ratio"] else "-"


def _row_line(r: dict) -> str:
    a, b = r["a"] or {}, r["b"] or {}
    mark = "  <- regression" if a.get("verdict") == "PASS" and b.get("verdict", "-") not in ("PASS", "-") else ""
    mark = mark or ("  <- missing in B" if r["a"] and not r["b"] else "") or ("  <- moved" if r["moved"] else "")
    return (f"{str(r['case'])[:34]:34s} {str(r['tensor'])[:22]:22s} {a.get('verdict', '-'):>9s} "
            f"{b.get('verdict', '-'):>9s} {_num(a.get('rel_l2')):>10s} {_num(b.get('rel_l2')):>10s} "
            f"{share_text(r['share_a']):>8s} {share_text(r['share_b']):>8s}{mark}")


def comparison_lines(c: dict, names=("A", "B"), kinds=("", "")) -> list:
    na, nb = names
    lines = [f"A: {na}{f' ({kinds[0]})' if kinds[0] else ''}", f"B: {nb}{f' ({kinds[1]})' if kinds[1] else ''}",
             f"overall verdict: {c['verdicts'][0]} | {c['verdicts'][1]}"
             + (f"   (schemas {c['schemas'][0]} | {c['schemas'][1]})" if c["schemas"][0] != c["schemas"][1] else ""),
             "what changed:" + ("" if c["changes"] else " nothing (same verdict, no metric or timing moved, "
                                                         "same environment)")]
    lines += [f"  {x}" for x in c["changes"]]
    if c["causes"][0] != c["causes"][1]:
        lines += [f"  A: {c['causes'][0]}", f"  B: {c['causes'][1]}"]
    shown = [r for r in c["rows"] if r["moved"] or (r["a"] is None) != (r["b"] is None)
             or (r["a"] or {}).get("verdict") != (r["b"] or {}).get("verdict")]
    if shown:
        head = (f"{'case':34s} {'tensor':22s} {'verdict A':>9s} {'verdict B':>9s} {'rel_l2 A':>10s} {'rel_l2 B':>10s} "
                f"{'budget A':>8s} {'budget B':>8s}")
        lines += [f"rows that changed: {min(len(shown), ROWS_SHOWN)} of {len(shown)} shown ({len(c['rows'])} "
                  "compared; every row in compare.html and --json)", head, "-" * len(head)]
        lines += [_row_line(r) for r in shown[:ROWS_SHOWN]]
    if c["timings"]:
        lines.append(f"{'timing (ms)':34s} {'median A':>9s} {'median B':>9s} {'p90 A':>9s} {'p90 B':>9s} "
                     f"{'median B/A':>10s}")
        for t in c["timings"]:
            a, b = t["a"] or {}, t["b"] or {}
            lines.append(f"  {str(t['name'])[:32]:32s} {_ms(a.get('median_ms')):>9s} {_ms(b.get('median_ms')):>9s} "
                         f"{_ms(a.get('p90_ms')):>9s} {_ms(b.get('p90_ms')):>9s} "
                         f"{_ratio(t):>10s}")
    lines.append("regressions:" + ("" if c["regressions"] else " none"))
    lines += [f"  {r}" for r in c["regressions"][:ROWS_SHOWN]]
    if len(c["regressions"]) > ROWS_SHOWN:
        lines.append(f"  ... {len(c['regressions']) - ROWS_SHOWN} more (of {len(c['regressions'])}) in compare.html")
    return lines


def render_compare_html(c: dict, names, kinds, cards=(None, None)) -> str:
    """compare.html: what changed first, then every row, the timings and the environment; no external resource."""
    e = esc
    verdicts = "".join(f'<span class="verdict {v if v in ("PASS", "FAIL") else "other"}">{e(v)}</span>'
                       for v in c["verdicts"])
    runs = "".join(f"<tr><th>{label}</th><td>{e(n)}</td><td>{e(k)}</td><td>{e(cause)}</td></tr>"
                   for label, n, k, cause in zip("AB", names, kinds, c["causes"]))
    cards_html = "".join(f"<p>{label} cards: {e('; '.join(x))}</p>" for label, x in zip("AB", cards) if x)
    rows = "".join(
        f"<tr{' class=bad' if r['moved'] or (r['a'] or {}).get('verdict') != (r['b'] or {}).get('verdict') else ''}>"
        f"<td>{e(r['case'])}</td><td>{e(r['tensor'])}</td><td>{e((r['a'] or {}).get('verdict'))}</td>"
        f"<td>{e((r['b'] or {}).get('verdict'))}</td><td class=num>{e(_num((r['a'] or {}).get('rel_l2')))}</td>"
        f"<td class=num>{e(_num((r['b'] or {}).get('rel_l2')))}</td><td class=num>{e(share_text(r['share_a']))}</td>"
        f"<td class=num>{e(share_text(r['share_b']))}</td></tr>" for r in c["rows"])
    timings = "".join(
        f"<tr><td>{e(t['name'])}</td><td class=num>{e(_ms((t['a'] or {}).get('median_ms')))}</td>"
        f"<td class=num>{e(_ms((t['b'] or {}).get('median_ms')))}</td>"
        f"<td class=num>{e(_ratio(t))}</td></tr>" for t in c["timings"])
    env = "".join(f"<tr{' class=bad' if x['differs'] else ''}><td>{e(x['key'])}</td><td>{e(x['a'])}</td>"
                  f"<td>{e(x['b'])}</td></tr>" for x in c["environment"])
    css = (".verdict{font-size:22px;padding:6px 14px;margin-right:10px}"
           "ul.changes{font-size:16px}details{margin:10px 0}summary{font-weight:600}")
    changes = "".join(f"<li>{e(x)}</li>" for x in c["changes"]) or "<li>nothing changed</li>"
    regressions = "".join(f"<li>{e(x)}</li>" for x in c["regressions"]) or "<li>none</li>"
    return document(
        f"VTP runs compared: {' vs '.join(c['verdicts'])}",
        f"<h1>Two runs compared</h1><p>{verdicts}</p><table>{runs}</table>{cards_html}"
        f"<h2>What changed</h2><ul class='changes' id='changes'>{changes}</ul>"
        f"<details id='regressions'{' open' if len(c['regressions']) <= 10 else ''}><summary>Regressions: "
        f"{len(c['regressions'])}</summary><ul>{regressions}</ul></details>"
        f"<details><summary>Every tensor result ({len(c['rows'])})</summary><table><tr><th>case</th><th>tensor</th>"
        "<th>verdict A</th><th>verdict B</th><th>rel_l2 A</th><th>rel_l2 B</th><th>budget A</th><th>budget B</th>"
        f"</tr>{rows}</table></details><details open><summary>Timing</summary><table><tr><th>task</th>"
        f"<th>median A ms</th><th>median B ms</th><th>B/A</th></tr>{timings}</table></details>"
        f"<details open><summary>Environment</summary><table><tr><th>key</th><th>A</th><th>B</th></tr>{env}"
        "</table></details>", css)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m verify.compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m verify.compare verify_out/cann8 verify_out/cann9\n"
               "exit status: 0 no regression, 1 regression in B, 2 missing or not a summary")
    p.add_argument("run_a", type=Path, help="baseline: a run folder (single or --nproc) or its accuracy_summary.json")
    p.add_argument("run_b", type=Path, help="new run: a run folder (single or --nproc) or its accuracy_summary.json")
    p.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    p.add_argument("--html", type=Path, help="where to write compare.html (default: B's folder)")
    p.add_argument("--no-html", action="store_true", help="do not write compare.html")
    args = p.parse_args(argv)
    try:
        a, b = load_run(Path(args.run_a)), load_run(Path(args.run_b))
    except (SummaryError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    c = compare_summaries(a["summary"], b["summary"], a["rows"], b["rows"])
    names, kinds = (str(args.run_a), str(args.run_b)), (a["kind"], b["kind"])
    print("\n".join(comparison_lines(c, names, kinds)))
    if args.json:
        from vtp.io_utils import atomic_write_json

        atomic_write_json(args.json, c)
    if not args.no_html:
        from vtp.io_utils import atomic_write_text

        target = args.html or ((args.run_b if args.run_b.is_dir() else args.run_b.parent) / "compare.html")
        try:
            atomic_write_text(target, render_compare_html(c, names, kinds, (a["cards"], b["cards"])))
            print(f"compare.html: {target}")
        except OSError as exc:
            print(f"warning: cannot write {target} ({exc}); pass --html PATH", file=sys.stderr)
    return EXIT_REGRESSION if c["regressions"] else EXIT_SAME


if __name__ == "__main__":
    sys.exit(main())
