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
import json
import math
import sys
from pathlib import Path

SUMMARY_NAME = "accuracy_summary.json"
SCHEMA_PREFIX = "vtp-accuracy-summary/"
EXIT_PASS, EXIT_FAIL, EXIT_ENV = 0, 1, 2
VERDICTS = ("PASS", "FAIL")


class SummaryError(ValueError):
    """The summary file is missing, not JSON, or not an accuracy summary."""


def read_summary(path: Path) -> dict:
    """The summary at ``path`` (a file, or a run folder holding accuracy_summary.json), checked for its schema
    only (vtp-accuracy-summary/N). SummaryError naming the file."""
    file = path / SUMMARY_NAME if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SummaryError(f"{file}: no accuracy summary here (did verify/accuracy_eval.py run?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SummaryError(f"{file}: not a readable JSON file ({exc})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise SummaryError(f"{file}: schema {schema!r}, expected {SCHEMA_PREFIX}N: not an accuracy summary")
    return data


def load_summary(path: Path) -> dict:
    """`read_summary`, and the fields the report needs must be there (SummaryError otherwise)."""
    data = read_summary(path)
    file = path / SUMMARY_NAME if path.is_dir() else path
    problems = missing_fields(data)
    if problems:
        raise SummaryError(f"{file}: not a complete accuracy summary ({data['schema']}): {'; '.join(problems)}. "
                           "It was written by an interrupted or older run, or by hand; run verify/accuracy_eval.py "
                           "(or bash run_verify.sh) again to get a complete one")
    return data


def missing_fields(summary: dict) -> list:
    """What a summary lacks of the fields every schema version has, one phrase each ([] when complete)."""
    missing, wrong = [], []
    verdict = summary.get("verdict")
    if verdict is None:
        missing.append("verdict")
    elif verdict not in VERDICTS:
        wrong.append(f"'verdict' is {verdict!r}, expected one of {', '.join(VERDICTS)}")
    for name in ("candidate", "weights"):
        if summary.get(name) is None:
            missing.append(name)
        elif not isinstance(summary[name], dict):
            wrong.append(f"{name!r} is not an object")
    weights = summary.get("weights")
    if isinstance(weights, dict) and not weights.get("kind"):
        missing.append("weights.kind")
    head = [f"missing field{'s' if len(missing) > 1 else ''} {', '.join(missing)}"] if missing else []
    return head + wrong


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


def _metrics(judged: dict) -> dict:
    """The vtp-compare/1 metrics of one judged tensor (accuracy_eval stores the record under "metrics")."""
    record = judged.get("metrics") if isinstance(judged.get("metrics"), dict) else {}
    inner = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    return inner


def verdict_of(summary: dict) -> str:
    overall = summary.get("overall") if isinstance(summary.get("overall"), dict) else {}
    return str(overall.get("verdict") or summary.get("verdict") or "UNKNOWN")


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


def report_lines(summary: dict, source: str = "") -> list:
    """The verdict table; keys it does not know are ignored, missing optional ones print as '-'.
    Schema 2 (cases and checks) is printed grouped by case by verify.table."""
    if isinstance(summary.get("server"), dict):
        from verify.server_summary import server_report_lines

        return [f"VTP whole-server report{f' ({source})' if source else ''}, created {summary.get('created', '-')}"] \
            + server_report_lines(summary)
    if isinstance(summary.get("cases"), list):
        from verify.table import summary_lines

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
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = load_summary(args.summary)
    except SummaryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    print("\n".join(report_lines(summary, str(args.summary))))
    server = summary.get("server")
    if isinstance(server, dict) and server.get("exit_code") in (EXIT_PASS, EXIT_FAIL, EXIT_ENV):
        return server["exit_code"]  # a whole-server run: an environment error on any rank is 2
    verdict = verdict_of(summary)
    return EXIT_PASS if verdict == "PASS" else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
