"""verify.slow_ranks: a rank slower than 1.25x the median of the others is named, fails from level 3."""

import json

import pytest

from verify.slow_ranks import SLOW_RATIO, from_rank_folders, rank_latencies, rank_throughputs, slow_ranks


def test_two_ranks_one_sleeping_is_named_and_fails_at_level_3():
    latency = {0: {"reconstruction/b1/256x256": 100.0, "ssl/b1/256x256": 50.0},
               1: {"reconstruction/b1/256x256": 160.0, "ssl/b1/256x256": 52.0}}
    section = slow_ranks(latency, level=3)
    assert section["suspects"] == [1] and section["verdict"] == "FAIL"
    assert section["ranks"]["1"]["worst"] == "latency:reconstruction/b1/256x256"
    assert section["ranks"]["1"]["worst_ratio"] == pytest.approx(1.6)
    assert section["ranks"]["1"]["latency_ratio"] == pytest.approx((1.6 + 1.04) / 2)
    assert "rank 1" in section["reasons"][0] and "1.60x slower" in section["reasons"][0]
    assert section["ranks"]["0"]["suspect"] is False


def test_below_level_3_a_suspect_is_a_finding():
    latency = {0: {"t": 100.0}, 1: {"t": 200.0}}
    section = slow_ranks(latency, level=2)
    assert section["suspects"] == [1] and section["verdict"] == "PASS" and "finding" in section["note"]


@pytest.mark.parametrize("slow", [1.2, 1.3])
def test_the_ratio_is_the_bound(slow):
    latency = {r: {"t": 100.0} for r in range(4)}
    latency[2] = {"t": 100.0 * slow}
    section = slow_ranks(latency, level=3)
    assert section["suspects"] == ([2] if slow > SLOW_RATIO else [])


def test_throughput_lower_is_slow_and_missing_values_are_skipped():
    throughput = {0: {"matmul_bf16_tflops": 300.0}, 1: {"matmul_bf16_tflops": 310.0},
                  2: {"matmul_bf16_tflops": 200.0}, 3: {"matmul_bf16_tflops": None}}
    section = slow_ranks({}, throughput, level=4)
    assert section["suspects"] == [2] and "lower throughput" in section["reasons"][0]
    assert section["ranks"]["3"]["worst"] is None


def test_one_rank_compares_nothing():
    section = slow_ranks({0: {"t": 1.0}}, level=3)
    assert section["verdict"] == "PASS" and section["suspects"] == [] and "fewer than two" in section["note"]


def test_figures_from_rank_summaries():
    summaries = {0: {"timings": {"tasks": {"a": {"median_ms": 10.0}}},
                     "burn_in": {"latency_by_task": {"a": {"p50_ms": 11.0}}},
                     "spot_checks": {"figures": {"matmul_fp32_tflops": {"tflops": 1.5}, "h2d_gbps": {"gbps": None}}}},
                 1: {}}
    assert rank_latencies(summaries) == {0: {"a": 10.0, "burn-in a": 11.0}, 1: {}}
    assert rank_throughputs(summaries) == {0: {"matmul_fp32_tflops": 1.5}, 1: {}}


def test_from_rank_folders_reads_each_ranks_summary_and_its_level(tmp_path):
    for rank, ms in ((0, 100.0), (1, 300.0)):
        (tmp_path / f"rank{rank}").mkdir()
        (tmp_path / f"rank{rank}" / "accuracy_summary.json").write_text(json.dumps(
            {"level": {"level": 3}, "timings": {"tasks": {"ssl/b1/256x256": {"median_ms": ms}},
                                                "contention": {"contended": rank == 1, "label": "CONTENDED x2.0"}}}))
    section = from_rank_folders(tmp_path, [0, 1, 2])  # rank 2 has no summary: left out
    assert section["suspects"] == [1] and section["verdict"] == "FAIL" and section["level"] == 3
    assert "CONTENDED x2.0" in section["reasons"][0]


def test_one_noisy_task_is_not_a_slow_card_and_the_cpu_takes_the_median_throughput():
    latency = {0: {"a": 100.0, "b": 100.0, "c": 100.0}, 1: {"a": 180.0, "b": 101.0, "c": 99.0}}
    assert slow_ranks(latency, level=3)["suspects"] == []
    throughput = {0: {"h2d": 25.0, "d2d": 3000.0, "mm": 300.0}, 1: {"h2d": 12.0, "d2d": 2990.0, "mm": 301.0}}
    assert slow_ranks({}, throughput, level=3)["suspects"] == [1]  # a device: a bad link alone is a suspect
    assert slow_ranks({}, throughput, level=3, on_cpu=True)["suspects"] == []
