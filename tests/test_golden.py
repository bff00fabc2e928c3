"""verify.golden: a round trip judges like recomputing; other weights, config, cases, schema or a tampered file
are refused with a message that says what differs."""

import json

import pytest
from conftest import one_shape_cases
import torch

from verify.golden import GoldenError, load_golden, save_golden

CASES = [{"id": "ssl/b2/32x32", "task": "ssl", "batch": 2, "size": 32}]
FP32 = {"max_rel_err": 0.01, "min_cosine": 0.9999, "max_rel_l2": 0.01}


def _run(model, images):
    from verify.run import TASKS, run_tasks

    out = run_tasks(model, images, torch.zeros(1, 77, dtype=torch.long), torch.device("cpu"), "fp32",
                    {"ssl": TASKS["ssl"]})
    return {f"ssl/b2/32x32/{k}": v for k, v in out.items()}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    from tests.conftest import tiny_config
    from vtp import VTPModel

    reference = VTPModel.synthetic(tiny_config(), seed=0)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    identity = {"kind": "synthetic", "source": reference.weights_source, "preset": "tiny", "path": "/here"}
    folder = tmp_path_factory.mktemp("golden")
    save_golden(folder, {"ssl/b2/32x32/images": images}, _run(reference, images),
                {"weights": identity, "config": reference.config, "cases": CASES, "note": "test"})
    return folder, reference, identity


def _verdicts(candidate_out, reference_out):
    from verify.metrics import compare_tensors
    from verify.verdict import judge

    return {k: (judge(compare_tensors(v, reference_out[k], k), FP32)["verdict"],
                compare_tensors(v, reference_out[k], k)["metrics"]["relative_l2_error"])
            for k, v in candidate_out.items()}


def test_round_trip_judges_like_recomputing(golden):
    from ascend.runtime import prepare_candidate
    from verify.faults import inject_fault

    folder, reference, identity = golden
    moved = dict(identity, path="/elsewhere")  # another machine: the folder differs, the content does not
    inputs, outputs, manifest = load_golden(folder, {"weights": moved, "config": reference.config, "cases": CASES})
    assert manifest["schema"] == "vtp-golden/1" and manifest["kit_version"]
    assert {"torch", "torch_npu", "cann", "device", "driver"} <= set(manifest["environment"])
    assert manifest["info"] == {"note": "test"}
    images = inputs["ssl/b2/32x32/images"]
    for fault in (None, "trunk.blocks.1.attn=1.5"):
        candidate, _ = prepare_candidate(reference, torch.device("cpu"), fusion="all")
        if fault:
            inject_fault(candidate, fault)
        got = _run(candidate, images)
        assert _verdicts(got, outputs) == _verdicts(got, _run(reference, images))
    assert {v[0] for v in _verdicts(got, outputs).values()} == {"FAIL"}


@pytest.mark.parametrize("key, value, words", [
    ("weights", {"kind": "synthetic", "source": "other seed", "preset": "tiny"}, "made with other weights"),
    ("cases", CASES + [{"id": "clip/b1/32x32"}], "made with other cases"),
])
def test_other_weights_or_cases_are_refused(golden, key, value, words):
    folder, reference, identity = golden
    expect = {"weights": identity, "config": reference.config, "cases": CASES, key: value}
    with pytest.raises(GoldenError, match=words) as info:
        load_golden(folder, expect)
    assert "--save-golden" in str(info.value)


def test_other_config_is_refused(golden):
    from tests.conftest import tiny_config

    folder, _, identity = golden
    with pytest.raises(GoldenError, match=r"other config \(vision_depth: 2 vs 3"):
        load_golden(folder, {"weights": identity, "config": tiny_config(vision_depth=3), "cases": CASES})


def test_tampered_file_fails_its_sha256(golden, tmp_path):
    import shutil

    folder, reference, identity = golden
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / "reference.safetensors").read_bytes())
    data[-1] ^= 1
    (copy / "reference.safetensors").write_bytes(bytes(data))
    with pytest.raises(GoldenError, match="reference.safetensors: sha256 .* does not match the manifest"):
        load_golden(copy, {"weights": identity})


def test_other_schema_and_incomplete_sets_are_refused(golden, tmp_path):
    import shutil

    folder, _, identity = golden
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(dict(manifest, schema="vtp-golden/0")))
    with pytest.raises(GoldenError, match="schema 'vtp-golden/0', this kit reads 'vtp-golden/1'"):
        load_golden(copy, {})
    (copy / "manifest.json").unlink()
    with pytest.raises(GoldenError, match="not a complete golden set"):
        load_golden(copy, {})
    with pytest.raises(GoldenError, match="info lacks"):
        save_golden(tmp_path / "new", {"x": torch.zeros(1)}, {"y": torch.zeros(1)}, {"weights": identity})
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_a_file_edited_with_its_manifest_entry_is_refused_when_pinned(golden, tmp_path):
    """The manifest alone vouches for itself; the sha256 of manifest.json, pinned by the user, does not."""
    import shutil

    from verify.golden import INPUTS, manifest_sha256
    from vtp.weights import sha256_file

    folder, reference, identity = golden
    pin = manifest_sha256(folder)
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = bytearray((copy / OUTPUTS_NAME).read_bytes())
    data[-1] ^= 1
    (copy / OUTPUTS_NAME).write_bytes(bytes(data))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"][OUTPUTS_NAME]["sha256"] = sha256_file(copy / OUTPUTS_NAME)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    load_golden(copy, {"weights": identity})  # unpinned: the edited set passes its own checks
    with pytest.raises(GoldenError, match="is not the pinned .* do not use it"):
        load_golden(copy, {"weights": identity}, pin=pin)
    assert load_golden(folder, {"weights": identity}, pin=pin.upper())[2]["files"][INPUTS]


OUTPUTS_NAME = "reference.safetensors"


def test_the_harness_pins_and_judges_against_a_trusted_devices_set(tmp_path, tiny_checkpoint, capsys):
    """--save-golden records the manifest's sha256 and whose answers it holds; --reference-sha256 refuses
    another set with exit 2 before any model runs; a candidate-made set says so in the summary."""
    from verify import accuracy_eval
    from verify.golden import manifest_sha256

    cases = one_shape_cases(tmp_path / "cases.yaml", repeat=True)
    base = ["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases), "--quiet", "--no-timing"]
    gold = tmp_path / "gold"
    assert accuracy_eval.main(base + ["--out", str(tmp_path / "a"), "--save-golden", str(gold),
                                      "--golden-source", "candidate"]) == 0
    made = json.loads((tmp_path / "a" / "accuracy_summary.json").read_text())["golden_saved"]
    assert made["manifest_sha256"] == manifest_sha256(gold) and made["source"] == "candidate"
    assert json.loads((gold / "manifest.json").read_text())["reference"]["source"] == "candidate"
    assert accuracy_eval.main(base + ["--out", str(tmp_path / "b"), "--reference", str(gold),
                                      "--reference-sha256", made["manifest_sha256"]]) == 0
    judged = json.loads((tmp_path / "b" / "accuracy_summary.json").read_text())
    assert judged["golden_reference"]["source"]["source"] == "candidate" and judged["golden_reference"]["pinned"]
    assert "the candidate's answers" in judged["reference"]["judged_against"]
    capsys.readouterr()
    assert accuracy_eval.main(base + ["--out", str(tmp_path / "c"), "--reference", str(gold),
                                      "--reference-sha256", "0" * 64]) == 2
    assert "is not the pinned" in capsys.readouterr().err
    assert not (tmp_path / "c" / "accuracy_summary.json").exists()
