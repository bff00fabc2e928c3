"""verify.selftest: a bug counts as caught only when its run fails where the catalogue says; a crash is an
ERROR, never a catch; the outputs stay where the self-test says they are."""

import json
import textwrap

import pytest

from verify import selftest
from verify.selftest import BUGS, Expect, judge_bug_run, judge_clean_run

CASES = textwrap.dedent("""\
    schema: vtp-cases/1
    version: 1
    prompt_sets:
      default: ["a diagram", "a dog", "a cat"]
      long:
        - "a detailed photograph of a small brown dog with long ears sitting on a wooden bench in a sunny park"
    profiles:
      default:
        images: ["1x64x64", "2x48x80"]
        text: [default, long]
        zero_shot_prompts: default
        timing: ["1x64x64"]
        warmup: 1
        iters: 1
        repeat: true
    """)


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cases") / "cases.yaml"
    path.write_text(CASES)
    return path


def summary(*failed, verdict="FAIL"):
    """An accuracy summary whose failed call records are ``(case, call, [gates])``."""
    return {"verdict": verdict, "checks": [],
            "cases": [{"case": case, "call": call, "verdict": "FAIL", "failed_gates": gates}
                      for case, call, gates in failed]}


# ------------------------------------------------------------------------------------------ the counting
BATCH_ONE = BUGS["batch_one_only"].expect


def test_a_failure_at_the_expected_case_call_and_gate_is_caught():
    r = judge_bug_run({"exit": 1}, summary(("reconstruction/b1/256x256", "A", ["max_rel_err", "max_rel_l2"]),
                                           ("ssl/b1/256x256", "B", ["max_rel_l2"])), BATCH_ONE)
    assert r["status"] == "caught"
    assert r["where"] == "reconstruction/b1/256x256@A max_rel_l2 (+1 more failed calls)"


@pytest.mark.parametrize("result, data, words", [
    ({"exit": 1, "error": "the run raised RuntimeError: kernel crashed"}, None, "RuntimeError: kernel crashed"),
    ({"exit": 1}, None, "no accuracy_summary.json"),           # the harness crashed (it exits 1 on a crash)
    ({"exit": 2}, summary(verdict=None), "exit 2"),            # an environment error is not a failed verification
    ({"exit": None, "error": "the run raised SystemExit: 2"}, None, "SystemExit"),
])
def test_a_crash_or_an_environment_error_is_an_error_not_a_catch(result, data, words):
    r = judge_bug_run(result, data, BATCH_ONE)
    assert r["status"] == "ERROR" and words in r["where"]


def test_a_run_that_passes_missed_the_bug():
    assert judge_bug_run({"exit": 0}, summary(verdict="PASS"), BATCH_ONE)["status"] == "MISSED"


@pytest.mark.parametrize("failed, words", [
    ([("reconstruction/b3/256x256", "A", ["max_rel_l2"])], "expected a case matching"),   # wrong case
    ([("reconstruction/b1/256x256", "B", ["max_rel_l2"])], "at call A"),                  # wrong call
    ([("reconstruction/b1/256x256", "A", ["min_top1"])], "with gate max_rel_l2"),         # wrong gate
    ([("reconstruction/b1/256x256", "A", ["max_rel_l2"]),                                 # and outside its cases
      ("clip_text/long", "A", ["max_rel_l2"])], "outside the bug's cases: clip_text/long@A"),
])
def test_a_failure_elsewhere_is_not_a_catch(failed, words):
    r = judge_bug_run({"exit": 1}, summary(*failed), BATCH_ONE)
    assert r["status"] == "ELSEWHERE" and words in r["where"], r["where"]


def test_a_check_failure_alone_is_not_a_catch():
    data = summary()
    data["checks"] = [{"check": "repeat", "verdict": "FAIL"}]
    r = judge_bug_run({"exit": 1}, data, BUGS["stale_replay"].expect)
    assert r["status"] == "ELSEWHERE" and "checks repeat" in r["where"]


def test_the_clean_run_must_pass_and_must_not_crash():
    assert judge_clean_run({"exit": 0}, summary(verdict="PASS"))["status"] == "ok"
    assert judge_clean_run({"exit": 1, "first_failure": "[x@A] y"}, summary(("x", "A", ["y"])))["status"] == "FAILED"
    assert judge_clean_run({"exit": 1}, None)["status"] == "ERROR"


def test_every_bug_in_the_catalogue_names_where_it_must_fail():
    for name, bug in BUGS.items():
        assert bug.precisions and set(bug.precisions) <= set(selftest.PRECISIONS), name
        assert isinstance(bug.expect, Expect) and bug.expect.gates, name
        assert bug.expect.call in (None, "A", "B", "warm"), name


