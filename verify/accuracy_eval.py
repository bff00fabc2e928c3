"""Accuracy of a candidate (device, fusions, precision) against the CPU fp32 reference, plus timing.

Every task runs on the candidate and on the reference (the unfused model, CPU, fp32) with the same
inputs: a small batch of images (the sample image plus deterministic synthetic ones) and the prompts.
Every output tensor is compared (verify.metrics) and judged against verify/thresholds.yaml
(verify.verdict). The fused model is also run on the CPU in fp32 so that each tensor's error is split
into the part due to the fusions (CPU fused vs reference) and the part due to the device and precision
(candidate vs CPU fused).

Outputs, both written atomically: OUT/accuracy_summary.json (schema vtp-accuracy-summary/1) and
OUT/log.txt (appended, one header per run). Exit 0: PASS; 1: verification FAILED; 2: environment or
usage error.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import logging
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as `python verify/accuracy_eval.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ascend.npu import prepare_environment  # noqa: E402  (imports neither torch nor torch_npu)

SCHEMA = "vtp-accuracy-summary/1"
TASKS = {
    "reconstruction": ("latents", "reconstructed_image"),
    "clip": ("clip_image_features", "clip_text_features", "clip_probs"),
    "ssl": ("ssl_cls", "ssl_patch_tokens"),
}
PROBABILITIES = {"clip_probs"}
EXIT_PASS, EXIT_FAIL, EXIT_ENV = 0, 1, 2

logger = logging.getLogger("verify.accuracy_eval")


class UsageError(ValueError):
    pass


# --------------------------------------------------------------------------------------------- inputs
def make_inputs(weights, batch: int, size: int, prompts, context_length: int = 77):
    """(images (batch, 3, size, size), image descriptions, token ids (P, context_length))."""
    import torch

    from ascend.runtime import default_image
    from vtp.image import make_synthetic_batch, preprocess
    from vtp.tokenizers import get_tokenizer

    pil, source = default_image(weights, size=size)
    images = [preprocess(pil, size=size)]
    described = [source]
    if batch > 1:
        images.append(make_synthetic_batch(batch - 1, size=size, seed=1))
        described += [f"synthetic image seed {1 + i}" for i in range(batch - 1)]
    return torch.cat(images), described, get_tokenizer(context_length=context_length)(list(prompts))


# --------------------------------------------------------------------------------------------- tasks
def parse_fault(spec: str):
    """"MODULE=FACTOR" (multiply the module's output) or "MODULE=nan" (one NaN in its output)."""
    if "=" not in spec:
        raise UsageError(f"--inject-fault {spec!r}: expected MODULE=FACTOR or MODULE=nan, "
                         "e.g. trunk.blocks.0=1.02")
    name, value = spec.rsplit("=", 1)
    if value.lower() == "nan":
        return name, "nan"
    try:
        return name, float(value)
    except ValueError:
        raise UsageError(f"--inject-fault {spec!r}: {value!r} is neither a number nor 'nan'") from None


def fault_target(model, spec: str):
    """(module, factor or "nan") for `spec`; UsageError when the model has no such module."""
    name, fault = parse_fault(spec)
    modules = dict(model.named_modules())
    if name not in modules:
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        close = [n for n in modules if n and n.startswith(parent)][:8] or ["trunk.blocks.0", "pixel_decoder.blocks.0",
                                                                         "text_transformer.resblocks.0"]
        raise UsageError(f"--inject-fault: no module named {name!r} in the model (e.g. {', '.join(close)})")
    return modules[name], fault


def inject_fault(model, spec: str):
    """Register a forward hook that perturbs one module's output (harness self-test)."""
    module, fault = fault_target(model, spec)
    name = parse_fault(spec)[0]

    def hook(module, args, output):
        if fault == "nan":
            output = output.clone()
            output[(0,) * output.dim()] = float("nan")  # exactly one NaN, at the first element
            return output
        return output * fault

    module.register_forward_hook(hook)
    logger.warning("injected fault on the candidate: %s -> %s", name, fault)
    return {"module": name, "fault": fault}


def task_plan(config) -> tuple:
    """({task: tensor names} this checkpoint can run, {task: why it is skipped})."""
    tasks, skipped = {}, {}
    if config.train_reconstruction:
        tasks["reconstruction"] = TASKS["reconstruction"]
    else:
        skipped["reconstruction"] = "the checkpoint has no pixel decoder (train_reconstruction=false)"
    if config.train_clip:
        tasks["clip"] = TASKS["clip"]
    else:
        skipped["clip"] = "the checkpoint has no CLIP parts (train_clip=false)"
    tasks["ssl"] = TASKS["ssl"]
    return tasks, skipped


def run_tasks(model, images, text, device, precision: str, tasks=TASKS) -> dict:
    """The outputs of `tasks`, as CPU fp32 tensors."""
    import torch

    from ascend.device import autocast

    images, text = images.to(device), text.to(device)
    out = {}
    with torch.no_grad(), autocast(device, precision):
        if "reconstruction" in tasks:
            out["latents"] = model.get_reconstruction_latents(images)
            out["reconstructed_image"] = model.get_latents_decoded_images(out["latents"])
        if "clip" in tasks:
            out["clip_image_features"] = img_f = model.get_clip_image_feature(images)
            out["clip_text_features"] = txt_f = model.get_clip_text_feature(text)
            out["clip_probs"] = model.logits_from_features(img_f, txt_f).float().softmax(dim=-1)
        if "ssl" in tasks:
            ssl = model.get_last_layer_feature(images)
            out["ssl_cls"], out["ssl_patch_tokens"] = ssl["cls_token"], ssl["patch_tokens"]
    return {k: v.detach().to("cpu", torch.float32) for k, v in out.items()}


def timing_suite(model, images, text, device, precision: str, warmup: int, iters: int, tasks=TASKS) -> dict:
    import torch

    from ascend.device import autocast, synchronize
    from verify.timing import time_call

    images, text = images.to(device), text.to(device)
    calls = {}
    with torch.no_grad(), autocast(device, precision):
        if "reconstruction" in tasks:
            latents = model.get_reconstruction_latents(images)  # the decoder's input, made as in the task
            calls["reconstruction_encode"] = lambda: model.get_reconstruction_latents(images)
            calls["reconstruction_decode"] = lambda: model.get_latents_decoded_images(latents)
        if "clip" in tasks:
            def clip():
                f_i = model.get_clip_image_feature(images)
                f_t = model.get_clip_text_feature(text)
                return model.logits_from_features(f_i, f_t).softmax(dim=-1)
            calls["clip_zero_shot"] = clip
        calls["ssl_features"] = lambda: model.get_last_layer_feature(images)
        results = {}
        for name, fn in calls.items():
            results[name] = time_call(fn, lambda: synchronize(device), warmup=warmup, iters=iters)
            r = results[name]
            logger.info("timing %-22s first %8.1f ms  median %8.1f ms  p90 %8.1f ms  min %8.1f ms",
                        name, r["first_call_ms"], r["median_ms"], r["p90_ms"], r["min_ms"])
    return results


# --------------------------------------------------------------------------------------------- verdicts
def compare_all(candidate: dict, reference: dict, cpu_fused: dict, thresholds: dict, precision: str,
                tasks_run=TASKS) -> dict:
    from verify.metrics import compare_tensors, json_float, relative_l2_error
    from verify.verdict import judge_task, overall_verdict

    tasks = {}
    for task, names in tasks_run.items():
        records = []
        for name in names:
            rec = compare_tensors(candidate[name], reference[name], name, probabilities=name in PROBABILITIES)
            if candidate[name].shape == reference[name].shape == cpu_fused[name].shape:
                rec["attribution"] = {
                    "total_rel_l2": json_float(relative_l2_error(candidate[name], reference[name])),
                    "fusions_rel_l2": json_float(relative_l2_error(cpu_fused[name], reference[name])),
                    "device_and_precision_rel_l2": json_float(relative_l2_error(candidate[name], cpu_fused[name])),
                }
            records.append(rec)
        verdict = judge_task(records, thresholds, precision=precision, task=task)
        for rec, judged in zip(records, verdict["tensors"]):
            judged["metrics"] = rec
        tasks[task] = verdict
    return {"tasks": tasks, "overall": overall_verdict(list(tasks.values()))}


# --------------------------------------------------------------------------------------------- outputs
def write_outputs(out: Path, summary: dict, lines: list) -> None:
    from vtp.io_utils import atomic_append_text, atomic_write_json

    atomic_write_json(out / "accuracy_summary.json", summary)
    header = f"===== verify/accuracy_eval {summary['created']} =====\n"
    atomic_append_text(out / "log.txt", header + "\n".join(lines) + "\n\n")


# --------------------------------------------------------------------------------------------- main
def evaluate(args) -> tuple:
    """Run everything; returns (summary dict, console lines)."""
    import torch

    from ascend.device import (ascend_options, peak_memory_bytes, resolve_device, restore_fp32_state,
                               set_strict_fp32, strict_fp32)
    from ascend.environment import environment_report
    from ascend.fusion import apply_fusions, parse_fusion_spec
    from ascend.runtime import DEFAULT_PROMPTS, load_weights, prepare_candidate
    from verify.timing import cold_process_load
    from verify.verdict import load_thresholds, select_thresholds

    # options first: a usage error must come before any heavy work, and before anything is written
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    if args.inject_fault:
        parse_fault(args.inject_fault)
    thresholds = load_thresholds(args.thresholds)
    try:
        parse_fusion_spec(args.fusion)
    except ValueError as e:
        raise UsageError(f"--fusion {args.fusion!r}: {e}") from None
    prompts = tuple(args.prompts) if args.prompts else DEFAULT_PROMPTS

    t = time.perf_counter()
    reference, identity = load_weights(args.weights, require=args.require_weights)
    load_s = time.perf_counter() - t
    config = reference.config
    if args.size % config.vision_patch_size:
        raise UsageError(f"--size {args.size} is not a multiple of the patch size {config.vision_patch_size}")
    if args.inject_fault:
        fault_target(reference, args.inject_fault)  # the candidate has the same module names
    tasks_run, tasks_skipped = task_plan(config)
    for task, why in tasks_skipped.items():
        logger.warning("task %s skipped: %s", task, why)

    options = ascend_options(device, allow_internal_format=args.allow_internal_format)
    strict_state = set_strict_fp32(device, True) if args.precision == "fp32" else None
    try:
        t = time.perf_counter()
        candidate, fusion_report = prepare_candidate(reference, device, fusion=args.fusion, precision=args.precision,
                                                     record_path=args.out / "fusion_result.json")
        prepare_s = time.perf_counter() - t
        fault = inject_fault(candidate, args.inject_fault) if args.inject_fault else None

        images, image_sources, text = make_inputs(args.weights, args.batch, args.size, prompts,
                                                  context_length=config.text_context_length)
        compute_s = 0.0  # model computation; everything else in total_s is loading or the harness itself
        t = time.perf_counter()
        cand_out = run_tasks(candidate, images, text, device, args.precision, tasks_run)
        with strict_fp32(torch.device("cpu")):  # the reference is full fp32, whatever the candidate's settings
            ref_out = run_tasks(reference, images, text, torch.device("cpu"), "fp32", tasks_run)
        compute_s += time.perf_counter() - t
        same_as_candidate = device.type == "cpu" and args.precision == "fp32" and not fault
        if same_as_candidate:  # the candidate *is* the CPU fp32 fused model
            fused_out = cand_out
        else:
            t = time.perf_counter()
            cpu_fused = copy.deepcopy(reference)
            apply_fusions(cpu_fused, fusion=args.fusion, device=torch.device("cpu"))
            prepare_s += time.perf_counter() - t
            t = time.perf_counter()
            with strict_fp32(torch.device("cpu")):
                fused_out = run_tasks(cpu_fused, images, text, torch.device("cpu"), "fp32", tasks_run)
            compute_s += time.perf_counter() - t
            del cpu_fused
        result = compare_all(cand_out, ref_out, fused_out, thresholds, args.precision, tasks_run)

        timings = {"load_in_process_s": load_s, "prepare_candidate_s": prepare_s}
        if not args.no_timing:
            timings["batch"], timings["size"] = args.timing_batch, args.size
            t = time.perf_counter()
            timings["tasks"] = timing_suite(candidate, images[:args.timing_batch], text, device, args.precision,
                                            args.warmup, args.iters, tasks_run)
            compute_s += time.perf_counter() - t
            if identity["kind"] == "checkpoint" and not args.quick:
                timings["load_cold_process"] = cold_process_load(identity["path"])
                load_s += timings["load_cold_process"]["import_torch_s"] + timings["load_cold_process"]["load_s"]
            else:
                timings["load_cold_process"] = None
                timings["load_cold_process_note"] = ("skipped: synthetic weights" if identity["kind"] == "synthetic"
                                                     else "skipped: --quick")
    finally:
        if strict_state is not None:
            restore_fp32_state(strict_state)
    timings["peak_memory_bytes"] = peak_memory_bytes(device)
    total_s = time.perf_counter() - t_start
    overhead_s = total_s - compute_s - load_s - prepare_s
    timings["harness"] = {
        "total_s": total_s, "model_compute_s": compute_s, "loading_s": load_s, "preparation_s": prepare_s,
        "overhead_s": overhead_s, "overhead_fraction_of_compute": overhead_s / compute_s if compute_s else None,
        "note": "overhead = total - model compute (accuracy runs and timed calls) - loading - candidate "
                "preparation: metrics, verdicts, inputs, environment report and output files",
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
        "reference": {"device": "cpu", "precision": "fp32", "fusion": "none"},
        "weights": identity,
        "synthetic_weights": identity["kind"] == "synthetic",
        "inputs": {"images": image_sources, "batch": args.batch, "size": args.size, "prompts": list(prompts)},
        "thresholds": {"file": str(args.thresholds or "verify/thresholds.yaml"), "schema": thresholds["schema"],
                       "version": thresholds["version"], "precision": args.precision,
                       "values": select_thresholds(thresholds, args.precision)},
        "attribution_note": ("fusions_rel_l2: CPU fp32 fused vs reference; device_and_precision_rel_l2: candidate "
                             "vs CPU fp32 fused" + (" (identical runs here: 0 by construction)"
                                                    if same_as_candidate else "")),
        "tasks": result["tasks"],
        "skipped_tasks": tasks_skipped,
        "timings": timings,
        "verdict": result["overall"]["verdict"],
        "overall": result["overall"],
    }
    from verify.report import report_lines

    lines = report_lines(summary)
    return summary, lines


def _fusion_summary(report) -> dict:
    to_dict = getattr(report, "to_dict", None)
    data = to_dict() if callable(to_dict) else report
    rules = data.get("rules", []) if isinstance(data, dict) else []
    return {r.get("name"): {"count": r.get("count"), "kernel": r.get("kernel")} for r in rules
            if isinstance(r, dict) and r.get("enabled", True)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python verify/accuracy_eval.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python verify/accuracy_eval.py --device npu:0 --weights weights/VTP-Small-f16d64\n"
               "  python verify/accuracy_eval.py --device cpu --precision bf16 --quick --out verify_out/bf16\n"
               "exit status: 0 PASS, 1 verification FAILED, 2 environment or usage error")
    p.add_argument("--device", default="auto", help="auto (NPU > CUDA > CPU), npu[:N], cuda[:N] or cpu")
    p.add_argument("--weights", type=Path, help="checkpoint folder (default weights/VTP-Small-f16d64, else "
                                                "synthetic VTP-Small with a notice)")
    p.add_argument("--require-weights", action="store_true", help="fail (exit 2) instead of using synthetic weights")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--fusion", default="all", help="all, none, a comma list (gelu,layernorm,...) or a YAML file")
    p.add_argument("--thresholds", type=Path, help="thresholds YAML (default verify/thresholds.yaml)")
    p.add_argument("--out", type=Path, help="folder for accuracy_summary.json, log.txt and fusion_result.json "
                                            "(default verify_out/<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no verdict table on stdout (log.txt and the JSON still "
                                                         "have everything; run_verify.sh prints the table itself)")
    p.add_argument("--batch", type=int, default=4, help="images compared: the sample plus synthetic ones (default 4)")
    p.add_argument("--size", type=int, default=256, help="image resolution (default 256)")
    p.add_argument("--prompts", nargs="+", help="prompts (default: a diagram, a dog, a cat, a person)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per task (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="warm-up iterations after the first call (default 2)")
    p.add_argument("--timing-batch", type=int, default=1, help="batch size for timing (default 1)")
    p.add_argument("--quick", action="store_true", help="2 images, 3 timed iterations, no cold-process load")
    p.add_argument("--no-timing", action="store_true", help="accuracy only")
    p.add_argument("--allow-internal-format", action="store_true",
                   help="NPU: allow private formats such as NZ (default off: fewer precision surprises)")
    p.add_argument("--inject-fault", metavar="MODULE=FACTOR|MODULE=nan",
                   help="harness self-test: perturb one module's output on the candidate (e.g. trunk.blocks.0=1.02)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.quick:
        args.batch, args.iters, args.warmup = min(args.batch, 2), min(args.iters, 3), min(args.warmup, 1)
    for name in ("batch", "size", "iters", "timing_batch"):
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return EXIT_ENV
    if args.warmup < 0:
        print("error: --warmup must be >= 0", file=sys.stderr)
        return EXIT_ENV
    args.timing_batch = min(args.timing_batch, args.batch)
    prepare_environment()
    from ascend.device import DeviceError
    from ascend.runtime import WeightsMissing
    from verify.verdict import ThresholdsError
    from vtp.checkpoint import CheckpointError
    from vtp.config import ConfigError
    from vtp.image import ImageError

    from vtp.weights import WeightsError

    # Errors of the environment or the options: exit 2. Anything else raised while the models run is a
    # failure of the thing under test: exit 1, never a PASS.
    env_errors = (DeviceError, WeightsMissing, ThresholdsError, CheckpointError, ConfigError, ImageError,
                  WeightsError, UsageError, FileNotFoundError)
    if args.out is None:
        args.out = Path("verify_out") / datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in ("accuracy_summary.json", "fusion_result.json"):  # an earlier run's result must not stand
            (args.out / name).unlink(missing_ok=True)
    except OSError as e:
        print(f"error: --out {args.out}: cannot use it as the output folder ({e})", file=sys.stderr)
        return EXIT_ENV
    try:
        summary, lines = evaluate(args)
    except env_errors as e:
        logger.error("%s: %s", type(e).__name__, e)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ENV
    except Exception:
        logger.exception("FAILED: the evaluation crashed")
        print("error: the evaluation crashed (traceback above): verification FAILED", file=sys.stderr)
        return EXIT_FAIL
    try:
        write_outputs(args.out, summary, lines)
    except OSError as e:
        print(f"error: cannot write the outputs to {args.out} ({e})", file=sys.stderr)
        return EXIT_ENV
    if not args.quiet:
        print("\n".join(lines))
    print(f"outputs: {args.out / 'accuracy_summary.json'}, {args.out / 'log.txt'}")
    return EXIT_PASS if summary["verdict"] == "PASS" else EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
