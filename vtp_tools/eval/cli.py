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

logger = logging.getLogger("vtp_tools.eval")

EXAMPLES = """examples:
  python -m vtp_tools.eval zero-shot --data /data/imagenet/val --weights weights/VTP-Small-f16d64 --device npu:0 \\
      --precision bf16 --compare-to published:VTP-Small-f16d64
  torchrun --nproc_per_node 8 -m vtp_tools.eval reconstruction --data /data/imagenet/val --batch-size 64 \\
      --compare-to eval_out/reconstruction-gpu.json
  python -m vtp_tools.eval linear-probe --data /data/imagenet --epochs 10 --epoch-length 1250
"""


class UsageError(Exception):
    """A problem with the command line or its files: exit 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m vtp_tools.eval", description=__doc__, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", required=True, help="ImageFolder root (linear-probe: a folder with train/ and val/)")
    common.add_argument("--weights", default=None, help="checkpoint folder (default weights/VTP-Small-f16d64; "
                        "synthetic weights with a notice when absent)")
    common.add_argument("--require-weights", action="store_true", help="a missing checkpoint is an error")
    common.add_argument("--device", default="auto", help="auto|npu|npu:N|cuda|cuda:N|cpu (torchrun: per LOCAL_RANK)")
    common.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    common.add_argument("--fusion", default="all", help="fusion spec: all|none|gelu,layernorm,...|file.yaml")
    common.add_argument("--batch-size", type=int, default=None, help="images per step and process")
    common.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (default: CPUs/2, <= 8)")
    common.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (quick runs)")
    common.add_argument("--image-size", type=int, default=None, help="input size (default: the model's image_size)")
    common.add_argument("--out", default=None, help="results JSON (default eval_out/<task>-<time>.json)")
    common.add_argument("--compare-to", default=None,
                        help="a results JSON of another run, or published:VTP-Small-f16d64|Base|Large")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("-q", "--quiet", action="store_true")

    zs = sub.add_parser("zero-shot", parents=[common], help="zero-shot top-1/top-5 (80 OpenAI templates)")
    zs.add_argument("--classnames", default=None,
                    help="imagenet (default for 1000 classes) | folders (default otherwise) | FILE (one per line)")
    zs.add_argument("--templates", default="openai", help="openai (the 80 templates) | FILE ({} = class name)")
    zs.add_argument("--exact-text", action="store_true",
                    help="run the text tower at full context length (original-exact; default: up to the last EOT)")

    lp = sub.add_parser("linear-probe", parents=[common], help="linear heads on frozen intermediate features")
    lp.add_argument("--epochs", type=int, default=10)
    lp.add_argument("--epoch-length", type=int, default=1250)
    lp.add_argument("--n-blocks", default="1,4", help="comma list of last-block counts")
    lp.add_argument("--learning-rates", default=None, help="comma list (default: the original 13-point grid)")
    lp.add_argument("--crop-size", type=int, default=224)
    lp.add_argument("--resize-size", type=int, default=256)

    rc = sub.add_parser("reconstruction", parents=[common], help="PSNR, SSIM, LPIPS, rFID")
    rc.add_argument("--inception", default=None, help="pt_inception-2015-12-05-6726825d.pth (default: torch hub cache)")
    rc.add_argument("--vgg", default=None, help="vgg16-397923af.pth (default: torch hub cache)")
    rc.add_argument("--lpips", default=None, help="LPIPS v0.1 vgg.pth heads (default: lpips package / cache)")
    rc.add_argument("--no-fid", action="store_true", help="skip rFID (no Inception weights needed)")
    rc.add_argument("--no-lpips", action="store_true", help="skip LPIPS (no VGG weights needed)")
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
    """(lpips net, fid net, identities) for reconstruction; located and verified before any model work."""
    if args.task != "reconstruction":
        return None, None, {}
    from .metrics import load_fid_inception, load_lpips

    lp = fid = None
    ids = {}
    if not args.no_lpips:
        lp, ids["lpips"] = load_lpips(args.vgg, args.lpips)
    if not args.no_fid:
        fid, ids["inception"] = load_fid_inception(args.inception)
    return lp, fid, ids


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
    lpips_net, fid_net, metric_ids = _metric_nets(args)
    templates = list(OPENAI_IMAGENET_TEMPLATES)
    if args.task == "zero-shot" and args.templates != "openai":
        templates = _read_lines(args.templates, "--templates")
        if not templates or any("{}" not in t for t in templates):
            raise UsageError(f"--templates {args.templates}: every line must contain {{}} for the class name")
    if args.task == "zero-shot":
        names, source = zero_shot.resolve_classnames(data, args.classnames)

    r = open_run(args.device, args.precision, args.fusion, args.weights, args.require_weights, model, identity)
    size = args.image_size or r.model.config.image_size
    options: dict = {"limit": args.limit, "seed": args.seed}
    t0 = time.perf_counter()
    if args.task == "zero-shot":
        data.size = size
        truncate = not args.exact_text
        classifier = zero_shot.build_classifier(r, names, templates, truncate=truncate)
        out = zero_shot.evaluate(r, data, classifier, args.batch_size or 64, args.workers, args.limit)
        options.update(classnames=source, templates="openai-80" if args.templates == "openai" else args.templates,
                       num_templates=len(templates), text_truncated_at_eot=truncate)
        identity_data = data.identity()
    elif args.task == "reconstruction":
        data.size = size
        out = reconstruction.evaluate(r, data, args.batch_size or 32, args.workers, args.limit, lpips_net, fid_net)
        options.update(metric_weights=metric_ids)
        identity_data = data.identity()
    else:
        lrs = _floats(args.learning_rates, "--learning-rates") if args.learning_rates else None
        n_blocks = [int(x) for x in _floats(args.n_blocks, "--n-blocks")]
        out = linear_probe.train_and_evaluate(
            r, data, val, args.batch_size or 128, args.epochs, args.epoch_length, n_blocks,
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
        print(f"{args.task}: {shown} over {result['num_samples']} images -> {path}")
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
