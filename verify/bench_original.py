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
import importlib
import importlib.util
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

logger = logging.getLogger("verify.bench_original")

REPO_ROOT = Path(__file__).resolve().parent.parent
ORIGINAL_ALIAS = "vtp_original"
DEFAULT_PRESET = "VTP-Small-f16d64"
PROMPTS = ["a diagram", "a dog", "a cat", "a person"]
# extra strings for the tokenizer comparison (digits, contractions, html entities, unicode, truncation)
TOKENIZER_PROBES = PROMPTS + ["hello world", "123", "don't", "A  Photo&amp;of   a DOG!", "café naïve 東京",
                              "word " * 100]
INSTALL_HINT = ("python -m venv --system-site-packages /tmp/origvenv && "
                "/tmp/origvenv/bin/pip install 'transformers==4.57.1'   "
                "(do not install torch/torchvision into it; run this tool with /tmp/origvenv/bin/python)")


class OriginalUnavailable(RuntimeError):
    """The original repository or one of its dependencies is missing."""


# ------------------------------------------------------------------------------------------------------
# Importing the original code
# ------------------------------------------------------------------------------------------------------
def _stub_torchvision() -> bool:
    """The original imports `torchvision.ops.misc.FrozenBatchNorm2d` in an open_clip helper that VTPModel
    never calls. If torchvision is absent or broken, put a stub in sys.modules. Returns True if stubbed."""
    try:
        importlib.import_module("torchvision.ops.misc")
        return False
    except Exception as e:  # noqa: BLE001 - a broken torchvision raises all sorts of errors
        logger.info("torchvision not usable (%s: %s); stubbing torchvision.ops.misc", type(e).__name__, e)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")

    class FrozenBatchNorm2d(torch.nn.Module):  # never instantiated by VTPModel
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stub (verify.bench_original): FrozenBatchNorm2d is unavailable")

    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    tv.ops, ops.misc = ops, misc
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc})
    return True


def _namespace_package(name: str, path: Path) -> None:
    """Register `name` as a package rooted at `path` WITHOUT running its __init__ (the original's top-level
    __init__ pulls in the legacy training class and omegaconf, which VTPModel does not need)."""
    if name in sys.modules:
        return
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    mod.__file__ = str(path / "__init__.py")
    mod.__package__ = name
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    mod.__spec__ = spec
    sys.modules[name] = mod


def import_original(repo: Path) -> types.SimpleNamespace:
    """Import the original `VTPModel`, `VTPConfig` and tokenizer from a checkout at `repo`.

    Raises OriginalUnavailable with an installation hint when something is missing."""
    repo = Path(repo).expanduser().resolve()
    pkg = repo / "vtp"
    if not (pkg / "models" / "vtp_hf" / "modeling_vtp.py").is_file():
        raise OriginalUnavailable(
            f"{repo} is not a checkout of https://github.com/MiniMax-AI/VTP "
            f"(no vtp/models/vtp_hf/modeling_vtp.py); get it with "
            f"`git clone https://github.com/MiniMax-AI/VTP {repo}`")
    try:
        import transformers
        # resolve the lazy PreTrainedModel BEFORE the torchvision stub goes in: transformers probes
        # importlib.util.find_spec("torchvision"), which fails on a stub module
        transformers.PreTrainedModel
    except Exception as e:  # noqa: BLE001
        raise OriginalUnavailable(f"the original needs `transformers` ({type(e).__name__}: {e}). "
                                  f"Install it: {INSTALL_HINT}") from e
    stubbed = _stub_torchvision()
    _namespace_package(ORIGINAL_ALIAS, pkg)
    _namespace_package(f"{ORIGINAL_ALIAS}.models", pkg / "models")
    try:
        hf = importlib.import_module(f"{ORIGINAL_ALIAS}.models.vtp_hf")
        tok = importlib.import_module(f"{ORIGINAL_ALIAS}.tokenizers")
    except ModuleNotFoundError as e:
        raise OriginalUnavailable(f"importing the original code failed: missing module {e.name!r}. "
                                  f"Install it with pip (never torch/torchvision/timm/open_clip); "
                                  f"see: {INSTALL_HINT}") from e
    except Exception as e:  # noqa: BLE001
        raise OriginalUnavailable(f"importing the original code failed: {type(e).__name__}: {e}") from e
    return types.SimpleNamespace(VTPModel=hf.VTPModel, VTPConfig=hf.VTPConfig, tokenizers=tok, repo=repo,
                                 transformers_version=transformers.__version__, torchvision_stubbed=stubbed)


