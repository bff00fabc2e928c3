"""VTP demo on the detected device: image reconstruction, CLIP zero-shot and SSL features.

    python ascend/inference.py
    python ascend/inference.py --weights weights/VTP-Small-f16d64 --image photo.jpg --device npu:0 --precision bf16

Three tasks run on the candidate model (the checkpoint with the fusion rules applied, on the device):

1. reconstruction: the image, squashed to 256 x 256 (or center-cropped, ``--resize center-crop``), is
   encoded to latents (64 channels, 16 x 16 for the f16d64 models) and decoded; the result is written to
   ``<out>/reconstructed.png``, the input as the model saw it to ``<out>/input.png`` (both carry the
   weights' identity in their PNG text metadata), and the two are compared (PSNR in dB and SSIM, both on
   [0, 1] pixels);
2. CLIP zero-shot: softmax over ``exp(logit_scale) * cos(image, prompt)`` for each prompt, sorted;
3. SSL features: shapes and L2 norms of the CLS token and of the patch tokens.

``--tasks`` runs a subset. Each task is timed once, device synchronised, first call included;
``verify/accuracy_eval.py`` measures steady-state latency.

Every line goes to the terminal (stderr) and is appended to the log file (``--log``, default ./log.txt);
a run refused for a usage or environment error creates neither the log file nor the output folder.
Exit status: 0 the three tasks ran and every output is finite; 1 a task failed or produced NaN/Inf;
2 usage or environment error (unreadable image, missing weights folder, unusable device or precision,
an output folder or log file that cannot be written), found before the model is loaded where it can be.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import logging
import logging.handlers
import shlex
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]
if __name__ == "__main__":
    # `python ascend/inference.py` puts ascend/ itself first on sys.path, where device.py, npu.py, ...
    # would shadow any top-level module of the same name; the package is imported from the repo root.
    if sys.path and Path(sys.path[0] or ".").resolve() == _REPO / "ascend":
        del sys.path[0]
    if importlib.util.find_spec("vtp") is None or importlib.util.find_spec("ascend") is None:
        sys.path.insert(0, str(_REPO))  # works without `pip install -e .`

from ascend.npu import prepare_environment  # noqa: E402  (imports neither torch nor torch_npu)
from ascend.runtime import add_fusion_argument, add_prompt_arguments, shorten  # noqa: E402  (no torch either)

logger = logging.getLogger("ascend.inference")

EXIT_OK, EXIT_FAILED, EXIT_ENV = 0, 1, 2
IMAGE_SIZE = 256
RECONSTRUCTION_NAME = "reconstructed.png"
INPUT_NAME = "input.png"
RESIZE_MODES = {"squash": "resize", "center-crop": "center_crop"}  # --resize -> vtp.image.preprocess mode
TASKS = ("reconstruction", "clip", "ssl")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class UsageError(ValueError):
    """A bad option value found after parsing (an empty prompt, an unwritable output folder or log path)."""


class TaskFailed(RuntimeError):
    """A task ran but its output cannot be trusted (NaN or Inf)."""


# ------------------------------------------------------------------------------------------ options
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python ascend/inference.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python ascend/inference.py\n"
            "  python ascend/inference.py --weights weights/VTP-Small-f16d64 --image dog.png \\\n"
            "      --device npu:0 --precision bf16 --prompt 'a dog' --prompt 'a cat, sleeping' --out output\n"
            "  python ascend/inference.py --image wide.jpg --resize center-crop --fusion=-gelu,-rope \\\n"
            "      --prompts-file prompts.txt\n"
            "\n"
            "prompts: one --prompt per prompt (commas are part of it), and/or --prompts-file with one per line;\n"
            "fusion: all | none | gelu,layernorm (only those) | -gelu,-rope (all but those) | rules.yaml.\n"
            "defaults: weights/VTP-Small-f16d64 when present, else synthetic VTP-Small weights (with a NOTICE);\n"
            "the checkpoint's figures/dog.png when present, else a generated sample image.\n"
            "exit status: 0 success, 1 a task failed or gave NaN/Inf, 2 usage or environment error"
        ),
    )
    parser.add_argument("--weights", type=Path, metavar="DIR",
                        help="checkpoint folder (config.json + model.safetensors); default weights/VTP-Small-f16d64 "
                             "when present, else synthetic weights")
    parser.add_argument("--image", type=Path, metavar="PATH",
                        help="input image (any format PIL reads); default the checkpoint's figures/dog.png, "
                             "else a generated sample image")
    parser.add_argument("--device", default="auto",
                        help="auto (NPU > CUDA > CPU), npu, npu:N, cuda, cuda:N or cpu (default auto)")
    add_prompt_arguments(parser)
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32",
                        help="fp32 (strict: no TF32/HF32), or fp16/bf16 autocast (default fp32)")
    add_fusion_argument(parser, metavar="SPEC")
    parser.add_argument("--resize", choices=tuple(RESIZE_MODES), default="squash",
                        help=f"how the image becomes {IMAGE_SIZE}x{IMAGE_SIZE}: squash (resize, ignoring the aspect "
                             "ratio, as the VTP README) or center-crop (shorter side to "
                             f"{IMAGE_SIZE}, central square kept); a warning says when either changes the image's "
                             "aspect ratio or enlarges it (default squash)")
    parser.add_argument("--tasks", type=parse_tasks, default=TASKS, metavar="TASK[,TASK...]",
                        help=f"which tasks to run, a comma list of {', '.join(TASKS)} (default all three)")
    parser.add_argument("--out", type=Path, default=Path("output"), metavar="DIR",
                        help=f"folder for {RECONSTRUCTION_NAME} and {INPUT_NAME}, created if needed; it must be "
                             "writable (checked before the model is loaded) (default output/)")
    parser.add_argument("--log", type=Path, default=Path("log.txt"), metavar="PATH",
                        help="log file, appended (default ./log.txt)")
    parser.add_argument("--require-weights", action="store_true",
                        help="exit 2 instead of falling back to synthetic weights, and refuse a folder of "
                             "synthetic weights written by save_pretrained")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def parse_tasks(text: str) -> tuple:
    """``"clip,ssl"`` -> ``("clip", "ssl")`` in the canonical order; argparse reports a bad name (exit 2)."""
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    unknown = sorted(names - set(TASKS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: tasks are {', '.join(TASKS)} (comma-separated)")
    return tuple(t for t in TASKS if t in names)


def write_problem(path: Path) -> "str | None":
    """None when files can be written at ``path`` (a folder, made if missing); else the reason. Nothing is
    created: a missing folder is probed through its nearest existing parent (a real write, removed again)."""
    from vtp.io_utils import folder_write_problem

    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    return folder_write_problem(existing)


def check_writable_folder(folder: Path, option: str = "--out") -> None:
    """Prove that ``folder`` can be created and written, without creating it (a run that stops on a bad
    input leaves nothing behind); UsageError naming the folder and what to do otherwise."""
    reason = write_problem(folder)
    if reason is not None:
        raise UsageError(f"{option} {folder}: the output folder cannot be written ({reason}); pick a "
                         f"writable folder with {option} DIR, or make this one writable")


def setup_logging(log_path: Path, verbose: bool) -> None:
    """Terminal (stderr) now; the log file (appended to) only once the run gets past its checks
    (:func:`open_log_file`), so a run refused for a bad input creates no log file. Until then the
    records wait in memory. The log's location is checked here."""
    reason = "it is a folder" if log_path.is_dir() else write_problem(log_path.parent)
    if reason is not None:
        raise UsageError(f"--log {log_path}: cannot open the log file for appending ({reason}); "
                         "pick a writable location with --log PATH")
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    pending = logging.handlers.MemoryHandler(capacity=1 << 20, flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.handlers[:] = [terminal, pending]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def open_log_file(log_path: Path) -> None:
    """Write the records so far to the log file and every later one as it comes."""
    root = logging.getLogger()
    pending = next((h for h in root.handlers if isinstance(h, logging.handlers.MemoryHandler)), None)
    if pending is None:
        return
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_path, mode="a", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--log {log_path}: cannot open the log file for appending ({exc.strerror or exc}); "
                         "pick a writable location with --log PATH") from None
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    pending.setTarget(file_handler)
    pending.flush()
    root.handlers[root.handlers.index(pending)] = file_handler
    pending.close()


