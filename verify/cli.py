"""The command-line options every certification tool shares (accuracy_eval, locate, bisection), so that one
spelling means one thing everywhere: the device, the weights, the precision, the fusion spec, the thresholds,
the harness self-test and the prompts (--prompt TEXT, repeatable, or --prompts-file FILE)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_run_options(p: argparse.ArgumentParser, *, precision_default="fp32", precision_help=None) -> None:
    from ascend.runtime import add_fusion_argument, add_prompt_arguments

    p.add_argument("--device", default="auto", help="auto (NPU > CUDA > CPU), npu[:N], cuda[:N] or cpu")
    p.add_argument("--weights", type=Path, help="checkpoint folder (default weights/VTP-Small-f16d64, else "
                                                "synthetic VTP-Small with a notice)")
    p.add_argument("--require-weights", action="store_true",
                   help="fail (exit 2) instead of using synthetic weights (saved synthetic weights included)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=precision_default,
                   help=precision_help or "candidate precision: fp32 (strict, no TF32/HF32), fp16 or bf16 autocast")
    add_fusion_argument(p)
    p.add_argument("--thresholds", type=Path, help="thresholds YAML (default verify/thresholds.yaml)")
    p.add_argument("--inject-fault", metavar="MODULE=FACTOR|MODULE=nan",
                   help="harness self-test: perturb one module's output on the candidate (e.g. trunk.blocks.0=1.02); "
                        "for the burn-in also MODULE=drift@N[:FACTOR] (wrong after N calls), MODULE=leak[:COPIES] "
                        "(keeps every output), MODULE=sleep:MS (right but slow)")
    add_prompt_arguments(p)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def exit_with(main, kept: str) -> None:
    """``sys.exit(main())``; Ctrl-C ends in one line saying what was kept and how to go on (exit 130),
    not in a traceback."""
    try:
        code = main()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {kept}", file=sys.stderr)
        code = 130
    sys.exit(code)
