"""The server summary: per-rank rows, one verdict and one exit code, and its console table.

Pure functions over the ranks' status records (OUT/rank<k>/status.json, written by
``verify.server.worker``), used by rank 0 after the gather and by the launcher when a rank did not get
that far. The summary keeps the top-level shape of a single-card ``accuracy_summary.json`` (schema
``vtp-accuracy-summary/N``, ``verdict``, ``overall.reasons``, ``candidate``, ``environment``, ``timings``:
those of the first rank that finished, the representative) so ``python -m verify.report`` reads it, and
adds ``ranks`` and ``server``::

    "ranks": [{"rank", "local_rank", "host", "device", "soc", "verdict", "failed_gates", "timings",
               "exit_code", "stage", "error", "pid"}],
    "server": {"schema": "vtp-server-summary/1", "run_id", "world_size", "backend", "hosts",
               "exit_code", "collectives": {verify.server.collectives}, "consistency": {verify.server.consistency},
               "slow_ranks": {verify.slow_ranks: each rank's latencies and spot checks against the others'},
               "consistency_policy", "timeout_s", "collective_timeout_s", "launcher": {...} | null,
               "selftests": {variable: value}}

The server's ``verdict`` is PASS or FAIL (as in every summary); ``server.exit_code`` (also
``overall.exit_code``) tells a failed card (1) from an environment error or an interrupted run (2).

Rank verdicts: PASS, FAIL (its certification failed), ERROR (environment or usage error, or it could
not init), CRASHED (died: the signal or exit code), TIMEOUT (no result within --timeout), STOPPED
(stopped by torchrun after another rank failed, before it had a result), INTERRUPTED, MISSING (no
status at all).
"""

from __future__ import annotations

import datetime
import os
import signal
from pathlib import Path

from verify.server.common import EXIT_ENV, EXIT_FAIL, EXIT_PASS

SERVER_SCHEMA = "vtp-server-summary/1"
DEFAULT_SCHEMA = "vtp-accuracy-summary/1"
SELFTEST_VARS = ("VTP_INJECT_FAULT_RANK", "VTP_SELFTEST_CRASH_RANK", "VTP_SELFTEST_HANG_RANK",
                 "VTP_SELFTEST_INIT_FAIL_RANK", "VTP_SELFTEST_COLLECTIVE_RANK")
VERDICT_EXIT = {"PASS": EXIT_PASS, "FAIL": EXIT_FAIL, "CRASHED": EXIT_FAIL, "TIMEOUT": EXIT_FAIL,
                "ERROR": EXIT_ENV, "MISSING": EXIT_ENV, "INTERRUPTED": EXIT_ENV, "STOPPED": None}
MAX_GATES = 12


# ----------------------------------------------------------------------------------------- one rank
def failed_gates(summary: dict) -> list:
    """The failing gates of one rank's accuracy summary (vtp-accuracy-summary/2), "case@call: gate" each;
    the overall reasons when no case names one."""
    gates = [f"{case.get('id', 'case')}: {gate}" for case in summary.get("cases") or []
             if isinstance(case, dict) and case.get("verdict") != "PASS"
             for gate in case.get("failed_gates") or [case.get("verdict")]]
    if not gates:
        gates = list((summary.get("overall") or {}).get("reasons") or [])
    return gates[:MAX_GATES] + ([f"... {len(gates) - MAX_GATES} more"] if len(gates) > MAX_GATES else [])


def _soc(environment: dict) -> str | None:
    name = environment.get("device_name")
    soc, family = environment.get("soc_version"), environment.get("soc_family")
    extra = ", ".join(str(x) for x in (family, f"SoC {soc}" if soc is not None else None) if x)
    return f"{name} ({extra})" if name and extra else name or extra or None


