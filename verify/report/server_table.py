"""The whole-server run as text: the per-rank table, the collective check (nccl-tests style) and the
cross-card consistency (printed by the launcher, rank 0 and ``python -m verify.report``)."""

from __future__ import annotations

EXIT_ENV = 2  # verify.server.common.EXIT_ENV: the report reads summaries, it does not import the runner


def server_report_lines(summary: dict) -> list:
    """The per-rank table, the collective check, the consistency and the verdict, as text lines.

    ``verify.report`` prints these for a summary that has a ``server`` section.
    """
    server = summary.get("server") or {}
    rows = summary.get("ranks") or []
    lines = [f"server certification: {server.get('world_size')} rank(s), backend {server.get('backend') or 'none'}, "
             f"host(s) {', '.join(server.get('hosts') or []) or '?'}",
             f"{'rank':>4}  {'device':<8} {'soc':<28} {'verdict':<11} {'exit':>4} {'total_s':>8}  failed gates / error"]
    for r in rows:
        total = (r.get("timings") or {}).get("total_s")
        detail = "; ".join(r.get("failed_gates") or [])[:160] or (r.get("error") or "-")[:160]
        lines.append(f"{r['rank']:>4}  {str(r.get('device') or '-'):<8} {str(r.get('soc') or '-')[:28]:<28} "
                     f"{r['verdict']:<11} {'-' if r.get('exit_code') is None else r['exit_code']:>4} "
                     f"{'-' if total is None else f'{total:.1f}':>8}  {detail}")
    lines += format_table(server.get("collectives") or {})
    lines += format_lines(server.get("consistency") or {"verdict": "SKIPPED", "note": "absent"})
    overall = summary.get("overall") or {}
    for reason in overall.get("reasons") or []:
        lines.append(f"  - {reason}")
    code = server.get("exit_code")
    lines.append(f"SERVER VERDICT: {summary.get('verdict')} (exit {code}"
                 f"{': environment error or interrupted' if code == EXIT_ENV else ''}): "
                 f"{overall.get('passed')} of {server.get('world_size')} rank(s) passed")
    return lines


def format_table(result: dict) -> list:
    """The check as text lines, nccl-tests style."""
    if result.get("verdict") in (None, "NOT RUN", "SKIPPED"):
        return [f"collective check: {result.get('verdict') or 'NOT RUN'} ({result.get('note') or 'no result'})"]
    head = (f"collective check: {result.get('world_size')} ranks, backend {result.get('backend')}: "
            f"values {'exact' if result.get('values_ok') else 'WRONG'} ({result.get('verdict')})")
    lines = [head]
    if result.get("bandwidth"):
        lines.append(f"#  {'op':<10} {'size(B)':>11} {'count':>10} {'type':>7} {'time(us)':>10} "
                     f"{'algbw(GB/s)':>11} {'busbw(GB/s)':>11} {'#wrong':>6}")
        for row in result["bandwidth"]:
            lines.append(f"   {row['op']:<10} {row['size_bytes']:>11} {row['count']:>10} {row['type']:>7} "
                         f"{row['time_us']:>10.1f} {_gbps(row['algbw_gbps']):>11} {_gbps(row['busbw_gbps']):>11} "
                         f"{row['wrong']:>6}")
    lines += [f"  {reason}" for reason in result.get("reasons", [])]
    return lines




def _gbps(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _ranks(ranks) -> str:
    return ", ".join(str(r) for r in ranks)


def format_lines(result: dict) -> list:
    """The consistency result as text lines for the console report."""
    verdict = result.get("verdict")
    if verdict == "SKIPPED":
        return [f"cross-card consistency: SKIPPED ({result.get('note')})"]
    head = (f"cross-card consistency: {verdict}: {len(result.get('ranks_compared', []))} ranks, "
            f"{result.get('tensors')} tensors, " + ("bit-identical" if result.get("identical") else
                                                      f"{len(result.get('groups', []))} distinct output sets"))
    lines = [head]
    if result.get("ranks_missing"):
        lines.append(f"  no outputs from rank(s) {_ranks(result['ranks_missing'])}")
    lines += [f"  {reason}" for reason in result.get("reasons", [])]
    return lines
