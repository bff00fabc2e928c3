"""Tests for verify.verdict: the threshold file, the PASS/FAIL rules and the reason lines."""
import copy
import json

import pytest
import torch
from omegaconf import OmegaConf

from verify import verdict as V
from verify.metrics import compare_tensors

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def table():
    return V.load_thresholds()


@pytest.fixture
def ref():
    """Values in [0.5, 1.5): relative errors are exact, the guard never applies."""
    return torch.rand(4, 192, generator=torch.Generator().manual_seed(0)) + 0.5


def raw_default():
    """The shipped threshold file as a plain dict, to edit and write elsewhere."""
    return OmegaConf.to_container(OmegaConf.load(V.DEFAULT_THRESHOLDS_PATH))


def write_yaml(path, doc):
    OmegaConf.save(OmegaConf.create(doc), path)
    return path


# --- the shipped file ---------------------------------------------------------------------------
def test_default_file_values(table):
    assert table["schema"] == "vtp-thresholds/2" and table["version"] >= 3
    assert table["precisions"]["fp32"]["max_rel_err"] == 0.01
    assert table["precisions"]["fp32"]["min_cosine"] == 0.9999
    assert set(table["precisions"]) == {"fp32", "fp16", "bf16"}
    text = V.DEFAULT_THRESHOLDS_PATH.read_text()
    assert "calibrated by measurement" in text and "PROVISIONAL" not in text


# --- basic verdicts -------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", V.PRECISIONS)
def test_identical_tensors_pass(table, ref, precision):
    out = V.judge(compare_tensors(ref, ref, "clip_image"), table, precision=precision)
    assert out["verdict"] == "PASS" and out["reasons"] == []
    assert out["summary"].startswith(f"clip_image: PASS ({precision})")
    json.dumps(out, allow_nan=False)


def test_two_percent_error_fails_fp32_and_passes_bf16(table, ref):
    rec = compare_tensors(ref * 1.02, ref, "clip_image")
    out = V.judge(rec, table, precision="fp32")
    assert out["verdict"] == "FAIL"
    line = next(r for r in out["reasons"] if "relative_error_mean" in r)
    assert line.startswith("clip_image: relative_error_mean 0.02")
    assert ">= 0.01 (threshold max_rel_err)" in line
    assert f"/{ref.numel()} elements over tolerance" in line and "worst |a-b|=" in line
    assert V.judge(rec, table, precision="fp16")["verdict"] == "FAIL"  # fp16 gates: 1 % rel L2
    assert V.judge(rec, table, precision="bf16")["verdict"] == "PASS"


def test_share_over_tolerance_decides_only_at_the_thresholds_tolerance(table, ref):
    from verify.judge import compare_one

    bad = ref.clone()
    bad[0, :20] *= 1.01  # 20 of 768 elements 1 % off: 2.6 % of the elements, inside every other fp32 gate
    limits = V.select_thresholds(table, "fp32", "x")
    judged = V.judge(compare_one("x", bad, ref, limits, patch=16), table, precision="fp32")
    assert judged["verdict"] == "FAIL"
    assert any("fraction_over_tolerance" in r and "max_frac_over_tol" in r for r in judged["reasons"])
    plain = V.judge(compare_tensors(bad, ref, "x"), table, precision="fp32")  # counted at other tolerances
    assert not any(g["gate"] == "max_frac_over_tol" for g in plain["gates"])


@pytest.mark.parametrize(
    "value, counts",
    [
        (NAN, "nan=1, posinf=0, neginf=0"),
        (INF, "nan=0, posinf=1, neginf=0"),
        (-INF, "nan=0, posinf=0, neginf=1"),
    ],
)
def test_single_nonfinite_candidate_value_fails(table, ref, value, counts):
    a = ref.clone()
    a[1, 7] = value
    out = V.judge(compare_tensors(a, ref, "clip_image"), table, precision="fp32")
    assert out["verdict"] == "FAIL"
    assert len(out["reasons"]) == 1  # the other metrics skip the bad position and are fine
    assert out["reasons"][0].startswith(
        "clip_image: candidate has 1 NaN/Inf value(s) where the reference is finite"
    )
    assert f"(candidate {counts}; reference nan=0, posinf=0, neginf=0)" in out["reasons"][0]


