"""Parity and speed of this package against the ORIGINAL MiniMax-AI/VTP code, on the CPU in fp32.

This is a developer tool, not a test: it needs a checkout of the original repository
(https://github.com/MiniMax-AI/VTP) and `transformers`, and the test suite never imports it.

What it does
  1. Weights: the folder given with --weights, or synthetic VTP-Small weights written by this package
     (`VTPModel.synthetic(preset, seed).save_pretrained(tmp)`) into a temporary folder.
  2. Loads that folder twice: with this package's `VTPModel.from_pretrained` and with the original
     `vtp.models.vtp_hf.VTPModel.from_pretrained` (imported under the alias `vtp_original`, so both
     packages live in one process; torchvision, needed only for an unused import, is stubbed when absent).
  3. Parity: every public method on fixed inputs (two 256x256 images, one 224x224 image, four prompts),
     relative L2 error and max abs error of ours against the original; the tokenizers are compared too.
  4. Speed: batch 1, 256x256, torch.no_grad, the same thread count, ours and the original interleaved
     in one process (the order alternates every iteration); median and min per task.
  5. Cold-process load time: `python -c "import torch; <import>; <load>"` minus `python -c "import torch"`,
     repeated, median.

Exit status: 0 = parity holds and ours is not slower than the original by more than --max-slowdown on
any task; 1 = otherwise; 2 = the original code cannot be imported (the message says what to install).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from verify.model_parity import ParityRow, make_inputs, run_parity
from verify.original import OriginalUnavailable, import_original, load_original_model

logger = logging.getLogger("verify.bench_original")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PRESET = "VTP-Small-f16d64"


# ------------------------------------------------------------------------------------------------------
# Speed
# ------------------------------------------------------------------------------------------------------
@dataclass
class TimingRow:
    task: str
    ours: List[float] = field(default_factory=list)  # wall seconds per call
    original: List[float] = field(default_factory=list)
    ours_cpu: List[float] = field(default_factory=list)  # process CPU seconds per call (all threads)
    original_cpu: List[float] = field(default_factory=list)

    @property
    def ratio(self) -> float:  # ours / original, by medians
        return statistics.median(self.ours) / statistics.median(self.original)

    @property
    def ratio_min(self) -> float:
        return min(self.ours) / min(self.original)

    @property
    def ratio_paired(self) -> float:
        """Median of the per-iteration ratios: ours and the original run back to back in each iteration, so
        machine noise that lasts longer than one call cancels. This is the statistic of the verdict."""
        return statistics.median(o / r for o, r in zip(self.ours, self.original))

    @property
    def ratio_cpu_paired(self) -> float:
        """As ratio_paired but on process CPU time: less sensitive to other processes taking the cores."""
        return statistics.median(o / r for o, r in zip(self.ours_cpu, self.original_cpu))

    @property
    def spread(self) -> float:
        """max/min of all samples: > 1.5 means the machine was busy while measuring."""
        both = self.ours + self.original
        return max(both) / min(both)


def speed_tasks(inp: Dict[str, torch.Tensor]) -> Dict[str, Callable]:
    x, ids = inp["img1"], inp["ids"]
    return {
        "reconstruction (latents+decode)": lambda m: m.get_latents_decoded_images(m.get_reconstruction_latents(x)),
        "CLIP image feature": lambda m: m.get_clip_image_feature(x),
        "CLIP text feature (4 prompts)": lambda m: m.get_clip_text_feature(ids),
        "SSL last-layer feature": lambda m: m.get_last_layer_feature(x),
    }


@torch.no_grad()
def run_speed(ours, orig_model, inp: Dict[str, torch.Tensor], iters: int, warmup: int) -> List[TimingRow]:
    rows = []
    models = {"ours": ours, "original": orig_model}
    for task, fn in speed_tasks(inp).items():
        row = TimingRow(task)
        for _ in range(warmup):
            for name in ("ours", "original"):
                fn(models[name])
        for i in range(iters):
            order = ("ours", "original") if i % 2 == 0 else ("original", "ours")
            for name in order:
                c0, t0 = time.process_time(), time.perf_counter()
                fn(models[name])
                getattr(row, name).append(time.perf_counter() - t0)
                getattr(row, f"{name}_cpu").append(time.process_time() - c0)
        logger.info("%s: ours median %.1f ms, original median %.1f ms", task,
                    1e3 * statistics.median(row.ours), 1e3 * statistics.median(row.original))
        rows.append(row)
    return rows


@torch.no_grad()
def run_profile(ours, orig_model, inp: Dict[str, torch.Tensor], tasks: Sequence[str], top: int = 15) -> str:
    """torch.profiler tables (self CPU time) of ours and the original for the given tasks."""
    from torch.profiler import ProfilerActivity, profile

    out = []
    fns = speed_tasks(inp)
    for task in tasks:
        for name, model in (("ours", ours), ("original", orig_model)):
            fns[task](model)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    fns[task](model)
            out.append(f"\n--- profile: {task} / {name} (3 calls, sorted by self CPU time) ---")
            out.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------
# Cold-process load time
# ------------------------------------------------------------------------------------------------------
def _child_load(which: str, folder: str, original_repo: Optional[str]) -> None:
    """Run in a fresh interpreter (after `import torch`): import the package and load the weights; print
    the in-process seconds as JSON."""
    t0 = time.perf_counter()
    if which == "ours":
        from vtp import VTPModel

        model = VTPModel.from_pretrained(folder)
    else:
        orig = import_original(Path(original_repo))
        model, _ = load_original_model(orig, Path(folder))
    model.eval()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def measure_load_times(folder: Path, original_repo: Path, reps: int) -> Dict[str, Dict[str, List[float]]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                             if p])
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    programs = {
        "import torch": "import torch",
        "ours": ("import torch; from verify.bench_original import _child_load; "
                 f"_child_load('ours', {str(folder)!r}, None)"),
        "original": ("import torch; from verify.bench_original import _child_load; "
                     f"_child_load('original', {str(folder)!r}, {str(original_repo)!r})"),
    }
    res: Dict[str, Dict[str, List[float]]] = {k: {"wall": [], "inproc": []} for k in programs}
    for rep in range(reps + 1):  # rep 0 warms the page cache and the .pyc files; not recorded
        for name, code in programs.items():
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO_ROOT),
                               capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if p.returncode != 0:
                raise RuntimeError(f"load-time child {name!r} failed (rc {p.returncode}):\n{p.stderr[-2000:]}")
            if rep == 0:
                continue
            res[name]["wall"].append(wall)
            if name != "import torch":
                res[name]["inproc"].append(json.loads(p.stdout.strip().splitlines()[-1])["seconds"])
    return res


# ------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------
def _fmt(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return "0" if x == 0 else f"{x:.2e}"


def format_parity(rows: List[ParityRow], tol: float) -> str:
    w1 = max(len(r.case) for r in rows)
    w2 = max(len(r.output) for r in rows)
    w3 = max(len(r.shape) for r in rows)
    lines = [f"PARITY ours vs original (relative L2 tolerance {tol:g})",
             f"{'case':<{w1}}  {'output':<{w2}}  {'shape':<{w3}}  {'rel L2':>9}  {'max abs':>9}  ok"]
    for r in rows:
        lines.append(f"{r.case:<{w1}}  {r.output:<{w2}}  {r.shape:<{w3}}  {_fmt(r.rel_l2):>9}  "
                     f"{_fmt(r.max_abs):>9}  {'yes' if r.ok else 'NO'}" + (f"  ({r.note})" if r.note else ""))
    worst = max((r.rel_l2 for r in rows), default=0.0)
    lines.append(f"worst relative L2: {_fmt(worst)}; {sum(not r.ok for r in rows)} failing of {len(rows)}")
    return "\n".join(lines)


def format_speed(rows: List[TimingRow], max_slowdown: float, threads: int, iters: int) -> str:
    w = max(len(r.task) for r in rows)
    lines = [f"LATENCY CPU fp32, batch 1, 256x256, torch.no_grad, {threads} threads, {iters} interleaved iterations",
             "(wall ms; ratios = ours / original: of the medians, of the minima, and the median of the "
             f"per-iteration ratios = 'paired', which decides (limit {1 + max_slowdown:.2f}); 'cpu pair' = the "
             "same on process CPU time)",
             f"{'task':<{w}}  {'ours med':>9}  {'ours min':>9}  {'orig med':>9}  {'orig min':>9}  "
             f"{'ratio med':>9}  {'ratio min':>9}  {'paired':>7}  {'cpu pair':>8}  verdict"]
    noisy = []
    for r in rows:
        ok = r.ratio_paired <= 1 + max_slowdown
        lines.append(f"{r.task:<{w}}  {1e3 * statistics.median(r.ours):9.1f}  {1e3 * min(r.ours):9.1f}  "
                     f"{1e3 * statistics.median(r.original):9.1f}  {1e3 * min(r.original):9.1f}  "
                     f"{r.ratio:9.3f}  {r.ratio_min:9.3f}  {r.ratio_paired:7.3f}  {r.ratio_cpu_paired:8.3f}  "
                     f"{'ok' if ok else 'SLOWER'}")
        if r.spread > 1.5:
            noisy.append(f"{r.task} (max/min {r.spread:.1f})")
    if noisy:
        lines.append("note: the machine was busy (timings spread widely) for: " + ", ".join(noisy) +
                     "; trust 'paired' and 'ratio min', or rerun with more --iters on an idle machine")
    return "\n".join(lines)


def format_load(res: Dict[str, Dict[str, List[float]]]) -> str:
    base = statistics.median(res["import torch"]["wall"])
    lines = [f"COLD-PROCESS LOAD TIME ({len(res['ours']['wall'])} repetitions, median; s)",
             f"{'':<10}  {'process wall':>12}  {'minus import torch':>18}  {'in-process load':>15}",
             f"{'torch':<10}  {base:12.3f}  {'-':>18}  {'-':>15}"]
    for name in ("ours", "original"):
        wall = statistics.median(res[name]["wall"])
        lines.append(f"{name:<10}  {wall:12.3f}  {wall - base:18.3f}  {statistics.median(res[name]['inproc']):15.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify.bench_original",
        description="Compare this VTP implementation with the original MiniMax-AI/VTP code on the CPU (fp32): "
                    "output parity of every public method, per-task latency and cold-process load time.",
        epilog="example:\n"
               "  git clone https://github.com/MiniMax-AI/VTP /tmp/vtp_orig\n"
               "  python -m venv --system-site-packages /tmp/origvenv\n"
               "  /tmp/origvenv/bin/pip install 'transformers==4.57.1'\n"
               "  /tmp/origvenv/bin/python -m verify.bench_original --original-repo /tmp/vtp_orig --iters 10\n"
               "  /tmp/origvenv/bin/python -m verify.bench_original --original-repo /tmp/vtp_orig "
               "--weights weights/VTP-Small-f16d64 --profile\n"
               "  /tmp/origvenv/bin/python -m verify.bench_original --original-repo /tmp/vtp_orig --tools "
               "--data /data/imagenet/val --limit 500 --skip-speed\n\n"
               "exit status: 0 parity and speed hold, 1 they do not, 2 the original cannot be imported",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original-repo", required=True, type=Path,
                   help="checkout of https://github.com/MiniMax-AI/VTP (put on sys.path as 'vtp_original')")
    p.add_argument("--weights", type=Path, default=None,
                   help="checkpoint folder (config.json + model.safetensors); default: synthetic weights of "
                        "--preset written to a temporary folder")
    p.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset for synthetic weights (default {DEFAULT_PRESET})")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic weights (default 0)")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per task and model (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per task and model (default 2)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both models (default 2)")
    p.add_argument("--load-reps", type=int, default=5,
                   help="cold-process load repetitions (default 5; 0 skips the load-time measurement)")
    p.add_argument("--tol", type=float, default=1e-5, help="relative L2 parity tolerance (default 1e-5)")
    p.add_argument("--max-slowdown", type=float, default=0.05,
                   help="allowed median slowdown of ours vs the original per task (default 0.05 = 5%%)")
    p.add_argument("--profile", action="store_true",
                   help="print torch.profiler tables for every task where ours is slower (or for all with "
                        "--profile-all)")
    p.add_argument("--profile-all", action="store_true", help="profile every task")
    p.add_argument("--skip-speed", action="store_true", help="parity only")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this JSON file")
    p.add_argument("--tools", action="store_true",
                   help="also check VTP's tools (vtp_tools.parity): on the ImageFolder --data, per-image zero-shot "
                        "predictions, latents' relative L2 and PSNR/SSIM of ours against the original tools' recipe "
                        "on the original model")
    p.add_argument("--data", type=Path, default=None, help="ImageFolder for --tools (class folders, images inside)")
    p.add_argument("--limit", type=int, default=None, help="--tools: only the first N images (default: all)")
    p.add_argument("--templates", type=int, default=80,
                   help="--tools: the first N of the 80 zero-shot templates (default 80, the original's; fewer is "
                        "faster: 1000 x N prompts go through both text towers)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def run_tools_parity(ours, orig_model, orig, args) -> bool:
    """``--tools``: print the per-image agreement of vtp_tools with the original tools' recipe; True when the
    zero-shot predictions all agree (the latents and PSNR/SSIM differences are printed for judgement)."""
    from vtp_tools import parity

    names, templates = parity.read_zero_shot_data(orig.repo / "tools" / "test_zero_shot_hf.py")
    side = parity.OriginalSide(orig_model, orig.tokenizers.get_tokenizer(
        "ViT-B-32", context_length=orig_model.config.text_context_length), names, templates[:args.templates],
        parity.load_center_crop_arr(orig.repo))
    result = parity.compare_tools(ours, side, args.data, limit=args.limit)
    print()
    print(parity.format_report(result))
    s = result["summary"]
    return s["zero_shot_same_prediction"] == s["images"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.tools and (args.data is None or not args.data.is_dir()):
        print(f"error: --tools needs --data DIR, an ImageFolder (got {args.data})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("dinov3", "dinov3_pixel_decoder", "root", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    torch.set_num_threads(args.threads)

    try:
        orig = import_original(args.original_repo)
    except OriginalUnavailable as e:
        print(f"ERROR: cannot import the original VTP code: {e}", file=sys.stderr)
        return 2
    logger.info("original: %s (transformers %s%s)", orig.repo, orig.transformers_version,
                ", torchvision stubbed" if orig.torchvision_stubbed else "")

    from vtp import VTPModel
    from vtp.tokenizers import get_tokenizer

    with contextlib.ExitStack() as stack:
        if args.weights is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vtp_bench_")))
            logger.info("writing synthetic %s weights (seed %d) to %s", args.preset, args.seed, folder)
            VTPModel.synthetic(args.preset, seed=args.seed).save_pretrained(folder)
            source = f"synthetic {args.preset} seed {args.seed}"
        else:
            folder = args.weights
            source = str(folder)
        ours = VTPModel.from_pretrained(folder).eval()
        orig_model, load_notes = load_original_model(orig, folder)
        logger.info("original load info: %s", load_notes)

        n_params = sum(p.numel() for p in ours.parameters())
        header = (f"weights: {source} ({n_params / 1e6:.1f}M parameters)\n"
                  f"torch {torch.__version__}, transformers {orig.transformers_version}, "
                  f"threads {torch.get_num_threads()}, original attn_mask: {load_notes['attn_mask']}")
        print(header)
        for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
            if load_notes.get(k):
                print(f"original from_pretrained {k}: {load_notes[k]}")

        inp = make_inputs(get_tokenizer(context_length=ours.config.text_context_length))
        prows = run_parity(ours, orig_model, orig, inp, args.tol)
        print()
        print(format_parity(prows, args.tol))
        parity_ok = all(r.ok for r in prows)
        if args.tools:
            tools_ok = run_tools_parity(ours, orig_model, orig, args)
            parity_ok = parity_ok and tools_ok

        speed_ok, trows, load, slower = True, [], None, []
        if not args.skip_speed:
            trows = run_speed(ours, orig_model, inp, args.iters, args.warmup)
            print()
            print(format_speed(trows, args.max_slowdown, torch.get_num_threads(), args.iters))
            slower = [r.task for r in trows if r.ratio_paired > 1 + args.max_slowdown]
            speed_ok = not slower
            if args.profile or args.profile_all:
                tasks = [r.task for r in trows] if args.profile_all else slower
                if tasks:
                    print(run_profile(ours, orig_model, inp, tasks))
            if args.load_reps > 0:
                del orig_model, ours  # free memory before the child processes
                load = measure_load_times(folder, orig.repo, args.load_reps)
                print()
                print(format_load(load))

        print()
        verdict = "PASS" if parity_ok and speed_ok else "FAIL"
        reasons = []
        if not parity_ok:
            reasons.append(f"{sum(not r.ok for r in prows)} parity rows over tolerance")
        if not speed_ok:
            reasons.append("slower than the original by more than "
                           f"{100 * args.max_slowdown:g}% on: {', '.join(slower)}")
        print(f"VERDICT: {verdict}" + (f" ({'; '.join(reasons)})" if reasons else
                                       " (parity within tolerance, no task slower than allowed)"))

        if args.json:
            args.json.write_text(json.dumps({
                "weights": source, "torch": torch.__version__, "transformers": orig.transformers_version,
                "threads": torch.get_num_threads(), "load_notes": load_notes,
                "parity": [r.__dict__ for r in prows],
                "speed": [{"task": r.task, "ours_s": r.ours, "original_s": r.original, "ratio_median": r.ratio,
                           "ratio_min": r.ratio_min, "ratio_paired": r.ratio_paired, "ours_cpu_s": r.ours_cpu,
                           "original_cpu_s": r.original_cpu, "ratio_cpu_paired": r.ratio_cpu_paired}
                          for r in trows],
                "load_times": load, "verdict": verdict,
            }, indent=1, default=str))
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
