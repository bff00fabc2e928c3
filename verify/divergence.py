"""The divergence file (``divergence.json``, schema ``vtp-divergence/2``): what the localisation found.

verify.locate produces the result (its docstring lists the fields); this module is the file format and
its readers: the writer, the console lines, and the error-along-depth plot that the report, the harness
and ``python -m verify.locate`` all use.

Changes from vtp-divergence/1: every module output and every module's inputs are judged by the verdict's
own code (``layers[].gates``, ``layers[].failed[].gate``); ``inputs_agree`` is measured for every module call
or absent (never defaulted); ``verdict`` (PASS/FAIL: any module or task output failing); ``first_divergent``
gains ``scope`` ("module": inside a module whose inputs agree; "between": in the own code of ``enclosing``
between the two named children ``between`` = [last child whose output agrees, first child whose inputs
differ]; "before_first_module": the inputs of the task's first module already differ; "unresolved": a failing
child whose inputs could not be paired), ``enclosing``, ``between``, ``gate`` and ``explanation``;
``same_precision_reference`` (fp16/bf16: the ratio gates were applied); ``outputs[].reasons``.
"""

from __future__ import annotations

import math
from pathlib import Path

from verify.plots import figure_png, matplotlib_pyplot

SCHEMA = "vtp-divergence/2"


def _d(x) -> dict:
    return x if isinstance(x, dict) else {}


def growth_lines(result: dict) -> list:
    """The error-growth table, one block per task."""
    lines = []
    for task, rows in result.get("growth", {}).items():
        lines.append(f"error along depth, task {task} (case {result.get('case')}):")
        lines.append(f"  {'module':42s} {'call':>4s} {'rel_l2':>11s} {'cosine':>12s} {'NaN/Inf':>8s}  verdict")
        for r in rows:
            lines.append(f"  {r['module']:42s} {r['call']:>4d} {_num(r['relative_l2_error']):>11s} "
                         f"{_num(r['cosine_similarity']):>12s} {r.get('nonfinite', 0):>8d}  {r['verdict']}")
    return lines


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_lines(result: dict) -> list:
    fd, fn = result.get("first_divergent"), result.get("first_nonfinite")
    lines = []
    if fd:
        cls = f"{fd['class']}, " if fd.get("class") else ""
        call = f", call {fd['call']}" if fd.get("call") is not None else ""
        lines.append(f"first divergent module: {fd['module']} ({cls}task {fd['task']}, case {fd['case']}{call}): "
                     f"{fd.get('gate') or fd['metric']} {_num(fd['value'])} vs threshold {fd['threshold']}")
        if fd.get("explanation"):
            lines.append(f"  where: {fd['explanation']}")
        elif "inputs_agree" in fd and not fd["inputs_agree"]:  # a vtp-divergence/1 file
            lines.append("  its inputs already differ: the error enters in code that is not a module, just before it")
    elif result.get("verdict") == "FAIL":
        bad = [f"{o['task']}/{o['tensor']}" for o in result.get("outputs", []) if o.get("verdict") == "FAIL"]
        lines.append("first divergent module: none inside the model, but the task outputs fail the verdict's gates ("
                     + ", ".join(bad) + "): the error shows only in the outputs' own gates (e.g. max_rel_err)")
    else:
        lines.append("first divergent module: none (every module output within the gates)")
        if result.get("suspect"):
            s = result["suspect"]
            lines.append(f"largest error growth: {s['module']} (task {s['task']}): rel_l2 {_num(s['rel_l2'])} "
                         f"from inputs at {_num(s['input_rel_l2'])}")
    lines.append(f"first NaN/Inf: {fn['module']} (task {fn['task']}, {fn['count']} value(s))" if fn
                 else "first NaN/Inf: none")
    for task, info in result.get("per_task", {}).items():
        if info.get("error"):
            lines.append(f"task {task}: the run stopped: {info['error']}")
    return lines


def write_divergence(path, result: dict) -> Path:
    """Write ``result`` as JSON atomically; full tensors (if any) to ``<stem>_tensors.safetensors`` beside it."""
    from vtp.io_utils import atomic_path, atomic_write_json

    path = Path(path)
    tensors = result.get("tensors") or {}
    data = {k: v for k, v in result.items() if k != "tensors"}
    if tensors:
        from safetensors.torch import save_file

        file = path.with_name(path.stem + "_tensors.safetensors")
        with atomic_path(file) as tmp:
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        data["tensors_file"] = file.name
    return atomic_write_json(path, data)


def _marked(rows, task, first) -> int:
    """Index of the row holding the first divergent module (itself, or the block that contains it), or -1."""
    if not first or task != first.get("task"):
        return -1
    name = str(first.get("module"))
    for i, r in enumerate(rows):
        if name == r["module"] or name.startswith(r["module"] + "."):
            return i
    return -1


def error_vs_depth_png(divergence: dict):
    """Relative L2 error of every module's output along depth (x: the module names, in execution order), one
    line per task, with the same-precision reference's own error (fp16/bf16) dashed, the gate as a line and the
    first divergent module marked. An exact 0 (bit-identical output) is drawn as a hollow marker on the
    plot's floor, not as a dip to an arbitrary small number. None without matplotlib or data."""
    plt = matplotlib_pyplot()
    growth = _d((divergence or {}).get("growth"))
    if plt is None or not any(growth.values()):
        return None
    first = _d(divergence.get("first_divergent"))
    n = max(len(rows) for rows in growth.values())
    fig, ax = plt.subplots(figsize=(min(16, max(9, 0.28 * n + 2)), 5.2))
    values = [r.get("relative_l2_error") for rows in growth.values() for r in rows]
    positive = [v for v in values if isinstance(v, float) and v > 0 and math.isfinite(v)]
    floor = min(positive) / 10 if positive else 1e-8
    labels = []
    for task, rows in growth.items():
        ys = [r["relative_l2_error"] if isinstance(r.get("relative_l2_error"), float) else math.nan for r in rows]
        xs = range(len(ys))
        line = ax.plot(xs, [y if y > 0 else math.nan for y in ys], marker=".", label=f"{task}: candidate")[0]
        zeros = [x for x, y in zip(xs, ys) if y == 0]
        if zeros:
            ax.scatter(zeros, [floor] * len(zeros), marker="o", facecolors="none", edgecolors=line.get_color(),
                       s=22, label=f"{task}: exactly 0 (bit-identical)")
        same = [r.get("same_precision_relative_l2_error") for r in rows]
        if any(isinstance(v, float) for v in same):
            ax.plot(xs, [v if isinstance(v, float) and v > 0 else math.nan for v in same], linestyle="--",
                    color=line.get_color(), alpha=0.6, label=f"{task}: same-precision CPU reference")
        i = _marked(rows, task, first)
        if i >= 0 and ys[i] > 0:
            ax.scatter([i], [ys[i]], s=170, facecolors="none", edgecolors="red", linewidths=2, zorder=5,
                       label=f"first divergent: {first['module']}")
        if len(rows) > len(labels):
            labels = [r["module"] for r in rows]
    gate = _d(divergence.get("gates")).get("max_rel_l2")
    if isinstance(gate, (int, float)):
        ax.axhline(gate, color="grey", linestyle=":", linewidth=1.2, label=f"gate max_rel_l2 {gate:g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor / 2)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=70, ha="right", fontsize=7)
    ax.set_xlabel("module output, in execution order")
    ax.set_ylabel("relative L2 error vs the fp32 reference")
    ax.set_title("error along depth")
    ax.legend(loc="upper left", fontsize=8)
    return figure_png(plt, fig)
