"""Certify a candidate (device, fusions, precision) against the CPU fp32 reference: accuracy and timing.

The stages, one file each: verify/setup.py (the models) -> verify/cases.py (which cases, which inputs) ->
verify/run.py (candidate and references answer every case: A, B, A again, warm/timed calls) ->
verify/metrics.py (compare tensors) -> verify/judge.py + verify/verdict.py (gates, one verdict) ->
verify/locate.py (the first divergent module, on a FAIL) -> verify/report/ (the table, report.html).
`evaluate` is that pipeline in one screen; this file also reads the options and writes the outputs.

Outputs, written atomically: OUT/accuracy_summary.json (schema vtp-accuracy-summary/2) and OUT/log.txt
(appended, one header per run). Exit 0: PASS; 1: verification FAILED; 2: environment or usage error.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python verify/accuracy_eval.py`: import from the checkout, and never
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # let a file of verify/ shadow a standard module

from ascend.npu import prepare_environment  # noqa: E402  (imports neither torch nor torch_npu)
from verify.cli import add_run_options  # noqa: E402
from verify.faults import UsageError, parse_fault  # noqa: E402
from verify.artifacts import OUTPUTS_FILE  # noqa: E402

SCHEMA = "vtp-accuracy-summary/2"
EXIT_PASS, EXIT_FAIL, EXIT_ENV = 0, 1, 2

logger = logging.getLogger("verify.accuracy_eval")


# --------------------------------------------------------------------------------------------- options
def check_options(args) -> dict:
    """Every option checked before any heavy work: returns what the checks already parsed."""
    from ascend.device import resolve_device
    from ascend.fusion import parse_fusion_spec
    from ascend.runtime import prompts_from_args
    from verify.fp32_modules import load_fp32_modules
    from verify.cases import load_cases
    from verify.verdict import load_thresholds

    if args.inject_fault:
        parse_fault(args.inject_fault)
    try:
        parse_fusion_spec(args.fusion)
    except ValueError as e:
        raise UsageError(f"--fusion {args.fusion!r}: {e}") from None
    fp32_modules = None
    if args.fp32_modules:
        try:
            fp32_modules = load_fp32_modules(args.fp32_modules)
        except ValueError as e:
            raise UsageError(f"--fp32-modules: {e}") from None
    if args.reference is not None and not (args.reference / "manifest.json").is_file():
        raise UsageError(f"--reference {args.reference}: no golden set here (manifest.json missing); make one with "
                         "--save-golden DIR")
    envelope_options(args)
    if args.reference_sha256 is not None:
        if args.reference is None:
            raise UsageError("--reference-sha256 pins a golden set: give the set with --reference DIR too")
        from verify.golden import check_pin

        check_pin(args.reference, args.reference_sha256)
    if args.golden_source != "reference" and not args.save_golden:
        raise UsageError("--golden-source chooses what --save-golden DIR holds: give --save-golden DIR too")
    given = args.prompt or args.prompts_file or args.legacy_prompts
    device = resolve_device(args.device)
    from verify.levels import resolve as resolve_level

    level = resolve_level(args.level, args.burn_in, args.profile, device.type)  # --level, --burn-in
    args.profile = level.profile
    return {"device": device, "thresholds": load_thresholds(args.thresholds),
            "cases": load_cases(args.cases), "prompts": prompts_from_args(args) if given else None,
            "fp32_modules": fp32_modules, "level": level}


def envelope_options(args) -> None:
    """--batch-sizes, --sizes, --fuzz and --seed parsed in place (CasesError, exit 2, when malformed); a
    --fuzz without --seed gets a new seed, recorded in the summary so that the run can be replayed."""
    import random

    from verify.cases import CasesError, parse_batch_sizes, parse_sizes

    if isinstance(args.batch_sizes, str):
        args.batch_sizes = parse_batch_sizes(args.batch_sizes)
    if isinstance(args.sizes, str):
        args.sizes = parse_sizes(args.sizes)
    if args.fuzz < 0:
        raise CasesError(f"--fuzz {args.fuzz}: expected a number of cases >= 0")
    if args.fuzz and args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)


# --------------------------------------------------------------------------------------------- the pipeline
def evaluate(args, opts: dict) -> tuple:
    """The certification, one call per stage, with the options `check_options` parsed. Returns (summary,
    console lines, case runs, extras for the output files)."""
    from verify import levels
    from verify.artifacts import save_golden_set
    from verify.report.table import summary_lines
    from verify.setup import prepare
    from verify.timing import load_average

    clock = {"start": time.perf_counter(), "load_start": load_average()}
    setup = prepare(args, opts)                                            # the models and the plan
    try:
        level = levels.start(opts["level"], setup.device)                 # calibration, device spot checks
        runs, calls, checks, clock["compute_s"] = certify_cases(args, setup)  # run, compare, judge every case
        level = levels.finish(opts["level"], level, setup=setup, runs=runs, calls=calls, precision=args.precision)
        setup.cpu_fused = None                                             # its memory back before localisation
        divergence, clock["locate_s"] = locate_on_fail(args, setup, runs, calls)  # the first divergent module
        golden_saved = None
        if args.save_golden:
            golden_saved = save_golden_set(args.save_golden, runs, setup.identity, setup.config, setup.plan,
                                           source=args.golden_source, candidate={
                                               "device": str(setup.device), "precision": args.precision,
                                               "fusion": args.fusion})
    finally:
        setup.close()
    checks.append(coverage_check(setup))
    checks += levels.burn_in_check(level)
    summary = build_summary(args, opts, setup, calls, checks, runs, divergence, clock)
    summary["golden_saved"] = golden_saved
    level_lines = levels.annotate(summary, opts["level"], level)      # level, spot checks, burn-in, CONTENDED
    extras = {"divergence": divergence, "fusion": _fusion_dict(setup.fusion_report)}
    return summary, summary_lines(summary) + level_lines, runs, extras


def certify_cases(args, setup) -> tuple:
    """Stages 2-4 for every case of the plan: its inputs (verify.cases), the candidate's and the references'
    answers (verify.run), the gates (verify.judge). Returns (runs, judged calls, checks, model compute s)."""
    from ascend.device import synchronize
    from verify.cases import make_case_inputs
    from verify.judge import judge_case
    from verify.run import run_case

    plan, golden = setup.plan, setup.golden
    runs, calls, checks, compute_s = [], [], [], 0.0
    timed_shapes = set(plan.timing)
    progress = _progress(len(plan.cases))
    for case in plan.cases:
        calls_of_case = ("A", "B") if plan.repeat else ("A",)
        inputs = {call: make_case_inputs(plan, case, call, setup.tokenizer,
                                         setup.first_image if case.task == "clip" else None)
                  for call in calls_of_case}
        if golden is not None:  # the set's own inputs: the reference answers belong to them
            inputs = {call: golden.case_inputs(case, call, inputs[call]["described"]) for call in calls_of_case}
        warm = None
        if (case.batch, case.height, case.width) in timed_shapes or case.prompt_set == plan.zero_shot_prompts:
            warm = {"warmup": plan.warmup, "iters": plan.iters, "timed": not args.no_timing}
        run = run_case(case, inputs, candidate=setup.candidate, reference=setup.reference, device=setup.device,
                       precision=args.precision, cpu_fused=setup.cpu_fused, repeat=plan.repeat, warm=warm,
                       sync=lambda: synchronize(setup.device), candidate_is_cpu_fused=setup.candidate_is_cpu_fused,
                       golden=({call: golden.case_outputs(case, call) for call in calls_of_case}
                               if golden is not None else None))
        compute_s += run.compute_s
        case_calls, case_checks = judge_case(run, setup.thresholds, args.precision, setup.config.vision_patch_size)
        calls += case_calls
        checks += case_checks
        verdicts = " ".join(f"{c['call']}={c['verdict']}" for c in case_calls)
        logger.info("case %-28s %s (%.1f s)%s", case.id, verdicts, run.compute_s, progress())
        runs.append(run)
    return runs, calls, checks, compute_s


def _progress(total: int):
    """A function giving " [case i of N, elapsed, about T left]" on a terminal (or with VTP_PROGRESS=1, which
    run_verify.sh sets when its own output is a terminal), "" in a log: CI logs stay quiet."""
    started, done = time.perf_counter(), [0]

    def line() -> str:
        done[0] += 1
        if not (sys.stderr.isatty() or os.environ.get("VTP_PROGRESS") == "1"):  # run_verify.sh on a terminal
            return ""
        elapsed = time.perf_counter() - started
        left = elapsed / done[0] * (total - done[0])
        return f"  [case {done[0]} of {total}, {elapsed:.0f} s elapsed, about {left:.0f} s left]"
    return line


def locate_on_fail(args, setup, runs, calls) -> tuple:
    """Stage 5: (the divergence result or None, seconds): on a FAIL, or always with --locate always."""
    from verify.artifacts import locate_first_failure

    failed = any(c["verdict"] != "PASS" for c in calls)
    if not (args.locate == "always" or (args.locate == "on-fail" and failed)):
        return None, 0.0
    t = time.perf_counter()
    divergence = locate_first_failure(runs, calls, setup.reference, setup.candidate, device=setup.device,
                                      precision=args.precision, thresholds=setup.thresholds)
    first = divergence.get("first_divergent")
    logger.info("first divergent module: %s (%.1f s)", first["module"] if first else "none found",
                time.perf_counter() - t)
    return divergence, time.perf_counter() - t


def coverage_check(setup) -> dict:
    """What the plan covered of the operating envelope and its gaps (verify.envelope), as a check that reports,
    never fails: the profile is the user's choice."""
    from verify.envelope import coverage

    plan, config = setup.plan, setup.config
    cover = coverage(plan, setup.tokenizer, config.text_vocab_size, config.text_context_length,
                     config.vision_patch_size)
    for gap in cover["gaps"]:
        logger.info("coverage: %s (profile %s)", gap, plan.profile)  # informational: in the summary too
    return {"check": "coverage", "id": f"profile {plan.profile}", "verdict": "PASS", "detail": cover,
            "note": "gaps are reported, not failed: the profile is the user's choice"}


