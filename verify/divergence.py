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
    """Relative L2 error per module along depth, one line per task, first divergent module marked; None
    without matplotlib or data."""
    plt = matplotlib_pyplot()
    growth = _d((divergence or {}).get("growth"))
    if plt is None or not any(growth.values()):
        return None
    first = _d(divergence.get("first_divergent"))
    fig, ax = plt.subplots(figsize=(11, 4.2))
    floor = 1e-10
    for task, rows in growth.items():
        ys = [r["relative_l2_error"] if isinstance(r.get("relative_l2_error"), float) else math.nan for r in rows]
        ax.plot(range(len(ys)), [max(y, floor) for y in ys], marker=".", label=task)
        i = _marked(rows, task, first)
        if i >= 0:
            ax.scatter([i], [max(ys[i], floor)], s=160, facecolors="none", edgecolors="red", linewidths=2, zorder=5)
            ax.annotate(f"first divergent: {first['module']}", (i, max(ys[i], floor)), xytext=(-40, -28),
                        textcoords="offset points", color="red")
    gate = _d(divergence.get("gates")).get("max_rel_l2")
    if isinstance(gate, (int, float)):
        ax.axhline(gate, color="grey", linestyle="--", linewidth=1, label=f"gate max_rel_l2 {gate:g}")
    ax.set_yscale("log")
    ax.set_xlabel("module, in execution order (name depth <= 3)")
    ax.set_ylabel(f"relative L2 error (floor {floor:g})")
    ax.set_title("error along depth")
    ax.legend(loc="upper left", fontsize=8)
    return figure_png(plt, fig)
