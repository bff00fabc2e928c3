"""verify.judge's repeat check: a later answer to the same input must repeat the first, non-finite values
included (max|a-b| sees finite positions only, so NaN/Inf positions are compared on their own)."""

import math
from types import SimpleNamespace

import pytest
import torch

from verify.judge import repeat_check, same_nonfinite_positions
from verify.verdict import load_thresholds


def _run(first: torch.Tensor, later: torch.Tensor):
    case = SimpleNamespace(id="ssl/b1/32x32", tensors=("ssl_cls",))
    return SimpleNamespace(case=case, candidate={"A": {"ssl_cls": first}, "A2": {"ssl_cls": later}})


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_value_that_turns_non_finite_on_the_repeat_fails(bad):
    first = torch.linspace(-1, 1, 64).reshape(1, 64)
    later = first.clone()
    later[0, 5] = bad
    check = repeat_check(_run(first, later), load_thresholds(), "fp32")
    assert check["verdict"] == "FAIL"
    assert not check["deterministic"]
    assert "a stale, stateful or nondeterministic kernel" in check["reasons"][0]


def test_non_finite_values_that_repeat_exactly_pass():
    first = torch.linspace(-1, 1, 64).reshape(1, 64)
    first[0, 3], first[0, 9] = math.inf, math.nan
    check = repeat_check(_run(first, first.clone()), load_thresholds(), "fp32")
    assert check["verdict"] == "PASS" and check["deterministic"]


def test_an_inf_that_changes_sign_is_not_the_same_position():
    a = torch.tensor([1.0, math.inf])
    assert same_nonfinite_positions(a, a.clone())
    assert not same_nonfinite_positions(a, torch.tensor([1.0, -math.inf]))
    assert not same_nonfinite_positions(a, torch.tensor([1.0, 2.0]))


def test_all_non_finite_and_identical_is_a_repeat():
    a = torch.full((4,), math.nan)
    assert repeat_check(_run(a, a.clone()), load_thresholds(), "fp32")["verdict"] == "PASS"