# ------------------------------------------------------------------------------------------ tasks
def _check_finite(name: str, tensor) -> None:
    import torch

    bad = int((~torch.isfinite(tensor)).sum())
    if bad:
        raise TaskFailed(f"{name}: {bad} of {tensor.numel()} values are NaN or Inf (shape {tuple(tensor.shape)})")


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


def png_metadata(identity: dict, content: str) -> dict:
    """PNG text chunks: what the image is and which weights made it (kind, path or preset, sha256, synthetic)."""
    synthetic = identity.get("kind") == "synthetic" or bool(identity.get("synthetic"))
    meta = {"Description": content, "Software": "vtp-ascend ascend/inference.py",
            "vtp:weights-kind": identity.get("kind", "unknown"),
            "vtp:weights-synthetic": "yes" if synthetic else "no"}
    for key in ("path", "source", "preset", "sha256"):
        if identity.get(key):
            meta[f"vtp:weights-{key}"] = identity[key]
    return meta


def run_reconstruction(model, image, device, precision_context, out_dir: Path, identity: dict) -> dict:
    """Encode -> decode -> PNG, PSNR and SSIM against the preprocessed input ([0, 1] pixels); the input
    as the model saw it is written beside the reconstruction."""
    import torch

    from ascend.device import timed
    from vtp.image import denormalize, psnr, save_png, ssim

    logger.info("== task 1/3: reconstruction ==")
    x = image.to(device)
    with torch.no_grad(), precision_context():
        with timed(device) as t_enc:
            latents = model.get_reconstruction_latents(x)
        with timed(device) as t_dec:
            decoded = model.get_latents_decoded_images(latents)
    latents = latents.float().cpu()
    decoded = decoded.float().cpu()
    _check_finite("latents", latents)
    _check_finite("reconstructed image", decoded)
    logger.info("latents: shape %s, mean %.4f, std %.4f", tuple(latents.shape), latents.mean(), latents.std())
    path = save_png(decoded, out_dir / RECONSTRUCTION_NAME,
                    metadata=png_metadata(identity, "VTP reconstruction of input.png"))
    input_path = save_png(image.float(), out_dir / INPUT_NAME,
                          metadata=png_metadata(identity, "the model's input, after preprocessing"))
    target01 = denormalize(image.float()).clamp(0.0, 1.0)
    decoded01 = denormalize(decoded).clamp(0.0, 1.0)
    value_psnr = float(psnr(decoded01, target01))
    value_ssim = float(ssim(decoded01, target01))
    logger.info("reconstructed image: %dx%d, written to %s (the model's input: %s)", decoded.shape[-1],
                decoded.shape[-2], path, input_path)
    logger.info("PSNR: %.2f dB (vs the preprocessed input, [0, 1] pixels)", value_psnr)
    logger.info("SSIM: %.4f (Gaussian window 11, sigma 1.5)", value_ssim)
    logger.info("time: encode %s, decode %s, total %s", _ms(t_enc.seconds), _ms(t_dec.seconds),
                _ms(t_enc.seconds + t_dec.seconds))
    return {"path": str(path), "input_path": str(input_path), "psnr_db": value_psnr, "ssim": value_ssim,
            "latents_shape": list(latents.shape), "encode_ms": t_enc.ms, "decode_ms": t_dec.ms}


