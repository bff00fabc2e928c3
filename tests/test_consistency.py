"""Cross-card consistency (verify.server.consistency): bit-identical outputs, the outlier named, ties, missing ranks."""

import pytest
import torch
from safetensors.torch import save_file

from verify.report.server_table import format_lines
from verify.server.consistency import compare, digest_file


def write_outputs(folder, rank, perturb=0.0, dtype=torch.float32):
    torch.manual_seed(0)
    tensors = {"clip/b1/256x256@A/clip_probs": torch.rand(1, 4).to(dtype),
               "reconstruction/b1/256x256@A/latents": torch.randn(1, 8, 4, 4).to(dtype)}
    if perturb:
        tensors["reconstruction/b1/256x256@A/latents"][0, 0, 0, 0] += perturb
    path = folder / f"rank{rank}.safetensors"
    save_file(tensors, str(path))
    return path


def setup_ranks(tmp_path, perturbed: dict, n: int):
    files = {r: write_outputs(tmp_path, r, perturbed.get(r, 0.0)) for r in range(n)}
    return {r: digest_file(p) for r, p in files.items()}, files


def test_digest_changes_with_one_bit(tmp_path):
    a = digest_file(write_outputs(tmp_path, 0))
    b = digest_file(write_outputs(tmp_path, 1, perturb=1e-6))
    assert a["clip/b1/256x256@A/clip_probs"] == b["clip/b1/256x256@A/clip_probs"]
    assert a["reconstruction/b1/256x256@A/latents"]["sha256"] != b["reconstruction/b1/256x256@A/latents"]["sha256"]
    assert a["reconstruction/b1/256x256@A/latents"]["shape"] == [1, 8, 4, 4]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_digest_reads_low_precision_tensors(tmp_path, dtype):
    digests = digest_file(write_outputs(tmp_path, 0, dtype=dtype))
    assert {d["dtype"] for d in digests.values()} == {str(dtype).replace("torch.", "")}


def test_identical_ranks_pass(tmp_path):
    digests, files = setup_ranks(tmp_path, {}, 3)
    result = compare(digests, files=files)
    assert result["verdict"] == "PASS" and result["identical"] and result["suspects"] == []
    assert result["tensors"] == 2 and result["majority"] == [0, 1, 2]


def test_the_outlier_is_named_with_the_size_of_its_difference(tmp_path):
    digests, files = setup_ranks(tmp_path, {2: 1e-3}, 4)
    result = compare(digests, devices={r: f"npu:{r}" for r in range(4)}, files=files)
    assert result["verdict"] == "FAIL" and result["majority"] == [0, 1, 3]
    (suspect,) = result["suspects"]
    assert suspect["rank"] == 2 and suspect["differing_tensors"] == 1 and suspect["compared_with_rank"] == 0
    example = suspect["examples"][0]
    assert example["tensor"] == "reconstruction/b1/256x256@A/latents" and example["elements_differing"] == 1
    assert example["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert "rank 2 (npu:2) is suspect: 1 of 2 output tensor(s)" in result["reasons"][0]
    assert "differs from the majority (ranks 0, 1, 3)" in result["reasons"][0]
    assert any("rank 2 (npu:2) is suspect" in line for line in format_lines(result))


def test_two_ranks_that_differ_are_split_by_their_certification(tmp_path):
    digests, files = setup_ranks(tmp_path, {1: 0.5}, 2)
    result = compare(digests, verdicts={0: "PASS", 1: "FAIL"}, files=files)
    assert result["majority"] is None and [s["rank"] for s in result["suspects"]] == [1]
    assert "it also failed its certification" in result["reasons"][0]


def test_a_tie_without_a_failed_rank_lists_every_rank(tmp_path):
    digests, files = setup_ranks(tmp_path, {1: 0.5}, 2)
    result = compare(digests, verdicts={0: "PASS", 1: "PASS"}, files=files)
    assert result["verdict"] == "FAIL" and [s["rank"] for s in result["suspects"]] == [0, 1]
    assert "no majority" in result["reasons"][0]


def test_missing_ranks_are_listed_and_one_rank_is_not_compared(tmp_path):
    digests, _ = setup_ranks(tmp_path, {}, 2)
    result = compare({0: digests[0], 1: digests[1], 2: None})
    assert result["verdict"] == "PASS" and result["ranks_missing"] == [2]
    alone = compare({0: digests[0], 1: None})
    assert alone["verdict"] == "SKIPPED" and "fewer than two ranks" in format_lines(alone)[0]


def test_differences_are_described_without_the_files(tmp_path):
    digests, _ = setup_ranks(tmp_path, {0: 1.0}, 3)
    result = compare(digests)  # another node's files are not readable: names only
    assert result["suspects"][0]["examples"] == [{"tensor": "reconstruction/b1/256x256@A/latents"}]
