"""Layer-by-layer localisation: where does the candidate first leave the reference?

    python -m verify.locate --device npu:0 --precision bf16 --out verify_out/loc
    python -m verify.locate --device cpu --inject-fault trunk.blocks.1.attn=1.5 --out /tmp/loc

A forward hook on every module (names as in ``model.named_modules()``; the fusion layer keeps them)
of the reference (CPU, fp32, strict) and of the candidate (device, fusions, precision) sees each
module's output for the same inputs. Outputs are compared in execution order with the verdict's
metrics, and the result is written as ``divergence.json`` (schema ``vtp-divergence/1``)::

    {"schema": "vtp-divergence/1",
     "first_divergent": {"module", "task", "case", "metric", "value", "threshold", "call", "class",
                         "inputs_agree"} | null,
     "first_nonfinite": {"module", "task", "case", "call", "count"} | null,
     "suspect": {"module", "task", "rel_l2", "input_rel_l2"} | null,  # largest error jump, when no gate broke
     "per_task": {task: {"first_divergent", "first_nonfinite", "compared", "unmatched", "error"}},
     "outputs": [{"task", "tensor", "relative_l2_error", "cosine_similarity", "verdict"}],
     "growth": {task: [{"module", "call", "relative_l2_error", "cosine_similarity"}]},
     "layers": [{"index", "task", "case", "module", "class", "call", "output", "depth", "verdict",
                 "failed": [{"metric", "value", "threshold"}], "inputs_agree",
                 "candidate": stats, "reference": stats, "metrics": {...}}], ...}

stats = {"shape", "dtype", "min", "max", "mean", "l2", "nan", "inf"} (finite elements only).

**First divergent module**: hooks fire after a module's children, so in firing order the first module
that breaks a gate is the deepest one at the earliest point. It is reported when its *inputs* still
agree (they are compared then); if none qualifies (the error enters in code that is not a module), the
first failing module is reported with ``inputs_agree: false``. The gates are the verdict's
``max_rel_l2``, ``min_cosine`` and (when present) ``max_abs_scaled`` (max|a-b| / max|b|, a localised
error) of the precision, plus any NaN/Inf where the reference is finite.
``max_rel_err`` (mean elementwise relative error) is recorded but does not decide here: on
intermediate activations full of near-zero values (GELU, attention) it flags approximations that the
final outputs absorb (the tanh GELU of the fusion layer).

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
AHEAD = 2  # outputs a side may leave unmatched before it waits for the other side
INPUT_CHECKS = 50  # failing modules per task whose inputs are compared (the search for the first divergent)
EXIT_NONE, EXIT_FOUND, EXIT_ENV = 0, 1, 2
_SKIP_CLASSES = ("Identity", "ModuleList", "Dropout")

logger = logging.getLogger("verify.locate")


from verify.layer_compare import compare_pair, failed_gates, gate_limits, output_tensors  # noqa: E402
from verify.metrics import json_float  # noqa: E402
from verify.divergence import SCHEMA, error_vs_depth_png, growth_lines, summary_lines, write_divergence  # noqa: E402,F401


# --------------------------------------------------------------------------------------------- rendezvous
class _Rendezvous:
    """Pairs the outputs of the two models by key; each side waits while it is AHEAD outputs in front."""

    def __init__(self, on_pair, on_unmatched):
        self.cond = threading.Condition()
        self.pending = ({}, {})  # side -> {key: payload}, insertion-ordered
        self.waiting = [False, False]
        self.done = [False, False]
        self.on_pair, self.on_unmatched = on_pair, on_unmatched

    def post(self, side: int, key, payload) -> None:
        other = 1 - side
        with self.cond:
            match = self.pending[other].pop(key, None)
            if match is None:
                self.pending[side][key] = payload
        if match is not None:
            cand, ref = (payload, match) if side == 0 else (match, payload)
            self.on_pair(key, cand, ref)
            with self.cond:
                self.cond.notify_all()
            return
        with self.cond:
            while len(self.pending[side]) > AHEAD and not self.done[other]:
                if self.waiting[other] and len(self.pending[other]) > AHEAD:
                    # both sides blocked on keys the other never produces (their call sequences differ): drop our oldest
                    old = next(iter(self.pending[side]))
                    self.on_unmatched(side, old, self.pending[side].pop(old))
                    self.cond.notify_all()
                    break
                self.waiting[side] = True
                self.cond.wait(0.2)
                self.waiting[side] = False

    def finish(self, side: int) -> None:
        with self.cond:
            self.done[side] = True
            self.cond.notify_all()

    def leftovers(self) -> None:
        for side in (0, 1):
            for key, payload in list(self.pending[side].items()):
                self.on_unmatched(side, key, payload)
            self.pending[side].clear()


# --------------------------------------------------------------------------------------------- locate
def _depth(name: str) -> int:
    return name.count(".") + 1


def locate(reference, candidate, inputs: dict, *, device, precision: str, thresholds, tasks=None,
           full_tensors=(), case=None) -> dict:
    """Compare every module of ``candidate`` with ``reference`` for ``inputs`` and return the
    vtp-divergence/1 dict (see the module docstring).

    inputs: {"images": (B, 3, H, W) ImageNet-normalised, "text": LongTensor (P, L)}. device/precision:
    the candidate's (the reference always runs on the CPU in strict fp32). thresholds: a table from
    verify.verdict.load_thresholds or a flat dict of limits. tasks: names of verify.run.TASKS
    (default: every task the reference's config can run). full_tensors: module names whose full
    outputs are kept (result["tensors"], written by write_divergence as a safetensors file).
    """
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
    t0 = time.perf_counter()
    result = {"schema": SCHEMA, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "device": str(device), "precision": precision, "case": case, "tasks": list(tasks),
              "gates": {k: limits.get(k) for k in ("max_rel_l2", "min_cosine", "max_abs_scaled")},
              "gates_note": "per module: relative_l2_error > max_rel_l2, cosine_similarity < min_cosine, "
                            "max|a-b|/max|b| > max_abs_scaled (when the table has it), or NaN/Inf where the "
                            "reference is finite; relative_error_mean is recorded, not decisive",
              "memory_note": "layer-synchronous: one output per side held at a time, compared in 2**20-element "
                             "chunks; statistics only", "first_divergent": None, "first_nonfinite": None,
              "suspect": None, "per_task": {}, "outputs": [], "growth": {}, "layers": [], "tensors": {}}
    strict = set_strict_fp32(device, True) if precision == "fp32" and device.type != "cpu" else None
    try:
        with strict_fp32(torch.device("cpu")):
            for task in tasks:
                _locate_task(result, task, case, reference, candidate, images, text, device, precision, limits,
                             set(full_tensors), names, ref_modules, cand_modules, run_tasks, {task: TASKS[task]},
                             lambda tensor: gate_limits(thresholds, precision, tensor))
    finally:
        if strict is not None:
            restore_fp32_state(strict)
    for task in tasks:
        info = result["per_task"][task]
        if result["first_divergent"] is None or (not result["first_divergent"]["inputs_agree"]
                                                 and info["first_divergent"] and info["first_divergent"]["inputs_agree"]):
            result["first_divergent"] = info["first_divergent"] or result["first_divergent"]
        result["first_nonfinite"] = result["first_nonfinite"] or info["first_nonfinite"]
    if result["first_divergent"] is None:
        result["suspect"] = _suspect(result["layers"])
    result["elapsed_s"] = round(time.perf_counter() - t0, 3)
    return result


def _locate_task(result, task, case, reference, candidate, images, text, device, precision, limits, keep, names,
                 ref_modules, cand_modules, run_tasks, plan, tensor_limits) -> None:
    import torch

    info = {"first_divergent": None, "first_nonfinite": None, "compared": 0, "unmatched": 0, "error": None}
    result["per_task"][task] = info
    lock = threading.Lock()
    state = {"input_checks": 0, "first_failing": None}
    layers = []

    def on_pair(key, cand, ref):
        name, call, idx = key
        pair = compare_pair(cand["out"], ref["out"])
        fails = failed_gates(pair, limits)
        entry = {"index": ref["seq"], "task": task, "case": case, "module": name,
                 "class": type(cand_modules[name]).__name__, "reference_class": type(ref_modules[name]).__name__,
                 "call": call, "output": idx, "depth": _depth(name),
                 "verdict": "FAIL" if fails else "PASS", "failed": fails, "inputs_agree": None,
                 "candidate": pair["candidate"], "reference": pair["reference"], "metrics": pair["metrics"]}
        with lock:
            first_check = fails and info["first_divergent"] is None and state["input_checks"] < INPUT_CHECKS
            if first_check:
                state["input_checks"] += 1
        if first_check:
            entry["inputs_agree"], entry["input_rel_l2"] = _inputs_agree(cand["inp"], ref["inp"], limits)
        if name in keep:
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

    rv = _Rendezvous(on_pair, on_unmatched)
    handles, outputs, errors = [], [None, None], [None, None]
    for side, modules in ((0, cand_modules), (1, ref_modules)):
        counters, seq = {}, [0]
        for name in names:
            if type(modules[name]).__name__ in _SKIP_CLASSES:
                continue

            def hook(module, args, output, name=name, side=side, counters=counters, seq=seq):
                call = counters.get(name, 0)
                counters[name] = call + 1
                inp = [t for t in output_tensors(args) if t.is_floating_point()]
                for i, t in enumerate(x for x in output_tensors(output) if x.is_floating_point()):
                    seq[0] += 1
                    rv.post(side, (name, call, i), {"out": t, "inp": inp, "seq": seq[0]})

            handles.append(modules[name].register_forward_hook(hook))

    def run(side):
        try:
            if side == 0:
                if device.type in ("cuda", "npu"):
                    getattr(torch, device.type).set_device(device)
                outputs[0] = run_tasks(candidate, images, text, device, precision, plan)
            else:
                outputs[1] = run_tasks(reference, images, text, torch.device("cpu"), "fp32", plan)
        except Exception as exc:  # a crash of the candidate is a finding: report where it happened
            errors[side] = f"{'candidate' if side == 0 else 'reference'}: {type(exc).__name__}: {exc}"
            logger.error("task %s: %s", task, errors[side])
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
    info["error"] = "; ".join(e for e in errors if e) or None
    layers.sort(key=lambda e: e["index"])
    info["compared"] = sum(1 for e in layers if e["verdict"] != "UNMATCHED")
    _firsts(info, layers, task, case)
    result["layers"] += layers
    result["growth"][task] = [
        {"module": e["module"], "call": e["call"], "relative_l2_error": e["metrics"]["relative_l2_error"],
         "cosine_similarity": e["metrics"]["cosine_similarity"], "verdict": e["verdict"],
         "nonfinite": e["candidate"]["nan"] + e["candidate"]["inf"]}
        for e in layers if e["verdict"] != "UNMATCHED" and e["depth"] <= GROWTH_DEPTH and e["output"] == 0
        and e.get("metrics")]
    if outputs[0] is not None and outputs[1] is not None:
        for tensor in plan[task]:
            pair = compare_pair(outputs[0][tensor], outputs[1][tensor])
            fails = failed_gates(pair, tensor_limits(tensor))
            m = pair["metrics"] or {}
            result["outputs"].append({"task": task, "tensor": tensor, "relative_l2_error": m.get("relative_l2_error"),
                                      "cosine_similarity": m.get("cosine_similarity"),
                                      "relative_error_mean": m.get("relative_error_mean"),
                                      "verdict": "FAIL" if fails else "PASS"})


def _inputs_agree(cand_inp, ref_inp, limits):
    """(all floating inputs pass the gates, their worst rel_l2); (None, None) when they cannot be paired."""
    if len(cand_inp) != len(ref_inp) or not cand_inp:
        return None, None
    worst, ok = 0.0, True
    seen = set()
    for a, b in zip(cand_inp, ref_inp):
        if id(b) in seen:
            continue
        seen.add(id(b))
        pair = compare_pair(a, b)
        ok = ok and not failed_gates(pair, limits)
        v = (pair["metrics"] or {}).get("relative_l2_error")
        worst = max(worst, v if isinstance(v, float) else math.inf)
    return ok, json_float(worst)


def _firsts(info, layers, task, case) -> None:
    failing = [e for e in layers if e["verdict"] == "FAIL"]
    agreed = [e for e in failing if e["inputs_agree"] is not False]
    pick = (agreed or failing or [None])[0]
    if pick is not None:
        gate = pick["failed"][0]
        info["first_divergent"] = {"module": pick["module"], "task": task, "case": case, "metric": gate["metric"],
                                   "value": gate["value"], "threshold": gate["threshold"], "call": pick["call"],
                                   "class": pick["class"], "reference_class": pick["reference_class"], "inputs_agree": pick["inputs_agree"] is not False}
    for e in layers:
        if e["verdict"] != "UNMATCHED" and e["metrics"] and e["metrics"]["candidate_only_nonfinite"]:
            info["first_nonfinite"] = {"module": e["module"], "task": task, "case": case, "call": e["call"],
                                       "count": e["metrics"]["candidate_only_nonfinite"]}
            break


def _suspect(layers):
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
    return EXIT_FOUND if result["first_divergent"] or result["first_nonfinite"] else EXIT_NONE


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
    sys.exit(main())
