"""verify.bisection: the faulty fusion rule is named; a bf16-only fault is fixed by a small fp32 module set."""

import pytest
import torch

from verify.bisection import bisect_fusion, bisect_precision, default_groups
from verify.fp32_modules import apply_fp32_modules, load_fp32_modules, write_fp32_modules

FP32 = {"max_rel_err": 0.01, "min_cosine": 0.9999, "max_rel_l2": 0.01}
BF16 = {"max_rel_err": 0.15, "min_cosine": 0.999, "max_rel_l2": 0.05}


@pytest.fixture(scope="module")
def reference():
    from tests.conftest import tiny_config
    from vtp import VTPModel

    return VTPModel.synthetic(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def inputs(reference):
    from verify.run import make_inputs

    images, _, text = make_inputs(None, 2, 32, ("a dog", "a cat"), context_length=reference.config.text_context_length)
    return {"images": images, "text": text}


@pytest.mark.parametrize("rule, cls, task", [("rmsnorm", "AscendRMSNorm", "ssl"),
                                             ("pixel_shuffle", "AscendPixelShuffle", "reconstruction")])
def test_fusion_bisection_names_the_faulty_rule(reference, inputs, monkeypatch, rule, cls, task):
    """A bug in the module one rule produces (candidate only: the reference is unfused) is found."""
    import ascend.fused_ops as fused_ops

    broken = getattr(fused_ops, cls)
    original = broken.forward
    monkeypatch.setattr(broken, "forward", lambda self, *a, **k: original(self, *a, **k) * 1.05)
    result = bisect_fusion(reference, inputs, device=torch.device("cpu"), precision="fp32", fusion="all",
                           thresholds=FP32, tasks=[task])
    assert result["faulty"] == [rule], result["runs"]
    assert rule not in result["passing_spec"].split(",") and "gelu" in result["passing_spec"].split(",")
    assert result["runs"][-1]["passed"] and f"--fusion {result['passing_spec']}" in result["conclusion"]


def test_fusion_bisection_without_a_fusion_fault(reference, inputs):
    clean = bisect_fusion(reference, inputs, device="cpu", precision="fp32", fusion="all", thresholds=FP32)
    assert clean["faulty"] == [] and "nothing to bisect" in clean["conclusion"]
    blamed = bisect_fusion(reference, inputs, device="cpu", precision="fp32", fusion="all", thresholds=FP32,
                           fault="trunk.blocks.0=1.5")
    assert blamed["passing_spec"] is None and "not the cause" in blamed["conclusion"]


def _bf16_only_fault(module_name):
    """A kernel that is wrong only under autocast (bf16 path), right in fp32."""
    def fault(candidate):
        module = dict(candidate.named_modules())[module_name]
        orig = module.forward

        def forward(*args, **kwargs):
            out = orig(*args, **kwargs)
            return out + 0.5 * out.roll(1, -1) if torch.is_autocast_enabled("cpu") else out

        module.forward = forward
    return fault


def test_precision_bisection_finds_the_module_to_keep_in_fp32(reference, inputs, tmp_path):
    result = bisect_precision(reference, inputs, device="cpu", precision="bf16", thresholds=BF16, tasks=["ssl"],
                              fault=_bf16_only_fault("trunk.blocks.1"))
    assert result["fp32_modules"] == ["trunk.blocks.1"], result["runs"]
    path = write_fp32_modules(tmp_path / "fp32_modules.yaml", result["fp32_modules"], precision="bf16")
    assert load_fp32_modules(path) == ["trunk.blocks.1"]


def test_fp32_modules_run_outside_autocast(reference):
    import copy

    model = copy.deepcopy(reference)
    seen = {}
    model.trunk.norm.register_forward_hook(lambda m, a, o: seen.update(dtype=o.dtype))
    apply_fp32_modules(model, ["trunk.norm", "trunk.norm"])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.get_last_layer_feature(torch.randn(1, 3, 32, 32))
    assert seen["dtype"] == torch.float32
    with pytest.raises(ValueError, match=r"not in the model: \['trunk.nope'\]"):
        apply_fp32_modules(model, ["trunk.nope"])
    assert "trunk.blocks.0" in default_groups(reference) and "trunk" not in default_groups(reference)


def test_fp32_module_files(tmp_path):
    plain = tmp_path / "list.txt"
    plain.write_text("# keep these\ntrunk.norm\n\npixel_decoder.norm  # the decoder\n")
    assert load_fp32_modules(plain) == ["trunk.norm", "pixel_decoder.norm"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("schema: other/1\nmodules: []\n")
    with pytest.raises(ValueError, match="expected 'vtp-fp32-modules/1'"):
        load_fp32_modules(bad)
    with pytest.raises(ValueError, match="cannot read"):
        load_fp32_modules(tmp_path / "missing.yaml")


def test_cli(tiny_checkpoint, tmp_path, capsys):
    import json

    from verify.bisection import main

    base = ["--device", "cpu", "--weights", str(tiny_checkpoint), "--batch", "1", "--size", "32", "--tasks", "ssl"]
    assert main(["fusion", *base, "--out", str(tmp_path / "f")]) == 0
    assert "nothing to bisect" in capsys.readouterr().out
    assert json.loads((tmp_path / "f" / "bisect.json").read_text())["kind"] == "fusion"
    assert main(["precision", *base, "--precision", "fp32", "--out", str(tmp_path / "p")]) == 2
    assert "needs --precision fp16 or bf16" in capsys.readouterr().err
    assert main(["fusion", *base, "--fusion", "nonsense", "--out", str(tmp_path / "n")]) == 2
    assert not (tmp_path / "n").exists()
