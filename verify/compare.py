"""Two verification runs side by side: verdicts, per-tensor metrics, timings, environment differences.

    python -m verify.compare verify_out/cann8 verify_out/cann9
    python -m verify.compare old/accuracy_summary.json new/accuracy_summary.json --json diff.json

For regressions across CANN, driver or torch_npu versions: run A is the baseline, run B the new one.
Reads accuracy summaries of schema ``vtp-accuracy-summary/1`` (one row per task and tensor) and ``/2``
(one row per case, call and tensor, with gates); a field that is missing prints as ``-``. Rows are
matched by (case, tensor): for /1 the case is the task name.

Exit status: 0 no regression; 1 a regression (B fails a row, or the overall verdict, that A passes, or
a row of A is missing in B); 2 a file is missing or is not an accuracy summary.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verify.report.fmt import _ms, _num
from verify.report.summary import ENV_KEYS, _d, environment_of, read_summary, tensor_rows, timing_rows, verdict_of

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

EXIT_SAME, EXIT_REGRESSION, EXIT_ENV = 0, 1, 2
def compare_summaries(a: dict, b: dict) -> dict:
    """The comparison as data: {"verdicts", "rows", "timings", "environment", "regressions"}."""
    rows_a = {(r["case"], r["tensor"]): r for r in tensor_rows(a)}
    rows_b = {(r["case"], r["tensor"]): r for r in tensor_rows(b)}
    rows, regressions = [], []
    same_schema = a.get("schema") == b.get("schema")  # across /1 and /2 the case keys cannot all match
    for key in list(rows_a) + [k for k in rows_b if k not in rows_a]:
        ra, rb = rows_a.get(key), rows_b.get(key)
        rows.append({"case": key[0], "tensor": key[1], "a": ra, "b": rb})
        if ra and ra["verdict"] == "PASS" and ((rb is None and same_schema) or (rb and rb["verdict"] != "PASS")):
            regressions.append(f"{key[0]} {key[1]}: {'missing in B' if rb is None else 'PASS -> ' + str(rb['verdict'])}"
                               + (f" ({rb['reasons'][0]})" if rb and rb["reasons"] else ""))
    va, vb = verdict_of(a, "-"), verdict_of(b, "-")
    if va == "PASS" and vb != "PASS":
        regressions.insert(0, f"overall verdict PASS -> {vb}")
    if not same_schema:
        regressions = [r for r in regressions if "missing in B" not in r]
    ta, tb = timing_rows(a), timing_rows(b)
    timings = [{"name": n, "a": ta.get(n), "b": tb.get(n)} for n in list(ta) + [n for n in tb if n not in ta]]
    ea, eb = environment_of(a), environment_of(b)
    env = [{"key": k, "a": ea.get(k), "b": eb.get(k), "differs": ea.get(k) != eb.get(k)} for k in ENV_KEYS]
    return {"schema": "vtp-compare-runs/1", "schemas": [a.get("schema"), b.get("schema")], "verdicts": [va, vb],
            "candidates": [_d(a.get("candidate")), _d(b.get("candidate"))], "rows": rows, "timings": timings,
            "environment": env, "regressions": regressions}


def comparison_lines(c: dict, names=("A", "B")) -> list:
    na, nb = names
    lines = [f"A: {na}", f"B: {nb}",
             f"schemas: {c['schemas'][0]} | {c['schemas'][1]}", f"overall verdict: {c['verdicts'][0]} | {c['verdicts'][1]}"]
    for label, key in (("device", "device"), ("precision", "precision"), ("fusion", "fusion")):
        va, vb = (str(x.get(key, "-")) for x in c["candidates"])
        lines.append(f"candidate {label}: {va} | {vb}" + ("" if va == vb else "   <- differs"))
    diffs = [e for e in c["environment"] if e["differs"]]
    lines.append("environment differences:" + ("" if diffs else " none"))
    lines += [f"  {e['key']:14s} {str(e['a'] if e['a'] is not None else '-'):32s} -> "
              f"{e['b'] if e['b'] is not None else '-'}" for e in diffs]
    head = (f"{'case':34s} {'tensor':22s} {'verdict A':>9s} {'verdict B':>9s} {'rel_l2 A':>10s} {'rel_l2 B':>10s} "
            f"{'cosine A':>11s} {'cosine B':>11s} {'rel_err A':>10s} {'rel_err B':>10s}")
    lines += [head, "-" * len(head)]
    for r in c["rows"]:
        a, b = r["a"] or {}, r["b"] or {}
        mark = "  <- regression" if a.get("verdict") == "PASS" and b.get("verdict", "-") not in ("PASS", "-") else ""
        mark = mark or ("  <- missing in B" if r["a"] and not r["b"] else "")
        lines.append(f"{str(r['case'])[:34]:34s} {str(r['tensor'])[:22]:22s} {a.get('verdict', '-'):>9s} "
                     f"{b.get('verdict', '-'):>9s} {_num(a.get('rel_l2')):>10s} {_num(b.get('rel_l2')):>10s} "
                     f"{_num(a.get('cosine')):>11s} {_num(b.get('cosine')):>11s} {_num(a.get('rel_err')):>10s} "
                     f"{_num(b.get('rel_err')):>10s}{mark}")
    if c["timings"]:
        lines.append(f"{'timing (ms)':34s} {'first A':>9s} {'first B':>9s} {'median A':>9s} {'median B':>9s} "
                     f"{'p90 A':>9s} {'p90 B':>9s} {'median B/A':>10s}")
        for t in c["timings"]:
            a, b = t["a"] or {}, t["b"] or {}
            ma, mb = a.get("median_ms"), b.get("median_ms")
            ratio = f"{mb / ma:.2f}x" if isinstance(ma, (int, float)) and isinstance(mb, (int, float)) and ma else "-"
            lines.append(f"  {str(t['name'])[:32]:32s} {_ms(a.get('first_call_ms')):>9s} {_ms(b.get('first_call_ms')):>9s} "
                         f"{_ms(ma):>9s} {_ms(mb):>9s} {_ms(a.get('p90_ms')):>9s} {_ms(b.get('p90_ms')):>9s} "
                         f"{ratio:>10s}")
    lines.append("regressions:" + ("" if c["regressions"] else " none"))
    lines += [f"  {r}" for r in c["regressions"]]
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m verify.compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m verify.compare verify_out/cann8 verify_out/cann9\n"
               "exit status: 0 no regression, 1 regression in B, 2 missing or not a summary")
    p.add_argument("run_a", type=Path, help="baseline: a run folder or its accuracy_summary.json")
    p.add_argument("run_b", type=Path, help="new run: a run folder or its accuracy_summary.json")
    p.add_argument("--json", type=Path, help="also write the comparison as JSON here")
    args = p.parse_args(argv)
    try:
        a, b = read_summary(Path(args.run_a)), read_summary(Path(args.run_b))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    c = compare_summaries(a, b)
    print("\n".join(comparison_lines(c, (str(args.run_a), str(args.run_b)))))
    if args.json:
        from vtp.io_utils import atomic_write_json

        atomic_write_json(args.json, c)
    return EXIT_REGRESSION if c["regressions"] else EXIT_SAME


if __name__ == "__main__":
    sys.exit(main())