def run_clip(model, image, prompts: list, device, precision_context) -> dict:
    """Zero-shot probabilities: softmax over the CLIP logits of the image against every prompt."""
    import torch

    from ascend.device import timed
    from ascend.runtime import shorten, tokenize_prompts

    logger.info("== task 2/3: CLIP zero-shot ==")
    tokens = tokenize_prompts(prompts, model.config.text_context_length).to(device)
    x = image.to(device)
    with torch.no_grad(), precision_context():
        with timed(device) as t_clip:
            logits, _ = model.get_clip_logits(x, tokens)
            probs = logits.float().softmax(dim=-1)
    logits, probs = logits.float().cpu()[0], probs.cpu()[0]
    _check_finite("CLIP logits", logits)
    scale = float(model.logit_scale.detach().float().exp().cpu().reshape(-1)[0])
    logger.info("logit scale exp(logit_scale) = %.2f; %d prompts", scale, len(prompts))
    ranked = sorted(zip(prompts, probs.tolist(), logits.tolist()), key=lambda item: -item[1])
    for prompt, prob, logit in ranked:
        logger.info("  p=%.6f  (%6.2f %%, logit %8.3f)  %r", prob, 100.0 * prob, logit, shorten(prompt))
    logger.info("top-1: %r with probability %.4f (probabilities sum to %.6f)", shorten(ranked[0][0]), ranked[0][1],
                float(probs.sum()))
    logger.info("time: %s (image and text towers, logits and softmax)", _ms(t_clip.seconds))
    return {"probabilities": {p: prob for p, prob, _ in ranked}, "top1": ranked[0][0], "ms": t_clip.ms}


