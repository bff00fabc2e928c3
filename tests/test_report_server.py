"""The whole-server run's report.html (verify.report.server_html) and its console glance: a row per card with
its own cause, the per-card chart, links to each card's page; nothing outside the file."""

import json
import re

import pytest

from verify.report.glance import glance_lines
from verify.report.server_html import write_server_report


def card_summary(verdict, module=None):
    data = {"schema": "vtp-accuracy-summary/2", "verdict": verdict, "candidate": {"device": "cpu"},
            "weights": {"kind": "synthetic"}, "cases": [], "overall": {"verdict": verdict, "reasons": []}}
    if module:
        data["divergence"] = {"first_divergent": {"module": module, "case": "ssl/b1/256x256@A", "metric":
                                                  "relative_l2_error", "gate": "max_rel_l2", "value": 0.02,
                                                  "threshold": 0.002, "inputs_agree": True}}
    return data


@pytest.fixture
def server_run(tmp_path):
    verdicts = {0: ("PASS", None), 1: ("FAIL", "trunk.blocks.3.attn")}
    rows = []
    for rank, (verdict, module) in verdicts.items():
        folder = tmp_path / f"rank{rank}"
        folder.mkdir()
        (folder / "accuracy_summary.json").write_text(json.dumps(card_summary(verdict, module)))
        (folder / "report.html").write_text("<html></html>")
        rows.append({"rank": rank, "device": "cpu", "soc": None, "verdict": verdict, "failed_gates": [],
                     "timings": {"total_s": 50.0 + rank, "median_ms": {"ssl/b1/256x256": 300.0 + rank,
                                                                       "clip_text/default": 900.0}}})
    candidate = {"device": "cpu, cpu (2 ranks)", "precision": "fp32", "fusion": "all"}
    summary = {"schema": "vtp-accuracy-summary/2", "verdict": "FAIL", "candidate": candidate,
               "weights": {"kind": "synthetic"}, "ranks": rows, "representative_rank": 0,
               "overall": {"verdict": "FAIL", "reasons": ["rank 1 (cpu) FAIL: ssl/b1/256x256@A: max_rel_l2"]},
               "server": {"world_size": 2, "backend": "gloo", "hosts": ["h"], "exit_code": 1,
                          "collectives": {"verdict": "PASS", "world_size": 2, "backend": "gloo", "values_ok": True},
                          "consistency": {"verdict": "PASS", "ranks_compared": [0, 1], "tensors": 4, "identical": True},
                          "launcher": {"elapsed_s": 120.0}}}
    return summary, tmp_path


def test_one_page_with_a_row_per_card(server_run):
    summary, out = server_run
    page = write_server_report(out / "report.html", summary, out).read_text()
    assert page.index('id="verdict"') < page.index('id="cause"') < page.index('id="cards"') < page.index("per-card")
    assert ("1 of 2 cards fail; rank 1 (cpu) FAIL: First divergent module: trunk.blocks.3.attn in "
            "ssl/b1/256x256@A: relative_l2_error 0.02 against max_rel_l2 0.002") in page
    assert len(re.findall(r"<tr( class=bad)?><td class=num>\d</td>", page)) == 2
    assert 'href="rank0/report.html"' in page and 'href="rank1/report.html"' in page
    assert page.count("data:image/png;base64,") == 1  # the per-card chart
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page


def test_the_console_glance_of_a_server_run(server_run):
    summary, out = server_run
    lines = glance_lines(summary, out)
    assert lines[0] == "VERDICT: FAIL" and lines[1].startswith("1 of 2 cards fail; rank 1 (cpu) FAIL: First")
    assert lines[3].startswith("  rank 0 cpu      PASS") and "trunk.blocks.3.attn" in lines[4]
    assert lines[-1].startswith(f"open the report: xdg-open {out}/report.html")
