"""verify.burn_in on a tiny model: a clean burn-in passes; drift, a leak and a latency drift are caught and
named by call number; the bit comparison sees NaN positions and signed zeros."""

import copy
import math
import time

import pytest
import torch

from verify.burn_in import (MemoryProbe, SensorProbe, _bits_equal, _percentile, burn_in, burn_in_lines,
                            burn_tasks, live_tensors, parse_duration)
from verify.cases import build_plan, load_cases, make_case_inputs
from verify.faults import inject_fault
from verify.run import run_case
from verify.verdict import load_thresholds
from vtp.tokenizers import get_tokenizer

CPU = torch.device("cpu")


CASES = """
schema: vtp-cases/1
version: 1
prompt_sets:
  default: ["a dog", "a cat"]
profiles:
  burn:
    images: ["1x64x64", "2x32x48"]
    text: [default]
    zero_shot_prompts: default
    timing: ["1x64x64"]
    warmup: 0
    iters: 1
    repeat: true
"""


@pytest.fixture
def certified(make_tiny, tmp_path):
    """(candidate, case runs) of the timed image cases of a small profile on a tiny model, as the harness makes
    them: the candidate answered A, B, A again and the warm calls; the reference answered A and B."""
    reference = make_tiny(seed=0)
    candidate = copy.deepcopy(reference)
    (tmp_path / "cases.yaml").write_text(CASES)
    plan = build_plan(load_cases(tmp_path / "cases.yaml"), "burn", reference.config)
    tokenizer = get_tokenizer(context_length=reference.config.text_context_length)
    timed = set(plan.timing)
    runs = []
    for case in plan.cases:
        if (case.batch, case.height, case.width) not in timed:
            continue
        inputs = {call: make_case_inputs(plan, case, call, tokenizer) for call in ("A", "B")}
        runs.append(run_case(case, inputs, candidate=candidate, reference=reference, device=CPU,
                             precision="fp32", warm={"warmup": 0, "iters": 1, "timed": True},
                             candidate_is_cpu_fused=True))
    return candidate, runs


def run(candidate, runs, seconds=2.0, **kw):
    tasks = burn_tasks(runs, candidate, CPU, "fp32")
    kw.setdefault("judge_every", 2)
    kw.setdefault("calibrate", False)
    return burn_in(tasks, model=candidate, device=CPU, precision="fp32", thresholds=load_thresholds(),
                   patch=candidate.config.vision_patch_size, duration_s=seconds, **kw)


def test_clean_burn_in_passes_with_every_figure(certified):
    candidate, runs = certified
    section = run(candidate, runs, calibrate=True)
    assert section["verdict"] == "PASS", section["reasons"]
    assert section["calls"] > 5 and section["repeat"]["bit_identical"] == section["calls"]
    assert section["reference"]["judged"] >= 1 and section["reference"]["failed"] == 0
    assert section["first_failure"] is None and not section["memory"]["leak"]
    assert set(section["tasks"]) == {"clip/b1/64x64", "reconstruction/b1/64x64", "ssl/b1/64x64"}
    assert section["latency"]["windows"] and section["latency_by_task"]["ssl/b1/64x64"]["p50_ms"] > 0
    assert section["overhead"]["fraction_of_compute"] is not None
    assert section["sensors"]["available"] is False and "not available" in section["sensors"]["note"]
    assert section["memory"]["kind"].startswith("process RSS")
    assert section["calibration"]["contention"]["share"] > 0
    assert "burn-in PASS" in burn_in_lines(section)[0]
    from verify.report.burn_in import burn_in_html, burn_in_png

    assert burn_in_png(section).startswith(b"\x89PNG")
    page = burn_in_html({"burn_in": section, "level": {"level": 3, "name": "long"}}, lambda x: str(x))
    assert 'id="burn-in"' in page and "first failing call" in page and "data:image/png" in page


