"""report.html as a person sees it: rendered by headless Chromium at 1400x900 (skipped with the reason when no
Chromium is installed: `apt-get install chromium`), the first screen holds the verdict, the cause and place
(module, metric, gate), the case matrix and what ran; the page references nothing outside itself."""

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from verify.report.html import write_html_report

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
needs_browser = pytest.mark.skipif(BROWSER is None, reason="no headless Chromium here (apt-get install chromium)")

# Appended to a copy of the page: after layout, record where each first-screen element ends (px from the top).
MEASURE = ("<script>window.addEventListener('load',function(){var r={};['verdict','cause','glance'].forEach("
           "function(i){var e=document.getElementById(i);if(e)r[i]=e.getBoundingClientRect().bottom;});"
           "var m=document.querySelector('table.matrix');if(m)r.matrix=m.getBoundingClientRect().bottom;"
           "var w=document.querySelector('table.ran');if(w)r.ran=w.getBoundingClientRect().bottom;"
           "document.body.setAttribute('data-measured',JSON.stringify(r));});</script>")


def _gate(name, value, threshold, passed, metric=None):
    return {"gate": name, "metric": metric or name, "value": value, "threshold": threshold,
            "used": value / threshold, "passed": passed, "margin": threshold - value}


def failing_summary():
    """An injected-fault run in the shape of the harness's summary: image tasks fail at every shape, the text
    tower passes, the first divergent module is located."""
    cases = []
    for task, tensor in (("reconstruction", "latents"), ("clip", "clip_image_features"), ("ssl", "ssl_cls")):
        for shape in ("b1/256x256", "b3/128x192"):
            for call in ("A", "B"):
                gates = [_gate("max_rel_l2", 0.0038, 0.002, False, "relative_l2_error"),
                         _gate("max_frac_over_tol", 0.65, 0.005, False, "fraction_over_tolerance")]
                cases.append({"id": f"{task}/{shape}@{call}", "case": f"{task}/{shape}", "task": task, "call": call,
                              "verdict": "FAIL", "failed_gates": ["max_frac_over_tol", "max_rel_l2"],
                              "tensors": [{"name": tensor, "verdict": "FAIL", "gates": gates,
                                           "metrics": {"metrics": {"relative_l2_error": 0.0038}}}]})
    cases.append({"id": "clip_text/default@A", "case": "clip_text/default", "task": "clip_text", "call": "A",
                  "verdict": "PASS", "failed_gates": [],
                  "tensors": [{"name": "clip_text_features", "verdict": "PASS",
                               "gates": [_gate("max_rel_l2", 0.0001, 0.002, True)], "metrics": {"metrics": {}}}]})
    reasons = [f"[{c['id']}] {c['tensors'][0]['name']}: relative_l2_error 0.0038 > 0.002 (threshold max_rel_l2); "
               "10617/16384 elements over tolerance (rtol=0.001, atol=0.000396); worst |a-b|=0.0099 at (0, 16, 6, 13)"
               for c in cases if c["verdict"] == "FAIL"] * 8
    first = {"task": "reconstruction", "case": "reconstruction/b1/256x256@A", "module": "trunk.blocks.3.attn",
             "class": "AscendSelfAttention", "metric": "relative_l2_error", "gate": "max_rel_l2", "value": 0.02,
             "threshold": 0.002, "inputs_agree": True, "scope": "module"}
    return {"schema": "vtp-accuracy-summary/2", "verdict": "FAIL", "created": "2026-12-03T10:00:00+00:00",
            "candidate": {"device": "cpu", "precision": "fp32", "fusion": "all",
                          "injected_fault": {"module": "trunk.blocks.3.attn", "fault": 1.02}},
            "weights": {"kind": "synthetic", "source": "synthetic:VTP-Small-f16d64:seed=0"}, "synthetic_weights": True,
            "profile": {"profile": "quick"}, "environment": {"torch": "2.13.0", "cpu_model": "x86"},
            "timings": {"harness": {"total_s": 109.3},
                        "tasks": {"reconstruction/b1/256x256": {"first_call_ms": 1487.3, "median_ms": 584.1,
                                                                "p10_ms": 575.9, "p90_ms": 1006.1, "min_ms": 575.9}}},
            "divergence": {"first_divergent": first, "first_nonfinite": None, "file": "divergence.json"},
            "cases": cases, "checks": [{"check": "repeat", "id": "clip/b1/256x256", "verdict": "PASS"}],
            "overall": {"verdict": "FAIL", "reasons": reasons, "calls": len(cases)}}


