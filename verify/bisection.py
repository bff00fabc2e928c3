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

A trial "passes" exactly when the harness would pass: the harness's cases (a profile of verify/cases.yaml,
``--profile quick`` by default), its inputs for every call, its calls (A, B, A again, the warm calls) and its
judging (verify.judge: every gate of the verdict, the fp16/bf16 error ratio against the same-precision CPU
reference included). The search runs the cases the candidate failed; the configuration found is then
re-checked on every case of the plan, and only one that passes is printed (``--fusion``) or written
(``--fp32-modules``). Exit status of the CLI: 0 a passing configuration was found (or nothing failed),
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
    """Certifies candidates exactly as the harness does: the plan's cases, the harness's inputs for every call
    (verify.cases.make_case_inputs), the harness's calls (verify.run.run_case: A, B, A again, the warm calls)
    and its judging (verify.judge.judge_case + overall), so a trial passes exactly when run_verify.sh would.
    The fp32 reference answers are computed once; for fp16/bf16 run_case also runs the same-precision
    reference, so the error-ratio gates apply as in the verdict."""

    def __init__(self, reference, plan, device, precision, thresholds, first_image=None):
        import torch

        from vtp.tokenizers import get_tokenizer
        from verify.cases import make_case_inputs

        if not (isinstance(thresholds, dict) and "precisions" in thresholds):
            raise ValueError("bisection judges with the verdict's threshold table (verify.verdict.load_thresholds), "
                             "not a flat dict of limits")
        self.reference, self.plan, self.precision, self.thresholds = reference, plan, precision, thresholds
        self.device = torch.device(device)
        tokenizer = get_tokenizer(context_length=reference.config.text_context_length)
        calls = ("A", "B") if plan.repeat else ("A",)
        self.inputs = {case.id: {call: make_case_inputs(plan, case, call, tokenizer,
                                                        first_image if case.task == "clip" else None)
                                 for call in calls} for case in plan.cases}
        self.golden = {}  # case id -> the fp32 reference's answers per call, computed by the first trial
        self.runs = []
        self.failing_cases = None  # ids of the cases the first failing trial failed (the search runs these)

    def __call__(self, label, fusion="all", fault=None, fp32_modules=(), cases=None) -> bool:
        """Certify one configuration on ``cases`` (ids; default: every case of the plan)."""
        from ascend.device import restore_fp32_state, set_strict_fp32, synchronize
        from ascend.runtime import prepare_candidate
        from verify.faults import inject_fault
        from verify.judge import judge_case, overall
        from verify.run import run_case

        plan = self.plan
        chosen = [c for c in plan.cases if cases is None or c.id in cases]
        strict = set_strict_fp32(self.device, True) if self.precision == "fp32" else None
        try:
            candidate, _ = prepare_candidate(self.reference, self.device, fusion=fusion, precision=self.precision)
            if callable(fault):  # a self-test's kernel bug lives inside its module, under the fp32 wrapper
                fault(candidate)
            if fp32_modules:
                apply_fp32_modules(candidate, fp32_modules)
            if isinstance(fault, str):  # --inject-fault: as the harness applies it, after the fp32 modules
                inject_fault(candidate, fault)
            calls, checks = [], []
            for case in chosen:
                warm = None
                if (case.batch, case.height, case.width) in set(plan.timing) or case.prompt_set == plan.zero_shot_prompts:
                    warm = {"warmup": plan.warmup, "iters": plan.iters, "timed": False}
                run = run_case(case, self.inputs[case.id], candidate=candidate, reference=self.reference,
                               device=self.device, precision=self.precision, repeat=plan.repeat, warm=warm,
                               sync=lambda: synchronize(self.device), golden=self.golden.get(case.id))
                self.golden.setdefault(case.id, run.reference)
                case_calls, case_checks = judge_case(run, self.thresholds, self.precision,
                                                     self.reference.config.vision_patch_size)
                calls += case_calls
                checks += case_checks
        except Exception as exc:  # a crash is a failing trial
            self.runs.append({"trial": label, "passed": False, "cases": len(chosen),
                              "failed": [f"{type(exc).__name__}: {exc}"], "failed_cases": [], "failed_gates": []})
            return False
        finally:
            if strict is not None:
                restore_fp32_state(strict)
        verdict = overall(calls, checks)
        passed = verdict["verdict"] == "PASS"
        failed_tensors = sorted({f"{c['case']}@{c['call']}/{t['name']}" for c in calls if c["verdict"] != "PASS"
                                 for t in c["tensors"] if t["verdict"] != "PASS"})
        self.runs.append({"trial": label, "passed": passed, "cases": len(chosen), "failed": failed_tensors,
                          "failed_cases": verdict["failed_cases"], "failed_gates": verdict["failed_gates"],
                          "first_reason": (verdict["reasons"] or [None])[0]})
        if not passed and self.failing_cases is None:
            self.failing_cases = [c.id for c in chosen if c.id in set(verdict["failed_cases"])] or None
        logger.info("trial %-40s %s%s", label, "PASS" if passed else "FAIL",
                    f" ({', '.join(verdict['failed_gates'])} in {', '.join(verdict['failed_cases'][:4])})"
                    if not passed else "")
        return passed

    def search(self, label, fusion="all", fault=None, fp32_modules=()) -> bool:
        """A trial during the search: only the cases the configuration under test first failed (the final
        configuration is re-checked on every case by `recheck`)."""
        return self(label, fusion, fault, fp32_modules, cases=self.failing_cases)

    def recheck(self, label, fusion="all", fault=None, fp32_modules=()) -> bool:
        return self(f"re-check on every case: {label}", fusion, fault, fp32_modules)