def causal_mask_reference(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)


def load_original_model(orig, folder: Path) -> Tuple[torch.nn.Module, Dict[str, object]]:
    """`from_pretrained` of the original, fp32, eval. Repairs the non-persistent causal mask if the
    installed transformers left it uninitialised (spec trap 8: transformers 5.x)."""
    model, info = orig.VTPModel.from_pretrained(str(folder), output_loading_info=True)
    model = model.float() if any(p.dtype != torch.float32 for p in model.parameters()) else model
    model.eval()
    notes: Dict[str, object] = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items()
                                if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    notes["attn_mask"] = "absent"
    mask = getattr(model, "attn_mask", None)
    if mask is not None:
        ref = causal_mask_reference(mask.shape[-1])
        if torch.equal(mask.float(), ref):
            notes["attn_mask"] = "built correctly by from_pretrained"
        else:
            model.attn_mask = ref.to(mask.device)
            notes["attn_mask"] = (f"WRONG after from_pretrained (transformers {orig.transformers_version}; "
                                  f"{int(torch.isnan(mask).sum())} NaN); rebuilt")
            logger.warning("original attn_mask was not initialised by transformers %s; rebuilt it",
                           orig.transformers_version)
    return model, notes


# ------------------------------------------------------------------------------------------------------
# Parity
# ------------------------------------------------------------------------------------------------------
@dataclass
class ParityRow:
    case: str
    output: str
    shape: str
    rel_l2: float
    max_abs: float
    ok: bool
    note: str = ""


