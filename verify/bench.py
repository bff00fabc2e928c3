"""Benchmarks that print numbers (targets are checked here, not by timed tests).

    python -m verify.bench load            # cold-process load time and peak RSS of a Small-sized checkpoint
    python -m verify.bench tasks           # per-task CPU fp32 latency (median, p90, min)
    python -m verify.bench all

Targets (issue 2): a cold process that imports vtp and loads a Small-sized checkpoint from local disk takes
at most 1.0 s more than `python -c "import torch"`; peak RSS beyond torch's baseline is at most 1.3x the
checkpoint size. The comparison with the original implementation is `python -m verify.bench_original`;
the fusion layer's numbers are `python -m ascend.fusion_bench`.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("verify.bench")

PRESET = "VTP-Small-f16d64"
LOAD_BUDGET_S = 1.0
RSS_BUDGET_RATIO = 1.3
PROMPTS = ("a diagram", "a dog", "a cat", "a person")


def make_synthetic_checkpoint(folder: Path, preset: str = PRESET) -> Path:
    from vtp import VTPModel

    if not (folder / "model.safetensors").exists():
        logger.info("writing a synthetic %s checkpoint to %s", preset, folder)
        VTPModel.synthetic(preset, seed=0).save_pretrained(folder)
    return folder


def bench_load(weights: Path, repeats: int) -> dict:
    from verify.timing import cold_process
    from vtp.checkpoint import find_weights

    size = sum(f.stat().st_size for f in find_weights(weights)[1])
    cold_process("load", str(weights))  # warm the page cache: "from local disk" means a warm file cache
    runs = {"torch": [], "load": [], "touch": []}
    for _ in range(repeats):  # interleaved, so that machine noise hits every mode alike
        for mode in runs:
            runs[mode].append(cold_process(mode, str(weights)))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in runs.items()}
    extra_s = med["load"]["total_s"] - med["torch"]["total_s"]
    rss_load = med["load"]["rss_peak"] - med["torch"]["rss_peak"]
    rss_touch = med["touch"]["rss_peak"] - med["torch"]["rss_peak"]
    result = {
        "checkpoint": str(weights), "checkpoint_bytes": size, "repeats": repeats,
        "python_import_torch_s": med["torch"]["total_s"], "python_import_and_load_s": med["load"]["total_s"],
        "extra_load_s": extra_s, "extra_load_budget_s": LOAD_BUDGET_S,
        "rss_beyond_torch_after_load_bytes": rss_load,
        "rss_beyond_torch_all_weights_read_bytes": rss_touch,
        "rss_ratio_all_weights_read": rss_touch / size, "rss_ratio_budget": RSS_BUDGET_RATIO,
    }
    result["pass"] = extra_s <= LOAD_BUDGET_S and rss_touch / size <= RSS_BUDGET_RATIO
    print(f"checkpoint            {weights} ({size / 2**20:.0f} MiB)")
    print(f"import torch          {med['torch']['total_s'] * 1e3:8.0f} ms (median of {repeats} cold processes)")
    print(f"import vtp + load     {med['load']['total_s'] * 1e3:8.0f} ms  -> +{extra_s * 1e3:.0f} ms "
          f"(budget +{LOAD_BUDGET_S * 1e3:.0f} ms)")
    print(f"peak RSS beyond torch {rss_load / 2**20:8.0f} MiB after load (memory-mapped, pages not yet read)")
    print(f"peak RSS beyond torch {rss_touch / 2**20:8.0f} MiB with every weight read = "
          f"{rss_touch / size:.2f}x checkpoint (budget {RSS_BUDGET_RATIO}x)")
    return result


def bench_tasks(weights: Path, iters: int, warmup: int, size: int) -> dict:
    import torch

    from verify.timing import time_call
    from vtp import VTPModel
    from vtp.tokenizers import get_tokenizer

    model = VTPModel.from_pretrained(weights)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    text = get_tokenizer(context_length=model.config.text_context_length)(list(PROMPTS))
    tasks = {  # name: (call, batch of one call, what the batch holds)
        "reconstruction": (lambda: model.get_latents_decoded_images(model.get_reconstruction_latents(image)),
                           1, "images"),
        "clip_image": (lambda: model.get_clip_image_feature(image), 1, "images"),
        "clip_text": (lambda: model.get_clip_text_feature(text), len(PROMPTS), "prompts"),
        "ssl": (lambda: model.get_last_layer_feature(image), 1, "images"),
    }
    results = {}
    print(f"per-task CPU fp32 latency per call, images {size}x{size}, {torch.get_num_threads()} threads, "
          f"{warmup} warm-up + {iters} timed")
    with torch.no_grad():
        for name, (fn, batch, unit) in tasks.items():
            r = time_call(fn, lambda: None, warmup=warmup, iters=iters)  # CPU: nothing to sync
            results[name] = {**r, "batch": batch, "batch_of": unit}
            label = f"{batch} {unit[:-1] if batch == 1 else unit}"
            print(f"  {name:15s} {label:>9s}  median {r['median_ms']:8.1f} ms   p90 {r['p90_ms']:8.1f} ms   "
                  f"min {r['min_ms']:8.1f} ms")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m verify.bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m verify.bench load --weights weights/VTP-Small-f16d64 --repeats 5\n"
               "  python -m verify.bench all --json bench.json")
    parser.add_argument("what", choices=["load", "tasks", "all"], nargs="?", default="all",
                        help="load: cold-process load time and peak RSS against the budgets; tasks: per-task CPU "
                             "fp32 latency (reconstruction, CLIP image, CLIP text of 4 prompts, SSL); all: both "
                             "(default all)")
    parser.add_argument("--weights", type=Path, help="checkpoint folder (default: a synthetic VTP-Small in a temp dir)")
    parser.add_argument("--repeats", type=int, default=5, help="cold processes per measurement (default 5)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per task (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="untimed calls per task before the timed ones (default 2)")
    parser.add_argument("--size", type=int, default=256, help="image size for the task latencies (default 256)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.weights is not None and not (args.weights / "config.json").is_file():
        parser.error(f"--weights {args.weights}: no config.json there")

    with tempfile.TemporaryDirectory(prefix="vtp-bench-") as tmp:
        weights = args.weights or make_synthetic_checkpoint(Path(tmp) / PRESET)
        out = {}
        if args.what in ("load", "all"):
            out["load"] = bench_load(weights, args.repeats)
        if args.what in ("tasks", "all"):
            out["tasks"] = bench_tasks(weights, args.iters, args.warmup, args.size)
    if args.json:
        from vtp.io_utils import atomic_write_json

        atomic_write_json(args.json, out)
    ok = out.get("load", {}).get("pass", True)
    print("load targets: " + ("MET" if ok else "NOT MET") if "load" in out else "")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
