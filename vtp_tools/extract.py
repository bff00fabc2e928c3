"""``python -m vtp_tools.extract``: VTP latents of an ImageFolder dataset for LightningDiT training, sharded and resumable.

The original ``generation/tools/extract_features_vtp.py`` semantics:

* image: ``center_crop_arr`` to S, ImageNet normalisation; latents ``get_reconstruction_latents`` of the
  image and of its horizontal flip (the flip after the crop, as ``RandomHorizontalFlip(p=1)``);
* shard file: safetensors with ``latents`` (N, C, S/16, S/16), ``latents_flip`` (same), ``labels`` (N,)
  int64, metadata ``total_size``, ``dtype``, ``device``; plus ``indices`` (N,) int64, the dataset
  indices (LightningDiT's ``ImgLatentDataset`` reads every ``*.safetensors`` of the folder and ignores
  other keys);
* ``latents_stats.pt``: ``{"mean", "std"}`` of shape (1, C, 1, 1), over dims (0, 2, 3) of ``latents`` of
  min(10000, N) samples drawn without replacement (std unbiased), as ``ImgLatentDataset`` computes them
  (here with a seeded generator, so the file is reproducible).

Differences that make it resumable and independent of the number of processes: shard ``k`` holds the
dataset samples ``[k * shard_size, (k + 1) * shard_size)`` in dataset order, named
``latents_shard{k:05d}.safetensors``; shard ``k`` is computed by rank ``k % world_size``; batches never
cross a shard boundary. A finished shard (valid file, right sample count) is skipped; each shard is
written to a temporary file and ``os.replace``-d, so a killed run leaves only whole shards. The folder's
``extract_manifest.json`` pins dataset, weights and settings; resuming with other ones is refused.
Exit codes: 0 done, 2 usage, data, weights or device error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from vtp_tools.options import add_model_arguments

logger = logging.getLogger("vtp_tools.extract")

MANIFEST = "extract_manifest.json"
STATS = "latents_stats.pt"
STATS_SAMPLES = 10000
STATS_SEED = 42  # the original's args.seed


def shard_name(k: int) -> str:
    return f"latents_shard{k:05d}.safetensors"


def shard_ranges(n: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


_DTYPES = {"torch.float32": "F32", "torch.float16": "F16", "torch.bfloat16": "BF16", "torch.int64": "I64"}


def save_shard(tensors: dict, path: "str | os.PathLike", metadata: dict) -> None:
    """Write a safetensors file byte-for-byte deterministically (the library's metadata order is not:
    it comes from a hash map): header keys sorted, tensors in name order, header padded to 8 bytes."""
    import json
    import struct

    header, offset, blobs = {"__metadata__": dict(sorted(metadata.items()))}, 0, []
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        data = t.view(-1).view(torch_uint8()).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": _DTYPES[str(t.dtype)], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def torch_uint8():
    import torch

    return torch.uint8


def shard_complete(path: Path, expected: int) -> bool:
    """True when ``path`` is a readable shard with ``expected`` samples."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return f.get_slice("labels").get_shape()[0] == expected and f.get_slice("latents_flip").get_shape()[0] == expected
    except Exception:
        return False


class _Pairs:
    """Dataset wrapper: (image, its horizontal flip, label, index)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        import torch

        x, label, idx = self.dataset[i]
        return x, torch.flip(x, dims=[-1]), label, idx


def _check_manifest(out: Path, manifest: dict) -> None:
    import json

    path = out / MANIFEST
    if not path.is_file():
        return
    old = json.loads(path.read_text(encoding="utf-8"))
    keys = ("dataset", "weights_sha256", "image_size", "shard_size", "precision", "fusion_rules", "tf32", "limit")
    diff = [k for k in keys if old.get(k) != manifest.get(k)]
    if diff:
        raise ValueError(f"{out} holds shards of another extraction ({', '.join(diff)} differ); "
                         f"use a new --out folder or delete the old shards")


def compute_stats(out: Path, n: int, seed: int = STATS_SEED) -> dict:
    """``latents_stats.pt`` from min(10000, N) random samples of the shards' ``latents``."""
    import numpy as np
    import torch
    from safetensors import safe_open

    files = sorted(out.glob("latents_shard*.safetensors"))
    rows = []
    with_counts = []
    for f in files:
        with safe_open(str(f), framework="pt") as h:
            with_counts.append((f, h.get_slice("labels").get_shape()[0]))
    total = sum(c for _, c in with_counts)
    if total != n:
        raise RuntimeError(f"shards in {out} hold {total} samples, expected {n}")
    pick = np.sort(np.random.default_rng(seed).choice(total, min(STATS_SAMPLES, total), replace=False))
    start = 0
    for f, count in with_counts:
        local = pick[(pick >= start) & (pick < start + count)] - start
        if len(local):
            with safe_open(str(f), framework="pt") as h:
                lat = h.get_tensor("latents")
            rows.append(lat[torch.as_tensor(local)])
        start += count
    latents = torch.cat(rows).float()
    stats = {"mean": latents.mean(dim=[0, 2, 3], keepdim=True), "std": latents.std(dim=[0, 2, 3], keepdim=True)}
    import io

    from vtp.io_utils import atomic_write_bytes

    buffer = io.BytesIO()  # not the temporary file: torch.save names the archive after the file
    torch.save(stats, buffer)
    atomic_write_bytes(out / STATS, buffer.getvalue())
    return stats


