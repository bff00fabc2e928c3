"""verify.compare: two runs side by side; regressions, environment differences, schema /1 and /2, bad input."""

import json
import re

import pytest

from verify.compare import compare_summaries, main, tensor_rows


def _tensor(name, verdict, rel_l2, reasons=()):
    record = {"schema": "vtp-compare/1", "name": name,
              "metrics": {"relative_error_mean": rel_l2 / 2, "relative_l2_error": rel_l2, "cosine_similarity": 1 - rel_l2,
                          "max_abs_error": {"value": rel_l2 * 3, "index": [0]}}}
    return {"name": name, "verdict": verdict, "reasons": list(reasons),
            "gates": [{"gate": "max_rel_l2", "value": rel_l2, "threshold": 0.002, "margin": 0.002 - rel_l2,
                       "passed": verdict == "PASS"}], "metrics": record}


def v2(verdict="PASS", cann="8.0.RC3", rel_l2=1e-4, median=10.0):
    failing = verdict != "PASS"
    return {"schema": "vtp-accuracy-summary/2", "verdict": verdict, "overall": {"verdict": verdict},
            "candidate": {"device": "npu:0", "precision": "bf16", "fusion": "all"},
            "weights": {"kind": "synthetic", "source": "synthetic:VTP-Small-f16d64:seed=0"},
            "environment": {"torch": "2.9.0", "torch_npu": "2.9.0.post2", "cann": cann, "driver": "24.1"},
            "timings": {"tasks": {"clip/b3/256x256": {"median_ms": median, "p90_ms": median * 1.1, "min_ms": median,
                                                      "first_call_ms": 900.0}}},
            "cases": [{"id": "clip/b3/256x256/long@A", "task": "clip", "batch": 3, "size": [256, 256],
                       "prompt_set": "long", "call": "A", "verdict": verdict,
                       "tensors": [_tensor("clip_text_features", verdict, rel_l2,
                                           ["clip_text_features: relative_l2_error 0.01 > 0.002"] if failing else [])]}],
            "checks": [{"check": "repeat", "id": "clip/b3/256x256", "verdict": "PASS", "detail": {}}]}


def v1():
    return {"schema": "vtp-accuracy-summary/1", "overall": {"verdict": "PASS"}, "verdict": "PASS",
            "tasks": {"ssl": {"verdict": "PASS", "tensors": [_tensor("ssl_cls", "PASS", 0.0)]}},
            "timings": {"tasks": {"ssl_features": {"median_ms": 5.0}}}}


def _write(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "accuracy_summary.json").write_text(json.dumps(data))
    return folder


def test_regression_across_cann_versions_is_reported(tmp_path, capsys):
    a = _write(tmp_path / "cann8", v2())
    b = _write(tmp_path / "cann9", v2("FAIL", cann="9.0.0", rel_l2=0.01, median=20.0))
    out_json = tmp_path / "diff.json"
    assert main([str(a), str(b), "--json", str(out_json)]) == 1
    text = capsys.readouterr().out
    assert "overall verdict: PASS | FAIL" in text
    assert "cann" in text and "8.0.RC3" in text and "9.0.0" in text
    assert "clip/b3/256x256/long@A" in text and "<- regression" in text
    assert "2.00x" in text  # median B / A
    data = json.loads(out_json.read_text())
    assert data["regressions"][0] == "overall verdict PASS -> FAIL"
    assert "relative_l2_error 0.01 > 0.002" in data["regressions"][1]
    assert [e["key"] for e in data["environment"] if e["differs"]] == ["cann"]


def test_same_runs_and_mixed_schemas(tmp_path, capsys):
    a = _write(tmp_path / "a", v2())
    assert main([str(a), str(a / "accuracy_summary.json")]) == 0
    assert "regressions: none" in capsys.readouterr().out
    old = _write(tmp_path / "old", v1())
    assert main([str(old), str(a)]) == 0  # /1 vs /2: rows side by side, unmatched keys are no regression
    text = capsys.readouterr().out
    assert "vtp-accuracy-summary/1 | vtp-accuracy-summary/2" in text and "ssl_cls" in text


def test_missing_keys_print_as_dash():
    c = compare_summaries({"schema": "vtp-accuracy-summary/2", "cases": [{"tensors": [{}]}]},
                          {"schema": "vtp-accuracy-summary/2"})
    assert c["verdicts"] == ["-", "-"]
    row = tensor_rows({"cases": [{"tensors": [{"name": "x"}]}]})[0]
    assert row["rel_l2"] is None and row["case"] == "-"


@pytest.mark.parametrize("content, words", [(None, "no accuracy summary here"),
                                            ("{not json", "not a readable JSON"),
                                            (json.dumps({"schema": "vtp-golden/1"}), "not an accuracy summary")])
def test_bad_input_exits_2(tmp_path, capsys, content, words):
    good = _write(tmp_path / "good", v2())
    bad = tmp_path / "bad"
    bad.mkdir()
    if content is not None:
        (bad / "accuracy_summary.json").write_text(content)
    assert main([str(good), str(bad)]) == 2
    assert words in capsys.readouterr().err


def server(folder, rank_summary, verdict="PASS"):
    """A whole-server run folder: the launcher's summary (no cases of its own) and rank<k>/ summaries."""
    for rank in (0, 1):
        _write(folder / f"rank{rank}", rank_summary)
    top = {k: v for k, v in rank_summary.items() if k not in ("cases", "checks")}
    top.update(verdict=verdict, representative_rank=0, overall={"verdict": verdict, "reasons": []},
               ranks=[{"rank": r, "device": "cpu", "verdict": verdict} for r in (0, 1)],
               server={"schema": "vtp-server-summary/1", "world_size": 2, "exit_code": 0})
    return _write(folder, top)


def test_a_single_run_and_a_server_run_compare_row_by_row(tmp_path, capsys):
    single = _write(tmp_path / "single", v2())
    multi = server(tmp_path / "server", v2())
    assert main([str(single), str(multi)]) == 0  # the server's rows are its representative card's
    text = capsys.readouterr().out
    assert "missing in B" not in text and "regressions: none" in text
    assert "(server run, 2 cards (rows of rank 0))" in text and "what changed: nothing" in text
    assert (multi / "compare.html").is_file()


def test_what_changed_leads_with_the_fault_and_the_first_divergent_module(tmp_path, capsys):
    clean = _write(tmp_path / "clean", v2())
    bad = v2("FAIL", rel_l2=0.01)
    bad["candidate"]["injected_fault"] = {"module": "trunk.blocks.3.attn", "fault": 1.02}
    bad["divergence"] = {"first_divergent": {"module": "trunk.blocks.3.attn", "gate": "max_rel_l2", "value": 0.02,
                                             "threshold": 0.002, "metric": "relative_l2_error"}}
    faulty = _write(tmp_path / "faulty", bad)
    html_path = tmp_path / "c.html"
    assert main([str(clean), str(faulty), "--html", str(html_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    changed = lines[lines.index("what changed:") + 1:]
    assert changed[0] == "  verdict: PASS -> FAIL"
    assert changed[1] == "  injected fault: none -> trunk.blocks.3.attn x 1.02"
    assert changed[2].startswith("  first divergent module: - -> trunk.blocks.3.attn (max_rel_l2 0.02 against 0.002)")
    assert changed[3].startswith("  metrics that moved: 1 of 1 tensor results")
    page = html_path.read_text()
    assert "injected fault: none -&gt; trunk.blocks.3.attn x 1.02" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page and "<script src" not in page
