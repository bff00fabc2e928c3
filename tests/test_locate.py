"""verify.locate: a fault injected at one module is named as the first divergent / first NaN module."""

import json
import math

import pytest
import torch

from verify.locate import compare_pair, locate, main, write_divergence

PROMPTS = ("a dog", "a cat")


@pytest.fixture(scope="module")
def reference():
    from tests.conftest import tiny_config
    from vtp import VTPModel

    return VTPModel.synthetic(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def inputs(reference):
    from verify.run import make_inputs

    images, _, text = make_inputs(None, 2, 64, PROMPTS, context_length=reference.config.text_context_length)
    return {"images": images, "text": text}


@pytest.fixture(scope="module")
def thresholds():
    """The fp32 gates as a flat dict (the YAML table's layout belongs to verify.verdict)."""
    return {"max_rel_err": 0.01, "min_cosine": 0.9999, "max_rel_l2": 0.01}


def _candidate(reference, fault=None, fusion="all"):
    from ascend.runtime import prepare_candidate
    from verify.faults import inject_fault

    candidate, _ = prepare_candidate(reference, torch.device("cpu"), fusion=fusion, precision="fp32")
    if fault:
        inject_fault(candidate, fault)
    return candidate


def test_clean_fused_candidate_has_no_divergence(reference, inputs, thresholds):
    result = locate(reference, _candidate(reference), inputs, device="cpu", precision="fp32", thresholds=thresholds)
    assert result["schema"] == "vtp-divergence/2" and result["verdict"] == "PASS"
    assert result["first_divergent"] is None and result["first_nonfinite"] is None
    assert set(result["per_task"]) == {"reconstruction", "clip", "ssl"}
    assert all(info["unmatched"] == 0 and info["error"] is None for info in result["per_task"].values())
    assert all(e["verdict"] == "PASS" for e in result["layers"])
    assert json.dumps({k: v for k, v in result.items() if k != "tensors"}, allow_nan=False)


@pytest.mark.parametrize("module, task, cls", [
    ("trunk.blocks.1.attn", "reconstruction", "AscendSelfAttention"),   # an encoder block's attention
    ("pixel_decoder.norm", "reconstruction", "AscendLayerNorm"),        # the decoder's final norm
    ("pixel_decoder.blocks.0.norm2", "reconstruction", "AscendLayerNorm"),
    ("text_transformer.resblocks.1.mlp", "clip", "TextMlp"),            # a text block's MLP
])
def test_fault_is_located_at_its_module(reference, inputs, thresholds, module, task, cls):
    result = locate(reference, _candidate(reference, f"{module}=1.5"), inputs, device="cpu", precision="fp32",
                    thresholds=thresholds)
    first = result["first_divergent"]
    assert first["module"] == module, first
    assert first["task"] == task and first["class"] == cls and first["inputs_agree"] is True
    assert first["metric"] == "relative_l2_error" and first["value"] == pytest.approx(0.5, rel=1e-3)
    assert first["threshold"] == thresholds["max_rel_l2"]
    assert result["first_nonfinite"] is None
    # the modules that ran before it still agree; the fault shows in the task outputs
    layers = [e for e in result["layers"] if e["task"] == task]
    before = layers[:[e["module"] for e in layers].index(module)]
    assert before and all(e["verdict"] == "PASS" for e in before)
    assert any(o["verdict"] == "FAIL" for o in result["outputs"] if o["task"] == task)


def test_small_fault_inside_the_gates_is_suspected_not_divergent(reference, inputs, thresholds):
    result = locate(reference, _candidate(reference, "trunk.blocks.0.attn=1.001", fusion="none"), inputs,
                    device="cpu", precision="fp32", thresholds=thresholds, tasks=["ssl"])
    assert result["first_divergent"] is None
    assert result["suspect"]["module"] == "trunk.blocks.0.attn"


def test_nan_is_named_as_first_nonfinite(reference, inputs, thresholds):
    result = locate(reference, _candidate(reference, "trunk.blocks.0.mlp=nan"), inputs, device="cpu",
                    precision="fp32", thresholds=thresholds, tasks=["ssl", "clip"])
    assert result["first_nonfinite"]["module"] == "trunk.blocks.0.mlp"
    assert result["first_nonfinite"]["task"] == "ssl"
    assert result["first_divergent"]["module"] == "trunk.blocks.0.mlp"
    assert result["first_divergent"]["metric"] == "nonfinite"


def test_full_tensors_on_request_and_atomic_write(reference, inputs, thresholds, tmp_path):
    from safetensors.torch import load_file

    result = locate(reference, _candidate(reference), inputs, device="cpu", precision="fp32", thresholds=thresholds,
                    tasks=["ssl"], full_tensors=["trunk.norm"])
    assert set(result["tensors"]) == {"ssl/trunk.norm/0/0/candidate", "ssl/trunk.norm/0/0/reference"}
    path = write_divergence(tmp_path / "divergence.json", result)
    data = json.loads(path.read_text())
    assert data["tensors_file"] == "divergence_tensors.safetensors" and "tensors" not in data
    assert set(load_file(tmp_path / data["tensors_file"])) == set(result["tensors"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    with pytest.raises(ValueError, match="no module named"):
        locate(reference, _candidate(reference), inputs, device="cpu", precision="fp32", thresholds=thresholds,
               full_tensors=["trunk.nope"])


def test_module_on_one_side_only_does_not_stall(reference, inputs, thresholds):
    """A candidate module that calls an extra hooked child (a fused op with other children) is unmatched."""
    candidate = _candidate(reference)
    block = candidate.trunk.blocks[0]
    extra = torch.nn.Linear(32, 32)
    with torch.no_grad():
        extra.weight.copy_(torch.eye(32))
        extra.bias.zero_()
    reference_norm1 = block.norm1
    block.norm1 = torch.nn.Sequential(reference_norm1, extra)  # same output, one more module call
    result = locate(reference, candidate, inputs, device="cpu", precision="fp32", thresholds=thresholds,
                    tasks=["ssl"])
    assert result["per_task"]["ssl"]["error"] is None
    assert result["first_divergent"] is None


def test_compare_pair_matches_verify_metrics():
    from verify import metrics

    g = torch.Generator().manual_seed(0)
    b = torch.randn(3, 50, 7, generator=g)
    a = b + 0.01 * torch.randn(3, 50, 7, generator=g)
    a[0, 0, 0] = float("nan")
    m = compare_pair(a, b)["metrics"]
    assert m["relative_error_mean"] == pytest.approx(metrics.relative_error_mean(a, b), rel=1e-9)
    assert m["relative_l2_error"] == pytest.approx(metrics.relative_l2_error(a, b), rel=1e-9)
    assert m["cosine_similarity"] == pytest.approx(metrics.cosine_similarity(a, b), rel=1e-12)
    assert m["max_abs_error"] == pytest.approx(metrics.max_abs_error(a, b).value, rel=1e-12)
    assert m["candidate_only_nonfinite"] == 1
    assert compare_pair(torch.zeros(2), torch.zeros(3))["shape_mismatch"] is True
    assert math.isfinite(compare_pair(a, b)["candidate"]["l2"])


def test_cli_writes_divergence_and_exit_codes(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "loc"
    args = ["--device", "cpu", "--weights", str(tiny_checkpoint), "--batch", "1", "--size", "32", "--out", str(out)]
    assert main(args + ["--inject-fault", "pixel_decoder.blocks.1.attn=2"]) == 1
    data = json.loads((out / "divergence.json").read_text())
    assert data["first_divergent"]["module"] == "pixel_decoder.blocks.1.attn"
    assert "first divergent module: pixel_decoder.blocks.1.attn" in capsys.readouterr().out
    assert main(args + ["--tasks", "ssl"]) == 0
    assert main(args + ["--inject-fault", "trunk.nope=2"]) == 2
    assert "no module named 'trunk.nope'" in capsys.readouterr().err
    assert main(args[:-2] + ["--size", "33", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad" / "divergence.json").exists()


def test_compare_pair_in_chunks_matches_one_pass(monkeypatch):
    import verify.layer_compare as loc

    g = torch.Generator().manual_seed(1)
    b = torch.randn(1000, generator=g)
    a = b * 1.01 + 1e-3
    a[5], b[7] = float("inf"), float("nan")
    whole = compare_pair(a, b)
    monkeypatch.setattr(loc, "CHUNK", 64)
    chunked = compare_pair(a, b)
    for key, value in whole["metrics"].items():
        assert chunked["metrics"][key] == pytest.approx(value, rel=1e-9), key
    for side in ("candidate", "reference"):
        for key in ("min", "max", "mean", "l2", "nan", "inf"):
            assert chunked[side][key] == pytest.approx(whole[side][key], rel=1e-9), (side, key)
    assert whole["metrics"]["candidate_only_nonfinite"] == 1 and whole["metrics"]["reference_only_nonfinite"] == 1
