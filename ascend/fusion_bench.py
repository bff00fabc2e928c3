"""Benchmark of the load-time fusion on CPU: patch time, fused vs unfused latency and error per task.

    python -m ascend.fusion_bench                  # VTP-Small, 5 timed runs per task
    python -m ascend.fusion_bench --iters 10 --threads 1

What it measures (synthetic weights, built once with ``VTPModel.synthetic``, about 2 s):

* **patch time**: ``apply_fusions(model, "all", ...)`` on VTP-Small, median of ``--patch-runs``, for
  the simulated Ascend910B3 decisions and for CPU. Each run patches a fresh *structural* copy of the
  model (new modules, the same parameter tensors), so no weights are copied; the target is < 50 ms.
* **latency**, CPU fp32, batch 1, 256x256, under ``torch.no_grad``: median of ``--iters`` runs after
  ``--warmup`` runs, unfused and fused runs interleaved, for reconstruction (encode + decode), CLIP
  (image + text features) and SSL features (``forward_type="feature"``).
* **relative L2 error** ``||fused - unfused|| / ||unfused||`` per task output (in float64; the certification's gates are
  verify.metrics', a layer above this one).

On CPU every rule falls back to torch math, so "fused" CPU latency measures the wrappers' overhead
(expected ~0) and the error comes from the ``gelu`` rule alone (tanh vs erf). NPU speed-ups need an
NPU. On a shared host, ``--threads 1`` gives steadier numbers: with several threads each small op can
wait at the OpenMP barrier when other processes hold the cores. Exit code 0, or 2 for a bad argument.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the first `import torch`: survive a torch_npu install without CANN
    from ascend.npu import prepare_environment

    prepare_environment()

import argparse
import copy
import logging
import statistics
import sys
import time
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

from vtp import VTPModel

from .fusion import apply_fusions

logger = logging.getLogger(__name__)

TASKS = ("reconstruction", "clip", "ssl")


def _relative_l2(a, b) -> float:
    """||a - b|| / ||b|| in float64 (0 when both are zero)."""
    a, b = a.double(), b.double()
    norm = float(b.norm())
    return float((a - b).norm()) / norm if norm else float((a - b).norm())


def structural_copy(model: nn.Module) -> nn.Module:
    """A deep copy of the module tree that shares every parameter and buffer with ``model``."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def task_runners(image: torch.Tensor, text: torch.Tensor) -> Dict[str, Callable[[VTPModel], Dict[str, torch.Tensor]]]:
    """{task: model -> {output name: tensor}} for the three tasks."""

    def reconstruction(model):
        latents = model.get_reconstruction_latents(image)
        return {"latents": latents, "decoded": model.get_latents_decoded_images(latents)}

    def clip(model):
        return {"image_features": model.get_clip_image_feature(image),
                "text_features": model.get_clip_text_feature(text)}

    def ssl(model):
        out = model(image, forward_type="feature")
        return {"cls_token": out["cls_token"], "patch_tokens": out["patch_tokens"]}

    return {"reconstruction": reconstruction, "clip": clip, "ssl": ssl}


def time_patching(model: VTPModel, runs: int, **target) -> float:
    """Median milliseconds of ``apply_fusions(copy, "all", **target)`` over fresh structural copies."""
    times = []
    for _ in range(runs):
        clone = structural_copy(model)
        start = time.perf_counter()
        apply_fusions(clone, "all", **target)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.no_grad()
def time_task(run: Callable, unfused: nn.Module, fused: nn.Module, iters: int, warmup: int):
    """(median ms unfused, median ms fused, outputs unfused, outputs fused); runs interleaved."""
    for _ in range(warmup):
        run(unfused)
        run(fused)
    times = {"unfused": [], "fused": []}
    outputs = {}
    for _ in range(iters):
        for name, model in (("unfused", unfused), ("fused", fused)):
            start = time.perf_counter()
            outputs[name] = run(model)
            times[name].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times["unfused"]), statistics.median(times["fused"]), outputs["unfused"], outputs["fused"]


def sample_inputs(config, image_size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1, 3, image_size, image_size, generator=g)
    text = torch.zeros(1, config.text_context_length, dtype=torch.long)
    text[0, :8] = torch.randint(1, 49000, (8,), generator=g)
    text[0, 8] = 49407  # end of text
    return image, text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ascend.fusion_bench",
        description="CPU benchmark of the load-time fusion: patch time, fused vs unfused latency and error.",
        epilog="example: python -m ascend.fusion_bench --iters 5 --preset VTP-Small-f16d64",
    )
    parser.add_argument("--preset", default="VTP-Small-f16d64", help="model preset (default %(default)s)")
    parser.add_argument("--iters", type=int, default=5, help="timed runs per task and variant (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default %(default)s)")
    parser.add_argument("--patch-runs", type=int, default=7, help="patch timings (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=256, help="square image side (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.iters < 1 or args.warmup < 0 or args.patch_runs < 1:
        print("error: --iters and --patch-runs must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    try:
        unfused = VTPModel.synthetic(args.preset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("built synthetic %s in %.1f s", args.preset, time.perf_counter() - start)

    logging.getLogger("ascend.fusion").setLevel(logging.WARNING)  # one INFO line per patch otherwise
    patch_npu = time_patching(unfused, args.patch_runs, device="npu", soc="Ascend910B3")
    patch_cpu = time_patching(unfused, args.patch_runs, device="cpu")
    fused = structural_copy(unfused)
    report = apply_fusions(fused, "all", device="cpu")
    for line in report.summary().splitlines():
        logger.info("%s", line.strip())

    image, text = sample_inputs(unfused.config, args.image_size)
    rows = []
    for task, run in task_runners(image, text).items():
        logger.info("timing %s (%d warm-up + %d runs per variant)", task, args.warmup, args.iters)
        t_unfused, t_fused, out_unfused, out_fused = time_task(run, unfused, fused, args.iters, args.warmup)
        errors = {name: _relative_l2(out_fused[name], out_unfused[name]) for name in out_unfused}
        rows.append((task, t_unfused, t_fused, errors))

    print(f"VTP fusion benchmark: {args.preset}, CPU fp32, batch 1, {args.image_size}x{args.image_size}, "
          f"{torch.get_num_threads()} thread(s), median of {args.iters} after {args.warmup} warm-up")
    print(f"patch time (all rules, {len(report.patched_modules)} modules): {patch_npu:.1f} ms for npu/Ascend910B3, "
          f"{patch_cpu:.1f} ms for cpu (median of {args.patch_runs}; target < 50 ms)")
    print(f"{'task':<16}{'unfused ms':>12}{'fused ms':>12}{'ratio':>8}  relative L2 error fused vs unfused")
    for task, t_unfused, t_fused, errors in rows:
        text_errors = ", ".join(f"{name} {value:.2e}" for name, value in errors.items())
        print(f"{task:<16}{t_unfused:>12.1f}{t_fused:>12.1f}{t_fused / t_unfused:>8.3f}  {text_errors}")
    print("note: on CPU every rule runs torch math (fused = wrapper overhead); the error is the gelu rule's "
          "tanh approximation in the text tower")
    logger.info("total %.1f s", time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
