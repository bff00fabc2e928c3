"""Tests for verify.metrics: formulas, zero/NaN/Inf handling, and the compare_tensors record."""
import json
import math

import pytest
import torch

from verify import metrics as M

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def ref():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 64, generator=g)


@pytest.fixture
def positive_ref():
    """Values in [0.5, 1.5): no element near zero, so the guard never applies."""
    g = torch.Generator().manual_seed(1)
    return torch.rand(8, 64, generator=g) + 0.5


# --- identical tensors -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_identical_tensors_have_zero_error_and_cosine_one(ref, dtype):
    t = ref.to(dtype)
    assert M.relative_error_mean(t, t) == 0.0
    assert M.relative_l2_error(t, t) == 0.0
    assert M.cosine_similarity(t, t) == pytest.approx(1.0, abs=1e-12)
    worst = M.max_abs_error(t, t)
    assert worst.value == 0.0 and worst.index == (0, 0)  # ties -> first position
    assert M.fraction_over_tolerance(t, t, rtol=0.0, atol=0.0) == 0.0


# --- relative_error_mean and its guard ---------------------------------------------------------
def test_two_percent_perturbation_gives_relative_error_two_percent(positive_ref):
    a = positive_ref * 1.02
    assert M.relative_error_mean(a, positive_ref) == pytest.approx(0.02, rel=1e-4)
    assert M.relative_l2_error(a, positive_ref) == pytest.approx(0.02, rel=1e-4)
    assert M.cosine_similarity(a, positive_ref) == pytest.approx(1.0, abs=1e-9)


def test_relative_error_mean_is_signed_symmetric_and_uses_reference_as_denominator():
    b = torch.tensor([1.0, -2.0, 4.0])
    a = torch.tensor([1.1, -2.2, 4.4])  # 10 % everywhere
    assert M.relative_error_mean(a, b) == pytest.approx(0.1, rel=1e-6)
    # a is the candidate: swapping the roles divides by a instead
    assert M.relative_error_mean(b, a) == pytest.approx(0.1 / 1.1, rel=1e-6)


def test_guard_keeps_exact_zeros_in_reference_finite():
    b = torch.tensor([0.0, 1.0, 2.0, 0.0])
    a = torch.tensor([0.0, 1.0, 2.0, 1e-3])
    g = M.default_guard(b)
    assert g == pytest.approx(1e-3 * 0.75)
    value = M.relative_error_mean(a, b)
    assert math.isfinite(value)
    # 0 vs 0 contributes 0; 1e-3 vs 0 contributes 1e-3 / g; the exact elements 0
    assert value == pytest.approx((1e-3 / g) / 4, rel=1e-6)


def test_guard_all_zero_reference():
    zeros = torch.zeros(5)
    assert M.default_guard(zeros) == M.FP32_TINY
    assert M.relative_error_mean(zeros, zeros) == 0.0
    value = M.relative_error_mean(torch.full((5,), 1.0), zeros)
    assert math.isfinite(value) and value > 1e30


def test_guard_can_be_given_and_must_be_positive():
    b = torch.tensor([0.0, 1.0])
    a = torch.tensor([0.5, 1.0])
    assert M.relative_error_mean(a, b, guard=0.5) == pytest.approx(0.5)
    for bad in (0.0, -1.0, INF, NAN):
        with pytest.raises(ValueError, match="guard must be finite and > 0"):
            M.relative_error_mean(a, b, guard=bad)


def test_relative_error_mean_is_scale_invariant(ref):
    a = ref + 0.01 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(2))
    assert M.relative_error_mean(a * 1000, ref * 1000) == pytest.approx(
        M.relative_error_mean(a, ref), rel=1e-5
    )


# --- relative_l2_error, cosine -----------------------------------------------------------------
def test_relative_l2_zero_cases():
    z = torch.zeros(3)
    assert M.relative_l2_error(z, z) == 0.0
    assert M.relative_l2_error(torch.ones(3), z) == INF


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([1.0, 0.0], [0.0, 1.0], 0.0),  # orthogonal
        ([1.0, 2.0], [-1.0, -2.0], -1.0),  # opposite
        ([1.0, 0.0], [1.0, 1.0], 1 / math.sqrt(2)),
        ([0.0, 0.0], [0.0, 0.0], 1.0),  # both zero: identical
        ([0.0, 0.0], [1.0, 1.0], 0.0),  # one zero: no agreement
        ([3.0, 4.0], [0.0, 0.0], 0.0),
    ],
)
def test_cosine_known_values(a, b, expected):
    assert M.cosine_similarity(torch.tensor(a), torch.tensor(b)) == pytest.approx(expected, abs=1e-12)


