"""Where the error enters, from the judged module calls of one task (verify.locate's records): the rule that
names the first divergent module and never guesses.

The first failing module call whose inputs were measured to agree is the place; when no failing call has
agreeing inputs, the deepest enclosing module whose inputs agree is named, with the two of its children
between which its own code goes wrong; an error before the first module, or a pairing that could not be
made, is said as such (scope ``before_first_module`` / ``unresolved``). "inputs agree" is only ever a
measured fact.
"""

from __future__ import annotations

import math


def share_call_facts(layers) -> None:
    """A module call's input facts (measured on its first output) hold for all its outputs; a call fails when
    any of its outputs fails."""
    calls = {}
    for e in layers:
        if e["verdict"] != "UNMATCHED":
            calls.setdefault((e["module"], e["call"]), []).append(e)
    for entries in calls.values():
        first = next((e for e in entries if e["output"] == 0), entries[0])
        for e in entries:
            if e is not first and "inputs_agree" in first:
                e["inputs_agree"], e["input_rel_l2"] = first["inputs_agree"], first["input_rel_l2"]
            e.setdefault("start", first.get("start"))


def _module_calls(layers) -> list:
    """One record per module call (its first output's entry), FAIL if any of its outputs fails, in firing order."""
    calls = {}
    for e in layers:
        if e["verdict"] == "UNMATCHED":
            continue
        key = (e["module"], e["call"])
        c = calls.get(key)
        if c is None:
            calls[key] = c = {"entry": e, "module": e["module"], "call": e["call"], "start": e.get("start"),
                              "end": e["index"], "verdict": "PASS", "failed": [], "inputs_agree": e.get("inputs_agree")}
        c["end"] = max(c["end"], e["index"])
        if e["verdict"] == "FAIL":
            c["verdict"] = "FAIL"
            c["failed"] = c["failed"] or e["failed"]
            c.setdefault("failing_entry", e)
    return sorted(calls.values(), key=lambda c: c["end"])


def _children(parent, calls) -> list:
    """The module calls directly inside ``parent``'s call (None: the task's own code), in firing order."""
    lo, hi = (parent["start"], parent["end"]) if parent else (-math.inf, math.inf)
    inside = [c for c in calls if c is not parent and c["start"] is not None and lo < c["start"] and c["end"] < hi]
    return [c for c in inside if not any(o is not c and o["start"] < c["start"] and c["end"] < o["end"]
                                         for o in inside)]


def first_divergent(info, layers, task, case) -> None:
    """The first divergent module, measured, never guessed (see the module docstring), and the first NaN/Inf."""
    calls = _module_calls(layers)
    failing = [c for c in calls if c["verdict"] == "FAIL"]
    if failing:
        parent = next((c for c in failing if c["inputs_agree"] is True), None)
        if parent is None:  # the deepest module enclosing the first failure whose inputs agree (it may pass)
            f = failing[0]
            enclosing = [c for c in calls if c["start"] is not None and f["start"] is not None
                         and c["start"] < f["start"] and f["end"] < c["end"] and c["inputs_agree"] is True]
            parent = max(enclosing, key=lambda c: c["start"], default=None)
        info["first_divergent"] = _explain(parent, calls, failing, task, case)
    for e in layers:
        if e["verdict"] != "UNMATCHED" and e["metrics"] and e["metrics"]["candidate_only_nonfinite"]:
            info["first_nonfinite"] = {"module": e["module"], "task": task, "case": case, "call": e["call"],
                                       "count": e["metrics"]["candidate_only_nonfinite"]}
            break


def _explain(parent, calls, failing, task, case) -> dict:
    """first_divergent for the deepest failing module call whose inputs agree (``parent``; None: the task's own
    code, whose inputs are the same tensors on both sides)."""
    kids = _children(parent, calls)
    unknown = [c for c in kids if c["verdict"] == "FAIL" and c["inputs_agree"] is None]
    first_bad = next((i for i, c in enumerate(kids) if c["inputs_agree"] is False), None)
    before = after = None
    if first_bad is not None:
        after = kids[first_bad]["module"]
        before = kids[first_bad - 1]["module"] if first_bad > 0 else None
    elif kids:
        before = kids[-1]["module"]
    where = parent["module"] if parent else None
    shown = parent if parent is not None and parent["verdict"] == "FAIL" else failing[0]
    gate = (shown["failed"] or [{}])[0] if shown else {}
    fd = {"task": task, "case": case, "call": parent["call"] if parent else None,
          "metric": gate.get("metric"), "gate": gate.get("gate"), "value": gate.get("value"),
          "threshold": gate.get("threshold"), "enclosing": where, "between": None}
    if parent is not None:
        e = parent["entry"]
        fd.update({"class": e["class"], "reference_class": e["reference_class"], "inputs_agree": True,
                   "enclosing_verdict": parent["verdict"]})
    if unknown and (first_bad is None or kids.index(unknown[0]) < first_bad):
        fd.update(scope="unresolved", module=unknown[0]["module"],
                  explanation=f"the error is in the code of {where or 'the task outside any module'} or inside "
                              f"{unknown[0]['module']}, whose inputs could not be paired with the reference's")
    elif parent is not None and not kids:
        fd.update(scope="module", module=where,
                  explanation=f"the error is inside {where}: its inputs agree with the reference, its output does not")
    elif parent is not None:
        fd.update(scope="between", module=where, between=[before, after],
                  explanation=f"the error is in {where}'s own code (no child module is at fault: every child's "
                              f"output agrees until its inputs differ), " + _between_text(before, after, where))
    elif first_bad == 0:
        fd.update(scope="before_first_module", module="(the task's code)", between=[None, after],
                  explanation=f"the inputs of {after}, the first module the task calls, already differ: the error is "
                              f"in the task's own code before any module (the model's inputs as it sees them differ)")
    else:
        fd.update(scope="between", module="(the task's code)", between=[before, after],
                  explanation="the error is in the task's own code outside any module, "
                              + _between_text(before, after, "the task"))
    return fd


def _between_text(before, after, where) -> str:
    if before and after:
        return f"between the output of {before} (agrees) and the inputs of {after} (differ)"
    if after:
        return f"before its first child {after} (whose inputs already differ)"
    if before:
        return f"after its last child {before} (whose output agrees), before {where} returns"
    return "with no child module to narrow it"


def suspect(layers):
    """With no gate broken: the module whose error jumps most over the largest error before it in its task
    (a heuristic: ratio rel_l2 / max(earlier rel_l2, 1e-7), only above 1e-6 and a 10x jump)."""
    best, best_gain, prev = None, 10.0, {}
    for e in layers:
        v = (e.get("metrics") or {}).get("relative_l2_error")
        if not isinstance(v, float):
            continue
        before = prev.get(e["task"], 0.0)
        gain = v / max(before, 1e-7)
        if v > 1e-6 and gain > best_gain:
            best, best_gain = {"module": e["module"], "task": e["task"], "rel_l2": v, "input_rel_l2": before}, gain
        prev[e["task"]] = max(before, v)
    return best