def extract(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ascend.distributed import all_gather_objects, barrier, shutdown
    from vtp_tools.eval.context import Progress, open_run
    from vtp_tools.eval.data import ImageFolderDataset, default_workers
    from vtp.io_utils import atomic_path, atomic_write_json

    if args.batch_size < 1 or args.shard_size < 1:
        raise ValueError("--batch-size and --shard-size must be positive")
    dataset = ImageFolderDataset(Path(args.data), "center_crop")
    dataset.check_readable()
    out = Path(args.out)
    run = open_run(args.device, args.precision, args.fusion, args.weights, args.require_weights)
    ctx = run.ctx
    if run.device.type == "cuda":  # the original's first lines; CUDA only
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    dataset.size = args.image_size or run.model.config.image_size
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    manifest = {"schema": "vtp-extract-manifest", "schema_version": 1, "dataset": dataset.identity(),
                "limit": args.limit, "weights": run.weights, "weights_sha256": run.weights.get("sha256"),
                "image_size": dataset.size, "shard_size": args.shard_size, "precision": args.precision,
                "fusion": args.fusion, "fusion_rules": run.fusion_rules(),
                "tf32": args.tf32 if run.device.type == "cuda" else None, "num_samples": n,
                "keys": ["latents", "latents_flip", "labels", "indices"]}
    _check_manifest(out, manifest)
    barrier(ctx)
    if ctx.is_main:
        atomic_write_json(out / MANIFEST, manifest)
        for stale in out.glob(".latents_shard*.tmp"):  # temporaries of a killed run
            stale.unlink(missing_ok=True)
    barrier(ctx)

    shards = shard_ranges(n, args.shard_size)
    mine = [k for k in range(len(shards)) if k % ctx.world_size == ctx.rank]
    todo = [k for k in mine if not shard_complete(out / shard_name(k), shards[k][1] - shards[k][0])]
    logger.info("rank %d: %d shard(s) of %d, %d already done", ctx.rank, len(mine), len(shards), len(mine) - len(todo))
    batches = [list(range(b, min(b + args.batch_size, e))) for k in todo
               for s, e in [shards[k]] for b in range(s, e, args.batch_size)]
    workers = default_workers() if args.workers is None else args.workers
    loader = DataLoader(_Pairs(dataset), batch_sampler=batches, num_workers=workers,
                        **({"prefetch_factor": 4} if workers > 0 else {}))
    todo_images = sum(shards[k][1] - shards[k][0] for k in todo)
    progress = Progress(todo_images, f"extract (rank {ctx.rank})", enabled=ctx.is_main)
    buffers: dict[str, list] = {"latents": [], "latents_flip": [], "labels": [], "indices": []}
    current = iter(todo)
    k = next(current, None)
    written = 0
    kill_after = int(os.environ.get("VTP_EXTRACT_KILL_AFTER", "0"))  # tests: die like `kill -9` after N shards
    with torch.inference_mode():
        for x, x_flip, labels, idx in loader:
            both = torch.cat([x, x_flip]).to(run.device, non_blocking=True)
            with run.autocast():
                z = run.model.get_reconstruction_latents(both)
            z = z.detach().cpu()
            buffers["latents"].append(z[: len(idx)])
            buffers["latents_flip"].append(z[len(idx):])
            buffers["labels"].append(labels.long())
            buffers["indices"].append(idx.long())
            progress.update(len(idx))
            if int(idx[-1]) == shards[k][1] - 1:  # the shard's last batch
                tensors = {key: torch.cat(v).contiguous() for key, v in buffers.items()}
                meta = {"total_size": str(tensors["latents"].shape[0]), "dtype": str(tensors["latents"].dtype),
                        "device": str(tensors["latents"].device)}
                with atomic_path(out / shard_name(k)) as tmp:
                    save_shard(tensors, tmp, meta)
                buffers = {key: [] for key in buffers}
                written += 1
                if kill_after and written >= kill_after:
                    import signal

                    os.kill(os.getpid(), signal.SIGKILL)
                k = next(current, None)
    seconds = progress.close()
    rates = all_gather_objects(ctx, (todo_images, seconds))
    barrier(ctx)
    if ctx.is_main:
        stats = compute_stats(out, n)
        done = sum(r[0] for r in rates)
        wall = max(r[1] for r in rates)
        logger.info("latent stats: mean %s, std %s", [round(v, 4) for v in stats["mean"].flatten()[:4].tolist()],
                    [round(v, 4) for v in stats["std"].flatten()[:4].tolist()])
        print(f"extracted {done} new image(s) (x2 with flips) in {wall:.1f} s: "
              f"{done / max(wall, 1e-9):.1f} images/s over {ctx.world_size} process(es); "
              f"{len(shards)} shard(s) and {STATS} in {out}")
    barrier(ctx)
    shutdown(ctx)
    return 0


def build_parser() -> argparse.ArgumentParser:
    epilog = ("example:\n  torchrun --nproc_per_node 8 -m vtp_tools.extract --data /data/imagenet/train "
              "--out latents/vtp-s --weights weights/VTP-Small-f16d64\n"
              "  (rerun the same command after an interruption: finished shards are kept)\n"
              "Defaults are the original generation/tools/extract_features_vtp.py's with the shipped "
              "configs/train_vtp_*_dit_xl.yaml;\neach option's help names the original's setting.")
    p = argparse.ArgumentParser(prog="python -m vtp_tools.extract", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    p.add_argument("--data", required=True, help="ImageFolder root (original: data.raw_image_path of the config)")
    p.add_argument("--out", required=True,
                   help="output folder for shards, manifest and latents_stats.pt (original: train.output_dir"
                        "/latents/<model>/imgnet<size>_norm<type>)")
    add_model_arguments(p, original_weights="vae.hf_model_path",
                        original_device="needs CUDA, device rank %% GPUs")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="autocast precision (default: fp32, what the original computes: its --fp16 flag is stored "
                        "but never used, encode_images never enters autocast, so it runs fp32 with TF32 matmuls on "
                        "CUDA; fp16/bf16 here change the latents)")
    p.add_argument("--no-tf32", dest="tf32", action="store_false",
                   help="keep CUDA matmuls and cuDNN convolutions in full fp32 (default: TF32 allowed on CUDA, as the "
                        "original sets torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32; no effect elsewhere)")
    p.add_argument("--fusion", default="auto",
                   help="fusion rules (ascend.fusion): auto (default) = only the exact rules, latents as the unfused "
                        "model's; all adds approximations (tanh GELU, text tower only); none; 'gelu,layernorm'; "
                        "file.yaml. The original has no fusion; the manifest records the rules")
    p.add_argument("--batch-size", type=int, default=50,
                   help="images per step and process (default: 50, the original's vae.per_proc_batch_size in the shipped "
                        "configs)")
    p.add_argument("--shard-size", type=int, default=10000,
                   help="samples per shard file (default: 10000; the original writes one file per rank per "
                        "10000 // batch-size batches)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input size (default: the model's config image_size; original: data.image_size, 256)")
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader worker processes (default: CPUs/2, at most 8; original: 8); they do not change "
                        "the latents")
    p.add_argument("--limit", type=int, default=None,
                   help="only the first N images in ImageFolder order (default: all; the original has no limit)")
    return p


def main(argv=None) -> int:
    from ascend.npu import prepare_environment

    prepare_environment()  # before torch is imported: a torch_npu install without CANN must not break import torch
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from ascend.device import DeviceError
    from ascend.runtime import WeightsMissing
    from vtp_tools.eval.data import DatasetError

    try:
        return extract(args)
    except (DatasetError, DeviceError, WeightsMissing, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # one line, no traceback: what is kept and how to go on
        done = len(list(Path(args.out).glob("latents_shard*.safetensors"))) if args.out else 0
        print(f"\ninterrupted: {done} finished shard(s) kept in {args.out}; rerun the same command to resume "
              "(finished shards are not computed again)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