def build_summary(args, opts, setup, calls, checks, runs, divergence, clock) -> dict:
    """accuracy_summary.json (schema vtp-accuracy-summary/2) as a dict."""
    from ascend.device import peak_memory_bytes
    from ascend.environment import environment_report
    from verify.judge import overall
    from verify.timing import CLEAN_NUMBERS_HINT, cold_process_load, load_average
    from verify.verdict import select_thresholds

    device, thresholds, plan, identity, golden = setup.device, setup.thresholds, setup.plan, setup.identity, setup.golden
    fault, options, fusion_report = setup.fault, setup.ascend_options, setup.fusion_report
    timings_by_case = {run.case.id: run.timing for run in runs if run.timing is not None}
    load_s, prepare_s, compute_s, locate_s = setup.load_s, setup.prepare_s, clock["compute_s"], clock["locate_s"]
    load_start, t_start = clock["load_start"], clock["start"]
    result = overall(calls, checks)

    timings = {"load_in_process_s": load_s, "prepare_candidate_s": prepare_s, "tasks": timings_by_case,
               "warmup": plan.warmup, "iters": plan.iters}
    if not args.no_timing:
        if identity.get("path") and args.profile != "quick":
            timings["load_cold_process"] = cold_process_load(identity["path"])
            load_s += timings["load_cold_process"]["import_torch_s"] + timings["load_cold_process"]["load_s"]
        else:
            timings["load_cold_process"] = None
            timings["load_cold_process_note"] = ("skipped: synthetic weights" if identity["kind"] == "synthetic"
                                                 else "skipped: --quick")
    timings["peak_memory_bytes"] = peak_memory_bytes(device)
    timings["machine_load"] = {"start": load_start, "end": load_average()}
    unstable = sorted(k for k, v in timings_by_case.items() if v.get("unstable"))
    timings["unstable"] = unstable
    if unstable:
        timings["unstable_note"] = ("unstable measurements (p90/min or median/min above the stated ratios): "
                                    + ", ".join(unstable) + "; " + CLEAN_NUMBERS_HINT)
    total_s = time.perf_counter() - t_start
    overhead_s = total_s - compute_s - load_s - prepare_s - locate_s
    timings["harness"] = {
        "total_s": total_s, "model_compute_s": compute_s, "loading_s": load_s, "preparation_s": prepare_s,
        "localisation_s": locate_s,
        "overhead_s": overhead_s, "overhead_fraction_of_compute": overhead_s / compute_s if compute_s else None,
        "note": "overhead = total - model compute (every call of candidate and references) - loading - candidate "
                "preparation - localisation (verify.locate, on a FAIL): inputs, metrics, verdicts, environment "
                "report and output files",
    }

    on_cpu = device.type == "cpu"
    summary = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "environment": environment_report(device),
        "candidate": {
            "device": str(device), "precision": args.precision, "fusion": args.fusion,
            "fusion_rules": _fusion_summary(fusion_report), "strict_fp32": args.precision == "fp32",
            "ascend_options": options, "injected_fault": fault,
            "note": ("no accelerator: the candidate is the CPU with the fusions and the chosen precision, so this "
                     "run checks the fusion layer and the precision, not a device") if on_cpu else None,
        },
        "reference": {"device": "cpu", "precision": "fp32", "fusion": "none",
                      "judged_against": (f"golden set {args.reference}: the {golden.source['source']}'s answers "
                                         f"({golden.source.get('device', '?')}, {golden.source.get('precision', '?')}"
                                         f"{', pinned by sha256' if golden.pinned else ', not pinned'})"
                                         if golden is not None else "the CPU fp32 reference, computed in this run"),
                      "same_precision": (f"the reference model on the CPU at {args.precision}: the candidate's "
                                         "error is judged against its error (gate max_error_ratio)")
                      if args.precision != "fp32" else None},
        "weights": identity,
        "synthetic_weights": identity["kind"] == "synthetic",
        "profile": plan.to_dict(),
        "thresholds": {"file": str(args.thresholds or "verify/thresholds.yaml"), "schema": thresholds["schema"],
                       "version": thresholds["version"], "precision": args.precision,
                       "values": select_thresholds(thresholds, args.precision)},
        "golden_reference": ({"path": str(args.reference), "kit": golden.manifest.get("kit_version"),
                              "source": golden.source, "manifest_sha256": golden.manifest_sha256,
                              "pinned": golden.pinned,
                              "environment_differences": golden.environment_differences}
                             if golden is not None else None),
        "fp32_modules": opts.get("fp32_modules"),
        "divergence": ({"first_divergent": divergence.get("first_divergent"),
                        "first_nonfinite": divergence.get("first_nonfinite"), "file": "divergence.json"}
                       if divergence is not None else None),
        "cases": calls,
        "checks": checks,
        "skipped_tasks": plan.skipped_tasks,
        "timings": timings,
        "verdict": result["verdict"],
        "overall": result,
    }
    return summary