def test_cosine_does_not_underflow_for_tiny_norms():
    b = torch.tensor([1e-30, 2e-30], dtype=torch.float64)
    assert M.cosine_similarity(b, b) == pytest.approx(1.0, abs=1e-12)


# --- NaN / Inf ----------------------------------------------------------------------------------
def test_error_metrics_skip_positions_not_finite_on_both_sides(positive_ref):
    a = positive_ref * 1.02
    a[0, 0], a[1, 1] = NAN, INF
    assert M.relative_error_mean(a, positive_ref) == pytest.approx(0.02, rel=1e-4)
    assert M.relative_l2_error(a, positive_ref) == pytest.approx(0.02, rel=1e-4)
    assert math.isfinite(M.cosine_similarity(a, positive_ref))
    assert M.max_abs_error(a, positive_ref).index not in ((0, 0), (1, 1))


def test_error_metrics_are_nan_when_nothing_is_comparable():
    a = torch.tensor([NAN, 1.0])
    b = torch.tensor([1.0, INF])
    for fn in (M.relative_error_mean, M.relative_l2_error, M.cosine_similarity):
        assert math.isnan(fn(a, b)), fn.__name__
    worst = M.max_abs_error(a, b)
    assert math.isnan(worst.value) and worst.index is None


def test_empty_tensors():
    e = torch.zeros(0, 4)
    for fn in (M.relative_error_mean, M.relative_l2_error, M.cosine_similarity):
        assert math.isnan(fn(e, e)), fn.__name__
    assert M.max_abs_error(e, e).index is None
    assert M.count_over_tolerance(e, e, 1e-3, 1e-5) == 0
    assert math.isnan(M.fraction_over_tolerance(e, e, 1e-3, 1e-5))
    assert math.isnan(M.top1_agreement(e, e))


def test_nonfinite_counts():
    t = torch.tensor([NAN, NAN, INF, -INF, 0.0, 1.0], dtype=torch.float16)
    assert M.nonfinite_counts(t) == {"nan": 2, "posinf": 1, "neginf": 1}
    assert M.nonfinite_counts(torch.arange(3)) == {"nan": 0, "posinf": 0, "neginf": 0}


# --- max_abs_error ------------------------------------------------------------------------------
def test_max_abs_error_location_and_values():
    b = torch.zeros(3, 4, 5)
    a = b.clone()
    a[2, 1, 3] = -0.5
    a[0, 0, 1] = 0.25
    a[1, 2, 2] = NAN  # ignored
    worst = M.max_abs_error(a, b)
    assert worst == M.MaxAbsError(value=0.5, index=(2, 1, 3), a=-0.5, b=0.0)
    assert a[worst.index].item() == worst.a


def test_max_abs_error_zero_dim():
    worst = M.max_abs_error(torch.tensor(1.5), torch.tensor(1.0))
    assert worst.value == 0.5 and worst.index == ()


# --- over tolerance --------------------------------------------------------------------------------
def test_fraction_over_tolerance_matches_isclose_and_counts_nan(ref):
    a = ref + 1e-3 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(3))
    expected = (~torch.isclose(a, ref, rtol=1e-3, atol=1e-4)).sum().item()
    assert M.count_over_tolerance(a, ref, rtol=1e-3, atol=1e-4) == expected
    assert M.fraction_over_tolerance(a, ref, 1e-3, 1e-4) == pytest.approx(expected / ref.numel())

    a = torch.tensor([NAN, INF, INF, 1.0, NAN])
    b = torch.tensor([1.0, INF, -INF, 1.0, NAN])
    # NaN vs 1: over; inf vs inf: close; inf vs -inf: over; 1 vs 1: close; NaN vs NaN: over
    assert M.count_over_tolerance(a, b, 0.1, 0.1) == 3


def test_tolerances_are_validated():
    t = torch.ones(2)
    with pytest.raises(ValueError, match="rtol must be finite and >= 0"):
        M.count_over_tolerance(t, t, rtol=-1.0, atol=0.0)
    with pytest.raises(TypeError, match="atol must be a number"):
        M.count_over_tolerance(t, t, rtol=0.0, atol="0.1")


# --- top-1 --------------------------------------------------------------------------------------
def test_top1_agreement():
    pb = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    pa = pb.clone()
    pa[3] = torch.tensor([0.4, 0.5, 0.1])  # flipped argmax
    assert M.top1_agreement(pa, pb) == 0.75
    pa[0, 2] = NAN  # a non-finite row disagrees
    assert M.top1_agreement(pa, pb) == 0.5
    # dim: classes along dim 0
    assert M.top1_agreement(pb.T, pb.T, dim=0) == 1.0
    with pytest.raises(ValueError, match="class dimension"):
        M.top1_agreement(torch.tensor(1.0), torch.tensor(1.0))