def rank_result(summary: dict | None, exit_code: int) -> dict:
    """What a rank's certification gave: verdict, failed gates, timings, SoC (from its summary)."""
    verdict = {0: "PASS", 1: "FAIL"}.get(exit_code, "ERROR")
    if summary is None:
        return {"verdict": verdict, "failed_gates": [] if verdict == "PASS" else
                ["no accuracy_summary.json: the certification stopped before writing it (see rank<k>/log.txt)"],
                "timings": {}, "soc": None, "schema": None}
    if verdict == "PASS" and summary.get("verdict") != "PASS":
        verdict = "FAIL"
    timings = summary.get("timings") or {}
    harness = timings.get("harness") or {}
    tasks = timings.get("tasks") or {}
    repeats = [c.get("deterministic") for c in summary.get("checks") or []
               if isinstance(c, dict) and c.get("check") == "repeat"]
    return {"verdict": verdict, "failed_gates": failed_gates(summary) if verdict != "PASS" else [],
            "deterministic": all(repeats) if repeats and None not in repeats else None,
            "timings": {"total_s": harness.get("total_s"), "model_compute_s": harness.get("model_compute_s"),
                        "median_ms": {k: v.get("median_ms") for k, v in tasks.items() if isinstance(v, dict)}},
            "soc": _soc(summary.get("environment") or {}), "schema": summary.get("schema")}


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def rank_row(rank: int, status: dict | None, context: dict) -> dict:
    """One row of ``ranks``: the rank's result when it has one, else what happened to it."""
    failure = (context.get("failures") or {}).get(rank)
    row = {"rank": rank, "local_rank": None, "host": None, "device": None, "soc": None, "verdict": "MISSING",
           "failed_gates": [], "timings": {}, "exit_code": None, "stage": None, "error": None, "pid": None,
           "reference": None, "suspect": []}
    if status is None:
        row["error"] = "no status from this rank: it never started (see torchrun's output in torchrun.log)"
        if failure:
            row.update(verdict="CRASHED", error=f"died before reporting: {failure['text']}")
        return row
    for key in ("local_rank", "host", "device", "stage", "pid", "reference"):
        row[key] = status.get(key)
    row["timings"] = {"stages_s": status.get("stage_seconds") or {}}
    result = status.get("result")
    if result:
        row.update(verdict=result["verdict"], failed_gates=result["failed_gates"], soc=result.get("soc"),
                   exit_code=status.get("exit_code"))
        row["timings"].update(result.get("timings") or {})
        if status.get("error"):
            row["error"] = status["error"]
        return row
    stage, state = status.get("stage"), status.get("state")
    code = failure.get("exitcode") if failure else None
    stopped_by_signal = code in (-signal.SIGTERM, 128 + signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGINT)
    if state == "error":
        row.update(verdict="ERROR", exit_code=status.get("exit_code", EXIT_ENV), error=status.get("error"))
    elif failure and failure.get("root_cause", True) and not stopped_by_signal:
        row.update(verdict="CRASHED", error=f"died in stage {stage}: {failure['text']}")
    elif context.get("timed_out") and state != "done":
        row.update(verdict="TIMEOUT", error=f"no result within --timeout {context.get('timeout_s'):g} s "
                                            f"(stage {stage}: hung or too slow)")
    elif context.get("interrupted"):
        row.update(verdict="INTERRUPTED", error=f"interrupted (Ctrl-C) in stage {stage}")
    elif state == "terminated" or failure:
        how = status.get("error") or (failure["text"] if failure else "SIGTERM")
        row.update(verdict="STOPPED", error=f"stopped in stage {stage} after another rank failed ({how})")
    else:
        row.update(verdict="CRASHED", error=f"died in stage {stage}: the process is gone without a word (killed?)")
    return row


# ----------------------------------------------------------------------------------------- the server
def _suspect(rows: list, rank: int, why: str, fail: bool) -> None:
    """Name ``rank`` as suspect in its row; a passing row then fails when ``fail``."""
    if 0 <= rank < len(rows):
        row = rows[rank]
        row.setdefault("suspect", []).append(why)
        if row["verdict"] == "PASS" and fail:
            row["verdict"] = "FAIL"
        row["failed_gates"] = row["failed_gates"] + [why]


def _representative(out: Path, rows: list) -> dict:
    from verify.server.common import read_json

    for row in rows:
        data = read_json(out / f"rank{row['rank']}" / "accuracy_summary.json")
        if data is not None:
            return data
    return {}