def test_outputs_that_drift_after_n_calls_fail_at_the_call_named(certified):
    candidate, runs = certified
    inject_fault(candidate, "trunk.blocks.0=drift@7")  # every burn-in task runs trunk.blocks.0 once a call
    section = run(candidate, runs)
    assert section["verdict"] == "FAIL"
    first = section["first_failure"]
    assert first["call"] == 8 and first["check"] == "repeat"
    assert section["repeat"]["bit_identical"] == 7
    assert any("burn-in call 8" in r and "repeat_max_abs_scaled" in r for r in section["reasons"])


def test_a_candidate_wrong_from_the_start_fails_against_the_reference(certified):
    candidate, runs = certified
    inject_fault(candidate, "trunk.blocks.0=nan")  # after the certification: its first answers are clean
    section = run(candidate, runs, judge_every=1)
    assert section["verdict"] == "FAIL" and section["first_failure"]["call"] == 1
    first = section["reference"]["failures"][0]
    assert first["call"] == 1 and "burn-in call 1" in first["reasons"][0] and "NaN" in first["reasons"][0]


def test_a_leak_is_caught_with_the_first_call_over_the_bound(certified):
    candidate, runs = certified
    inject_fault(candidate, "trunk.blocks.0=leak:40")
    section = run(candidate, runs, seconds=2.5, leak_bound=2 * 2 ** 20)
    memory = section["memory"]
    assert section["verdict"] == "FAIL" and memory["leak"]
    assert memory["live_tensors"]["growth_bytes"] > 2 * 2 ** 20
    assert any("memory leak" in r for r in section["reasons"])
    if memory["first_failure"]["call"] is not None:  # RSS crossed the bound: named by call
        assert section["first_failure"]["check"] == "leak"


def test_latency_drift_fails_on_a_device_and_is_a_finding_on_the_cpu(certified):
    candidate, runs = certified
    start = {"t": None}

    def slower_later(module, args, output):  # right answers; from 1.5 s into the run on, 0.1 s slower a call
        start["t"] = start["t"] or time.perf_counter()
        if time.perf_counter() - start["t"] > 1.5:
            time.sleep(0.1)
        return output

    candidate.trunk.blocks[0].register_forward_hook(slower_later)
    section = run(candidate, runs, seconds=3.0, window_s=0.3, fail_latency_drift=True)
    assert section["latency"]["drift_ratio"] > 1.25
    assert section["verdict"] == "FAIL" and any("latency drifted" in r for r in section["reasons"])
    start["t"] = None
    section = run(candidate, runs, seconds=3.0, window_s=0.3, fail_latency_drift=False)
    assert section["verdict"] == "PASS" and any("latency drifted" in f for f in section["findings"])


def test_bits_equal_sees_nan_positions_and_signed_zeros():
    a = torch.tensor([1.0, float("nan"), 0.0])
    assert _bits_equal(a, a.clone())
    assert not _bits_equal(a, torch.tensor([float("nan"), 1.0, 0.0]))
    assert not _bits_equal(a, torch.tensor([1.0, float("nan"), -0.0]))
    assert not _bits_equal(a, a.double())
    assert _bits_equal(a.to(torch.bfloat16), a.to(torch.bfloat16))


@pytest.mark.parametrize("text,seconds", [("60", 60), ("60s", 60), ("15m", 900), ("2h", 7200), ("1h30m", 5400),
                                          ("0.5s", 0.5), ("90 sec", 90)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "0", "0s", "-5s", "5x", "2h3", "inf"])
def test_parse_duration_rejects_with_the_forms(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_percentile_and_probes():
    assert _percentile([], 50) is None
    assert _percentile([3.0, 1.0, 2.0], 50) == 2.0 and _percentile(list(range(100)), 99) == 98
    rss, reserved = MemoryProbe(CPU).sample()
    assert rss > 0 and reserved is None
    assert SensorProbe(torch.device("cpu")).sample() is None
    before = live_tensors()
    keep = torch.zeros(2 ** 20)
    assert live_tensors()["bytes"] >= before["bytes"] + keep.numel() * 4 - 1
    assert not math.isnan(before["tensors"])