def test_matching_nonfinite_positions_pass_and_are_reported(table, ref):
    a, b = ref.clone(), ref.clone()
    a[0, 0] = b[0, 0] = NAN
    out = V.judge(compare_tensors(a, b, "t"), table, precision="fp32")
    assert out["verdict"] == "PASS"
    assert "1 matching NaN/Inf position(s) excluded" in out["summary"]


def test_nonfinite_reference_or_kind_mismatch_fails(table, ref):
    a, b = ref.clone(), ref.clone()
    b[0, 0] = NAN  # reference NaN, candidate finite
    a[0, 1], b[0, 1] = INF, -INF  # both infinite, opposite signs
    reasons = V.judge(compare_tensors(a, b, "t"), table, precision="fp32")["reasons"]
    assert any("reference has 1 NaN/Inf value(s) where the candidate is finite" in r for r in reasons)
    assert any("1 position(s) are non-finite on both sides but differ" in r for r in reasons)


def test_shape_mismatch_fails(table):
    out = V.judge(compare_tensors(torch.zeros(2, 768), torch.zeros(2, 769), "clip_image"), table,
                  precision="fp32")
    assert out["verdict"] == "FAIL"
    assert out["reasons"] == [
        "clip_image: shape mismatch: candidate (2, 768) vs reference (2, 769); no metrics computed"
    ]


def test_empty_output_fails(table):
    out = V.judge(compare_tensors(torch.zeros(0, 8), torch.zeros(0, 8), "latents"), table,
                  precision="fp32")
    assert out["verdict"] == "FAIL"
    assert out["reasons"][0].startswith("latents: empty output: candidate numel 0")


def test_nan_metric_fails_with_reason(table):
    a = torch.tensor([NAN, 1.0])
    b = torch.tensor([NAN, INF])  # nothing finite on both sides -> metrics NaN
    rec = compare_tensors(a, b, "t")
    reasons = V.judge(rec, table, precision="fp32")["reasons"]
    assert any(r.startswith("t: relative_error_mean is NaN") and "max_rel_err 0.01" in r for r in reasons)
    assert any(r.startswith("t: cosine_similarity is NaN") for r in reasons)


@pytest.mark.parametrize("metric", ["relative_error_mean", "cosine_similarity", "relative_l2_error"])
def test_missing_or_unreadable_metric_never_passes(table, ref, metric):
    rec = compare_tensors(ref, ref, "t")
    missing = copy.deepcopy(rec)
    del missing["metrics"][metric]
    out = V.judge(missing, table, precision="fp32")
    assert out["verdict"] == "FAIL" and out["reasons"][0].startswith(f"t: {metric} missing")
    garbled = copy.deepcopy(rec)
    garbled["metrics"][metric] = "0.5"
    assert V.judge(garbled, table, precision="fp32")["reasons"][0].startswith(f"t: {metric} is unreadable")


def test_record_without_metrics_or_schema_fails(table, ref):
    rec = compare_tensors(ref, ref, "t")
    rec["metrics"] = None
    reasons = V.judge(rec, table, precision="fp32")["reasons"]
    assert reasons == ["t: metrics missing from the record; cannot PASS"]
    out = V.judge({"name": "x"}, table, precision="fp32")
    assert out["verdict"] == "FAIL" and "not a compare_tensors record" in out["reasons"][0]


def test_reason_names_tensor_metric_value_threshold_and_worst_element(table, ref):
    a = ref.clone()
    a[2, 17] += 0.5
    out = V.judge(compare_tensors(a, ref, "clip_image"), {"max_rel_err": 0.01, "min_cosine": 0.99999999})
    (line,) = [r for r in out["reasons"] if "cosine_similarity" in r]
    value = compare_tensors(a, ref, "clip_image")["metrics"]["cosine_similarity"]
    assert line.startswith(f"clip_image: cosine_similarity {value:.6g} < 0.99999999 (threshold min_cosine)")
    assert f"1/{ref.numel()} elements over tolerance (rtol=0.001, atol=1e-05)" in line
    assert f"worst |a-b|=0.5 at (2, 17): a={a[2, 17].item():.6g} b={ref[2, 17].item():.6g}" in line