# --- input checks ----------------------------------------------------------------------------
def test_shape_mismatch_and_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"candidate \(2, 3\) vs reference \(3, 2\)"):
        M.relative_error_mean(torch.zeros(2, 3), torch.zeros(3, 2))
    with pytest.raises(TypeError, match="complex"):
        M.cosine_similarity(torch.zeros(2, dtype=torch.complex64), torch.zeros(2))
    with pytest.raises(TypeError, match="expected a torch.Tensor"):
        M.max_abs_error([1.0], torch.zeros(1))


# --- compare_tensors ---------------------------------------------------------------------------
def test_compare_tensors_record(ref):
    a = (ref * 1.001).to(torch.bfloat16)
    rec = M.compare_tensors(a, ref, "clip_image")
    assert rec["schema"] == M.COMPARE_SCHEMA and rec["name"] == "clip_image"
    assert rec["candidate"]["dtype"] == "bfloat16" and rec["reference"]["dtype"] == "float32"
    assert rec["candidate"]["shape"] == [8, 64] and rec["reference"]["numel"] == 512
    assert not rec["shape_mismatch"] and not rec["empty"] and not rec["nonfinite_present"]
    assert rec["finite_both"] == 512
    m = rec["metrics"]
    assert m["relative_error_mean"] == pytest.approx(M.relative_error_mean(a, ref))
    assert m["cosine_similarity"] == pytest.approx(M.cosine_similarity(a, ref))
    worst = M.max_abs_error(a, ref)
    assert m["max_abs_error"]["index"] == list(worst.index)
    assert m["over_tolerance"]["count"] == M.count_over_tolerance(a, ref, 1e-3, 1e-5)
    assert "top1_agreement" not in m
    json.dumps(rec, allow_nan=False)


def test_compare_tensors_is_json_safe_with_nan_and_inf(positive_ref):
    a = positive_ref.clone()
    a[0, 3], a[2, 5], a[4, 1] = NAN, INF, -INF
    rec = M.compare_tensors(a, positive_ref, "feat")
    text = json.dumps(rec, allow_nan=False)
    assert rec["nonfinite_present"]
    assert rec["candidate"]["nonfinite"] == {"nan": 1, "posinf": 1, "neginf": 1}
    assert rec["nonfinite_mismatch"] == {"candidate_only": 3, "reference_only": 0, "kind_differs": 0}
    assert rec["finite_both"] == positive_ref.numel() - 3
    assert rec["metrics"]["relative_error_mean"] == 0.0
    assert rec["metrics"]["over_tolerance"]["count"] == 3

    # nothing comparable: metrics become the strings "nan"/"inf", still valid JSON
    rec = M.compare_tensors(torch.full((4,), NAN), torch.ones(4), "all_nan")
    json.dumps(rec, allow_nan=False)
    assert rec["metrics"]["cosine_similarity"] == "nan"
    assert rec["metrics"]["max_abs_error"]["index"] is None
    rec = M.compare_tensors(torch.ones(3), torch.zeros(3), "vs_zero")
    assert rec["metrics"]["relative_l2_error"] == "inf"
    assert "inf" in json.dumps(rec, allow_nan=False)


def test_compare_tensors_kind_of_nonfinite():
    a = torch.tensor([NAN, INF, INF, -INF, 1.0])
    b = torch.tensor([NAN, INF, NAN, INF, NAN])
    rec = M.compare_tensors(a, b, "t")
    assert rec["nonfinite_mismatch"] == {"candidate_only": 0, "reference_only": 1, "kind_differs": 2}


def test_compare_tensors_shape_mismatch_and_empty():
    rec = M.compare_tensors(torch.zeros(2, 3), torch.zeros(2, 4), "t")
    assert rec["shape_mismatch"] and rec["metrics"] is None
    assert rec["candidate"]["shape"] == [2, 3] and rec["reference"]["shape"] == [2, 4]
    rec = M.compare_tensors(torch.zeros(0, 3), torch.zeros(0, 3), "t")
    assert rec["empty"] and not rec["shape_mismatch"] and rec["metrics"] is None
    json.dumps(rec, allow_nan=False)


def test_compare_tensors_probabilities():
    pb = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(4)), dim=-1)
    rec = M.compare_tensors(pb, pb, "clip_probs", probabilities=True)
    assert rec["probabilities"]
    assert rec["metrics"]["top1_agreement"] == 1.0 and rec["metrics"]["top1_rows"] == 6


def test_json_float_round_trip():
    for x in (0.5, NAN, INF, -INF):
        y = M.parse_json_float(json.loads(json.dumps(M.json_float(x), allow_nan=False)))
        assert (math.isnan(x) and math.isnan(y)) or x == y
    assert M.parse_json_float(None) is None
    with pytest.raises(ValueError, match="expected a number"):
        M.parse_json_float("0.5")