def _fusion_dict(report):
    to_dict = getattr(report, "to_dict", None)
    return to_dict() if callable(to_dict) else report


def _fusion_summary(report) -> dict:
    data = _fusion_dict(report)
    rules = data.get("rules", []) if isinstance(data, dict) else []
    return {r.get("name"): {"count": r.get("count"), "kernel": r.get("kernel")} for r in rules
            if isinstance(r, dict) and r.get("enabled", True)}


# --------------------------------------------------------------------------------------------- outputs
def write_outputs(out: Path, summary: dict, lines: list, runs=(), extras=None, save_outputs: bool = False) -> None:
    """accuracy_summary.json, log.txt, report.html, and divergence.json / candidate outputs when there are."""
    from verify.artifacts import recon_images, save_candidate_outputs
    from verify.report.html import write_html_report
    from verify.divergence import write_divergence
    from vtp.io_utils import atomic_append_text, atomic_write_json

    extras = extras or {}
    if save_outputs:
        save_candidate_outputs(out / OUTPUTS_FILE, runs)
    if extras.get("divergence") is not None:
        write_divergence(out / "divergence.json", extras["divergence"])
    write_html_report(out / "report.html", summary, divergence=extras.get("divergence"),
                      recon_images=recon_images(runs), fusion=extras.get("fusion"))
    atomic_write_json(out / "accuracy_summary.json", summary)
    header = f"===== verify/accuracy_eval {summary['created']} =====\n"
    atomic_append_text(out / "log.txt", header + "\n".join(lines) + "\n\n")


