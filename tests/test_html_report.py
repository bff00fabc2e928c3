"""verify.report.html: one self-contained page with every section; its images decode; no matplotlib degrades."""

import base64
import io
import json
import re

import pytest
import torch

from verify.report import html as html_report
from verify.report.html import write_html_report

SECTIONS = ("verdict", "cases", "reconstruction", "divergence", "timing", "environment", "weights", "fusion")


def _summary():
    gate = {"gate": "max_rel_l2", "value": 0.005, "threshold": 0.002, "margin": -0.003, "passed": False}
    return {"schema": "vtp-accuracy-summary/2", "verdict": "FAIL",
            "overall": {"verdict": "FAIL", "reasons": ["[clip/b3/256x256@A] clip_probs: relative_l2_error 0.005 > 0.002"]},
            "candidate": {"device": "npu:0", "precision": "bf16", "fusion": "all",
                          "fusion_rules": {"gelu": {"count": 12, "kernel": "npu_fast_gelu"}}},
            "weights": {"kind": "checkpoint", "sha256": "ab" * 32, "files": ["model.safetensors"]},
            "environment": {"torch": "2.9.0", "torch_npu": "2.9.0.post2", "cann": "9.0.0", "soc_version": 223},
            "timings": {"tasks": {"clip/b3/256x256": {"first_call_ms": 900.0, "median_ms": 10.0, "p90_ms": 12.0}}},
            "cases": [{"id": "clip/b3/256x256@A", "task": "clip", "verdict": "FAIL",
                       "tensors": [{"name": "clip_probs", "verdict": "FAIL", "gates": [gate],
                                    "metrics": {"metrics": {"relative_l2_error": 0.005, "cosine_similarity": 0.99}}}]}],
            "checks": [{"check": "repeat", "id": "clip/b3/256x256", "verdict": "PASS"}]}


@pytest.fixture(scope="module")
def divergence():
    from tests.conftest import tiny_config
    from ascend.runtime import prepare_candidate
    from verify.faults import inject_fault
    from verify.run import run_tasks
    from verify.locate import locate
    from vtp import VTPModel

    reference = VTPModel.synthetic(tiny_config(), seed=0)
    candidate, report = prepare_candidate(reference, torch.device("cpu"), fusion="all")
    inject_fault(candidate, "pixel_decoder.blocks.1.attn=1.3")
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    text = torch.zeros(1, 77, dtype=torch.long)
    div = locate(reference, candidate, {"images": images, "text": text}, device="cpu", precision="fp32",
                 thresholds={"max_rel_err": 0.01, "min_cosine": 0.9999, "max_rel_l2": 0.01}, tasks=["reconstruction"])
    plan = {"reconstruction": ("latents", "reconstructed_image")}
    a = run_tasks(candidate, images, text, torch.device("cpu"), "fp32", plan)["reconstructed_image"]
    b = run_tasks(reference, images, text, torch.device("cpu"), "fp32", plan)["reconstructed_image"]
    recon = [{"case": "reconstruction/b2/32x32@A", "input": images[0], "reference": b[0], "candidate": a[0]}]
    return div, recon, report.to_dict()


def _images(page):
    from PIL import Image

    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(x))).convert("RGB") for x in found]


def test_report_has_every_section_and_its_images_decode(tmp_path, divergence):
    pytest.importorskip("matplotlib")
    div, recon, fusion = divergence
    path = write_html_report(tmp_path / "report.html", _summary(), divergence=div, recon_images=recon, fusion=fusion)
    page = path.read_text()
    for section in SECTIONS:
        assert f'id="{section}"' in page
    assert page.index('id="verdict"') < page.index('id="cases"')  # the verdict first
    assert "FAIL" in page[:page.index('id="cases"')]
    assert "relative_l2_error 0.005 &gt; 0.002" in page and "1 of 1 gates FAILED" in page
    assert "first divergent module: pixel_decoder.blocks.1.attn" in page
    assert "9.0.0" in page and "abab" in page and "F.gelu(approximate=" in page
    images = _images(page)
    assert len(images) == 5 + 1 + 2  # input | reference | candidate | amplified | heatmap + its colour bar; 2 plots
    strip = images[1:6]  # after the depth plot, which comes first with the cause
    assert strip[0].size == (32, 32) and strip[3].getextrema() != ((0, 0), (0, 0), (0, 0))
    assert not re.search(r'(src|href)="(https?:)?//', page)  # self-contained: nothing fetched
    assert "matplotlib cannot be imported" not in page


def test_without_matplotlib_the_report_degrades_to_tables(tmp_path, divergence, monkeypatch):
    monkeypatch.setattr(html_report, "matplotlib_pyplot", lambda: None)
    div, recon, _ = divergence
    page = write_html_report(tmp_path / "r.html", _summary(), divergence=div, recon_images=recon).read_text()
    assert "matplotlib cannot be imported" in page and "plots are shown as tables" in page
    assert len(_images(page)) == 6  # the reconstruction strip and its colour bar need no matplotlib
    assert "<details open><summary>table</summary>" in page and "first divergent: pixel_decoder.blocks.1.attn" in page
    assert all(f'id="{s}"' in page for s in SECTIONS)


def test_minimal_and_v1_summaries_render(tmp_path):
    v1 = {"schema": "vtp-accuracy-summary/1", "verdict": "PASS",
          "tasks": {"ssl": {"tensors": [{"name": "ssl_cls", "verdict": "PASS", "metrics": {"metrics": {}}}]}}}
    page = write_html_report(tmp_path / "r.html", v1).read_text()
    assert all(f'id="{s}"' in page for s in SECTIONS) and "ssl_cls" in page
    assert "no reconstruction images given" in page and "not located in this run" in page
    assert json.dumps(v1)  # the summary is not modified
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]
