"""The tools parity harness (python -m verify.bench_original --tools): its mechanics on a generated ImageFolder
mapped to the 1000 classes, with a stand-in original side (our model and data); the real comparison needs the
original checkout and is skipped here with the command that runs it."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from eval_helpers import WNID_COLORS, make_image_folder

from vtp.image import _center_crop_arr
from vtp.tokenizers import get_tokenizer
from vtp_tools import parity
from vtp_tools.eval.classnames import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

ORIGINAL_REPO = os.environ.get("VTP_ORIGINAL_REPO")


def test_reads_the_original_tools_names_and_templates_without_importing_it(tmp_path):
    tool = tmp_path / "test_zero_shot_hf.py"
    tool.write_text("import torchvision  # not importable here: the file is parsed, never imported\n"
                    "IMAGENET_CLASSNAMES = ('tench', 'goldfish')\n"
                    "OPENAI_IMAGENET_TEMPLATES = (\n    lambda c: f'a bad photo of a {c}.',\n"
                    "    lambda c: f'itap of my {c}.',\n)\n")
    assert parity.read_zero_shot_data(tool) == (["tench", "goldfish"], ["a bad photo of a {}.", "itap of my {}."])


def test_harness_agrees_with_a_stand_in_original(tmp_path, tiny_model):
    root = make_image_folder(tmp_path / "ds", per_class=2, size=(40, 56), colors=WNID_COLORS)
    side = parity.OriginalSide(copy.deepcopy(tiny_model), get_tokenizer(context_length=tiny_model.config.text_context_length),
                               IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES[:1], _center_crop_arr)
    result = parity.compare_tools(copy.deepcopy(tiny_model), side, root, size=32)
    s = result["summary"]
    assert s["images"] == 6 and s["classes"] == 1000 and s["class_names_equal"] and s["templates_equal"]
    assert s["zero_shot_same_prediction"] == 6 and s["latents_bit_equal"] == 6
    assert s["psnr_max_abs_diff"] < 1e-4 and s["ssim_max_abs_diff"] < 1e-6
    assert [r["path"] for r in result["images"]][:2] == ["n01440764/0.png", "n01440764/1.png"]
    report = parity.format_report(result)
    assert "6/6 images with the same prediction" in report and "6/6 latents bit-equal" in report


@pytest.mark.skipif(not ORIGINAL_REPO, reason="needs a checkout of the original: git clone "
                    "https://github.com/MiniMax-AI/VTP /tmp/vtp_orig, pip install 'transformers==4.57.1' (see "
                    "python -m verify.bench_original --help), then VTP_ORIGINAL_REPO=/tmp/vtp_orig pytest this file")
def test_original_checkout_data_equals_ours():
    names, templates = parity.read_zero_shot_data(Path(ORIGINAL_REPO) / "tools" / "test_zero_shot_hf.py")
    assert names == list(IMAGENET_CLASSNAMES) and templates == list(OPENAI_IMAGENET_TEMPLATES)