# --------------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python verify/accuracy_eval.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python verify/accuracy_eval.py --device npu:0 --weights weights/VTP-Small-f16d64\n"
               "  python verify/accuracy_eval.py --device cpu --precision bf16 --profile quick --out verify_out/bf16\n"
               "  python verify/accuracy_eval.py --profile full --prompt 'a red car' --prompt 'a dog, sleeping'\n"
               "exit status: 0 PASS, 1 verification FAILED, 2 environment or usage error")
    add_run_options(p, precision_help="candidate precision: fp32 (default; strict, no TF32/HF32) or fp16/bf16 "
                                      "autocast, judged also against the reference model on the CPU at the "
                                      "same precision")
    p.add_argument("--cases", type=Path, help="cases YAML (default verify/cases.yaml)")
    p.add_argument("--profile", default="default",
                   help="profile of the cases file: quick, default (the default) or full")
    p.add_argument("--quick", action="store_const", const="quick", dest="profile",
                   help="same as --profile quick")
    from verify.levels import BURN_IN_HELP, LEVEL_HELP

    p.add_argument("--level", metavar="1|2|3|4", help=LEVEL_HELP)
    p.add_argument("--burn-in", metavar="DURATION", help=BURN_IN_HELP)
    p.add_argument("--out", type=Path, help="folder for accuracy_summary.json, log.txt and fusion_result.json "
                                            "(default verify_out/<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no verdict table on stdout (log.txt and the JSON still "
                                                         "have everything; run_verify.sh prints the table itself)")
    p.add_argument("--iters", type=int, help="timed calls per task (default: the profile's)")
    p.add_argument("--warmup", type=int, help="warm-up calls after the first call (default: the profile's)")
    p.add_argument("--no-timing", action="store_true",
                   help="no latency measurement (the warm calls still run, untimed, and are compared)")
    p.add_argument("--locate", choices=["on-fail", "always", "never"], default="on-fail",
                   help="find the first divergent module (verify.locate, OUT/divergence.json): on-fail (default), "
                        "always or never")
    p.add_argument("--save-golden", type=Path, metavar="DIR",
                   help="write the inputs and the reference's outputs of every case to DIR (a golden set)")
    p.add_argument("--reference", type=Path, metavar="DIR",
                   help="judge against the golden set in DIR instead of recomputing the CPU fp32 reference "
                        "(refused when made with other weights, config or cases, or tampered with)")
    p.add_argument("--reference-sha256", metavar="HEX",
                   help="with --reference: the sha256 of the set's manifest.json you trust (printed by --save-golden); "
                        "a set whose manifest differs is refused (exit 2)")
    p.add_argument("--golden-source", choices=["reference", "candidate"], default="reference",
                   help="with --save-golden: whose answers the set holds: the CPU fp32 reference (default) or this "
                        "run's candidate (a trusted device, e.g. a validated GPU, to judge other devices against)")
    p.add_argument("--batch-sizes", metavar="LIST",
                   help="your envelope: also run every image task at these batch sizes (at the profile's first "
                        "size) and the text tower on that many prompts, e.g. 1,5,16")
    p.add_argument("--sizes", metavar="LIST",
                   help="your envelope: also run every image task at batch 1 at these sizes, e.g. 224x224,336x512 "
                        "(multiples of the patch size)")
    p.add_argument("--fuzz", type=int, default=0, metavar="N",
                   help="N extra cases drawn at random from the operating envelope (batch, sequence length, "
                        "prompt count and length; verify/envelope.py); recorded with their seed, replayable")
    p.add_argument("--seed", type=int, metavar="S",
                   help="seed of --fuzz (default: a new one each run, printed and recorded: rerun with it to "
                        "replay the same cases)")
    p.add_argument("--fp32-modules", type=Path, metavar="FILE",
                   help="fp16/bf16: keep these modules in fp32 (a file written by python -m verify.bisection precision)")
    p.add_argument("--save-outputs", action="store_true",
                   help=f"also write the candidate's outputs to OUT/{OUTPUTS_FILE}")
    p.add_argument("--allow-internal-format", action="store_true",
                   help="NPU: allow private formats such as NZ (default off: fewer precision surprises)")
    return p