class VisibleText(HTMLParser):
    """The text a reader sees: no title, script or style, and of a closed <details> only its <summary>."""

    def __init__(self):
        super().__init__()
        self.parts, self.hidden, self.stack = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        in_closed = self.stack and self.stack[-1] == "closed-details" and tag != "summary"
        if tag in ("script", "style", "title") or in_closed:
            self.stack.append("hidden")
            self.hidden += 1
        elif tag == "details":
            self.stack.append("details" if "open" in attrs else "closed-details")
        else:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        while self.stack:
            top = self.stack.pop()
            if top == "hidden":
                self.hidden -= 1
            if top in (tag, "hidden") or (tag == "details" and top.endswith("details")):
                break

    def handle_data(self, data):
        if not self.hidden and data.strip():
            self.parts.append(data.strip())

    def text(self):
        return " ".join(self.parts)


def visible_text(page: str) -> str:
    parser = VisibleText()
    parser.feed(page)
    return parser.text()


def render(path, *extra):
    done = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,900",
                           "--virtual-time-budget=3000", *extra, path.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def report(tmp_path):
    return write_html_report(tmp_path / "report.html", failing_summary())


def test_cause_and_place_lead_the_visible_text(report):
    text = visible_text(report.read_text())
    head = text[:1500]
    assert head.startswith("FAIL VTP certification report First divergent module: trunk.blocks.3.attn")
    for words in ("relative_l2_error 0.02 against max_rel_l2 0.002", "its inputs agree",
                  "3 of 4 tasks fail", "clip_text passes", "injected fault", "SYNTHETIC", "109 s"):
        assert words in head, words
    assert "10617/16384" not in head  # the failure lines are further down, collapsed


def test_the_failure_list_says_how_many_and_the_cases_open_from_the_matrix(report):
    page = report.read_text()
    n = len(failing_summary()["overall"]["reasons"])
    assert f"Failures: {n} lines" in page
    link = re.search(r'<td class="cell c-fail"><a href="#(case-reconstruction-b1-256x256)"', page)
    assert link and f'<details class="case" id="{link.group(1)}">' in page  # every cell opens its case's gates


def test_the_page_references_nothing_outside_itself(report):
    page = report.read_text()
    assert not re.search(r'(src|href|action)\s*=\s*["\']?(https?:|//|file:)', page, re.I)
    assert "<link" not in page and "@import" not in page and not re.search(r"url\((?!data:)", page)
    assert not re.search(r"<script[^>]+src=", page)
    assert page.count("data:image/png;base64,") >= 1  # the plot is inside the file


@needs_browser
def test_first_screen_in_a_real_browser_needs_no_scrolling(report, tmp_path):
    measured = tmp_path / "measured.html"
    measured.write_text(report.read_text().replace("</body>", MEASURE + "</body>"))
    dom = render(measured, "--dump-dom")
    found = re.search(r'data-measured="([^"]*)"', dom)
    assert found, dom[:2000]
    bottoms = json.loads(found.group(1).replace("&quot;", '"'))
    for element in ("verdict", "cause", "matrix", "ran"):
        assert element in bottoms and bottoms[element] <= 900, (element, bottoms)
    text = visible_text(dom)
    assert text.index("FAIL") < text.index("First divergent module: trunk.blocks.3.attn") < text.index("reconstruction")


@needs_browser
def test_the_page_opens_from_disk_and_draws(report, tmp_path):
    shot = tmp_path / "first_screen.png"
    render(report, f"--screenshot={shot}")
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1400, 900)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours and len(colours) > 50  # drawn, not a blank page