def test_values_close_to_threshold_are_printed_distinguishably(table, ref):
    rec = compare_tensors(ref, ref, "t")
    rec["metrics"]["cosine_similarity"] = 0.99989999
    (line,) = V.judge(rec, table, precision="fp32")["reasons"]
    assert "cosine_similarity 0.99989999 < 0.9999 (threshold min_cosine)" in line


# --- probabilities -----------------------------------------------------------------------------------
def test_probability_rules(table):
    pb = torch.softmax(torch.randn(4, 10, generator=torch.Generator().manual_seed(1)), dim=-1)
    pa = pb.clone()
    row = pa[0].clone()
    top = int(row.argmax())
    pa[0, top], pa[0, (top + 1) % 10] = row[(top + 1) % 10], row[top]  # swap: top-1 moves
    rec = compare_tensors(pa, pb, "clip_probs", probabilities=True)
    reasons = V.judge(rec, table, precision="fp32")["reasons"]
    assert any(r.startswith("clip_probs: top1_agreement 0.75 < 1 (threshold min_top1)") for r in reasons)
    assert any("max_abs_error" in r and "(threshold max_prob_abs)" in r for r in reasons)
    # the same probability rules are not applied to a record made without probabilities=True
    plain = compare_tensors(pa, pb, "clip_probs")
    reasons = V.judge(plain, table, precision="fp32")["reasons"]
    assert not any("top1" in r or "max_prob_abs" in r for r in reasons)


# --- threshold files -----------------------------------------------------------------------------------
def test_edited_threshold_file_takes_effect(tmp_path, ref):
    rec = compare_tensors(ref * 1.02, ref, "clip_image")
    loose, strict = raw_default(), raw_default()
    loose["precisions"]["fp32"].update(max_rel_err=0.05, max_rel_l2=0.05, max_row_rel_err=0.05, max_abs_scaled=0.05)
    strict["precisions"]["fp32"].update(max_rel_err=0.001)
    loose_t = V.load_thresholds(write_yaml(tmp_path / "loose.yaml", loose))
    strict_t = V.load_thresholds(write_yaml(tmp_path / "strict.yaml", strict))
    assert V.judge(rec, loose_t, precision="fp32")["verdict"] == "PASS"
    out = V.judge(rec, strict_t, precision="fp32")
    assert out["verdict"] == "FAIL" and any(">= 0.001 (threshold max_rel_err)" in r for r in out["reasons"])


def test_per_tensor_override(tmp_path, ref):
    doc = raw_default()
    doc["overrides"] = {"fp32": {"clip_image": {"max_rel_err": 0.05, "max_rel_l2": None, "max_row_rel_err": None,
                                                "max_abs_scaled": None}}}
    t = V.load_thresholds(write_yaml(tmp_path / "o.yaml", doc))
    assert V.select_thresholds(t, "fp32", "clip_image")["max_rel_l2"] is None
    assert V.judge(compare_tensors(ref * 1.02, ref, "clip_image"), t, precision="fp32")["verdict"] == "PASS"
    assert V.judge(compare_tensors(ref * 1.02, ref, "clip_text"), t, precision="fp32")["verdict"] == "FAIL"


