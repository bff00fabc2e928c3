"""Reading an accuracy summary (``accuracy_summary.json``, schema ``vtp-accuracy-summary/N``): the schema
check, the fields every version has, and the rows (tensors, timings, environment) the console table, the
HTML page and ``verify.compare`` are drawn from. Unknown keys are ignored; a missing optional one is absent.
"""

from __future__ import annotations

import json
from pathlib import Path

SUMMARY_NAME = "accuracy_summary.json"
SCHEMA_PREFIX = "vtp-accuracy-summary/"
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


ENV_KEYS = ("torch", "torch_npu", "cann", "driver", "device", "device_name", "soc_version", "soc_family", "python",
            "platform", "cpu_model", "torch_threads")
METRICS = (("relative_error_mean", "rel_err"), ("cosine_similarity", "cosine"), ("relative_l2_error", "rel_l2"))


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def _inner_metrics(judged: dict) -> dict:
    """The metric values of a judged tensor: the vtp-compare/1 record's "metrics", or a flat dict."""
    m = _d(judged.get("metrics"))
    return _d(m.get("metrics")) if "metrics" in m else m


def tensor_rows(summary: dict) -> list:
    """[{"case", "task", "tensor", "verdict", "rel_err", "cosine", "rel_l2", "max_abs", "gates"}] of a summary
    of schema /1 or /2 (gates: the /2 gate dicts, [] for /1)."""
    rows = []
    for case in summary.get("cases") or []:  # schema /2
        case = _d(case)
        for t in case.get("tensors") or []:
            rows.append(_row(case.get("id", "-"), case.get("task", "-"), _d(t)))
    if not rows:
        for task, verdict in _d(summary.get("tasks")).items():  # schema /1
            for t in _d(verdict).get("tensors") or []:
                rows.append(_row(task, task, _d(t)))
    return rows


def _row(case, task, judged: dict) -> dict:
    m = _inner_metrics(judged)
    worst = m.get("max_abs_error")
    row = {"case": case, "task": task, "tensor": judged.get("name", "-"), "verdict": judged.get("verdict", "-"),
           "max_abs": _d(worst).get("value") if isinstance(worst, dict) else worst,
           "gates": [g for g in judged.get("gates") or [] if isinstance(g, dict)],
           "reasons": judged.get("reasons") or []}
    for key, short in METRICS:
        row[short] = m.get(key)
    return row


def timing_rows(summary: dict) -> dict:
    """{name: {"first_call_ms", "median_ms", "p90_ms", "min_ms"}} from summary["timings"]["tasks"]."""
    return {k: _d(v) for k, v in _d(_d(summary.get("timings")).get("tasks")).items()}


def environment_of(summary: dict) -> dict:
    env = _d(summary.get("environment"))
    return {k: env.get(k) for k in ENV_KEYS}


def _metrics(judged: dict) -> dict:
    """The vtp-compare/1 metrics of one judged tensor (accuracy_eval stores the record under "metrics")."""
    record = judged.get("metrics") if isinstance(judged.get("metrics"), dict) else {}
    inner = record.get("metrics") if isinstance(record.get("metrics"), dict) else {}
    return inner


def verdict_of(summary: dict, missing: str = "UNKNOWN") -> str:
    """The run's verdict ("PASS", "FAIL"), or ``missing`` when the summary holds none."""
    return str(_d(summary.get("overall")).get("verdict") or summary.get("verdict") or missing)
