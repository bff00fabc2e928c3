"""verify.locate on a 16-block model: the error inside a leaf, in a parent's own code between two children (no
leaf at fault), before the first module, and a bf16 error that only the ratio gate sees. The old locate
compared inputs for the first 50 failing modules only and called an unchecked module's inputs agreeing; at
bf16 it had no same-precision reference, so a ratio-only error gave "first divergent module: none"."""

import types

import pytest
import torch

from verify.locate import locate

DEPTH = 16


@pytest.fixture(scope="module")
def reference():
    from tests.conftest import tiny_config
    from vtp import VTPModel

    return VTPModel.synthetic(tiny_config(vision_depth=DEPTH), seed=0)


@pytest.fixture(scope="module")
def inputs(reference):
    from verify.run import make_inputs

    images, _, text = make_inputs(None, 2, 32, ("a dog",), context_length=reference.config.text_context_length)
    return {"images": images, "text": text}


@pytest.fixture(scope="module")
def thresholds():
    from verify.verdict import load_thresholds

    return load_thresholds()


def _candidate(reference, precision="fp32"):
    from ascend.runtime import prepare_candidate

    return prepare_candidate(reference, torch.device("cpu"), fusion="all", precision=precision)[0]


def _run(reference, candidate, inputs, thresholds, precision="fp32"):
    return locate(reference, candidate, inputs, device="cpu", precision=precision, thresholds=thresholds,
                  tasks=["ssl"])


def test_the_model_has_16_blocks(reference):
    assert len(reference.trunk.blocks) == DEPTH


def test_error_inside_a_leaf(reference, inputs, thresholds):
    from verify.faults import inject_fault

    candidate = _candidate(reference)
    inject_fault(candidate, "trunk.blocks.11.mlp.w3=1.05")
    fd = _run(reference, candidate, inputs, thresholds)["first_divergent"]
    assert fd["module"] == "trunk.blocks.11.mlp.w3" and fd["scope"] == "module" and fd["inputs_agree"] is True


def test_error_in_a_parents_own_code_between_two_children(reference, inputs, thresholds):
    """Block 7's forward scales its residual stream between ls1 and norm2: no leaf is at fault."""
    candidate = _candidate(reference)
    block = candidate.trunk.blocks[7]

    def forward(self, x, rope=None):
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        x = x * 1.03  # the bug: in the block's own code
        return x + self.ls2(self.mlp(self.norm2(x)))

    block.forward = types.MethodType(forward, block)
    result = _run(reference, candidate, inputs, thresholds)
    fd = result["first_divergent"]
    assert fd["scope"] == "between" and fd["module"] == fd["enclosing"] == "trunk.blocks.7", fd
    last_agreeing = "trunk.blocks.7.attn" if isinstance(block.ls1, torch.nn.Identity) else "trunk.blocks.7.ls1"
    assert fd["between"] == [last_agreeing, "trunk.blocks.7.norm2"], fd  # Identity modules are not hooked
    assert "own code" in fd["explanation"]
    # inputs_agree is a measured fact on every module call, or absent; never a default
    calls = [e for e in result["layers"] if e["output"] == 0]
    assert all(e["inputs_agree"] in (True, False) for e in calls if "inputs_agree" in e)
    assert sum("inputs_agree" in e for e in calls) == result["per_task"]["ssl"]["inputs_compared"] > 100
    later = [e for e in calls if e["module"].startswith(("trunk.blocks.8.", "trunk.blocks.15."))]
    assert later and all(e["inputs_agree"] is False for e in later if e["module"].endswith(".attn"))


def test_error_before_the_first_module(reference, inputs, thresholds):
    candidate = _candidate(reference)
    original = candidate.get_last_layer_feature
    candidate.get_last_layer_feature = lambda images, *a, **k: original(images * 1.05, *a, **k)
    fd = _run(reference, candidate, inputs, thresholds)["first_divergent"]
    assert fd["scope"] == "before_first_module", fd
    assert fd["between"][0] is None and fd["between"][1].startswith("trunk")
    assert "before any module" in fd["explanation"]


def test_bf16_error_only_the_ratio_gate_sees(reference, inputs, thresholds):
    """1 % off in block 9's MLP under bf16: inside every absolute bf16 gate, 2x+ the same-precision error."""
    candidate = _candidate(reference, "bf16")

    def hook(module, args, out):
        sign = torch.ones(out.shape[-1], dtype=out.dtype)
        sign[1::2] = -1
        return out * (1 + 0.01 * sign)
    candidate.trunk.blocks[9].mlp.register_forward_hook(hook)
    result = _run(reference, candidate, inputs, thresholds, "bf16")
    fd = result["first_divergent"]
    assert result["verdict"] == "FAIL" and result["same_precision_reference"] is True
    assert fd is not None and fd["module"] == "trunk.blocks.9.mlp", fd
    assert fd["gate"].startswith("error_ratio"), fd