def _edit(doc, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        doc = doc[p]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()


@pytest.mark.parametrize(
    "dotted, value, words",
    [
        ("schema", "vtp-thresholds/1", ["key 'schema' is 'vtp-thresholds/1'", "vtp-thresholds/2"]),
        ("schema", _DELETE, ["missing key 'schema'"]),
        ("version", "one", ["key 'version' must be an integer >= 1"]),
        ("precisions.fp16.min_cosine", _DELETE, ["missing key 'precisions.fp16.min_cosine'"]),
        ("precisions.bf16", _DELETE, ["missing key 'precisions.bf16'"]),
        ("precisions.fp32.max_rel_err", "0.01",
         ["key 'precisions.fp32.max_rel_err' must be a number, got str '0.01'"]),
        ("precisions.fp32.min_cosine", True,
         ["key 'precisions.fp32.min_cosine' must be a number, got bool"]),
        ("precisions.fp32.min_cosine", 1.5,
         ["key 'precisions.fp32.min_cosine' must be finite and >= -1 and <= 1"]),
        ("precisions.fp32.max_rel_err", 0, ["key 'precisions.fp32.max_rel_err' must be finite and > 0"]),
        ("precisions.fp32.max_rel_err", None, ["key 'precisions.fp32.max_rel_err' is null"]),
        ("precisions.fp8", {"max_rel_err": 0.1}, ["unknown precision 'precisions.fp8'"]),
        ("precisions.fp32.min_cos", 0.9, ["unknown key 'precisions.fp32.min_cos'"]),
        ("overrides", {"int8": {}}, ["unknown precision 'overrides.int8'"]),
        ("overrides", {"fp16": {"clip_probs": {"max_prob_abs": "x"}}},
         ["key 'overrides.fp16.clip_probs.max_prob_abs' must be a number"]),
        ("tolerances", {}, ["unknown top-level key 'tolerances'"]),
    ],
)
def test_malformed_threshold_file_names_file_and_key(tmp_path, dotted, value, words):
    doc = raw_default()
    _edit(doc, dotted, value)
    path = write_yaml(tmp_path / "bad.yaml", doc)
    with pytest.raises(V.ThresholdsError) as info:
        V.load_thresholds(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ")
    for w in words:
        assert w in message


def test_unparseable_and_missing_files(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("schema: [vtp-thresholds/1\nversion: 1\n")
    with pytest.raises(V.ThresholdsError, match="broken.yaml: cannot read the threshold file"):
        V.load_thresholds(bad)
    with pytest.raises(FileNotFoundError, match="threshold file not found"):
        V.load_thresholds(tmp_path / "absent.yaml")


def test_threshold_arguments(table, ref):
    rec = compare_tensors(ref, ref, "t")
    with pytest.raises(ValueError, match="pass precision="):
        V.judge(rec, table)
    with pytest.raises(V.ThresholdsError, match="unknown precision 'fp64'"):
        V.judge(rec, table, precision="fp64")
    with pytest.raises(V.ThresholdsError, match="missing key 'thresholds.min_cosine'"):
        V.judge(rec, {"max_rel_err": 0.01})
    assert V.judge(rec, {"max_rel_err": 0.01, "min_cosine": 0.9999})["verdict"] == "PASS"


# --- tasks and overall ----------------------------------------------------------------------------------
def test_task_and_overall_verdicts(table, ref):
    good = compare_tensors(ref, ref, "clip_image")
    bad = compare_tensors(ref * 1.02, ref, "clip_text")
    task_ok = V.judge_task([good], table, precision="fp32", task="features")
    task_bad = V.judge_task([good, bad], table, precision="fp32", task="zero_shot")
    assert task_ok["verdict"] == "PASS" and task_ok["passed"] == 1
    assert task_bad["verdict"] == "FAIL" and task_bad["failed_tensors"] == ["clip_text"]
    assert task_bad["reasons"][0].startswith("[zero_shot] clip_text: ")
    assert V.judge_task([], table, precision="fp32", task="x")["verdict"] == "FAIL"

    assert V.overall_verdict([task_ok])["verdict"] == "PASS"
    overall = V.overall_verdict([task_ok, task_bad])
    assert overall["verdict"] == "FAIL" and overall["failed_tasks"] == ["zero_shot"]
    assert overall["reasons"] == task_bad["reasons"]
    assert V.overall_verdict([])["verdict"] == "FAIL"
    weird = V.overall_verdict([{"task": "t", "verdict": "pass"}])
    assert weird["verdict"] == "FAIL" and "neither PASS nor FAIL" in weird["reasons"][0]
    json.dumps(overall, allow_nan=False)
    json.dumps(task_bad, allow_nan=False)
