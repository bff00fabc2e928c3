"""The command lines of vtp_tools.eval and vtp_tools.extract: every option says its default and the original's
setting; the defaults are the original tools'; the old commands (python -m vtp.eval / vtp.extract) still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vtp_tools import extract
from vtp_tools.eval import cli

ROOT = Path(__file__).resolve().parents[1]


def _parsers():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "task")
    return {**{f"eval {name}": p for name, p in sub.choices.items()}, "extract": extract.build_parser()}


@pytest.mark.parametrize("name", ["eval zero-shot", "eval linear-probe", "eval reconstruction", "extract"])
def test_every_option_has_help_with_default_and_original(name):
    parser = _parsers()[name]
    for action in parser._actions:
        if action.dest == "help":
            continue
        text = action.help or ""
        assert "original" in text, f"{name} {action.option_strings}: help does not name the original's setting"
        assert action.required or "default" in text, f"{name} {action.option_strings}: help does not say its default"


@pytest.mark.parametrize("task,precision,batch", [("zero-shot", "fp32", 128), ("linear-probe", "bf16", 128),
                                                  ("reconstruction", "bf16", 32)])
def test_eval_defaults_are_the_original_tools(task, precision, batch):
    args = cli.build_parser().parse_args([task, "--data", "x"])
    assert (args.precision, args.batch_size, args.fusion) == (precision, batch, "auto")
    if task == "reconstruction":
        assert args.average == "original"


def test_extract_help_is_truthful_about_the_originals_fp16():
    args = extract.build_parser().parse_args(["--data", "x", "--out", "y"])
    assert (args.precision, args.fusion, args.tf32, args.batch_size) == ("fp32", "auto", True, 50)
    help_text = extract.build_parser().format_help()
    assert "never used" in help_text and "TF32" in help_text
    assert "--fp16 flag is fp16" not in help_text


@pytest.mark.parametrize("old,new", [("vtp.eval", "vtp_tools.eval"), ("vtp.extract", "vtp_tools.extract")])
def test_old_commands_are_shims_for_the_new(old, new):
    outs = [subprocess.run([sys.executable, "-m", m, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
            for m in (old, new)]
    assert [o.returncode for o in outs] == [0, 0], outs[0].stderr[-1000:]
    assert outs[0].stdout == outs[1].stdout and f"python -m {new}" in outs[0].stdout


def test_run_verify_dataset_runs_every_metric_it_can():
    """run_verify.sh --dataset: reconstruction with every metric whose network file is present (it was
    --no-fid --no-lpips), the reference at the fp32 the comparison assumes (the tool's default is now bf16)."""
    block = (ROOT / "run_verify.sh").read_text().split("# ---- 4. task-level certification")[1].split("# ---- verdict")[0]
    assert "--metrics-if-present" in block and "--no-fid" not in block and "--no-lpips" not in block
    assert "--device cpu --precision fp32 --fusion none" in block and "-m vtp_tools.eval" in block