def _flatten(out, prefix: str = "") -> List[Tuple[str, object]]:
    """Nested dict/tuple/list of tensors -> [(path, tensor)]."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if isinstance(out, dict):
        items = []
        for k in sorted(out):
            items += _flatten(out[k], f"{prefix}.{k}" if prefix else str(k))
        return items
    if isinstance(out, (tuple, list)):
        items = []
        for i, v in enumerate(out):
            items += _flatten(v, f"{prefix}[{i}]")
        return items
    return [(prefix or "out", out)]


def compare(ours: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(relative L2 error ||ours - ref|| / ||ref||, max |ours - ref|) in float64; inf on shape mismatch
    or non-finite values."""
    if not isinstance(ours, torch.Tensor) or not isinstance(ref, torch.Tensor) or ours.shape != ref.shape:
        return math.inf, math.inf
    a = ours.detach().to(torch.float64)
    b = ref.detach().to(torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf, math.inf
    diff = a - b
    den = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(diff).item()
    rel = num / den if den > 0 else (0.0 if num == 0 else math.inf)
    return rel, (diff.abs().max().item() if diff.numel() else 0.0)


def make_inputs(ours_tokenizer) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img2 = torch.randn(2, 3, 256, 256, generator=g)
    img224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = ours_tokenizer(PROMPTS)
    return {"img2": img2, "img1": img2[:1].clone(), "img224": img224, "ids": ids}


def parity_cases(inp: Dict[str, torch.Tensor], depth: int, orig_latents: Dict[str, torch.Tensor]
                 ) -> List[Tuple[str, Callable]]:
    img2, img224, ids = inp["img2"], inp["img224"], inp["ids"]
    layers = sorted({0, depth // 2, depth - 1})
    return [
        ("get_reconstruction_latents(img2)", lambda m: m.get_reconstruction_latents(img2)),
        ("get_latents_decoded_images(orig latents)", lambda m: m.get_latents_decoded_images(orig_latents["z"])),
        ("encode+decode (own latents)",
         lambda m: m.get_latents_decoded_images(m.get_reconstruction_latents(img2))),
        ("get_reconstruction_latents(img224)", lambda m: m.get_reconstruction_latents(img224)),
        ("get_clip_image_feature(img2)", lambda m: m.get_clip_image_feature(img2)),
        ("get_clip_image_feature(img2, normalize=False)", lambda m: m.get_clip_image_feature(img2, normalize=False)),
        ("get_clip_image_feature(img224)", lambda m: m.get_clip_image_feature(img224)),
        ("get_clip_text_feature(4 prompts)", lambda m: m.get_clip_text_feature(ids)),
        ("get_clip_text_feature(4 prompts, normalize=False)",
         lambda m: m.get_clip_text_feature(ids, normalize=False)),
        ("get_clip_logits(img2, 4 prompts)", lambda m: m.get_clip_logits(img2, ids)),
        ("get_last_layer_feature(img2)", lambda m: m.get_last_layer_feature(img2)),
        ("get_last_layer_feature(img2, use_bottleneck=True)",
         lambda m: m.get_last_layer_feature(img2, use_bottleneck=True)),
        ("get_last_layer_feature(img224)", lambda m: m.get_last_layer_feature(img224)),
        ("get_intermediate_layers_feature(img2, n=4, cls)",
         lambda m: m.get_intermediate_layers_feature(img2, n=4, return_class_token=True)),
        (f"get_intermediate_layers_feature(img2, n={layers}, reshape, norm=False)",
         lambda m: m.get_intermediate_layers_feature(img2, n=layers, reshape=True, norm=False)),
        ("get_intermediate_layers_feature(img224, n=2, reshape)",
         lambda m: m.get_intermediate_layers_feature(img224, n=2, reshape=True)),
        ("forward(img2, ids, 'clip')", lambda m: m(img2, ids, forward_type="clip")),
        ("forward(img2, 'rec')", lambda m: m(img2, forward_type="rec")),
        ("forward(img2, 'feature')", lambda m: m(img2, forward_type="feature")),
    ]


def _interop_row(ours, orig_model) -> ParityRow:
    """Write the checkpoint with the ORIGINAL save_pretrained, load it with ours: same tensors? The note
    lists config.json keys written by only one side."""
    from vtp import VTPModel

    with tempfile.TemporaryDirectory(prefix="vtp_interop_") as d_orig, \
            tempfile.TemporaryDirectory(prefix="vtp_interop_") as d_ours:
        orig_model.save_pretrained(d_orig)
        ours.save_pretrained(d_ours)
        back = VTPModel.from_pretrained(d_orig)
        sd_b, sd_r = back.state_dict(), orig_model.state_dict()
        same = set(sd_b) == set(sd_r) and all(sd_b[k].dtype == sd_r[k].dtype and torch.equal(sd_b[k], sd_r[k])
                                              for k in sd_r)
        cfg_r = json.loads(Path(d_orig, "config.json").read_text())
        cfg_o = json.loads(Path(d_ours, "config.json").read_text())
    notes = []
    if set(cfg_r) - set(cfg_o):
        notes.append(f"config.json keys only the original writes: {sorted(set(cfg_r) - set(cfg_o))}")
    if set(cfg_o) - set(cfg_r):
        notes.append(f"config.json keys only ours writes: {sorted(set(cfg_o) - set(cfg_r))}")
    differ = sorted(k for k in set(cfg_r) & set(cfg_o) if cfg_r[k] != cfg_o[k] and k != "transformers_version")
    if differ:
        notes.append(f"config.json values differ: {differ}")
    return ParityRow("original save_pretrained -> ours from_pretrained", f"{len(sd_b)} tensors", "-",
                     0.0 if same else math.inf, 0.0 if same else math.inf, same and not differ, "; ".join(notes))


@torch.no_grad()
def run_parity(ours, orig_model, orig, inp: Dict[str, torch.Tensor], tol: float) -> List[ParityRow]:
    rows: List[ParityRow] = []
    # static checks: same state dict, same RoPE periods
    sd_o, sd_r = ours.state_dict(), orig_model.state_dict()
    missing, extra = sorted(set(sd_r) - set(sd_o)), sorted(set(sd_o) - set(sd_r))
    differ = sorted(k for k in set(sd_o) & set(sd_r) if sd_o[k].shape != sd_r[k].shape
                    or sd_o[k].dtype != sd_r[k].dtype or not torch.equal(sd_o[k], sd_r[k]))
    ok = not missing and not extra and not differ
    problems = [f"{what} {len(keys)}: {', '.join(keys[:3])}" for what, keys in
                (("missing in ours", missing), ("only in ours", extra), ("differ", differ)) if keys]
    rows.append(ParityRow("state_dict (keys, shapes, dtypes, values)", f"{len(sd_o)} vs {len(sd_r)} keys", "-",
                          0.0 if ok else math.inf, 0.0 if ok else math.inf, ok, "; ".join(problems)))
    if getattr(ours, "attn_mask", None) is not None:
        rel, mx = (0.0, 0.0) if torch.equal(ours.attn_mask, orig_model.attn_mask) else (math.inf, math.inf)
        rows.append(ParityRow("attn_mask buffer", "attn_mask", str(tuple(ours.attn_mask.shape)), rel, mx, rel == 0))

    # file interop: the original's save_pretrained read back by ours
    try:
        rows.append(_interop_row(ours, orig_model))
    except Exception as e:  # noqa: BLE001
        rows.append(ParityRow("original save_pretrained -> ours from_pretrained", "-", "-", math.inf, math.inf,
                              False, f"{type(e).__name__}: {e}"))

    # tokenizer: ours vs the original SimpleTokenizer (exact ids)
    from vtp.tokenizers import get_tokenizer

    try:
        theirs_tok = orig.tokenizers.SimpleTokenizer(context_length=ours.config.text_context_length)
        a = get_tokenizer(context_length=ours.config.text_context_length)(TOKENIZER_PROBES)
        b = theirs_tok(TOKENIZER_PROBES)
        same = torch.equal(a.long(), b.long())
        rows.append(ParityRow("tokenizer ids (10 probes)", "ids", str(tuple(a.shape)), 0.0 if same else math.inf,
                              float((a.long() - b.long()).abs().max()), same))
    except Exception as e:  # noqa: BLE001
        rows.append(ParityRow("tokenizer ids", "ids", "-", math.inf, math.inf, False, f"{type(e).__name__}: {e}"))

    latents = {"z": orig_model.get_reconstruction_latents(inp["img2"])}
    for case, fn in parity_cases(inp, ours.config.vision_depth, latents):
        try:
            out_r = fn(orig_model)
        except Exception as e:  # noqa: BLE001
            rows.append(ParityRow(case, "-", "-", math.nan, math.nan, False, f"original raised {e!r}"))
            continue
        try:
            out_o = fn(ours)
        except Exception as e:  # noqa: BLE001
            rows.append(ParityRow(case, "-", "-", math.inf, math.inf, False, f"ours raised {e!r}"))
            continue
        flat_r, flat_o = dict(_flatten(out_r)), dict(_flatten(out_o))
        for name in sorted(set(flat_r) | set(flat_o), key=lambda s: (len(s), s)):
            tr, to = flat_r.get(name), flat_o.get(name)
            rel, mx = compare(to, tr)
            shape = str(tuple(tr.shape)) if isinstance(tr, torch.Tensor) else type(tr).__name__
            note = "" if name in flat_r and name in flat_o else ("only in ours" if name in flat_o else
                                                                   "only in original")
            rows.append(ParityRow(case, name, shape, rel, mx, rel <= tol and not note, note))
    return rows


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
