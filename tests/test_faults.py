"""verify.faults: the old MODULE=FACTOR|nan kinds unchanged; drift@N, leak and sleep:MS parsed and hooked."""

import time

import pytest
import torch

from verify.faults import UsageError, inject_fault, parse_fault


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("spec,parsed", [
    ("a.b=1.02", ("a.b", 1.02)), ("a=nan", ("a", "nan")), ("a=NaN", ("a", "nan")),
    ("a=drift@300", ("a", {"kind": "drift", "after_calls": 300, "factor": 1.02})),
    ("a=drift@0:1.5", ("a", {"kind": "drift", "after_calls": 0, "factor": 1.5})),
    ("a=leak", ("a", {"kind": "leak", "copies": 1})), ("a=leak:3", ("a", {"kind": "leak", "copies": 3})),
    ("a=sleep:50", ("a", {"kind": "sleep", "ms": 50.0})),
])
def test_parse(spec, parsed):
    assert parse_fault(spec) == parsed


@pytest.mark.parametrize("spec,words", [
    ("a", "expected MODULE=FACTOR"), ("a=inf", "finite"), ("a=foo", "neither a number, 'nan', drift@N"),
    ("a=drift", "drift@N"), ("a=drift@x", "not a number"), ("a=drift@5:1", "changes nothing"),
    ("a=drift@5:nan", "at least"), ("a=leak:0", "at least 1"), ("a=leak@2", "belongs to drift@N only"),
    ("a=sleep", "sleep:MS"), ("a=sleep:-3", "at least"),
])
def test_bad_specs_are_usage_errors(spec, words):
    with pytest.raises(UsageError, match=words):
        parse_fault(spec)


def test_drift_after_n_calls():
    net, x = Net(), torch.ones(1, 4)
    clean = net(x)
    info = inject_fault(net, "lin=drift@2:2")
    assert info == {"module": "lin", "fault": {"kind": "drift", "after_calls": 2, "factor": 2.0}}
    assert torch.equal(net(x), clean) and torch.equal(net(x), clean)
    assert torch.equal(net(x), clean * 2)


def test_leak_keeps_every_output_and_changes_none():
    net, x = Net(), torch.ones(1, 4)
    clean = net(x)
    inject_fault(net, "lin=leak:2")
    for _ in range(3):
        assert torch.equal(net(x), clean)
    hook = next(iter(net.lin._forward_hooks.values()))
    assert len(hook.kept) == 6


def test_sleep_slows_every_call_and_changes_nothing():
    net, x = Net(), torch.ones(1, 4)
    clean = net(x)
    inject_fault(net, "lin=sleep:30")
    t = time.perf_counter()
    assert torch.equal(net(x), clean)
    assert time.perf_counter() - t >= 0.03
