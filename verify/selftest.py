"""Prove the certification sound on this machine: inject realistic port bugs into the candidate only and
check that every one of them FAILS, while the clean run PASSES.

    python -m verify.selftest --device npu:0 --profile quick
    python -m verify.selftest --bugs batch_one_only,stale_replay --weights weights/VTP-Small-f16d64

Each bug is a class that an earlier harness let through (see verify/cases.yaml for the cases that expose
them): wrong only at batch 1, only off the 256x256 grid, only for long prompts, only for upper-vocabulary
token ids, a stale replay of an earlier output, wrong only after the warm-up calls, one bad token (a tail
tile), a bf16-only kernel error, and a 0.6 % error in fp32. They are forward hooks on the candidate's
modules; the reference is never touched. Exit 0: the clean run passed and every bug failed; 1: the harness
missed a bug (or failed the clean run); 2: usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict

EXIT_SOUND, EXIT_UNSOUND, EXIT_ENV = 0, 1, 2


def off(t, eps: float):
    """``t`` off by a relative ``eps`` with alternating signs along the features: a kernel error that a
    following normalisation cannot absorb (a uniform scale would vanish in the next RMSNorm)."""
    import torch

    sign = torch.ones(t.shape[-1], dtype=t.dtype, device=t.device)
    sign[1::2] = -1
    return t * (1 + eps * sign)


def _hook(model, name: str, fn) -> None:
    dict(model.named_modules())[name].register_forward_hook(lambda module, args, out: fn(out, args))


def _last_block(model, prefix: str) -> str:
    names = [n for n, _ in model.named_modules() if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return max(names, key=lambda n: int(n[len(prefix):]))


def batch_one_only(model):
    _hook(model, _last_block(model, "trunk.blocks."), lambda out, a: off(out, 0.03) if out.shape[0] == 1 else out)


def off_base_grid_only(model):
    """Right for the token count of the first input shape it sees (the base grid), off for any other."""
    seen = {}

    def fn(out, a):
        base = seen.setdefault("tokens", out.shape[1])
        return out if out.shape[1] == base else off(out, 0.03)
    _hook(model, _last_block(model, "trunk.blocks."), fn)


def long_prompts_only(model):
    def fn(out, a):
        out = out.clone()
        out[:, 14:] = off(out[:, 14:], 0.05)  # sequence positions past 14
        return out
    _hook(model, _last_block(model, "text_transformer.resblocks."), fn)


def upper_vocab_only(model):
    import torch

    dict(model.named_modules())["token_embedding"].register_forward_hook(
        lambda m, a, out: torch.where((a[0] > 40000)[..., None], off(out, 0.2), out))


def stale_replay(model):
    """The first output per input shape is returned again for later inputs of that shape."""
    cache = {}

    def fn(out, a):
        return cache.setdefault(tuple(a[0].shape), out)
    _hook(model, "trunk.blocks.0", fn)
    _hook(model, "text_transformer.resblocks.0", fn)


def after_warmup_only(model):
    """Right for the first 3 calls of an input shape, off after them."""
    calls = {}

    def fn(out, a):
        n = calls[tuple(a[0].shape)] = calls.get(tuple(a[0].shape), 0) + 1
        return off(out, 0.03) if n > 3 else out
    _hook(model, "trunk.norm", fn)


def one_bad_token(model):
    def fn(out, a):
        out = out.clone()
        out[:, -1] = off(out[:, -1], 0.15)
        return out
    _hook(model, _last_block(model, "trunk.blocks."), fn)


def bf16_only(model):
    import torch

    def fn(out, a):
        bf16 = out.dtype == torch.bfloat16 or (torch.is_autocast_enabled(out.device.type)
                                               and torch.get_autocast_dtype(out.device.type) == torch.bfloat16)
        return off(out, 0.03) if bf16 else out
    _hook(model, _last_block(model, "text_transformer.resblocks.") + ".mlp", fn)


def small_fp32_fault(model):
    _hook(model, _last_block(model, "trunk.blocks."), lambda out, a: off(out, 0.006))


# name -> (installer, the precision it is run at, what it imitates)
BUGS: Dict[str, tuple] = {
    "batch_one_only": (batch_one_only, "fp32", "a kernel wrong only at batch 1"),
    "off_base_grid_only": (off_base_grid_only, "fp32", "wrong only off the 256x256 grid"),
    "long_prompts_only": (long_prompts_only, "fp32", "text wrong past 14 tokens"),
    "upper_vocab_only": (upper_vocab_only, "fp32", "embedding wrong for ids > 40000"),
    "stale_replay": (stale_replay, "fp32", "a stale graph replay"),
    "after_warmup_only": (after_warmup_only, "fp32", "wrong only after warm-up"),
    "one_bad_token": (one_bad_token, "fp32", "one token 15 % off (a tail tile)"),
    "bf16_only": (bf16_only, "bf16", "a bf16-only kernel error of 3 %"),
    "small_fp32_fault": (small_fp32_fault, "fp32", "a 0.6 % error in fp32"),
}


@contextlib.contextmanager
def candidate_bug(install: Callable):
    """While active, every candidate that ascend.runtime.prepare_candidate makes gets ``install``-ed."""
    import ascend.runtime

    original = ascend.runtime.prepare_candidate

    def prepare(*args, **kwargs):
        candidate, report = original(*args, **kwargs)
        install(candidate)
        return candidate, report

    ascend.runtime.prepare_candidate = prepare
    try:
        yield
    finally:
        ascend.runtime.prepare_candidate = original


def run_one(argv: list, out: Path, install=None) -> dict:
    """One certification run in process; its exit code, verdict and first failure line."""
    from verify import accuracy_eval

    with candidate_bug(install) if install else contextlib.nullcontext():
        code = accuracy_eval.main(argv + ["--out", str(out), "--quiet", "--no-timing", "--locate", "never"])
    summary = out / "accuracy_summary.json"
    data = json.loads(summary.read_text()) if summary.exists() else {}
    reasons = (data.get("overall") or {}).get("reasons") or []
    return {"exit": code, "verdict": data.get("verdict"), "first_failure": reasons[0] if reasons else None,
            "failed_cases": (data.get("overall") or {}).get("failed_cases", [])}


def build_parser() -> argparse.ArgumentParser:
    from ascend.runtime import FUSION_HELP

    p = argparse.ArgumentParser(prog="python -m verify.selftest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="exit status: 0 every bug failed and the clean run passed, 1 the harness "
                                       "missed a bug or failed the clean run, 2 usage error")
    p.add_argument("--device", default="auto", help="auto (NPU > CUDA > CPU), npu[:N], cuda[:N] or cpu")
    p.add_argument("--weights", type=Path, help="checkpoint folder (default: as the harness)")
    p.add_argument("--fusion", default="all", help=FUSION_HELP)
    p.add_argument("--profile", default="default", help="cases profile: quick, default (the default) or full")
    p.add_argument("--cases", type=Path, help="cases YAML (default verify/cases.yaml)")
    p.add_argument("--bugs", help=f"comma list of bugs (default: all: {', '.join(BUGS)})")
    p.add_argument("--out", type=Path, help="folder for each run's outputs and selftest.json (default: a temporary one)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [b.strip() for b in args.bugs.split(",")] if args.bugs else list(BUGS)
    unknown = [b for b in names if b not in BUGS]
    if unknown:
        print(f"error: --bugs: unknown {unknown} (known: {', '.join(BUGS)})", file=sys.stderr)
        return EXIT_ENV
    base = ["--device", args.device, "--fusion", args.fusion, "--profile", args.profile]
    if args.weights:
        base += ["--weights", str(args.weights)]
    if args.cases:
        base += ["--cases", str(args.cases)]
    with tempfile.TemporaryDirectory(prefix="vtp-selftest-") as tmp:
        out = args.out or Path(tmp)
        results = {"clean": run_one(base, out / "clean")}
        if results["clean"]["exit"] == EXIT_ENV:
            print("error: the clean run could not start (exit 2): see the error above", file=sys.stderr)
            return EXIT_ENV
        for name in names:
            install, precision, _ = BUGS[name]
            results[name] = run_one(base + ["--precision", precision], out / name, install)
        sound = results["clean"]["exit"] == 0 and all(results[n]["exit"] == 1 for n in names)
        print(f"{'run':<20} {'imitates':<36} {'exit':>4}  verdict  first failure")
        for name, r in results.items():
            what = "no bug: must PASS" if name == "clean" else BUGS[name][2]
            expected = 0 if name == "clean" else 1
            mark = "ok" if r["exit"] == expected else "MISSED" if name != "clean" else "WRONG"
            print(f"{name:<20} {what:<36} {r['exit']:>4}  {str(r['verdict']):<7}  {mark}: "
                  f"{(r['first_failure'] or '-')[:110]}")
        print(f"SELF-TEST: {'SOUND' if sound else 'NOT SOUND'}: the clean run "
              f"{'passed' if results['clean']['exit'] == 0 else 'did not pass'}, "
              f"{sum(results[n]['exit'] == 1 for n in names)}/{len(names)} injected bugs failed")
        if args.out:
            from vtp.io_utils import atomic_write_json

            atomic_write_json(args.out / "selftest.json", {"schema": "vtp-selftest/1", "sound": sound,
                                                           "results": results})
    return EXIT_SOUND if sound else EXIT_UNSOUND


if __name__ == "__main__":
    sys.exit(main())
