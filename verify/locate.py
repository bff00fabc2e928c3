"""Layer-by-layer localisation: where does the candidate first leave the reference?

    python -m verify.locate --device npu:0 --precision bf16 --out verify_out/loc
    python -m verify.locate --device cpu --inject-fault trunk.blocks.1.attn=1.5 --out /tmp/loc

A forward hook on every module (names as in ``model.named_modules()``; the fusion layer keeps them)
of the reference (CPU, fp32, strict) and of the candidate (device, fusions, precision) sees each
module's output for the same inputs. Every module output *and every module's inputs* are judged by the
verdict's own code (verify.layer_compare.judge_tensor: verify.judge.compare_one + verify.verdict.judge), in
execution order, and the result is written as ``divergence.json`` (schema ``vtp-divergence/2``; what changed
from /1 is in verify/divergence.py)::

    {"schema": "vtp-divergence/2", "verdict": "PASS" | "FAIL", "same_precision_reference": bool,
     "first_divergent": {"module", "scope", "enclosing", "between", "explanation", "task", "case", "call",
                         "gate", "metric", "value", "threshold", "class", "inputs_agree"} | null,
     "first_nonfinite": {"module", "task", "case", "call", "count"} | null,
     "suspect": {"module", "task", "rel_l2", "input_rel_l2"} | null,  # largest error jump, when no gate broke
     "per_task": {task: {"verdict", "first_divergent", "first_nonfinite", "compared", "inputs_compared",
                         "unmatched", "error"}},
     "outputs": [{"task", "tensor", "relative_l2_error", "cosine_similarity", "verdict", "reasons"}],
     "growth": {task: [{"module", "call", "relative_l2_error", "cosine_similarity"}]},
     "layers": [{"index", "start", "task", "case", "module", "class", "call", "output", "depth", "verdict",
                 "failed": [{"gate", "metric", "value", "threshold"}], "gates": [the verdict's gate records],
                 "inputs_agree" (absent: the inputs could not be paired), "input_rel_l2", "input_failed",
                 "candidate": stats, "reference": stats, "metrics": {...}}], ...}

stats = {"shape", "dtype", "min", "max", "mean", "l2", "nan", "inf"} (finite elements only).

**Gates**: the verdict's, with the precision's thresholds: relative L2, cosine, the worst row, the share of
elements over tolerance, max|a-b|/max|b|, NaN/Inf, and for fp16/bf16 the error ratio against the
same-precision reference (the reference model on the CPU at that precision; a first pass measures its own
error to fp32 for every module output and input). Rows of a module tensor are its last dimension (a token's
or a position's features); the task outputs are judged exactly as the verdict judges them (its row layouts:
latent position, 16x16 tile). ``max_rel_err`` (mean elementwise relative error) is recorded but does not
decide inside the model: on intermediate activations full of near-zero values (GELU, attention) it flags
approximations that the final outputs absorb (the tanh GELU of the fusion layer). For fp16/bf16 an absolute
gate that the same-precision reference fails itself at that module is the precision's error, not the
candidate's, and does not decide there (the ratio gates judge the candidate's share). ``verdict`` is FAIL when
a module output or a task output fails.

**First divergent module, never guessed**: hooks fire after a module's children, so the first failing module
call (in firing order) whose inputs agree (measured: every module's inputs are judged) is the deepest module
that makes the error. Without child module calls the error is inside it (scope "module"). With children, the
failing ones all had differing inputs, so the error is in its own code: between the last child whose output
agrees and the first child whose inputs differ (scope "between"). If no failing module has agreeing inputs,
the deepest module enclosing the first failure whose inputs agree is named the same way (its output may
still pass: the error was absorbed), and without one the error is in the task's own code: before the first module the task calls when that
module's inputs already differ (scope "before_first_module"), else between two top-level modules. A failing
child whose inputs cannot be paired (different counts) makes the answer "unresolved", naming it.

**Memory** (bounded, no full-model dump): both models run *layer-synchronously* in two threads; a
hook hands its output to a rendezvous and waits until the other model has produced the matching
output (same task, module, call and output index), so at most one module output per side is held
beyond what a normal forward holds. The pair is compared in chunks of 2**20 elements (float64 on
CPU), so the comparison's own memory is a few tens of MB whatever the tensor size. Only the
statistics and metrics are kept; full tensors only for the modules named in ``full_tensors``.
A module that runs on one side only (a fused module with other children) is recorded as unmatched
and does not stall the other side.

Exit status: 0 no divergent module, 1 a divergent or NaN/Inf-producing module was found, 2 usage or
environment error.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import math
import sys
import threading
import time
from pathlib import Path

from ascend.runtime import prompts_from_args
from verify.cli import add_run_options

if __package__ in (None, ""):  # run as `python verify/locate.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GROWTH_DEPTH = 3  # modules with at most 3 name parts (trunk.blocks.7, pixel_decoder.norm) make the depth table
EXIT_NONE, EXIT_FOUND, EXIT_ENV = 0, 1, 2
_SKIP_CLASSES = ("Identity", "ModuleList", "Dropout")

logger = logging.getLogger("verify.locate")


from verify.layer_compare import (compare_pair, gate_limits, judge_tensor, module_failures,  # noqa: E402
                                  output_tensors, same_precision_errors)
from verify.metrics import json_float  # noqa: E402
from verify.divergence import SCHEMA, error_vs_depth_png, growth_lines, summary_lines, write_divergence  # noqa: E402,F401
from verify.first_divergent import first_divergent, share_call_facts, suspect  # noqa: E402
from verify.lockstep import Rendezvous  # noqa: E402


# --------------------------------------------------------------------------------------------- locate
def _depth(name: str) -> int:
    return name.count(".") + 1


def locate(reference, candidate, inputs: dict, *, device, precision: str, thresholds, tasks=None,
           full_tensors=(), case=None) -> dict:
    """Compare every module of ``candidate`` with ``reference`` for ``inputs`` and return the
    vtp-divergence/2 dict (see the module docstring).

    inputs: {"images": (B, 3, H, W) ImageNet-normalised, "text": LongTensor (P, L)}. device/precision:
    the candidate's (the reference always runs on the CPU in strict fp32; for fp16/bf16 a copy of it also runs
    on the CPU at that precision: the same-precision reference of the ratio gates). thresholds: a table from
    verify.verdict.load_thresholds or a flat dict of limits. tasks: names of verify.run.TASKS
    (default: every task the reference's config can run). full_tensors: module names whose full
    outputs are kept (result["tensors"], written by write_divergence as a safetensors file).
    """
    import copy

    import torch

    from ascend.device import restore_fp32_state, set_strict_fp32, strict_fp32
    from verify.run import TASKS, run_tasks, task_plan

    device = torch.device(device)
    images, text = inputs["images"], inputs["text"]
    case = case or f"b{images.shape[0]}/{images.shape[-2]}x{images.shape[-1]}"
    if tasks is None:
        tasks = list(task_plan(reference.config)[0])
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}: use {', '.join(TASKS)}")
    limits = gate_limits(thresholds, precision)
    ref_modules = dict(reference.named_modules())
    cand_modules = dict(candidate.named_modules())
    names = [n for n in ref_modules if n and n in cand_modules]
    missing = [n for n in full_tensors if n not in ref_modules]
    if missing:
        raise ValueError(f"full_tensors: no module named {missing} in the model")
    same_model = copy.deepcopy(reference) if limits.get("max_error_ratio") is not None else None
    ctx = {"precision": precision, "thresholds": thresholds, "patch": reference.config.vision_patch_size,
           "device": device, "run_tasks": run_tasks, "names": names, "keep": set(full_tensors)}
    t0 = time.perf_counter()
    result = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "precision": precision, "case": case, "tasks": list(tasks),
              "gates": {k: v for k, v in limits.items() if v is not None},
              "gates_note": GATES_NOTE, "same_precision_reference": same_model is not None,
              "memory_note": "layer-synchronous: one output per side held at a time; each pair judged by the "
                             "verdict's code (float64 copies of that pair only)",
              "verdict": "PASS", "first_divergent": None, "first_nonfinite": None,
              "suspect": None, "per_task": {}, "outputs": [], "growth": {}, "layers": [], "tensors": {}}
    strict = set_strict_fp32(device, True) if precision == "fp32" and device.type != "cpu" else None
    try:
        with strict_fp32(torch.device("cpu")):
            for task in tasks:
                plan = {task: TASKS[task]}
                same = None
                if same_model is not None:  # pass 1: the same-precision reference's own errors, per module call
                    same = _same_precision_pass(same_model, reference, images, text, plan, ctx)
                _locate_task(result, task, case, reference, candidate, images, text, plan, ctx, same)
    finally:
        if strict is not None:
            restore_fp32_state(strict)
    for task in tasks:
        info = result["per_task"][task]
        result["first_divergent"] = result["first_divergent"] or info["first_divergent"]
        result["first_nonfinite"] = result["first_nonfinite"] or info["first_nonfinite"]
        if info["verdict"] != "PASS":
            result["verdict"] = "FAIL"
    if result["first_divergent"] is None:
        result["suspect"] = suspect(result["layers"])
    result["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return result


GATES_NOTE = ("per module output and per module input: the verdict's own judging (verify.judge.compare_one + "
              "verify.verdict.judge) with the precision's thresholds: relative_l2_error, cosine_similarity, the worst "
              "row (rows = the last dimension for module tensors), the share of elements over tolerance, max|a-b|/"
              "max|b|, NaN/Inf, and for fp16/bf16 the error ratio against the same-precision CPU reference; "
              "relative_error_mean is recorded, not decisive, inside the model. The task outputs are judged exactly "
              "as the verdict judges them (its row layouts: latent position, 16x16 tile, token).")


def _tensors_of(args, kwargs) -> list:
    """The tensors a module was called with, positional then keyword (one level into tuples/lists/dicts)."""
    return output_tensors(list(args) + list((kwargs or {}).values()))


def _paired_run(plan, images, text, sides, names, on_pair, on_unmatched, device):
    """Run ``sides`` = ((model, device, precision), (model, device, precision)) layer-synchronously with a
    hook on every module named in ``names``; returns (outputs per side, error text per side)."""
    import torch

    rv = Rendezvous(on_pair, on_unmatched)
    handles, outputs, errors = [], [None, None], [None, None]
    for side, (model, _, _) in enumerate(sides):
        modules = dict(model.named_modules())
        counters, seq, starts = {}, [0], {}
        for name in names:
            if type(modules[name]).__name__ in _SKIP_CLASSES:
                continue

            def pre(module, args, kwargs, name=name, seq=seq, starts=starts):
                seq[0] += 1
                starts.setdefault(name, []).append(seq[0])

            def hook(module, args, kwargs, output, name=name, side=side, counters=counters, seq=seq, starts=starts):
                call = counters.get(name, 0)
                counters[name] = call + 1
                start = starts[name].pop() if starts.get(name) else None
                inp = _tensors_of(args, kwargs)
                for i, t in enumerate(x for x in output_tensors(output) if x.is_floating_point()):
                    seq[0] += 1
                    rv.post(side, (name, call, i), {"out": t, "inp": inp, "seq": seq[0], "start": start})

            handles.append(modules[name].register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(modules[name].register_forward_hook(hook, with_kwargs=True))

    def run(side):
        model, dev, prec = sides[side]
        try:
            if dev.type in ("cuda", "npu"):
                getattr(torch, dev.type).set_device(dev)
            from verify.run import run_tasks

            outputs[side] = run_tasks(model, images, text, dev, prec, plan)
        except Exception as exc:  # a crash of the candidate is a finding: report where it happened
            errors[side] = f"{'candidate' if side == 0 else 'reference'}: {type(exc).__name__}: {exc}"
            logger.error("%s", errors[side])
        finally:
            rv.finish(side)

    try:
        threads = [threading.Thread(target=run, args=(s,), name=f"locate-{s}") for s in (0, 1)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    finally:
        for h in handles:
            h.remove()
    rv.leftovers()
    return outputs, errors


def _same_precision_pass(same_model, reference, images, text, plan, ctx) -> dict:
    """The same-precision reference (the reference model on the CPU at the candidate's precision) against the
    fp32 reference, module by module: {"outputs": {key: errors}, "inputs": {(name, call): [errors | None]},
    "task_outputs": {tensor: Tensor}}, errors as `same_precision_errors` gives them."""
    import torch

    cpu = torch.device("cpu")
    found = {"outputs": {}, "inputs": {}, "task_outputs": {}}
    lock = threading.Lock()

    def on_pair(key, same, ref):
        name, call, idx = key
        errs = _same_facts(name, same["out"], ref["out"], ctx) if same["out"].shape == ref["out"].shape else None
        inp = None
        if idx == 0 and len(same["inp"]) == len(ref["inp"]):
            inp = [_same_facts(f"{name}:input{i}", a, b, ctx)
                   if a.is_floating_point() and b.is_floating_point() and a.shape == b.shape else None
                   for i, (a, b) in enumerate(zip(same["inp"], ref["inp"]))]
        with lock:
            if errs is not None:
                found["outputs"][key] = errs
            if inp is not None:
                found["inputs"][(name, call)] = inp

    outputs, errors = _paired_run(plan, images, text, ((same_model, cpu, ctx["precision"]), (reference, cpu, "fp32")),
                                  ctx["names"], on_pair, lambda side, key, payload: None, cpu)
    if outputs[0] is None:
        raise RuntimeError(f"the same-precision reference ({ctx['precision']} on the CPU) failed: {errors[0]}")
    found["task_outputs"] = outputs[0]
    return found


def _same_facts(name, same, ref, ctx) -> dict:
    """The same-precision reference's own errors (for the ratio gates) and the absolute gates it fails itself."""
    judged = judge_tensor(name, same, ref, ctx["thresholds"], ctx["precision"], ctx["patch"], require_same=False)
    return {"errors": same_precision_errors(name, same, ref, ctx["patch"]),
            "fails": {f["gate"] for f in module_failures(judged)}}


def _decisive(judged, same_facts) -> list:
    """A module tensor's decisive failures: `module_failures`, less the absolute gates that the same-precision
    reference fails too at that tensor (fp16/bf16: the precision's own error, not the candidate's; the ratio
    gates judge the candidate's share of it)."""
    fails = module_failures(judged)
    shared = (same_facts or {}).get("fails") or set()
    return [f for f in fails if f["gate"] not in shared or f["gate"] in ("nonfinite", "shape", "metrics")]


def _judge_inputs(name, call, cand_inp, ref_inp, ctx, same):
    """(inputs_agree: True/False measured, or None when they cannot be paired, worst input rel_l2, failures)."""
    if not cand_inp or len(cand_inp) != len(ref_inp):
        return None, None, []
    same_in = (same or {}).get("inputs", {}).get((name, call)) if same is not None else None
    worst, failures = 0.0, []
    for i, (a, b) in enumerate(zip(cand_inp, ref_inp)):
        if a.is_floating_point() != b.is_floating_point():
            return None, None, []
        if not a.is_floating_point():  # token ids, masks: must be equal
            if a.shape != b.shape or not torch_equal(a, b):
                failures.append({"input": i, "gate": "equal", "metric": "integer input equal", "value": False,
                                 "threshold": True})
            continue
        facts = same_in[i] if same_in is not None and i < len(same_in) else None
        judged = judge_tensor(f"{name}:input{i}", a, b, ctx["thresholds"], ctx["precision"], ctx["patch"],
                              same_errors=(facts or {}).get("errors"), require_same=False)
        fails = _decisive(judged, facts)
        failures += [{"input": i, **f} for f in fails]
        m = judged["metrics"].get("metrics") or {}
        v = m.get("relative_l2_error")
        worst = max(worst, v if isinstance(v, float) else math.inf)
    return not failures, json_float(worst), failures


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a.detach().cpu(), b.detach().cpu()))


