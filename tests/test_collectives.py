"""The collective check (verify.server.collectives): exact values, who contributed a wrong one, bus bandwidth.

The analysis is tested on hand-made per-rank results; one end-to-end run (torchrun, gloo, two CPU
ranks, ``--collectives-only``) shows that a rank contributing a wrong value fails the check and is named.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from verify.server import collectives
from verify.report.server_table import format_table
from verify.server.collectives import (allgather_contribution, allreduce_contribution, allreduce_expected, analyse,
                                       bandwidth, count_wrong)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_expected_allreduce_is_the_exact_sum_of_the_contributions(n):
    total = sum(allreduce_contribution(1000, r) for r in range(n))
    assert torch.equal(total, allreduce_expected(1000, n))
    assert count_wrong(total, allreduce_expected(1000, n)) == 0


def test_allgather_contributions_name_their_sender():
    chunks = [allgather_contribution(50, r) for r in range(4)]
    for sender, chunk in enumerate(chunks):
        assert [count_wrong(chunk, allgather_contribution(50, r)) == 0 for r in range(4)] == \
            [r == sender for r in range(4)]


def test_count_wrong_counts_nan_and_single_bits():
    expected = allreduce_expected(10, 2)
    received = expected.clone()
    received[3] = float("nan")
    received[7] = torch.nextafter(received[7], torch.tensor(1e9))
    assert count_wrong(received, expected) == 2


@pytest.mark.parametrize("op, n, factor", [("all_reduce", 2, 1.0), ("all_reduce", 8, 1.75),
                                           ("all_gather", 2, 0.5), ("all_gather", 8, 0.875)])
def test_bus_bandwidth_follows_nccl_tests(op, n, factor):
    algbw, busbw = bandwidth(op, 2 * 10**9, 1.0, n)
    assert algbw == pytest.approx(2.0)
    assert busbw == pytest.approx(2.0 * factor)
    assert bandwidth(op, 100, 0.0, n) == (None, None)


def part(rank, n, reduce_wrong=0, gather_wrong=None, seconds=1e-3):
    sizes = [{"size_bytes": 1024, "all_reduce": {"count": 256, "wrong": 0, "seconds": seconds},
              "all_gather": {"count": 256 // n, "wrong": 0, "seconds": seconds}}]
    return {"rank": rank, "device": "cpu", "sizes": sizes,
            "values": {"all_reduce_wrong": reduce_wrong, "all_gather_wrong_by_sender": gather_wrong or [0] * n}}


def test_clean_parts_pass_with_the_slowest_rank_timing():
    result = analyse([part(0, 2, seconds=1e-3), part(1, 2, seconds=2e-3)], 2, "gloo")
    assert result["verdict"] == "PASS" and result["values_ok"] and result["suspect_ranks"] == []
    rows = {row["op"]: row for row in result["bandwidth"]}
    assert rows["all_reduce"]["time_us"] == pytest.approx(2000.0)
    assert rows["all_reduce"]["busbw_gbps"] == pytest.approx(1024 / 2e-3 / 1e9)
    json.dumps(result, allow_nan=False)


def test_a_wrong_contribution_names_its_sender():
    # rank 1 sent a wrong value: every rank's sum is off, every rank received rank 1's chunk wrong
    parts = [part(r, 3, reduce_wrong=1, gather_wrong=[0, 1, 0]) for r in range(3)]
    result = analyse(parts, 3, "gloo")
    assert result["verdict"] == "FAIL" and result["suspect_ranks"] == [1]
    assert any("rank 1 contributed wrong values" in reason for reason in result["reasons"])
    assert any("all-reduce: wrong sum on rank(s) 0, 1, 2" in reason for reason in result["reasons"])


def test_a_lone_bad_receiver_is_named():
    parts = [part(0, 3), part(1, 3), part(2, 3, reduce_wrong=5)]
    result = analyse(parts, 3, "hccl")
    assert result["suspect_ranks"] == [2]
    assert "rank 2 received a wrong all-reduce result" in " ".join(result["reasons"])


def test_wrong_elements_at_a_bandwidth_size_fail():
    parts = [part(0, 2), part(1, 2)]
    parts[1]["sizes"][0]["all_gather"]["wrong"] = 3
    result = analyse(parts, 2, "gloo")
    assert result["verdict"] == "FAIL"
    assert "all_gather of 1024 B: 3 wrong element(s)" in " ".join(result["reasons"])


def test_table_has_the_nccl_tests_columns():
    lines = format_table(analyse([part(0, 2), part(1, 2)], 2, "gloo"))
    assert lines[0].startswith("collective check: 2 ranks, backend gloo: values exact (PASS)")
    for column in ("size(B)", "count", "type", "time(us)", "algbw(GB/s)", "busbw(GB/s)", "#wrong"):
        assert column in lines[1]
    assert len(lines) == 4


def test_selftest_ranks_are_read_from_the_environment():
    assert collectives.selftest_ranks({}) == set()
    assert collectives.selftest_ranks({collectives.SELFTEST_ENV: "1, 3"}) == {1, 3}


def test_one_rank_contributing_a_wrong_value_fails_the_server_run(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "verify.server", "--nproc", "2", "--collectives-only",
                           "--out", str(out), "--", "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=180, env=dict(os.environ, VTP_SELFTEST_COLLECTIVE_RANK="1"))
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    summary = json.loads((out / "accuracy_summary.json").read_text())
    check = summary["server"]["collectives"]
    assert check["verdict"] == "FAIL" and check["suspect_ranks"] == [1]
    assert check["seconds"] < 5.0  # the budget of the check itself
    assert [r["verdict"] for r in summary["ranks"]] == ["PASS", "FAIL"]
    assert "rank 1 contributed wrong values" in done.stdout
    assert all(row["wrong"] > 0 for row in check["bandwidth"])  # every size shows it (the #wrong column)
