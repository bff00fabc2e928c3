"""verify.bisection: every trial is certified as the harness certifies (its cases, calls and gates); the faulty
fusion rule is named; a bf16-only fault is fixed by a small fp32 module set; nothing is proposed that the
harness then fails."""

import pytest
import torch

from verify.bisection import bisect_fusion, bisect_precision, default_groups, plan_for
from verify.fp32_modules import apply_fp32_modules, load_fp32_modules, write_fp32_modules


@pytest.fixture(scope="module")
def reference():
    from tests.conftest import tiny_config
    from vtp import VTPModel

    return VTPModel.synthetic(tiny_config(), seed=0)


@pytest.fixture(scope="module")
def thresholds():
    from verify.verdict import load_thresholds

    return load_thresholds()


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory):
    from tests.gates_helpers import write_tiny_cases

    return write_tiny_cases(tmp_path_factory.mktemp("cases"))


def _plan(reference, cases_file, tasks=None):
    return plan_for(reference, "quick", cases_file, tasks)


def _fused(candidate, cls):
    return any(type(m).__name__ == cls for m in candidate.modules())


@pytest.mark.parametrize("rule, cls, task", [("rmsnorm", "AscendRMSNorm", "ssl"),
                                             ("pixel_shuffle", "AscendPixelShuffle", "reconstruction")])
def test_fusion_bisection_names_the_faulty_rule(reference, cases_file, thresholds, monkeypatch, rule, cls, task):
    """A bug in the module one rule produces (candidate only: the reference is unfused) is found."""
    import ascend.fused_ops as fused_ops

    broken = getattr(fused_ops, cls)
    original = broken.forward
    monkeypatch.setattr(broken, "forward", lambda self, *a, **k: original(self, *a, **k) * 1.05)
    result = bisect_fusion(reference, _plan(reference, cases_file, [task]), device=torch.device("cpu"),
                           precision="fp32", fusion="all", thresholds=thresholds)
    assert result["verdict"] == "FAIL" and result["faulty"] == [rule], result["runs"]
    assert rule not in result["passing_spec"].split(",") and "gelu" in result["passing_spec"].split(",")
    last = result["runs"][-1]
    assert last["passed"] and last["trial"].startswith("re-check on every case")
    assert last["cases"] == len(_plan(reference, cases_file, [task]).cases)
    assert f"--fusion {result['passing_spec']}" in result["conclusion"]


def test_fusion_bisection_without_a_fusion_fault(reference, cases_file, thresholds):
    plan = _plan(reference, cases_file, ["ssl", "clip_text"])
    clean = bisect_fusion(reference, plan, device="cpu", precision="fp32", fusion="all", thresholds=thresholds)
    assert clean["verdict"] == "PASS" and clean["faulty"] == [] and "nothing to bisect" in clean["conclusion"]
    blamed = bisect_fusion(reference, plan, device="cpu", precision="fp32", fusion="all", thresholds=thresholds,
                           fault="trunk.blocks.0=1.5")
    assert blamed["passing_spec"] is None and "not the cause" in blamed["conclusion"]


def test_a_spec_that_fails_other_cases_is_never_proposed(reference, cases_file, thresholds):
    """The search runs the cases the candidate failed (batch 3 with the rmsnorm rule); removing that rule breaks
    the batch-1 cases. The old bisection proposed the spec without rmsnorm; the re-check on every case refuses
    it, and every smaller spec, so nothing is printed."""
    def fault(candidate):
        fused = _fused(candidate, "AscendRMSNorm")

        def hook(module, args, out):
            return out * 1.05 if out.shape[0] == (3 if fused else 1) else out
        candidate.trunk.blocks[0].register_forward_hook(hook)

    result = bisect_fusion(reference, _plan(reference, cases_file, ["ssl"]), device="cpu", precision="fp32",
                           fusion="all", thresholds=thresholds, fault=fault)
    assert result["verdict"] == "FAIL"
    searched = [r for r in result["runs"][1:] if not r["trial"].startswith("re-check")]
    assert searched and all(r["cases"] == 1 for r in searched)  # only ssl/b3/32x48 during the search
    assert any(r["trial"] == "without rmsnorm" and r["passed"] for r in searched)
    assert result["passing_spec"] is None, result["runs"]
    assert "no fusion spec passes every case" in result["conclusion"]
    assert all(not r["passed"] for r in result["runs"] if r["trial"].startswith("re-check"))


def _bf16_only_fault(module_name, eps=0.5):
    """A kernel that is wrong only under autocast (bf16 path), right in fp32."""
    def fault(candidate):
        module = dict(candidate.named_modules())[module_name]
        orig = module.forward

        def forward(*args, **kwargs):
            out = orig(*args, **kwargs)
            return out + eps * out.roll(1, -1) if torch.is_autocast_enabled("cpu") else out

        module.forward = forward
    return fault


def test_precision_bisection_finds_the_module_to_keep_in_fp32(reference, cases_file, thresholds, tmp_path):
    result = bisect_precision(reference, _plan(reference, cases_file, ["ssl"]), device="cpu", precision="bf16",
                              thresholds=thresholds, fault=_bf16_only_fault("trunk.blocks.1"))
    assert result["fp32_modules"] == ["trunk.blocks.1"], result["runs"]
    assert result["runs"][-1]["trial"].startswith("re-check on every case") and result["runs"][-1]["passed"]
    path = write_fp32_modules(tmp_path / "fp32_modules.yaml", result["fp32_modules"], precision="bf16")
    assert load_fp32_modules(path) == ["trunk.blocks.1"]


def test_bf16_error_only_the_ratio_gate_sees_fails_the_bisection_trial(reference, cases_file, thresholds):
    """A 1 % bf16-only error: inside every absolute bf16 gate (rel-L2 0.05) but 2-3x the same-precision CPU
    reference's own error. The old trial judged without that reference (the ratio gate silently skipped) and
    said "passes as it is"; the harness fails it."""
    result = bisect_precision(reference, _plan(reference, cases_file, ["ssl"]), device="cpu", precision="bf16",
                              thresholds=thresholds, fault=_bf16_only_fault("trunk.norm", eps=0.01))
    first = result["runs"][0]
    assert result["verdict"] == "FAIL" and not first["passed"], first
    gates = set(first["failed_gates"]) - {"warmup"}  # "warmup": the check that the warm call's record failed
    assert gates and gates <= {"error_ratio_rel_l2", "error_ratio_row"}, first


def test_a_flat_thresholds_dict_is_refused(reference, cases_file):
    with pytest.raises(ValueError, match="threshold table"):
        bisect_fusion(reference, _plan(reference, cases_file, ["ssl"]), device="cpu", precision="fp32",
                      fusion="all", thresholds={"max_rel_err": 0.01, "min_cosine": 0.9999})


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


def test_cli(tiny_checkpoint, cases_file, tmp_path, capsys):
    import json

    from verify.bisection import main

    base = ["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases_file), "--tasks", "ssl"]
    assert main(["fusion", *base, "--out", str(tmp_path / "f")]) == 0
    assert "nothing to bisect" in capsys.readouterr().out
    assert json.loads((tmp_path / "f" / "bisect.json").read_text())["kind"] == "fusion"
    assert main(["precision", *base, "--precision", "fp32", "--out", str(tmp_path / "p")]) == 2
    assert "needs --precision fp16 or bf16" in capsys.readouterr().err
    assert main(["fusion", *base, "--fusion", "nonsense", "--out", str(tmp_path / "n")]) == 2
    assert not (tmp_path / "n").exists()
    assert main(["fusion", *base, "--profile", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "no profile 'nope'" in capsys.readouterr().err