def test_a_clean_run_for_every_precision_the_bugs_run_at():
    runs, skipped = selftest.plan_runs(list(BUGS), None)
    assert [r[0] for r in runs[:2]] == ["clean-fp32", "clean-bf16"] and not skipped
    runs, skipped = selftest.plan_runs(list(BUGS), "bf16")
    assert runs[0] == ("clean", "bf16", None) and skipped == ["small_fp32_fault"]
    assert {p for _, p, _ in runs} == {"bf16"}


# ------------------------------------------------------------------------------------------ end to end (tiny)
def run_selftest(tiny_checkpoint, cases_file, out, *bugs, extra=()):
    return selftest.main(["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases_file),
                          "--fusion", "none", "--bugs", ",".join(bugs), *(["--out", str(out)] if out else []),
                          *extra])


def test_selftest_reports_the_harness_sound_and_keeps_its_outputs(tiny_checkpoint, cases_file, tmp_path, capsys,
                                                                   monkeypatch, caplog):
    caplog.set_level("INFO")
    monkeypatch.chdir(tmp_path)  # the default --out is verify_out/selftest-<timestamp> in the working directory
    code = run_selftest(tiny_checkpoint, cases_file, None, "batch_one_only", "stale_replay")
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "SELF-TEST: SOUND" in captured.out and "2/2 injected bugs caught where expected" in captured.out
    assert "run 2/3: batch_one_only at fp32 (a kernel wrong only at batch 1)" in caplog.text  # progress
    assert "run 3/3: stale_replay: caught: " in caplog.text and "@B max_rel_l2" in caplog.text
    assert caplog.text.count("holds SYNTHETIC weights") == 1  # said once, not once per run
    (out,) = (tmp_path / "verify_out").glob("selftest-*")
    report = json.loads((out / "selftest.json").read_text())
    assert f"selftest.json: {out / 'selftest.json'}" in captured.out
    assert report["sound"] and report["results"]["stale_replay"]["status"] == "caught"
    for run in ("clean", "batch_one_only", "stale_replay"):  # every path the log names still exists
        assert (out / run / "accuracy_summary.json").is_file() and (out / run / "console.txt").is_file()
    assert "outputs in verify_out" not in captured.out  # each run's own chatter is in its console.txt
    assert "outputs in" in (out / "stale_replay" / "console.txt").read_text()


def test_a_bug_that_crashes_the_run_is_an_error_and_not_sound(tiny_checkpoint, cases_file, tmp_path, capsys,
                                                                monkeypatch):
    def crash(model):
        selftest._hook(model, "trunk.norm", lambda out, a: (_ for _ in ()).throw(RuntimeError("kernel crashed")))
    monkeypatch.setitem(BUGS, "batch_one_only", BUGS["batch_one_only"]._replace(install=crash))
    code = run_selftest(tiny_checkpoint, cases_file, tmp_path / "st", "batch_one_only")
    out = capsys.readouterr().out
    assert code == 1 and "NOT SOUND" in out and "0/1 injected bugs caught" in out
    assert "ERROR" in out and "1 run(s) crashed (ERROR: batch_one_only)" in out
    result = json.loads((tmp_path / "st" / "selftest.json").read_text())["results"]["batch_one_only"]
    assert result["status"] == "ERROR" and result["exit"] == 1  # exit 1 alone was counted as a catch before


def test_a_bug_failing_in_the_wrong_place_is_not_caught(tiny_checkpoint, cases_file, tmp_path, capsys, monkeypatch):
    # "long prompts only" that in truth breaks batch-1 images: the run FAILs, but not where the catalogue says
    monkeypatch.setitem(BUGS, "long_prompts_only",
                        BUGS["long_prompts_only"]._replace(install=BUGS["batch_one_only"].install))
    code = run_selftest(tiny_checkpoint, cases_file, tmp_path / "st", "long_prompts_only")
    out = capsys.readouterr().out
    assert code == 1 and "NOT SOUND" in out and "ELSEWHERE" in out
    assert "expected a case matching /^clip_text/long/" in out


def test_selftest_says_when_a_bug_is_missed(tiny_checkpoint, cases_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(BUGS, "batch_one_only", BUGS["batch_one_only"]._replace(install=lambda model: None))
    code = run_selftest(tiny_checkpoint, cases_file, tmp_path / "st", "batch_one_only")
    out = capsys.readouterr().out
    assert code == 1 and "MISSED" in out and "NOT SOUND" in out


def test_unknown_bug_is_a_usage_error_that_creates_nothing(tmp_path, capsys):
    assert selftest.main(["--bugs", "no_such_bug", "--out", str(tmp_path / "st")]) == 2
    assert "unknown ['no_such_bug']" in capsys.readouterr().err and not (tmp_path / "st").exists()
