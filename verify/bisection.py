"""Bisection of a failing candidate: which fusion rules, which modules that must stay in fp32.

    python -m verify.bisection fusion --device npu:0 --fusion all
    python -m verify.bisection precision --device npu:0 --precision bf16 --out verify_out/bisect

**Fusion** (`bisect_fusion`): the fused candidate fails against the CPU fp32 reference. Each rule is
removed in turn (and each failing rule is also tried alone); the rules whose removal makes the run
pass, or that fail on their own, are named, and the spec without them is re-checked and printed as a
ready-to-use ``--fusion`` value. If the unfused candidate already fails, the fusions are not the
cause and the result says so.

**Precision** (Polygraphy's ``debug precision``; `bisect_precision`): an fp16/bf16 candidate fails.
The candidate modules (embedding, each transformer block, the norms and projections: module names
with at most three parts) are kept in fp32 all together first; if that passes, delta debugging drops
groups of them while the run still passes, leaving a small set. `write_fp32_modules` stores it as a
YAML file (schema ``vtp-fp32-modules/1``) that `load_fp32_modules` reads and `apply_fp32_modules`
applies: each named module's forward runs with autocast off and its floating inputs cast to fp32.

A run "passes" when every output tensor of every task passes `verify.verdict.judge` with the given
thresholds. Exit status of the CLI: 0 a passing configuration was found (or nothing failed),
1 none was found, 2 usage or environment error.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import sys
from pathlib import Path

from ascend.runtime import prompts_from_args
from verify.cli import add_run_options
from verify.fp32_modules import apply_fp32_modules, write_fp32_modules

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = "vtp-bisect/1"
EXIT_OK, EXIT_FAIL, EXIT_ENV = 0, 1, 2
GROUP_DEPTH = 3
_GROUP_SKIP = ("Identity", "ModuleList", "Dropout", "RopePositionEmbedding")

logger = logging.getLogger("verify.bisection")


# --------------------------------------------------------------------------------------------- one trial
class _Trial:
    """Runs candidates against reference outputs computed once."""

    def __init__(self, reference, inputs, device, precision, thresholds, tasks=None):
        import torch

        from ascend.device import strict_fp32
        from verify.run import TASKS, run_tasks, task_plan

        self.reference, self.device, self.precision, self.thresholds = reference, device, precision, thresholds
        self.tasks = {t: TASKS[t] for t in tasks} if tasks else task_plan(reference.config)[0]
        self.images, self.text = inputs["images"], inputs["text"]
        self.run_tasks = run_tasks
        with strict_fp32(torch.device("cpu")):
            self.expected = run_tasks(reference, self.images, self.text, torch.device("cpu"), "fp32", self.tasks)
        self.runs = []

    def __call__(self, label, fusion="all", fault=None, fp32_modules=()) -> bool:
        from ascend.runtime import prepare_candidate
        from verify.faults import inject_fault
        from verify.metrics import compare_tensors
        from verify.verdict import judge

        candidate, _ = prepare_candidate(self.reference, self.device, fusion=fusion, precision=self.precision)
        if isinstance(fault, str):
            inject_fault(candidate, fault)
        elif callable(fault):
            fault(candidate)
        if fp32_modules:
            apply_fp32_modules(candidate, fp32_modules)
        try:
            got = self.run_tasks(candidate, self.images, self.text, self.device, self.precision, self.tasks)
        except Exception as exc:  # a crash is a failing trial
            self.runs.append({"trial": label, "passed": False, "failed": [f"{type(exc).__name__}: {exc}"]})
            return False
        failed = []
        for names in self.tasks.values():
            for name in names:
                rec = compare_tensors(got[name], self.expected[name], name, probabilities=name == "clip_probs")
                if judge(rec, self.thresholds, precision=self.precision if "precisions" in self.thresholds
                         else None)["verdict"] != "PASS":
                    failed.append(name)
        self.runs.append({"trial": label, "passed": not failed, "failed": failed})
        logger.info("trial %-40s %s%s", label, "PASS" if not failed else "FAIL",
                    f" ({', '.join(failed)})" if failed else "")
        return not failed


# --------------------------------------------------------------------------------------------- fusion
def bisect_fusion(reference, inputs, *, device, precision, fusion, thresholds, fault=None, tasks=None) -> dict:
    """Name the fusion rule(s) that make the candidate fail; return the passing ``--fusion`` spec.

    fault: an --inject-fault spec or a callable(candidate) applied to every trial (a self-test).
    Result: {"schema", "kind": "fusion", "rules", "faulty", "passing_spec", "conclusion", "runs"}.
    """
    from ascend.fusion import parse_fusion_spec

    rules = [r.name for r in parse_fusion_spec(fusion)]
    trial = _Trial(reference, inputs, device, precision, thresholds, tasks)
    result = {"schema": SCHEMA, "kind": "fusion", "precision": precision, "rules": rules, "faulty": [],
              "passing_spec": None, "conclusion": "", "runs": trial.runs}
    spec = lambda names: ",".join(names) if names else "none"  # noqa: E731
    if trial(f"fusion={spec(rules)}", spec(rules), fault):
        result.update(passing_spec=spec(rules), conclusion="the candidate passes with every rule: nothing to bisect")
        return result
    if not trial("fusion=none", "none", fault):
        result["conclusion"] = ("the unfused candidate fails too: the fusions are not the cause (device, precision "
                                "or an injected fault); see python -m verify.locate")
        return result
    faulty = [r for r in rules if trial(f"without {r}", spec([x for x in rules if x != r]), fault)]
    if not faulty:  # no single removal fixes it: several rules are at fault; find those failing alone
        faulty = [r for r in rules if not trial(f"only {r}", r, fault)]
    keep = [r for r in rules if r not in faulty]
    while keep and not trial(f"fusion={spec(keep)}", spec(keep), fault):  # interacting rules: drop from the end
        faulty.append(keep.pop())
    result["faulty"] = [r for r in rules if r in faulty]
    result["passing_spec"] = spec(keep)
    result["conclusion"] = (f"faulty rule(s): {', '.join(result['faulty'])}; the candidate passes with "
                            f"--fusion {spec(keep)}")
    return result


# --------------------------------------------------------------------------------------------- precision
def default_groups(model) -> list:
    """Candidate fp32 islands: module names with at most GROUP_DEPTH parts, excluding containers and
    parameter-free helpers, leaves of the tree at that depth (trunk.blocks.3, not trunk)."""
    names = [n for n, m in model.named_modules() if n and n.count(".") < GROUP_DEPTH
             and type(m).__name__ not in _GROUP_SKIP]
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def bisect_precision(reference, inputs, *, device, precision, thresholds, fusion="all", fault=None, tasks=None,
                     groups=None) -> dict:
    """A small set of modules that must run in fp32 for the ``precision`` candidate to pass.

    Result: {"schema", "kind": "precision", "precision", "groups", "fp32_modules", "conclusion", "runs"}.
    """
    if precision == "fp32":
        raise ValueError("precision bisection needs an fp16 or bf16 candidate")
    trial = _Trial(reference, inputs, device, precision, thresholds, tasks)
    groups = list(groups) if groups is not None else default_groups(reference)
    result = {"schema": SCHEMA, "kind": "precision", "precision": precision, "fusion": fusion, "groups": groups,
              "fp32_modules": None, "conclusion": "", "runs": trial.runs}
    if trial(f"{precision}, no fp32 module", fusion, fault):
        result.update(fp32_modules=[], conclusion=f"the {precision} candidate passes as it is: nothing to keep in fp32")
        return result
    if not trial(f"{precision}, all {len(groups)} groups in fp32", fusion, fault, groups):
        result["conclusion"] = ("the candidate fails even with every group in fp32: the error is not a precision "
                                "problem of these modules (see python -m verify.locate)")
        return result
    keep = list(groups)
    chunk = max(1, len(keep) // 2)
    while chunk >= 1:  # delta debugging: drop as large a chunk as still passes, then halve the chunk
        i = 0
        while i < len(keep):
            trying = keep[:i] + keep[i + chunk:]
            if trial(f"{precision}, fp32: {len(trying)} module(s)", fusion, fault, trying):
                keep = trying
            else:
                i += chunk
        chunk //= 2
    result["fp32_modules"] = keep
    result["conclusion"] = f"the {precision} candidate passes with {len(keep)} module(s) in fp32: {', '.join(keep)}"
    return result


# --------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify.bisection", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m verify.bisection fusion --device npu:0 --fusion all\n"
               "  python -m verify.bisection precision --device npu:0 --precision bf16 --out verify_out/bisect\n"
               "writes OUT/bisect.json (and OUT/fp32_modules.yaml for precision)\n"
               "exit status: 0 a passing configuration was found, 1 none, 2 usage or environment error")
    p.add_argument("kind", choices=["fusion", "precision"])
    add_run_options(p, precision_default=None, precision_help="default fp32 for fusion, bf16 for precision")
    p.add_argument("--out", type=Path, help="output folder (default verify_out/bisect-<timestamp>)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--tasks", nargs="+", help="reconstruction, clip, ssl (default: all the checkpoint has)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    precision = args.precision or ("fp32" if args.kind == "fusion" else "bf16")
    if args.kind == "precision" and precision == "fp32":
        print("error: precision bisection needs --precision fp16 or bf16", file=sys.stderr)
        return EXIT_ENV
    from ascend.npu import prepare_environment

    prepare_environment()
    try:
        from ascend.device import resolve_device
        from ascend.fusion import parse_fusion_spec
        from ascend.runtime import load_weights
        from verify.faults import parse_fault
        from verify.run import make_inputs
        from verify.verdict import load_thresholds

        device = resolve_device(args.device)
        thresholds = load_thresholds(args.thresholds)
        parse_fusion_spec(args.fusion)
        if args.inject_fault:
            parse_fault(args.inject_fault)
        reference, _ = load_weights(args.weights, require=args.require_weights)
        if args.size % reference.config.vision_patch_size:
            raise ValueError(f"--size {args.size} is not a multiple of the patch size "
                             f"{reference.config.vision_patch_size}")
        images, _, text = make_inputs(args.weights, args.batch, args.size, prompts_from_args(args),
                                      context_length=reference.config.text_context_length)
        inputs = {"images": images, "text": text}
        kw = dict(device=device, precision=precision, thresholds=thresholds, fault=args.inject_fault, tasks=args.tasks)
        result = (bisect_fusion(reference, inputs, fusion=args.fusion, **kw) if args.kind == "fusion"
                  else bisect_precision(reference, inputs, fusion=args.fusion, **kw))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    from vtp.io_utils import atomic_write_json

    out = args.out or Path("verify_out") / datetime.datetime.now().strftime("bisect-%Y%m%d-%H%M%S")
    atomic_write_json(out / "bisect.json", result)
    print(result["conclusion"])
    if args.kind == "fusion" and result["passing_spec"] is not None:
        print(f"use: --fusion {result['passing_spec']}")
    if args.kind == "precision" and result["fp32_modules"]:
        path = write_fp32_modules(out / "fp32_modules.yaml", result["fp32_modules"], precision=precision)
        print(f"fp32 module list: {path}")
    found = result.get("passing_spec") is not None or result.get("fp32_modules") is not None
    return EXIT_OK if found else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
