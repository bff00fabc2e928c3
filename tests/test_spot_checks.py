"""verify.spot_checks and verify/peaks.yaml: the table reads and matches device names, a figure under the
flag fraction is flagged, the CPU figures are measured (no published peak), the calibration's contention."""

import pytest
import torch

from verify.spot_checks import (PeaksError, compare_to_peak, contention, find_part, host_share, load_peaks,
                                spot_checks, spot_lines)


@pytest.mark.parametrize("name,part", [
    ("Ascend910B3", "Ascend 910B3"), ("Ascend910B2C", "Ascend 910B2"), ("Ascend910B4-1", "Ascend 910B4"),
    ("Ascend910A", "Ascend 910A (Ascend 910)"), ("Ascend310P3", "Ascend 310P (Atlas 300I Pro, per chip)"),
    ("NVIDIA H100 PCIe", "NVIDIA H100 PCIe"), ("NVIDIA H100 80GB HBM3", "NVIDIA H100 SXM"),
    ("NVIDIA H200", "NVIDIA H200 SXM"), ("NVIDIA H200 NVL", "NVIDIA H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB"), ("NVIDIA A100-SXM4-40GB", "NVIDIA A100 40GB"),
    ("Tesla T4", "NVIDIA T4"), ("Tesla V100-SXM2-32GB", "NVIDIA V100 SXM2"), ("NVIDIA L4", "NVIDIA L4"),
    ("NVIDIA L40S", "NVIDIA L40S"), ("NVIDIA A10", "NVIDIA A10"),
])
def test_every_named_part_is_found(name, part):
    assert find_part(name, load_peaks())["name"] == part


def test_unknown_part_and_the_table_rules():
    peaks = load_peaks()
    assert find_part("Some Future Card", peaks) is None
    assert 0 < peaks["flag_fraction"] <= 1
    for part in peaks["parts"]:
        assert part["source"] in ("datasheet", "vendor-press", "third-party") and part.get("confidence")


@pytest.mark.parametrize("text,words", [
    ("schema: other\n", "schema must be"),
    ("schema: vtp-peaks/1\nflag_fraction: 2\nparts: [{name: x, match: [x], source: datasheet}]\n", "flag_fraction"),
    ("schema: vtp-peaks/1\nflag_fraction: 0.5\nparts: [{name: x, match: [x], source: blog}]\n", "source must be"),
    ("schema: vtp-peaks/1\nflag_fraction: 0.5\nparts: [{name: x, match: [x], source: datasheet, fp16_tflops: -1}]\n",
     "fp16_tflops must be a positive number"),
])
def test_bad_peaks_file_is_refused_with_the_reason(tmp_path, text, words):
    path = tmp_path / "peaks.yaml"
    path.write_text(text)
    with pytest.raises(PeaksError, match=words):
        load_peaks(path)


def test_a_figure_under_the_flag_fraction_is_flagged():
    part = {"name": "Card", "source": "datasheet", "bf16_tflops": 100.0}
    ok, line = compare_to_peak("matmul bf16", 60.0, part, "bf16_tflops", 0.5)
    assert ok == {"peak": 100.0, "fraction_of_peak": 0.6, "flagged": False} and line is None
    low, line = compare_to_peak("matmul bf16", 30.0, part, "bf16_tflops", 0.5)
    assert low["flagged"] and "30% of the published 100" in line and "Card" in line
    none, line = compare_to_peak("matmul fp32", 5.0, part, "fp32_tflops", 0.5)
    assert none["fraction_of_peak"] is None and not none["flagged"] and line is None


def test_cpu_spot_checks_are_measured_not_published():
    section = spot_checks(torch.device("cpu"), budget_s=0.02)
    figs = section["figures"]
    assert figs["matmul_fp32_tflops"]["tflops"] > 0 and figs["d2d_gbps"]["gbps"] > 0
    assert figs["h2d_gbps"]["gbps"] is None and "not applicable on the CPU" in figs["h2d_gbps"]["note"]
    assert all(f["fraction_of_peak"] is None for f in figs.values()) and section["flags"] == []
    assert "measured on this machine" in section["peak_note"] and section["part"] is None
    assert any("matmul_fp32_tflops" in line for line in spot_lines(section))


def calib(share, best=10.0):
    return {"host": {"share": share}, "device": {"gflops_best": best, "gflops_median": best * share}}


def test_contention_marks_a_busy_run_with_its_factor():
    clean = contention(calib(0.95), calib(0.9))
    assert clean["contended"] is False and clean["label"] == "clean"
    busy = contention({"host": {"share": 0.4}, "device": None}, {"host": {"share": 0.3}, "device": None})
    assert busy["contended"] and busy["share"] == pytest.approx(0.35) and busy["factor"] == pytest.approx(1 / 0.35)
    assert busy["label"] == "CONTENDED x2.9" and "not the card's figures" in busy["note"]
    device_slow = contention(calib(1.0, best=10.0), calib(0.5, best=10.0))  # host free, device bursts halved
    assert device_slow["share"] == pytest.approx(min(1.0, 0.75))
    assert contention(None, calib(1.0))["share"] is None


def test_host_share_is_a_fraction():
    result = host_share(bursts=3, burst_s=0.002)
    assert 0 < result["share"] <= 1 and result["wall_s"] > 0