def run_ssl(model, image, device, precision_context) -> dict:
    """Last-layer SSL features of the vision trunk: CLS token and patch tokens."""
    import torch

    from ascend.device import timed

    logger.info("== task 3/3: SSL features ==")
    x = image.to(device)
    with torch.no_grad(), precision_context():
        with timed(device) as t_ssl:
            features = model.get_last_layer_feature(x)
    cls = features["cls_token"].float().cpu()
    patches = features["patch_tokens"].float().cpu()
    _check_finite("CLS token", cls)
    _check_finite("patch tokens", patches)
    cls_norm = float(cls.norm(dim=-1).mean())
    patch_norms = patches.norm(dim=-1)  # (B, N)
    logger.info("CLS token: shape %s, L2 norm %.4f", tuple(cls.shape), cls_norm)
    logger.info("patch tokens: shape %s, L2 norm per token mean %.4f (min %.4f, max %.4f)", tuple(patches.shape),
                float(patch_norms.mean()), float(patch_norms.min()), float(patch_norms.max()))
    logger.info("time: %s", _ms(t_ssl.seconds))
    return {"cls_shape": list(cls.shape), "patch_shape": list(patches.shape), "cls_norm": cls_norm,
            "patch_norm_mean": float(patch_norms.mean()), "ms": t_ssl.ms}


# ------------------------------------------------------------------------------------------ main
def prepare(args) -> dict:
    """Everything before the tasks: options, device, image, weights, fused candidate, precision.

    Any error here is a usage or environment error (exit 2)."""
    import torch

    from ascend.device import ascend_options, autocast, resolve_device, strict_fp32
    from ascend.fusion import parse_fusion_spec
    from ascend.runtime import PromptError, default_image, load_weights, prepare_candidate, prompts_from_args
    from vtp.image import load_image, preprocess, resize_notes

    try:
        prompts = list(prompts_from_args(args))
    except PromptError as exc:
        raise UsageError(str(exc)) from None
    try:  # a bad spec is a usage error, found before any heavy work
        parse_fusion_spec(args.fusion)
    except ValueError as exc:
        raise UsageError(f"--fusion {args.fusion!r}: {exc}") from None
    if "reconstruction" in args.tasks:
        check_writable_folder(args.out)
    device = resolve_device(args.device)
    logger.info("device: %s; precision: %s; fusion: %s; torch %s", device, args.precision, args.fusion,
                torch.__version__)
    if args.weights is not None and not args.weights.is_dir():
        raise FileNotFoundError(f"weights folder not found: {args.weights} (--weights must be a checkpoint folder "
                                "with config.json and model.safetensors)")

    if args.image is not None:
        pil, image_source = load_image(args.image), str(args.image)
    else:
        pil, image_source = default_image(args.weights, size=IMAGE_SIZE)
    mode = RESIZE_MODES[args.resize]
    image = preprocess(pil, size=IMAGE_SIZE, mode=mode)
    logger.info("image: %s (%dx%d) -> %s after %s to %dx%d", image_source, pil.width, pil.height,
                tuple(image.shape), args.resize, IMAGE_SIZE, IMAGE_SIZE)
    for note in resize_notes(pil.width, pil.height, IMAGE_SIZE, mode):
        logger.warning("image: %s", note)

    t = time.perf_counter()
    model, identity = load_weights(args.weights, require=args.require_weights)
    logger.info("weights: %s (%s), loaded in %s", identity.get("path") or identity.get("source"), identity["kind"],
                _ms(time.perf_counter() - t))
    options = ascend_options(device)
    if options.get("applied"):
        logger.info("ascend options: %s", options)
    t = time.perf_counter()
    model, report = prepare_candidate(model, device, fusion=args.fusion, precision=args.precision,
                                      copy_model=False)
    for line in report.summary().splitlines():
        logger.info("%s", line)
    logger.info("model ready on %s in %s", device, _ms(time.perf_counter() - t))

    if args.precision == "fp32":
        def precision_context():
            return strict_fp32(device)
    else:
        with autocast(device, args.precision):  # refuses an unsupported precision (DeviceError) before any task
            pass

        def precision_context():
            return autocast(device, args.precision)

    return {"device": device, "image": image, "prompts": prompts, "model": model, "identity": identity,
            "precision_context": precision_context}


