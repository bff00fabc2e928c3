"""torchrun --nproc_per_node 2 (gloo) gives the same numbers as one process, each image counted once."""

from __future__ import annotations

import json

import pytest
from eval_helpers import make_image_folder
from test_distributed import torchrun

from vtp_tools.eval.cli import main

# reconstruction: the image mean is independent of the process count; the default (the original's batch and
# rank means, padded duplicates included) is not, as in the original (tests/test_eval_reconstruction.py)
TASKS = {"zero-shot": ["--classnames", "folders"], "reconstruction": ["--no-fid", "--no-lpips", "--average", "images"]}


@pytest.mark.parametrize("task", TASKS)
def test_two_processes_equal_one(tmp_path, tiny_checkpoint, task):
    root = make_image_folder(tmp_path / "ds", per_class=3)  # 9 images: 5 on rank 0, 4 on rank 1, no padding
    tpl = tmp_path / "t.txt"
    tpl.write_text("a photo of a {}.\nart of the {}.\n")
    extra = TASKS[task]
    args = [task, "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu", "--fusion", "none",
            "--workers", "0", "--image-size", "32", "--batch-size", "2", "-q", *extra]
    if task == "zero-shot":
        args += ["--templates", str(tpl)]
    assert main(args + ["--out", str(tmp_path / f"{task}-one.json")]) == 0
    proc = torchrun(["-m", "vtp_tools.eval", *args, "--out", tmp_path / f"{task}-two.json",
                     "--compare-to", tmp_path / f"{task}-one.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = (json.loads((tmp_path / f"{task}-{n}.json").read_text()) for n in ("one", "two"))
    assert two["world_size"] == 2 and two["num_samples"] == one["num_samples"] == 9
    for k, v in one["metrics"].items():
        if v is None:  # a metric not computed here (no network weights): not computed in either run
            assert two["metrics"][k] is None, (task, k)
            continue
        assert two["metrics"][k] == pytest.approx(v, rel=1e-6, abs=1e-9), (task, k)
    assert two["comparison"]["verdict"] == "pass"
