"""Print the verdict table of a verification run from its accuracy_summary.json.

    python -m verify.report verify_out/20250101-120000
    python -m verify.report verify_out/ci/accuracy_summary.json

Reads the summary written by ``verify/accuracy_eval.py`` (schema ``vtp-accuracy-summary/N``, N = 1 or 2):
the candidate and the weights, one row per compared tensor (task, tensor, relative error, cosine, relative
L2, verdict), the reasons of every failure, the timings, and the overall verdict. A summary must have
``schema``, ``verdict`` ("PASS" or "FAIL"), ``candidate`` (an object) and ``weights`` (an object with
``kind``); one that lacks any of them is refused (exit 2) rather than printed with made-up values. Keys
this report does not know (those of later schema versions) are ignored. Only the ``verify.verdict``
output shapes (``judge_task`` / ``overall_verdict``) and the ``verify.metrics`` record (``vtp-compare/1``)
are relied on; an optional field that is missing prints as ``-``.

Exit status: 0 the summary says PASS; 1 it says FAIL; 2 it is missing, unreadable, of another schema or
lacks a required field.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from verify.report.fmt import _ms, _num, weights_line
from verify.report.summary import SUMMARY_NAME, SummaryError, _metrics, load_summary, verdict_of

EXIT_PASS, EXIT_FAIL, EXIT_ENV = 0, 1, 2

def report_lines(summary: dict, source: str = "") -> list:
    """The verdict table; keys it does not know are ignored, missing optional ones print as '-'.
    Schema 2 (cases and checks) is printed grouped by case by verify.report.table."""
    if isinstance(summary.get("server"), dict):
        from verify.report.server_table import server_report_lines

        return [f"VTP whole-server report{f' ({source})' if source else ''}, created {summary.get('created', '-')}"] \
            + server_report_lines(summary)
    if isinstance(summary.get("cases"), list):
        from verify.report.table import summary_lines

        return summary_lines(summary, source)
    candidate = summary.get("candidate") if isinstance(summary.get("candidate"), dict) else {}
    weights = summary.get("weights") if isinstance(summary.get("weights"), dict) else {}
    lines = [f"VTP verification report{f' ({source})' if source else ''}, created {summary.get('created', '-')}"]
    lines.append(f"candidate: {candidate.get('device', '-')} {candidate.get('precision', '-')} "
                 f"fusion={candidate.get('fusion', '-')}; reference: cpu fp32 unfused")
    lines.append(weights_line(weights))
    if candidate.get("injected_fault"):
        lines.append(f"injected fault (harness self-test): {candidate['injected_fault']}")
    if candidate.get("note"):
        lines.append(f"NOTE: {candidate['note']}")

    # fusions / device: the attribution of the relative L2 error (CPU fused vs reference; candidate vs CPU fused)
    head = (f"{'task':15s} {'tensor':22s} {'rel_err':>10s} {'cosine':>10s} {'rel_l2':>10s} {'max_abs':>10s} "
            f"{'fusions':>10s} {'device':>10s}  verdict")
    lines += [head, "-" * len(head)]
    tasks = summary.get("tasks") if isinstance(summary.get("tasks"), dict) else {}
    for task, verdict in tasks.items():
        tensors = verdict.get("tensors") if isinstance(verdict, dict) else None
        for judged in tensors if isinstance(tensors, list) else []:
            if not isinstance(judged, dict):
                continue
            m = _metrics(judged)
            record = judged.get("metrics") if isinstance(judged.get("metrics"), dict) else {}
            att = record.get("attribution") if isinstance(record.get("attribution"), dict) else {}
            worst = m.get("max_abs_error") if isinstance(m.get("max_abs_error"), dict) else {}
            lines.append(f"{task:15s} {str(judged.get('name', '?')):22s} {_num(m.get('relative_error_mean')):>10s} "
                         f"{_num(m.get('cosine_similarity')):>10s} {_num(m.get('relative_l2_error')):>10s} "
                         f"{_num(worst.get('value')):>10s} {_num(att.get('fusions_rel_l2')):>10s} "
                         f"{_num(att.get('device_and_precision_rel_l2')):>10s}  {judged.get('verdict', '?')}")
    if not tasks:
        lines.append("(no task was compared)")

    timings = summary.get("timings") if isinstance(summary.get("timings"), dict) else {}
    timing = timings.get("tasks") if isinstance(timings.get("tasks"), dict) else {}
    if timing:
        lines.append(f"timing (batch {timings.get('batch', '?')}, {timings.get('size', '?')} px):")
        for name, t in timing.items():
            if not isinstance(t, dict):
                continue
            lines.append(f"  {name:22s} first {_ms(t.get('first_call_ms')):>9s} ms  "
                         f"median {_ms(t.get('median_ms')):>9s} ms  p90 {_ms(t.get('p90_ms')):>9s} ms  "
                         f"min {_ms(t.get('min_ms')):>9s} ms  (n={t.get('n', '?')})")
    if isinstance(timings.get("load_in_process_s"), (int, float)):
        lines.append(f"  load in process        {timings['load_in_process_s'] * 1e3:9.1f} ms")
    cold = timings.get("load_cold_process")
    if isinstance(cold, dict):
        lines.append(f"  load in a cold process {cold.get('load_s', 0) * 1e3:9.1f} ms after import torch "
                     f"({cold.get('import_torch_s', 0) * 1e3:.0f} ms)")
    harness = timings.get("harness")
    if isinstance(harness, dict) and isinstance(harness.get("overhead_fraction_of_compute"), (int, float)):
        lines.append(f"  harness: {harness['total_s']:.1f} s in all, {harness['model_compute_s']:.1f} s model "
                     f"compute, {harness['overhead_s']:.2f} s overhead "
                     f"({100 * harness['overhead_fraction_of_compute']:.1f} % of compute)")

    overall = summary.get("overall") if isinstance(summary.get("overall"), dict) else {}
    for reason in overall.get("reasons") or []:
        lines.append(f"  reason: {reason}")
    lines.append(f"VERDICT: {verdict_of(summary)}")
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verify.report", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  python -m verify.report verify_out/ci\n"
                "  python -m verify.report verify_out/ci/accuracy_summary.json\n"
                "exit status: 0 PASS, 1 FAIL, 2 no readable summary"))
    parser.add_argument("summary", type=Path, help=f"a run folder (holding {SUMMARY_NAME}) or the file itself")
    form = parser.add_mutually_exclusive_group()
    form.add_argument("--brief", action="store_true",
                      help="the header, the checks and the timings; the per-case table and the failure lines are "
                           "counted, not printed")
    form.add_argument("--glance", action="store_true",
                      help="only the closing summary: the cause and place, the case matrix, where the report is")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = load_summary(args.summary)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    folder = args.summary if args.summary.is_dir() else args.summary.parent
    if args.glance:
        from verify.report.glance import glance_lines

        print("\n".join(glance_lines(summary, folder, verdict=False)))
    elif args.brief and isinstance(summary.get("cases"), list) and not isinstance(summary.get("server"), dict):
        from verify.report.table import brief_lines

        print("\n".join(brief_lines(summary, str(args.summary))))
    else:
        print("\n".join(report_lines(summary, str(args.summary))))
    server = summary.get("server")
    if isinstance(server, dict) and server.get("exit_code") in (EXIT_PASS, EXIT_FAIL, EXIT_ENV):
        return server["exit_code"]  # a whole-server run: an environment error on any rank is 2
    verdict = verdict_of(summary)
    return EXIT_PASS if verdict == "PASS" else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
