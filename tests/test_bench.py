"""The benchmark scripts run and report their numbers (their targets are checked by running them, not here)."""

import json

from verify import bench
from verify.timing import summarize, time_call


def test_bench_tasks_on_tiny_checkpoint(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = bench.main(["tasks", "--weights", str(tiny_checkpoint), "--iters", "2", "--warmup", "0", "--size", "32",
                       "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    assert set(data["tasks"]) == {"reconstruction", "clip_image", "clip_text", "ssl"}
    assert all(v["n"] == 2 and v["min_ms"] <= v["median_ms"] for v in data["tasks"].values())
    assert "median" in capsys.readouterr().out


def test_time_call_counts_and_synchronises():
    calls, syncs = [], []
    r = time_call(lambda: calls.append(1), lambda: syncs.append(1), warmup=2, iters=5)
    assert len(calls) == 1 + 2 + 5 and r["n"] == 5 and r["warmup"] == 2
    assert len(syncs) >= 1 + 1 + 1 + 5  # before, after the first call, after warm-up, after each timed call
    assert r["min_ms"] <= r["median_ms"] <= r["p90_ms"]


def test_summarize_nearest_rank_p90():
    r = summarize([i / 1000 for i in range(1, 11)])  # 1..10 ms
    assert r["median_ms"] == 5.5 and r["p90_ms"] == 9.0 and r["min_ms"] == 1.0
