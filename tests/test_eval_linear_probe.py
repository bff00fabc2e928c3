"""Linear probing learns a separable problem (colour classes) on frozen features of a tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from eval_helpers import make_image_folder

from vtp_tools.eval.cli import main
from vtp_tools.eval.linear_probe import head_name, linear_input


def test_linear_input_layout():
    blocks = [(torch.full((2, 4, 3), float(i)), torch.full((2, 3), 10.0 + i)) for i in range(4)]
    x = linear_input(blocks, 2)  # cls of blocks 2, 3 then the mean patch of block 3
    assert x.tolist()[0] == [12.0] * 3 + [13.0] * 3 + [3.0] * 3
    assert head_name(4, 0.0005) == "classifier_4_blocks_avgpool_True_lr_0_00050"


def test_learns_separable_colours(tmp_path, tiny_checkpoint):
    make_image_folder(tmp_path / "ds" / "train", per_class=4, seed=0)
    make_image_folder(tmp_path / "ds" / "val", per_class=2, seed=1)
    out = tmp_path / "lp.json"
    code = main(["linear-probe", "--data", str(tmp_path / "ds"), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--workers", "0", "--crop-size", "32", "--resize-size", "32", "--epochs", "2", "--epoch-length", "6",
                 "--batch-size", "6", "--learning-rates", "20,0.00001", "--n-blocks", "1,2", "--out", str(out), "-q"])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["metrics"]["top1"] == pytest.approx(100.0)
    assert r["num_samples"] == 6 and len(r["options"]["all_accuracies"]) == 4
    assert r["dataset"]["train"]["num_images"] == 12
    # evaluated after every epoch, the best kept (the original's loop)
    epochs = r["options"]["per_epoch"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert r["metrics"]["top1"] == max(e["top1"] for e in epochs)
    # all_accuracies is the last epoch's table, as the original saves it; the best epoch's is kept as well
    assert r["options"]["all_accuracies_epoch"] == 1
    assert max(r["options"]["all_accuracies"].values()) == epochs[-1]["top1"]
    assert max(r["options"]["best_epoch_accuracies"].values()) == r["metrics"]["top1"]
    assert r["precision"] == "bf16"  # the original linear-probe tool's default


def test_missing_split_is_a_usage_error(tmp_path, capsys):
    make_image_folder(tmp_path / "ds", per_class=1)
    assert main(["linear-probe", "--data", str(tmp_path / "ds"), "--device", "cpu"]) == 2
    assert "train and" in capsys.readouterr().err
