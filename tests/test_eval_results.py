"""Results schema and task-level certification: gates, published figures, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json

import pytest
from eval_helpers import make_image_folder

from vtp_tools.eval import results
from vtp_tools.eval.cli import main


def _result(metrics, sha="abc", kind="checkpoint", n=50000, task="zero-shot"):
    return results.make_result(task, metrics, n, {"file_list_sha256": sha, "num_images": n}, {"weights": {"kind": kind}},
                               {}, {})


@pytest.mark.parametrize("metric,ref,cand,ok", [
    ("top1", 66.7, 65.71, True), ("top1", 66.7, 65.6, False), ("top1", 66.7, 70.0, True),
    ("rfid", 0.36, 0.40, True), ("rfid", 0.36, 0.42, False), ("rfid", 0.98, 1.07, True), ("rfid", 0.98, 1.09, False),
    ("psnr", 25.0, 24.76, True), ("psnr", 25.0, 24.7, False),
    ("ssim", 0.80, 0.793, True), ("ssim", 0.80, 0.79, False),
    ("lpips", 0.10, 0.105, True), ("lpips", 0.10, 0.106, False),
])
def test_gates(metric, ref, cand, ok):
    cmp = results.compare(_result({metric: cand}), _result({metric: ref}))
    assert cmp["verdict"] == ("pass" if ok else "fail")
    assert cmp["rows"][0]["delta"] == pytest.approx(cand - ref)


def test_published_figures_and_synthetic_weights():
    ref = results.reference_for("published:VTP-Large-f16d64", "reconstruction")
    assert ref["metrics"] == {"rfid": 0.36}
    assert results.reference_for("published:VTP-Small-f16d64", "zero-shot")["metrics"] == {"top1": 66.7}
    assert results.reference_for("published:VTP-Base-f16d64", "linear-probe")["metrics"] == {"top1": 81.0}
    good = results.compare(_result({"top1": 66.5}), results.reference_for("published:VTP-Small-f16d64", "zero-shot"))
    assert good["verdict"] == "pass" and not good["notes"]
    synthetic = results.compare(_result({"top1": 66.5}, kind="synthetic", n=9),
                                results.reference_for("published:VTP-Small-f16d64", "zero-shot"))
    assert synthetic["verdict"] == "fail" and any("synthetic" in n for n in synthetic["notes"])
    with pytest.raises(results.CompareError, match="known: published:VTP-Small"):
        results.reference_for("published:VTP-Huge", "zero-shot")


def test_other_dataset_or_task_is_a_usage_error():
    with pytest.raises(results.CompareError, match="another dataset"):
        results.compare(_result({"top1": 1.0}, sha="a"), _result({"top1": 1.0}, sha="b"))
    with pytest.raises(results.CompareError, match="reconstruction"):
        results.compare(_result({"top1": 1.0}), _result({"rfid": 1.0}, task="reconstruction"))


def test_cli_compare_exit_codes(tmp_path, tiny_checkpoint, capsys):
    root = make_image_folder(tmp_path / "ds", per_class=2)
    base = ["zero-shot", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu", "--workers", "0",
            "--image-size", "32", "--templates", str(_templates(tmp_path)), "-q"]
    first = tmp_path / "a.json"
    assert main(base + ["--out", str(first)]) == 0
    assert main(base + ["--out", str(tmp_path / "b.json"), "--compare-to", str(first)]) == 0
    assert "verdict: PASS" in capsys.readouterr().out
    doctored = json.loads(first.read_text())
    doctored["metrics"]["top1"] += 1.5
    (tmp_path / "d.json").write_text(json.dumps(doctored))
    assert main(base + ["--out", str(tmp_path / "c.json"), "--compare-to", str(tmp_path / "d.json")]) == 1
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["comparison"]["verdict"] == "fail" and saved["schema_version"] == results.SCHEMA_VERSION
    (tmp_path / "junk.json").write_text("{")
    assert main(base + ["--out", str(tmp_path / "e.json"), "--compare-to", str(tmp_path / "junk.json")]) == 2
    assert not (tmp_path / "e.json").exists()


def _templates(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("a photo of a {}.\n")
    return p