def check_out_folder(out: Path) -> None:
    """Create ``out`` and prove it writable; remove an earlier run's results. UsageError otherwise."""
    from verify.preflight import check_out_folder as problems_of_out

    problems = problems_of_out(out)
    if problems:
        raise UsageError(problems[0])
    for name in ("accuracy_summary.json", "fusion_result.json", OUTPUTS_FILE, "divergence.json", "report.html"):
        (out / name).unlink(missing_ok=True)  # an earlier run's result must not stand


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for name, low in (("iters", 1), ("warmup", 0)):
        value = getattr(args, name)
        if value is not None and value < low:
            print(f"error: --{name} must be at least {low}, got {value}", file=sys.stderr)
            return EXIT_ENV
    from verify.threads import prepare as prepare_threads

    prepare_threads()  # before torch: passive OpenMP waiting and fewer threads on an oversubscribed machine
    prepare_environment()
    from ascend.device import DeviceError
    from ascend.runtime import PromptError, WeightsMissing
    from verify.cases import CasesError
    from verify.golden import GoldenError
    from verify.verdict import ThresholdsError
    from vtp.checkpoint import CheckpointError
    from vtp.config import ConfigError
    from vtp.image import ImageError
    from vtp.weights import WeightsError

    # Errors of the environment or the options: exit 2. Anything else raised while the models run is a
    # failure of the thing under test: exit 1, never a PASS.
    env_errors = (DeviceError, WeightsMissing, PromptError, ThresholdsError, CasesError, GoldenError,
                  CheckpointError, ConfigError, ImageError, WeightsError, UsageError, FileNotFoundError)
    if args.out is None:
        args.out = Path("verify_out") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        check_out_folder(args.out)
        opts = check_options(args)  # before any model is loaded
        from verify.levels import announce

        print("\n".join(announce(opts["level"])), flush=True)  # what this level runs and how long, before it does
        summary, lines, runs, extras = evaluate(args, opts)
    except env_errors as e:
        logger.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ENV
    except Exception:
        logger.exception("FAILED: the evaluation crashed")
        print("error: the evaluation crashed (traceback above): verification FAILED", file=sys.stderr)
        return EXIT_FAIL
    try:
        write_outputs(args.out, summary, lines, runs, extras, save_outputs=args.save_outputs)
    except OSError as e:
        print(f"error: cannot write the outputs to {args.out} ({e})", file=sys.stderr)
        return EXIT_ENV
    if not args.quiet:
        from verify.report.glance import glance_lines
        from verify.report.table import brief_lines

        closing = glance_lines(summary, args.out)  # the full table is in log.txt
        print("\n".join(brief_lines(summary) + closing[:-1]))
    written = [n for n in ("accuracy_summary.json", "report.html", "log.txt", "divergence.json", "fusion_result.json",
                           OUTPUTS_FILE) if (args.out / n).exists()]
    print(f"outputs in {args.out}: {', '.join(written)}")
    if not args.quiet:
        print(closing[-1])
    return EXIT_PASS if summary["verdict"] == "PASS" else EXIT_FAIL


if __name__ == "__main__":
    from verify.cli import exit_with

    exit_with(main, "no verdict; this run wrote no accuracy_summary.json (it is written at "
                    "the end); rerun the same command")