def _locate_task(result, task, case, reference, candidate, images, text, plan, ctx, same) -> None:
    import torch

    info = {"verdict": "PASS", "first_divergent": None, "first_nonfinite": None, "compared": 0, "unmatched": 0,
            "inputs_compared": 0, "error": None}
    result["per_task"][task] = info
    lock = threading.Lock()
    layers = []
    cand_modules, ref_modules = dict(candidate.named_modules()), dict(reference.named_modules())
    precision, thresholds, patch = ctx["precision"], ctx["thresholds"], ctx["patch"]

    def on_pair(key, cand, ref):
        name, call, idx = key
        pair = compare_pair(cand["out"], ref["out"])
        facts = same["outputs"].get(key) if same is not None else None
        judged = judge_tensor(name, cand["out"], ref["out"], thresholds, precision, patch,
                              same_errors=(facts or {}).get("errors"), require_same=False)
        fails = _decisive(judged, facts)
        entry = {"index": ref["seq"], "start": ref["start"], "task": task, "case": case, "module": name,
                 "class": type(cand_modules[name]).__name__, "reference_class": type(ref_modules[name]).__name__,
                 "call": call, "output": idx, "depth": _depth(name),
                 "verdict": "FAIL" if fails else "PASS", "failed": fails,
                 "gates": judged["gates"], "candidate": pair["candidate"], "reference": pair["reference"],
                 "metrics": pair["metrics"]}
        if facts is not None:  # the same-precision reference's own error here (fp16/bf16), for the depth plot
            entry["same_precision"] = facts["errors"]
        if judged.get("not_judged"):
            entry["not_judged"] = judged["not_judged"]
        if idx == 0:  # the inputs of this module call, compared for every module
            agree, worst, in_fails = _judge_inputs(name, call, cand["inp"], ref["inp"], ctx, same)
            if agree is not None:
                entry["inputs_agree"], entry["input_rel_l2"] = agree, worst
                if in_fails:
                    entry["input_failed"] = in_fails
        if name in ctx["keep"]:
            result["tensors"][f"{task}/{name}/{call}/{idx}/candidate"] = cand["out"].detach().to("cpu").clone()
            result["tensors"][f"{task}/{name}/{call}/{idx}/reference"] = ref["out"].detach().to("cpu").clone()
        with lock:
            layers.append(entry)

    def on_unmatched(side, key, payload):
        name, call, idx = key
        stats = compare_pair(payload["out"], payload["out"])["candidate"]
        with lock:
            info["unmatched"] += 1
            layers.append({"index": payload["seq"], "task": task, "case": case, "module": name, "call": call,
                           "output": idx, "depth": _depth(name), "verdict": "UNMATCHED",
                           "unmatched": "candidate only" if side == 0 else "reference only",
                           ("candidate" if side == 0 else "reference"): stats, "failed": []})

    sides = ((candidate, ctx["device"], precision), (reference, torch.device("cpu"), "fp32"))
    outputs, errors = _paired_run(plan, images, text, sides, ctx["names"], on_pair, on_unmatched, ctx["device"])
    info["error"] = "; ".join(e for e in errors if e) or None
    layers.sort(key=lambda e: e["index"])
    share_call_facts(layers)
    info["compared"] = sum(1 for e in layers if e["verdict"] != "UNMATCHED")
    info["inputs_compared"] = sum(1 for e in layers if e.get("output") == 0 and "inputs_agree" in e)
    first_divergent(info, layers, task, case)
    result["layers"] += layers
    result["growth"][task] = [
        {"module": e["module"], "call": e["call"], "relative_l2_error": e["metrics"]["relative_l2_error"],
         "cosine_similarity": e["metrics"]["cosine_similarity"], "verdict": e["verdict"],
         "nonfinite": e["candidate"]["nan"] + e["candidate"]["inf"],
         "same_precision_relative_l2_error": (e.get("same_precision") or {}).get("relative_l2_error")}
        for e in layers if e["verdict"] != "UNMATCHED" and e["depth"] <= GROWTH_DEPTH and e["output"] == 0
        and e.get("metrics")]
    if info["error"]:
        info["verdict"] = "FAIL"
    if any(e["verdict"] == "FAIL" for e in layers):
        info["verdict"] = "FAIL"
    if outputs[0] is not None and outputs[1] is not None:
        same_out = (same or {}).get("task_outputs") or {}
        for tensor in plan[task]:  # the task outputs: exactly the verdict's judging
            judged = judge_tensor(tensor, outputs[0][tensor], outputs[1][tensor], thresholds, precision, patch,
                                  same_precision=same_out.get(tensor), require_same=same is not None)
            m = judged["metrics"]["metrics"] or {}
            result["outputs"].append({"task": task, "tensor": tensor, "relative_l2_error": m.get("relative_l2_error"),
                                      "cosine_similarity": m.get("cosine_similarity"),
                                      "relative_error_mean": m.get("relative_error_mean"),
                                      "verdict": judged["verdict"], "reasons": judged["reasons"]})
            if judged["verdict"] != "PASS":
                info["verdict"] = "FAIL"


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify.locate", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m verify.locate --device npu:0 --precision bf16 --out verify_out/loc\n"
               "  python -m verify.locate --device cpu --inject-fault trunk.blocks.1.attn=1.5 --out /tmp/loc\n"
               "writes OUT/divergence.json (and OUT/divergence.png with matplotlib)\n"
               "exit status: 0 no divergence, 1 divergence found, 2 usage or environment error")
    add_run_options(p)
    p.add_argument("--out", type=Path, help="output folder (default verify_out/locate-<timestamp>)")
    p.add_argument("--batch", type=int, default=2, help="images (default 2)")
    p.add_argument("--size", type=int, default=256, help="image resolution (default 256)")
    p.add_argument("--tasks", nargs="+", help="reconstruction, clip, ssl (default: all the checkpoint has)")
    p.add_argument("--full-tensors", nargs="+", default=[], metavar="MODULE", help="keep these modules' full outputs")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.batch < 1 or args.size < 1:
        print("error: --batch and --size must be at least 1", file=sys.stderr)
        return EXIT_ENV
    from ascend.npu import prepare_environment

    prepare_environment()
    try:
        result = _run(args)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    out = args.out or Path("verify_out") / datetime.datetime.now().strftime("locate-%Y%m%d-%H%M%S")
    try:
        write_divergence(out / "divergence.json", result)
        

        png = error_vs_depth_png(result)
        if png is not None:
            from vtp.io_utils import atomic_write_bytes

            atomic_write_bytes(out / "divergence.png", png)
    except OSError as exc:
        print(f"error: cannot write to {out} ({exc})", file=sys.stderr)
        return EXIT_ENV
    print("\n".join(growth_lines(result) + summary_lines(result)))
    print(f"outputs: {out / 'divergence.json'}")
    return EXIT_FOUND if result["verdict"] != "PASS" or result["first_nonfinite"] else EXIT_NONE