def plan_for(reference, profile: str = "quick", cases_file=None, tasks=None, prompts=None):
    """The harness's plan (verify.cases) for this checkpoint: ``profile`` of ``cases_file`` (default
    verify/cases.yaml), optionally only the cases of ``tasks`` (reconstruction, clip, clip_text, ssl)."""
    from verify.cases import build_plan, load_cases

    plan = build_plan(load_cases(cases_file), profile, reference.config, prompts=prompts)
    if tasks:
        unknown = sorted(set(tasks) - {"reconstruction", "clip", "clip_text", "ssl"})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}: use reconstruction, clip, clip_text, ssl")
        plan.cases = [c for c in plan.cases if c.task in tasks]
    return plan


# --------------------------------------------------------------------------------------------- fusion
def bisect_fusion(reference, plan, *, device, precision, fusion, thresholds, fault=None, first_image=None) -> dict:
    """Name the fusion rule(s) that make the candidate fail; return the passing ``--fusion`` spec.

    plan: the harness's cases (`plan_for`); every trial is certified as the harness certifies (`_Trial`).
    fault: an --inject-fault spec or a callable(candidate) applied to every trial (a self-test).
    Result: {"schema", "kind": "fusion", "rules", "faulty", "passing_spec", "verdict", "conclusion", "runs"}:
    ``passing_spec`` is set only when that spec passed the re-check on every case of the plan; ``verdict`` is
    the candidate's own (the first trial: the configuration as given), as run_verify.sh would give it.
    """
    from ascend.fusion import parse_fusion_spec

    rules = [r.name for r in parse_fusion_spec(fusion)]
    trial = _Trial(reference, plan, device, precision, thresholds, first_image)
    result = {"schema": SCHEMA, "kind": "fusion", "precision": precision, "rules": rules, "faulty": [],
              "passing_spec": None, "verdict": None, "conclusion": "", "runs": trial.runs}
    spec = lambda names: ",".join(names) if names else "none"  # noqa: E731
    given = trial(f"fusion={spec(rules)}", spec(rules), fault)
    result["verdict"] = "PASS" if given else "FAIL"
    if given:
        result.update(passing_spec=spec(rules), conclusion="the candidate passes with every rule: nothing to bisect")
        return result
    if not trial.search("fusion=none", "none", fault):
        result["conclusion"] = ("the unfused candidate fails too: the fusions are not the cause (device, precision "
                                "or an injected fault); see python -m verify.locate")
        return result
    faulty = [r for r in rules if trial.search(f"without {r}", spec([x for x in rules if x != r]), fault)]
    if not faulty:  # no single removal fixes it: several rules are at fault; find those failing alone
        faulty = [r for r in rules if not trial.search(f"only {r}", r, fault)]
    keep = [r for r in rules if r not in faulty]
    while keep and not trial.search(f"fusion={spec(keep)}", spec(keep), fault):  # interacting rules
        faulty.append(keep.pop())
    result["faulty"] = [r for r in rules if r in faulty]
    while not trial.recheck(f"fusion={spec(keep)}", spec(keep), fault):  # never print a spec the harness fails
        if not keep:
            result["conclusion"] = ("no fusion spec passes every case of the plan (fusion=none fails the re-check): "
                                    "see python -m verify.locate")
            return result
        result["faulty"].append(keep.pop())
    result["passing_spec"] = spec(keep)
    result["conclusion"] = (f"faulty rule(s): {', '.join(result['faulty'])}; the candidate passes every case of the "
                            f"plan with --fusion {spec(keep)}")
    return result