def run_tasks(args, ready: dict) -> dict:
    """The three tasks; a task that crashes or gives NaN/Inf is a failure (exit 1)."""
    model, image, device, context = ready["model"], ready["image"], ready["device"], ready["precision_context"]
    logger.info("timings below: one call per task, device synchronised, first call included (on NPU it pays "
                "operator compilation); steady-state latency: verify/accuracy_eval.py")
    results = {}
    if "reconstruction" not in args.tasks:
        logger.info("== task 1/3: reconstruction: skipped (--tasks) ==")
    elif not model.config.train_reconstruction:
        logger.info("== task 1/3: reconstruction: skipped (this checkpoint has no pixel decoder) ==")
    else:
        results["reconstruction"] = run_reconstruction(model, image, device, context, args.out, ready["identity"])
    if "clip" not in args.tasks:
        logger.info("== task 2/3: CLIP zero-shot: skipped (--tasks) ==")
    elif not model.config.train_clip:
        logger.info("== task 2/3: CLIP zero-shot: skipped (this checkpoint has no text tower) ==")
    else:
        results["clip"] = run_clip(model, image, ready["prompts"], device, context)
    if "ssl" not in args.tasks:
        logger.info("== task 3/3: SSL features: skipped (--tasks) ==")
    else:
        results["ssl"] = run_ssl(model, image, device, context)

    model_ms = sum(v for task in results.values() for k, v in task.items() if k.endswith("ms"))
    weights = " with synthetic weights (see the NOTICE above)" if ready["identity"]["kind"] == "synthetic" else ""
    logger.info("done: %d task(s) on %s%s, %.1f ms of model time", len(results), device, weights, model_ms)
    if "reconstruction" in results:
        logger.info("reconstruction written to %s", results["reconstruction"]["path"])
    return results


def _with_log_file(log_path: Path, code: int) -> int:
    """Open the log file (the run got past its checks); ``code``, or EXIT_ENV when it cannot be opened."""
    try:
        open_log_file(log_path)
    except UsageError as exc:
        logger.error("error: %s", exc)
        return EXIT_ENV
    return code


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        setup_logging(args.log, args.verbose)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENV
    started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    command = " ".join(shlex.quote(shorten(arg)) for arg in (sys.argv[1:] if argv is None else argv))
    logger.info("===== ascend/inference.py %s: %s =====", started, command or "(defaults)")
    prepare_environment()  # before the first `import torch`

    from ascend.device import DeviceError
    from ascend.runtime import WeightsMissing
    from vtp.checkpoint import CheckpointError
    from vtp.config import ConfigError
    from vtp.image import ImageError
    from vtp.weights import WeightsError

    # Not ValueError in general: one raised by the model or the fusion layer is a failure (exit 1), not a
    # usage error; option errors are raised as UsageError.
    environment_errors = (UsageError, DeviceError, WeightsMissing, CheckpointError, ConfigError, ImageError,
                          WeightsError, FileNotFoundError)
    try:
        ready = prepare(args)
    except environment_errors as exc:
        logger.error("error: %s", exc)  # the terminal only: a refused run leaves no log file or folder
        return EXIT_ENV
    except Exception:
        logger.exception("FAILED: preparing the model crashed")
        return _with_log_file(args.log, EXIT_FAILED)
    if _with_log_file(args.log, EXIT_OK) != EXIT_OK:
        return EXIT_ENV
    try:
        run_tasks(args, ready)
    except TaskFailed as exc:
        logger.error("FAILED: %s", exc)
        return EXIT_FAILED
    except Exception:
        logger.exception("FAILED: a task crashed")
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
