"""``python -m vtp_tools.eval.bench``: is data loading a bottleneck, and what does EOT truncation of the text tower buy?

encode: images/s of the dataset encoding path (ImageFolder -> DataLoader workers -> center crop ->
``get_reconstruction_latents``) against the model forward alone on ready tensors, per batch size.
text: classifier prompts through the text tower at full context length vs up to the last EOT token,
speed-up and relative L2 difference of the features.
Numbers go to stdout as JSON lines; run it with the model and precision of interest.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def make_jpeg_folder(root: Path, n: int, classes: int = 4, size=(500, 375), seed: int = 0) -> Path:
    """n ImageNet-sized JPEGs (smooth noise, quality 90) in ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"c{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        low = rng.integers(0, 255, (size[1] // 25, size[0] // 25, 3), dtype=np.uint8)
        Image.fromarray(low).resize(size, Image.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return root


def bench_encode(model, root: Path, batch: int, workers: int, n: int) -> dict:
    from vtp_tools.eval.data import ImageFolderDataset, ShardSampler, make_loader

    ds = ImageFolderDataset(root, "center_crop", size=model.config.image_size)
    ready = torch.stack([ds[i][0] for i in range(batch)])
    with torch.inference_mode():
        model.get_reconstruction_latents(ready)  # warm-up
        t = time.perf_counter()
        steps = max(1, n // batch)
        for _ in range(steps):
            model.get_reconstruction_latents(ready)
        forward = steps * batch / (time.perf_counter() - t)
        loader = make_loader(ds, ShardSampler(steps * batch), batch, workers)
        t = time.perf_counter()
        for x, _, _ in loader:
            model.get_reconstruction_latents(x)
        pipeline = steps * batch / (time.perf_counter() - t)
    return {"bench": "encode", "batch": batch, "workers": workers, "images": steps * batch,
            "forward_only_img_s": round(forward, 2), "pipeline_img_s": round(pipeline, 2),
            "ratio": round(pipeline / forward, 3)}


def bench_text(model, classes: int, batch_classes: int) -> dict:
    from vtp_tools.eval.classnames import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from vtp_tools.eval.zero_shot import text_features
    from vtp.model import _tokenizer

    tok = _tokenizer(model.config.text_context_length)
    names = IMAGENET_CLASSNAMES[:classes]
    batches = [tok([t.format(c) for c in names[i:i + batch_classes] for t in OPENAI_IMAGENET_TEMPLATES])
               for i in range(0, classes, batch_classes)]
    out = {}
    with torch.inference_mode():
        text_features(model, batches[0][:2], truncate=True)
        for mode in (False, True):
            t = time.perf_counter()
            feats = torch.cat([text_features(model, b, truncate=mode) for b in batches])
            out[mode] = (time.perf_counter() - t, feats)
    rel = (torch.linalg.vector_norm(out[True][1] - out[False][1]) / torch.linalg.vector_norm(out[False][1])).item()
    return {"bench": "text", "prompts": classes * 80, "prompts_per_batch": batch_classes * 80,
            "full_s": round(out[False][0], 3), "truncated_s": round(out[True][0], 3),
            "speedup": round(out[False][0] / out[True][0], 2), "rel_l2": rel}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m vtp_tools.eval.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint folder (default: synthetic VTP-Small-f16d64)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--text-classes", type=int, default=20)
    p.add_argument("--skip-encode", action="store_true")
    args = p.parse_args(argv)
    from ascend.runtime import load_weights
    from vtp_tools.eval.data import default_workers

    model, _ = load_weights(args.weights)
    model.eval()
    workers = default_workers() if args.workers is None else args.workers
    print(json.dumps({"threads": torch.get_num_threads(), "workers": workers}))
    for classes_per_batch in (1, 10):
        print(json.dumps(bench_text(model, args.text_classes, classes_per_batch)), flush=True)
    if not args.skip_encode:
        with tempfile.TemporaryDirectory() as tmp:
            root = make_jpeg_folder(Path(tmp), args.images)
            for b in (int(x) for x in args.batches.split(",")):
                print(json.dumps(bench_encode(model, root, b, workers, args.images)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