# --------------------------------------------------------------------------------------------- precision
def default_groups(model) -> list:
    """Candidate fp32 islands: module names with at most GROUP_DEPTH parts, excluding containers and
    parameter-free helpers, leaves of the tree at that depth (trunk.blocks.3, not trunk)."""
    names = [n for n, m in model.named_modules() if n and n.count(".") < GROUP_DEPTH
             and type(m).__name__ not in _GROUP_SKIP]
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]


def bisect_precision(reference, plan, *, device, precision, thresholds, fusion="all", fault=None, groups=None,
                     first_image=None) -> dict:
    """A small set of modules that must run in fp32 for the ``precision`` candidate to pass.

    plan: the harness's cases (`plan_for`); every trial is certified as the harness certifies (`_Trial`, the
    ratio gates against the same-precision reference included). ``fp32_modules`` is set only when that set
    passed the re-check on every case of the plan.
    Result: {"schema", "kind": "precision", "precision", "groups", "fp32_modules", "verdict", "conclusion", "runs"}.
    """
    if precision == "fp32":
        raise ValueError("precision bisection needs an fp16 or bf16 candidate")
    trial = _Trial(reference, plan, device, precision, thresholds, first_image)
    groups = list(groups) if groups is not None else default_groups(reference)
    result = {"schema": SCHEMA, "kind": "precision", "precision": precision, "fusion": fusion, "groups": groups,
              "fp32_modules": None, "verdict": None, "conclusion": "", "runs": trial.runs}
    given = trial(f"{precision}, no fp32 module", fusion, fault)
    result["verdict"] = "PASS" if given else "FAIL"
    if given:
        result.update(fp32_modules=[], conclusion=f"the {precision} candidate passes as it is: nothing to keep in fp32")
        return result
    if not trial.search(f"{precision}, all {len(groups)} groups in fp32", fusion, fault, groups):
        result["conclusion"] = ("the candidate fails even with every group in fp32: the error is not a precision "
                                "problem of these modules (see python -m verify.locate)")
        return result
    keep = list(groups)
    chunk = max(1, len(keep) // 2)
    while chunk >= 1:  # delta debugging: drop as large a chunk as still passes, then halve the chunk
        i = 0
        while i < len(keep):
            trying = keep[:i] + keep[i + chunk:]
            if trial.search(f"{precision}, fp32: {len(trying)} module(s)", fusion, fault, trying):
                keep = trying
            else:
                i += chunk
        chunk //= 2
    for candidate_set in (keep, list(groups)):  # never write a file the harness fails: re-check on every case
        if trial.recheck(f"{precision}, fp32: {len(candidate_set)} module(s)", fusion, fault, candidate_set):
            result["fp32_modules"] = candidate_set
            result["conclusion"] = (f"the {precision} candidate passes every case of the plan with "
                                    f"{len(candidate_set)} module(s) in fp32: {', '.join(candidate_set)}")
            return result
    result["conclusion"] = (f"no fp32 module set passes every case of the plan (the search's set and all "
                            f"{len(groups)} groups fail the re-check): see python -m verify.locate")
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
    p.add_argument("--profile", default="quick", help="the harness's cases profile each trial certifies: quick "
                                                      "(the default), default or full; re-check with run_verify.sh "
                                                      "at the profile you certify with")
    p.add_argument("--cases", type=Path, help="cases YAML (default verify/cases.yaml)")
    p.add_argument("--tasks", nargs="+", help="only these tasks' cases: reconstruction, clip, clip_text, ssl "
                                              "(default: all the checkpoint has)")
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
        from ascend.runtime import default_image, load_weights
        from verify.faults import parse_fault
        from verify.verdict import load_thresholds

        device = resolve_device(args.device)
        thresholds = load_thresholds(args.thresholds)
        parse_fusion_spec(args.fusion)
        if args.inject_fault:
            parse_fault(args.inject_fault)
        reference, _ = load_weights(args.weights, require=args.require_weights)
        given = args.prompt or args.prompts_file or args.legacy_prompts
        plan = plan_for(reference, args.profile, args.cases, args.tasks, prompts_from_args(args) if given else None)
        kw = dict(device=device, precision=precision, thresholds=thresholds, fault=args.inject_fault,
                  first_image=default_image(args.weights)[0])
        result = (bisect_fusion(reference, plan, fusion=args.fusion, **kw) if args.kind == "fusion"
                  else bisect_precision(reference, plan, fusion=args.fusion, **kw))
    except (ValueError, FileNotFoundError, RuntimeError) as exc:  # CasesError, ThresholdsError are ValueErrors
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
    from verify.cli import exit_with

    exit_with(main, "no --fusion spec or fp32-modules file was written (only a "
                    "configuration that passed is); rerun the same command")
