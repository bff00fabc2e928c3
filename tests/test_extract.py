"""vtp_tools.extract: the original's shard layout and latent statistics; a run killed mid-way resumes to byte-identical
shards without recomputing finished ones; two processes write the same shards as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from eval_helpers import make_image_folder
from safetensors import safe_open
from test_distributed import ROOT, _torchrun_env, torchrun

from vtp_tools.extract import compute_stats, main, shard_name

ARGS = ["--device", "cpu", "--fusion", "none", "--workers", "0", "--image-size", "32", "--shard-size", "4",
        "--batch-size", "3"]


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith(".json")}


def test_layout_and_stats(tmp_path, tiny_checkpoint, tiny_model):
    root = make_image_folder(tmp_path / "ds", per_class=3)
    out = tmp_path / "lat"
    assert main(["--data", str(root), "--out", str(out), "--weights", str(tiny_checkpoint), *ARGS]) == 0
    assert sorted(_files(out)) == [shard_name(0), shard_name(1), shard_name(2), "latents_stats.pt"]
    with safe_open(str(out / shard_name(2)), "pt") as f:
        assert f.metadata() == {"total_size": "1", "dtype": "torch.float32", "device": "cpu"}
        lat, flip, labels, idx = (f.get_tensor(k) for k in ("latents", "latents_flip", "labels", "indices"))
    assert lat.shape == flip.shape == (1, 8, 2, 2) and labels.tolist() == [2] and idx.tolist() == [8]
    from vtp_tools.eval.data import ImageFolderDataset

    x = ImageFolderDataset(root, "center_crop", size=32)[8][0][None]
    with torch.no_grad():
        torch.testing.assert_close(lat, tiny_model.get_reconstruction_latents(x), rtol=0, atol=1e-5)
        torch.testing.assert_close(flip, tiny_model.get_reconstruction_latents(x.flip(-1)), rtol=0, atol=1e-5)
    stats = torch.load(out / "latents_stats.pt")
    every = torch.cat([safe_open(str(out / shard_name(k)), "pt").get_tensor("latents") for k in range(3)])
    torch.testing.assert_close(stats["mean"], every.mean(dim=[0, 2, 3], keepdim=True))  # 9 < 10000: all samples
    torch.testing.assert_close(stats["std"], every.std(dim=[0, 2, 3], keepdim=True))
    assert compute_stats(out, 9)["mean"].shape == (1, 8, 1, 1)
    manifest = json.loads((out / "extract_manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["fusion"] == "none"
    assert manifest["fusion_rules"] == {"enabled": [], "approximations": [], "modules_patched": 0}


@pytest.fixture
def one_thread():
    """CPU kernels round differently with another intra-op thread count; torchrun's ranks run with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_killed_run_resumes_byte_identical_and_two_processes_agree(tmp_path, tiny_checkpoint, one_thread):
    root = make_image_folder(tmp_path / "ds", per_class=3)
    common = ["--data", str(root), "--weights", str(tiny_checkpoint), *ARGS]
    assert main(common + ["--out", str(tmp_path / "clean")]) == 0

    killed = tmp_path / "killed"
    env = {**_torchrun_env(), "VTP_EXTRACT_KILL_AFTER": "1"}
    proc = subprocess.run([sys.executable, "-m", "vtp_tools.extract", *common, "--out", str(killed)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL after the first shard
    assert sorted(_files(killed)) == [shard_name(0)]
    first = os.stat(killed / shard_name(0)).st_mtime_ns
    assert main(common + ["--out", str(killed)]) == 0
    assert os.stat(killed / shard_name(0)).st_mtime_ns == first  # a finished shard is never recomputed
    assert _files(killed) == _files(tmp_path / "clean")

    proc = torchrun(["-m", "vtp_tools.extract", *common, "--out", tmp_path / "two"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _files(tmp_path / "two") == _files(tmp_path / "clean")


def test_other_settings_in_the_same_folder_are_refused(tmp_path, tiny_checkpoint, capsys):
    root = make_image_folder(tmp_path / "ds", per_class=1)
    common = ["--data", str(root), "--out", str(tmp_path / "lat"), "--weights", str(tiny_checkpoint), *ARGS]
    assert main(common) == 0
    assert main(common[:-2] + ["--batch-size", "3", "--shard-size", "2"]) == 2
    assert "another extraction (shard_size differ)" in capsys.readouterr().err


def test_ctrl_c_says_what_is_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    from vtp_tools import extract as tool

    out = tmp_path / "latents"
    out.mkdir()
    (out / "latents_shard00000.safetensors").write_bytes(b"x")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tool, "extract", interrupted)
    code = tool.main(["--data", str(tmp_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 130 and "Traceback" not in err
    assert "1 finished shard(s) kept in" in err and "rerun the same command to resume" in err