def build_summary(statuses: dict, world_size: int, out: Path, context: dict) -> dict:
    """The server's accuracy_summary.json from every rank's status (None: no status)."""
    from verify.server.consistency import OUTPUTS_NAME, compare
    from verify.slow_ranks import from_rank_folders as slow_ranks_of

    out = Path(out)
    rows = [rank_row(rank, statuses.get(rank), context) for rank in range(world_size)]
    collectives = next((s["collectives"] for s in statuses.values() if s and s.get("collectives")),
                       {"verdict": "NOT RUN", "reasons": [], "bandwidth": [],
                        "note": "no rank got past init"})
    with_outputs = {r["rank"]: (statuses.get(r["rank"]) or {}).get("digests") for r in rows
                    if r["verdict"] in ("PASS", "FAIL")}
    if context.get("collectives_only"):
        consistency = {"verdict": "SKIPPED", "note": "--collectives-only"}
    else:
        consistency = compare(with_outputs, devices={r["rank"]: r["device"] for r in rows},
                              verdicts={r["rank"]: r["verdict"] for r in rows},
                              files={r: out / f"rank{r}" / OUTPUTS_NAME for r in with_outputs})
    policy = context.get("consistency_policy", "fail")
    compared = consistency.get("ranks_compared") or []
    unsteady = [r for r in compared if ((statuses.get(r) or {}).get("result") or {}).get("deterministic") is False]
    if consistency.get("verdict") == "FAIL" and len(unsteady) * 2 > len(compared):
        policy = "warn"  # the kernels differ from call to call on most cards: cards cannot agree bit for bit
        consistency["note"] = (f"rank(s) {', '.join(map(str, unsteady))} are not deterministic on their own "
                               "(repeat check): differences between cards are reported, not failed")
    for rank in collectives.get("suspect_ranks") or []:
        _suspect(rows, rank, "collective check: its contribution was wrong", fail=True)
    for entry in consistency.get("suspects") or []:
        _suspect(rows, entry["rank"], f"cross-card: {entry['differing_tensors']} output tensor(s) differ from "
                                      f"rank {entry['compared_with_rank']}", fail=policy == "fail")
    slow = slow_ranks_of(out, [r["rank"] for r in rows if r["verdict"] in ("PASS", "FAIL")])  # right but slow
    for rank, line in zip(slow["suspects"], slow["reasons"]):
        _suspect(rows, rank, line, fail=slow["verdict"] == "FAIL")
    reasons, codes = [], []
    for row in rows:
        code = VERDICT_EXIT.get(row["verdict"])
        if row["verdict"] != "PASS":
            detail = "; ".join(row["failed_gates"][:3]) or row["error"] or ""
            reasons.append(f"rank {row['rank']} ({row['device'] or 'device ?'}) {row['verdict']}: {detail}")
            codes.append(EXIT_FAIL if code is None else code)
    if collectives.get("verdict") in ("FAIL", "ERROR"):
        reasons += [f"collective check: {r}" for r in collectives.get("reasons", [])] or ["collective check failed"]
        codes.append(EXIT_FAIL)
    if consistency.get("verdict") == "FAIL":
        reasons += [f"cross-card consistency: {r}" for r in consistency["reasons"]]
        if policy == "fail":
            codes.append(EXIT_FAIL)
    if context.get("interrupted"):
        reasons.append("interrupted (Ctrl-C): every rank was stopped")
        codes.append(EXIT_ENV)
    exit_code = max(codes, default=EXIT_PASS)
    verdict = "PASS" if exit_code == EXIT_PASS else "FAIL"  # exit 2 (environment) is a FAIL with its own code

    rep = _representative(out, rows)
    devices = [r["device"] for r in rows if r["device"]]
    candidate = dict(rep.get("candidate") or {})
    candidate["device"] = f"{', '.join(devices) or '?'} ({world_size} rank{'s' if world_size != 1 else ''})"
    summary = {
        "schema": rep.get("schema") or DEFAULT_SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": context.get("command"),
        "environment": rep.get("environment") or {},
        "candidate": candidate,
        "weights": rep.get("weights") or {"kind": "none", "note": "no rank finished a certification (see ranks)"},
        "synthetic_weights": rep.get("synthetic_weights"),
        "timings": rep.get("timings") or {},
        "representative_rank": next((r["rank"] for r in rows if r["verdict"] in ("PASS", "FAIL")), None),
        "verdict": verdict,
        "overall": {"verdict": verdict, "reasons": reasons, "exit_code": exit_code,
                    "ranks": world_size, "passed": sum(r["verdict"] == "PASS" for r in rows)},
        "ranks": rows,
        "server": {
            "schema": SERVER_SCHEMA, "run_id": context.get("run_id"), "world_size": world_size,
            "backend": next((s.get("backend") for s in statuses.values() if s and s.get("backend")), None),
            "hosts": sorted({r["host"] for r in rows if r["host"]}), "exit_code": exit_code,
            "collectives": collectives, "consistency": consistency, "slow_ranks": slow,
            "consistency_policy": policy,
            "timeout_s": context.get("timeout_s"), "collective_timeout_s": context.get("collective_timeout_s"),
            "launcher": context.get("launcher"),
            "selftests": {name: os.environ[name] for name in SELFTEST_VARS if os.environ.get(name)},
            "per_rank_outputs": "rank<k>/ (accuracy_summary.json, log.txt, status.json, candidate_outputs.safetensors)",
        },
    }
    return summary