def _run(args) -> dict:
    from ascend.device import resolve_device
    from ascend.fusion import parse_fusion_spec
    from ascend.runtime import load_weights, prepare_candidate
    from verify.faults import inject_fault, parse_fault
    from verify.run import make_inputs
    from verify.verdict import load_thresholds

    device = resolve_device(args.device)
    thresholds = load_thresholds(args.thresholds)
    parse_fusion_spec(args.fusion)
    if args.inject_fault:
        parse_fault(args.inject_fault)
    reference, _ = load_weights(args.weights, require=args.require_weights)
    if args.size % reference.config.vision_patch_size:
        raise ValueError(f"--size {args.size} is not a multiple of the patch size {reference.config.vision_patch_size}")
    candidate, _ = prepare_candidate(reference, device, fusion=args.fusion, precision=args.precision)
    if args.inject_fault:
        inject_fault(candidate, args.inject_fault)
    images, _, text = make_inputs(args.weights, args.batch, args.size, prompts_from_args(args),
                                  context_length=reference.config.text_context_length)
    return locate(reference, candidate, {"images": images, "text": text}, device=device, precision=args.precision,
                  thresholds=thresholds, tasks=args.tasks, full_tensors=args.full_tensors)


if __name__ == "__main__":
    from verify.cli import exit_with

    exit_with(main, "no divergence.json was written (it is written at the end); rerun the "
                    "same command")
