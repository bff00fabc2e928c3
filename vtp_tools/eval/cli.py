"""``python -m vtp_tools.eval zero-shot|linear-probe|reconstruction``: the original VTP evaluations, any device.

Exit codes: 0 done (and the comparison passed), 1 the comparison failed, 2 usage, data, weights or
device error (nothing written).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vtp_tools.options import add_model_arguments

logger = logging.getLogger("vtp_tools.eval")

EXAMPLES = """examples:
  python -m vtp_tools.eval zero-shot --data /data/imagenet/val --weights weights/VTP-Small-f16d64 --device npu:0 \\
      --compare-to published:VTP-Small-f16d64
  torchrun --nproc_per_node 8 -m vtp_tools.eval reconstruction --data /data/imagenet/val \\
      --compare-to eval_out/reconstruction-gpu.json
  python -m vtp_tools.eval linear-probe --data /data/imagenet --epochs 10 --epoch-length 1250

Defaults are the original tools' (tools/test_*_hf.py): each option's help names the original's setting.
"""

# Per task: (original script, its precision default, its batch-size default, its data option).
ORIGINAL = {
    "zero-shot": ("tools/test_zero_shot_hf.py", "fp32", 128, "--data_path"),
    "linear-probe": ("tools/test_linear_probing_hf.py", "bf16", 128, "--imagenet_root"),
    "reconstruction": ("tools/test_reconstruction_hf.py", "bf16", 32, "--data_path"),
}
CPU_AUTOCAST_NOTE = ("; the original's autocast is device_type='cuda', so on a CPU it computes fp32 whatever "
                     "--precision says: pass --precision fp32 to match an original CPU run")


class UsageError(Exception):
    """A problem with the command line or its files: exit 2."""


def _add_common(parser: argparse.ArgumentParser, task: str) -> None:
    script, precision, batch, data_opt = ORIGINAL[task]
    data_help = ("a folder with train/ and val/ (ImageFolder each)" if task == "linear-probe" else "ImageFolder root")
    parser.add_argument("--data", required=True, help=f"{data_help} (original: {data_opt})")
    add_model_arguments(parser, original_weights="--model_path", original_device="--device cuda:0, --use_ddp")
    extra = CPU_AUTOCAST_NOTE if precision == "bf16" else "; the shipped scripts/test_zero_shot_hf.sh sets bf16"
    parser.add_argument("--precision", default=precision, choices=("fp32", "fp16", "bf16"),
                        help=f"autocast precision (default: {precision}, the original's --precision default{extra})")
    parser.add_argument("--fusion", default="auto",
                        help="fusion rules (ascend.fusion): auto (default) = only the exact rules, so the numbers "
                             "are the unfused model's (every rule runs its torch math off the NPU; on the NPU "
                             "ULP-level "
                             "kernel differences); all = auto plus approximations (gelu: tanh GELU, up to 4.7e-4 per "
                             "element); none; 'gelu,layernorm'; '-gelu,-rope'; file.yaml (write --fusion=-gelu with "
                             "'='). The original has no fusion. The result records the rules (fusion_rules)")
    parser.add_argument("--batch-size", type=int, default=batch,
                        help=f"images per step and process (default: {batch}, the original's --batch_size"
                             + ("; its evaluation batch is twice that, as here" if task == "linear-probe" else "")
                             + ("; the SSIM/LPIPS average depends on it, as the original's" if task == "reconstruction"
                                else "") + ")")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: CPUs/2, at most 8; original: --num_workers "
                             f"{4 if task == 'reconstruction' else 8}); they do not change the numbers")
    parser.add_argument("--limit", type=int, default=None,
                        help="only the first N images, in the original's ImageFolder order (default: all; original: "
                             + ("--max_samples)" if task == "reconstruction" else "none, it runs all)"))
    parser.add_argument("--image-size", type=int, default=None,
                        help="input size (default: the model's config image_size, as the original"
                             + ("; linear-probe uses --crop-size)" if task == "linear-probe" else ")"))
    parser.add_argument("--out", default=None,
                        help="results JSON (default: eval_out/<task>-<time>.json; original: "
                             + ("--output_dir/linear_probing_results.json)" if task == "linear-probe"
                                else "printed only)"))
    parser.add_argument("--compare-to", default=None,
                        help="a results JSON of another run, or published:VTP-Small-f16d64|Base|Large: deltas and "
                             "a verdict (default: none; the original has no comparison)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the shuffling and random crops (default: 0; used by linear-probe only; the "
                             "original seeds neither, its DistributedSampler uses seed 0)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="warnings and the result line only (default: off; the original always prints progress)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vtp_tools.eval", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)

    zs = sub.add_parser("zero-shot", help="zero-shot top-1/top-5 (80 OpenAI templates)",
                        description="Zero-shot classification, the original tools/test_zero_shot_hf.py.")
    _add_common(zs, "zero-shot")
    zs.add_argument("--classnames", default=None,
                    help="default: wnids when every class folder is an ImageNet wnid (n01440764 ...: the ImageNet "
                         "names of the folders present; all 1000 = the original's classifier), else folders (the "
                         "folder names); imagenet = the original's 1000-way classifier (the original always uses it), "
                         "on wnid folders or 1000 folders; FILE = one name per line in folder order. The result "
                         "records the source")
    zs.add_argument("--templates", default="openai",
                    help="openai (default: the original's 80 OpenAI templates) | FILE (one per line, {} = class name)")
    zs.add_argument("--exact-text", action="store_true",
                    help="run the text tower at full context length, the original's path (default: off, the tower "
                         "stops at the last end-of-text token, which cannot change a pooled feature)")

    lp = sub.add_parser("linear-probe", help="linear heads on frozen intermediate features",
                        description="Linear probing, the original tools/test_linear_probing_hf.py.")
    _add_common(lp, "linear-probe")
    lp.add_argument("--epochs", type=int, default=10, help="training epochs (default: 10, the original's --epochs)")
    lp.add_argument("--epoch-length", type=int, default=1250,
                    help="steps per epoch (default: 1250, the original's --epoch_length)")
    lp.add_argument("--n-blocks", default="1,4",
                    help="comma list of last-block counts (default: 1,4, the original's n_last_blocks_list)")
    lp.add_argument("--learning-rates", default=None,
                    help="comma list (default: the original's DEFAULT_LEARNING_RATES, 13 points 1e-5 .. 0.1, each "
                         "scaled by batch x processes / 256)")
    lp.add_argument("--crop-size", type=int, default=224, help="crop side (default: 224, the original's CROP_SIZE)")
    lp.add_argument("--resize-size", type=int, default=256,
                    help="evaluation shorter side before the central crop (default: 256, the original's RESIZE_SIZE)")

    rc = sub.add_parser("reconstruction", help="PSNR, SSIM, LPIPS, rFID",
                        description="Reconstruction quality, the original tools/test_reconstruction_hf.py.")
    _add_common(rc, "reconstruction")
    rc.add_argument("--inception", default=None,
                    help="pt_inception-2015-12-05-6726825d.pth (default: $VTP_METRIC_WEIGHTS or the torch hub "
                         "cache; the original's pytorch_fid downloads it)")
    rc.add_argument("--vgg", default=None,
                    help="vgg16-397923af.pth (default: $VTP_METRIC_WEIGHTS or the torch hub cache; the original's "
                         "LPIPS downloads it)")
    rc.add_argument("--lpips", default=None,
                    help="LPIPS v0.1 vgg.pth heads (default: $VTP_METRIC_WEIGHTS or the cache; the original's "
                         "vtp.utils.lpips downloads it)")
    rc.add_argument("--no-fid", action="store_true",
                    help="skip rFID, no Inception weights needed (default: off; original: --no_save_images)")
    rc.add_argument("--no-lpips", action="store_true",
                    help="skip LPIPS, no VGG weights needed (default: off; the original always computes it)")
    rc.add_argument("--metrics-if-present", action="store_true",
                    help="compute LPIPS and rFID only when their weight files are found, and say which were skipped "
                         "and how to enable them (default: off, a missing file is an error; the original downloads "
                         "them; bash run_verify.sh --dataset uses this)")
    rc.add_argument("--average", default="original", choices=("original", "images"),
                    help="original (default): as the original, SSIM and LPIPS the mean of batch means and, under "
                         "torchrun, of the processes' means (DistributedSampler's padded duplicates counted); "
                         "images: the plain mean over images. The result holds both and says which is which")
    return parser


def _read_lines(path: str, what: str) -> list[str]:
    try:
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise UsageError(f"{what} {path}: cannot read ({exc})") from exc


def _floats(text: str, what: str) -> list:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be a comma list of numbers, got {text!r}") from None


def _datasets(args):
    from .data import DatasetError, ImageFolderDataset

    root = Path(args.data)
    if args.task == "linear-probe":
        if not (root / "train").is_dir() or not (root / "val").is_dir():
            raise DatasetError(f"linear-probe needs {root}/train and {root}/val (ImageFolder each), as the "
                               f"original's --imagenet_root")
        train = ImageFolderDataset(root / "train", "random_resized_crop", args.crop_size, args.resize_size,
                                   seed=args.seed)
        val = ImageFolderDataset(root / "val", "resize_center_crop", args.crop_size, args.resize_size)
        if train.classes != val.classes:
            raise DatasetError(f"{root}/train and {root}/val have different class folders")
        for ds in (train, val):
            ds.check_readable()
        return train, val
    ds = ImageFolderDataset(root, "resize" if args.task == "zero-shot" else "center_crop")
    ds.check_readable()
    return ds, None


def _metric_nets(args) -> tuple:
    """(lpips net, fid net, identities, skipped) for reconstruction; located and verified before any model work.

    ``skipped`` maps a metric to why it is not computed and how to enable it (``--no-*`` options, and with
    ``--metrics-if-present`` the networks whose weight files are missing)."""
    if args.task != "reconstruction":
        return None, None, {}, {}
    from .metrics import MetricWeightsMissing, load_fid_inception, load_lpips

    nets = {"lpips": None, "rfid": None}
    ids, skipped = {}, {}
    loaders = (("lpips", args.no_lpips, "--no-lpips", lambda: load_lpips(args.vgg, args.lpips), "lpips"),
               ("rfid", args.no_fid, "--no-fid", lambda: load_fid_inception(args.inception), "inception"))
    for metric, off, option, load, key in loaders:
        if off:
            skipped[metric] = f"{option} given"
            continue
        try:
            nets[metric], ids[key] = load()
        except MetricWeightsMissing as exc:
            if not args.metrics_if_present:
                raise
            skipped[metric] = f"weight file missing, to enable it: {exc}"
            print(f"reconstruction: {metric} skipped: {exc}", file=sys.stderr)
    return nets["lpips"], nets["rfid"], ids, skipped


def run(args, model=None, identity=None) -> int:
    from . import linear_probe, reconstruction, results, zero_shot
    from .classnames import OPENAI_IMAGENET_TEMPLATES
    from .context import open_run

    for name in ("batch_size", "limit", "workers", "image_size"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "workers" else 1):
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {value}")
    data, val = _datasets(args)
    reference = results.reference_for(args.compare_to, args.task) if args.compare_to else None
    lpips_net, fid_net, metric_ids, metrics_skipped = _metric_nets(args)
    templates = list(OPENAI_IMAGENET_TEMPLATES)
    if args.task == "zero-shot" and args.templates != "openai":
        templates = _read_lines(args.templates, "--templates")
        if not templates or any("{}" not in t for t in templates):
            raise UsageError(f"--templates {args.templates}: every line must contain {{}} for the class name")
    if args.task == "zero-shot":
        names, source, columns = zero_shot.resolve_classnames(data, args.classnames)

    r = open_run(args.device, args.precision, args.fusion, args.weights, args.require_weights, model, identity)
    size = args.image_size or r.model.config.image_size
    options: dict = {"limit": args.limit, "seed": args.seed}
    t0 = time.perf_counter()
    if args.task == "zero-shot":
        data.size = size
        truncate = not args.exact_text
        classifier = zero_shot.build_classifier(r, names, templates, truncate=truncate)
        out = zero_shot.evaluate(r, data, classifier, args.batch_size, args.workers, args.limit, columns)
        options.update(classnames=source, num_classes=len(names),
                       templates="openai-80" if args.templates == "openai" else args.templates,
                       num_templates=len(templates), text_truncated_at_eot=truncate)
        if out is not None and out["metrics"]["top5"] is None:
            options["top5"] = f"not applicable: {len(names)} classes (< 5), every image would be a top-5 hit"
        identity_data = data.identity()
    elif args.task == "reconstruction":
        data.size = size
        out = reconstruction.evaluate(r, data, args.batch_size, args.workers, args.limit, lpips_net, fid_net,
                                      average=args.average)
        options.update(metric_weights=metric_ids, metrics_skipped=metrics_skipped)
        identity_data = data.identity()
    else:
        lrs = _floats(args.learning_rates, "--learning-rates") if args.learning_rates else None
        n_blocks = [int(x) for x in _floats(args.n_blocks, "--n-blocks")]
        out = linear_probe.train_and_evaluate(
            r, data, val, args.batch_size, args.epochs, args.epoch_length, n_blocks,
            lrs or linear_probe.DEFAULT_LEARNING_RATES, args.seed, args.workers, args.limit)
        options.update(epochs=args.epochs, epoch_length=args.epoch_length, n_blocks=n_blocks,
                       learning_rates=lrs or list(linear_probe.DEFAULT_LEARNING_RATES))
        identity_data = {"train": data.identity(), **val.identity()}
    from ascend.distributed import barrier, shutdown

    code = 0
    if r.ctx.is_main:
        if "extra" in out:
            options.update(out["extra"])
        out["timing"]["wall_seconds"] = time.perf_counter() - t0
        result = results.make_result(args.task, out["metrics"], out["num_samples"], identity_data, r.describe(),
                                     options, out["timing"])
        if reference is not None:
            cmp = results.compare(result, reference)
            result["comparison"] = {"against": args.compare_to, **cmp}
            print(results.format_comparison(cmp))
            code = 0 if cmp["verdict"] == "pass" else 1
        path = Path(args.out or f"eval_out/{args.task}-{time.strftime('%Y%m%d-%H%M%S')}.json")
        results.write_result(path, result)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result["metrics"].items() if v is not None)
        rules = ",".join(result["fusion_rules"]["enabled"]) or "none"
        print(f"{args.task}: {shown} over {result['num_samples']} images ({result['precision']}, fusion "
              f"{args.fusion}: {rules}) -> {path}")
    code = _broadcast_code(r.ctx, code)
    barrier(r.ctx)
    shutdown(r.ctx)
    return code


def _broadcast_code(ctx, code: int) -> int:
    from ascend.distributed import broadcast_object

    return broadcast_object(ctx, code)


def main(argv=None, model=None, identity=None) -> int:
    from ascend.npu import prepare_environment

    prepare_environment()  # before torch is imported: a torch_npu install without CANN must not break import torch
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ascend.device import DeviceError
    from ascend.runtime import WeightsMissing

    from .data import DatasetError
    from .metrics import MetricWeightsMissing
    from .results import CompareError

    try:
        return run(args, model, identity)
    except (UsageError, DatasetError, CompareError, DeviceError, WeightsMissing, MetricWeightsMissing) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, no traceback
        print("\ninterrupted: no result was written (the result file is written once, at the end); rerun the "
              "same command to start again", file=sys.stderr)
        return 130
