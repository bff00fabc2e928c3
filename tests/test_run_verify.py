"""run_verify.sh end to end on a tiny checkpoint, on the CPU, with no terminal attached (as in CI)."""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import REPO

SCRIPT = REPO / "run_verify.sh"


def run_verify(cwd, *args):
    """`bash run_verify.sh ARGS` from `cwd`, with this interpreter as $PYTHON and no stdin."""
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("NO_COLOR", None)
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def passing(tmp_path_factory, tiny_checkpoint):
    cwd = tmp_path_factory.mktemp("pass")
    done = run_verify(cwd, "--device", "cpu", "--weights", tiny_checkpoint, "--quick", "--out", "run")
    return done, cwd / "run"


def test_tiny_checkpoint_passes_with_every_output_in_out(passing):
    done, out = passing
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "accuracy_summary.json").read_text())
    assert summary["verdict"] == "PASS" and summary["overall"]["verdict"] == "PASS"
    # the tiny checkpoint was saved from synthetic weights: it stays labelled so
    assert summary["candidate"]["device"] == "cpu" and summary["weights"]["kind"] == "synthetic"
    env = json.loads((out / "env.json").read_text())
    assert env["schema"] == "vtp-env-check/1" and env["ok"] is True
    assert json.loads((out / "fusion_result.json").read_text())["schema"].startswith("vtp-fusion-result/")
    assert (out / "output" / "reconstructed.png").stat().st_size > 0

    log = (out / "log.txt").read_text()
    steps = ["step 1/3: environment check", "environment: OK", "step 2/3: inference demo",
             "task 2/3: CLIP zero-shot", "step 3/3: accuracy and timing", "===== verify/accuracy_eval",
             "===== run_verify.sh verdict", "VERDICT: PASS"]
    at = 0
    for step in steps:  # in this order
        found = log.find(step, at)
        assert found >= 0, f"{step!r} missing from log.txt after position {at}:\n{log[at:at + 2000]}"
        at = found + len(step)


def test_final_table_and_output_locations_are_printed_without_colours(passing):
    done, out = passing
    tail = done.stdout[done.stdout.rfind("===== run_verify.sh verdict"):]
    assert re.search(r"inference demo +OK", tail) and re.search(r"accuracy and timing +PASS", tail)
    last = done.stdout.strip().splitlines()[-12:]  # the last screen: verdict, cause, matrix, outputs, the report
    assert "VERDICT: PASS" in last and any(line.startswith("Every case passed: ") for line in last)
    assert any(re.match(r" +ssl +b1 256x256 ok \d+%", line) for line in last)
    assert any(line.startswith("outputs in run: log.txt console.txt env.json output/ accuracy_summary.json "
                               "report.html") for line in last)
    assert last[-1].startswith("open the report: xdg-open run/report.html")
    assert "\x1b[" not in done.stdout  # no terminal, no escape codes
    assert not (out / ".run_verify.lock").exists() and not (out / ".run_verify.owner").exists()  # no clutter


def test_injected_fault_fails_the_verification(tmp_path, tiny_checkpoint):
    done = run_verify(tmp_path, "--device", "cpu", "--weights", tiny_checkpoint, "--quick", "--no-timing",
                      "--inject-fault", "trunk.blocks.0=1.02", "--out", "run")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "accuracy_summary.json").read_text())
    assert summary["verdict"] == "FAIL"
    assert summary["candidate"]["injected_fault"]["module"] == "trunk.blocks.0"
    assert "harness self-test" in done.stdout and "VERDICT: FAIL" in done.stdout
    assert re.search(r"accuracy and timing +FAIL", done.stdout)
    # cause and place on the last screen: the module, its metric and the gate
    last = "\n".join(done.stdout.strip().splitlines()[-15:])
    assert re.search(r"First divergent module: trunk\.blocks\.0\S* .*: \w+ \S+ against max_\w+ \S+", last), last
    assert "failure lines (case, call, tensor, gate) are in run/log.txt" in last


def test_require_weights_without_weights_is_an_environment_error(tmp_path):
    done = run_verify(tmp_path, "--device", "cpu", "--require-weights")  # no weights/ in tmp_path, no --out
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "--require-weights is set" in done.stdout and "environment check failed" in done.stdout
    runs = list((tmp_path / "verify_out").iterdir())  # the default --out: verify_out/<timestamp>
    assert len(runs) == 1 and re.fullmatch(r"\d{8}-\d{6}(-\d+)?", runs[0].name)
    assert json.loads((runs[0] / "env.json").read_text())["ok"] is False
    assert not (runs[0] / "accuracy_summary.json").exists()


@pytest.mark.parametrize("args, words", [
    (["--bogus"], "unknown option: --bogus"),
    (["--nproc", "0"], "--nproc must be a positive integer or 'all'"),
    (["--device"], "option --device needs a value"),
    (["--precision", "fp64"], "--precision must be fp32, fp16 or bf16"),
    (["--quick=yes"], "option --quick takes no value"),
    (["--cases", "no_such_cases.yaml"], "no_such_cases.yaml"),  # refused by the option check (verify.preflight)
    (["--fusion=nonsense"], "nonsense"),
])
def test_usage_errors_exit_2_and_create_nothing(tmp_path, args, words):
    done = run_verify(tmp_path, *args)
    assert done.returncode == 2
    assert words in done.stderr and "run_verify.sh --help" in done.stderr
    assert list(tmp_path.iterdir()) == []  # not even an empty verify_out/<timestamp>/
    assert "usage:" not in done.stderr and len(done.stderr.splitlines()) < 12  # a short error, not the whole help


def test_help_exits_0_with_an_example(tmp_path):
    done = run_verify(tmp_path, "--help")
    assert done.returncode == 0
    assert "bash run_verify.sh --device npu --require-weights" in done.stdout
    assert "--inject-fault" in done.stdout and "exit status" in done.stdout


def test_script_is_strict_executable_bash():
    assert os.access(SCRIPT, os.X_OK)
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0


# ---- validation before work, lock, interruption (found by trying the kit as a new user would) ----------
def timed_run(cwd, *args):
    t = time.monotonic()
    done = run_verify(cwd, *args)
    return done, time.monotonic() - t


@pytest.mark.parametrize("make_args, words", [
    (lambda d, ck: ["--inject-fault", "trunk.blocks.0"], "expected MODULE=FACTOR"),
    (lambda d, ck: ["--fusion=gelu,warp_drive"], "--fusion 'gelu,warp_drive'"),
    (lambda d, ck: ["--profile", "huge"], "--profile 'huge': no such profile"),
    (lambda d, ck: ["--weights", empty_weights(d, ck)], "the file is empty (0 bytes)"),
])
def test_bad_options_and_weights_are_refused_in_the_first_seconds(tmp_path, tiny_checkpoint, make_args, words):
    done, seconds = timed_run(tmp_path, "--device", "cpu", "--weights", tiny_checkpoint, "--out", "run",
                              *make_args(tmp_path, tiny_checkpoint))
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert "step 1/3" not in done.stdout and not (tmp_path / "run" / "env.json").exists()
    assert seconds < 20  # no environment check, no demo, no model load


def empty_weights(tmp, checkpoint):
    folder = tmp / "empty_weights"
    folder.mkdir()
    shutil.copy(checkpoint / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def unwritable_folder(tmp):
    """A folder this process cannot write to (root ignores permissions: use a path under a regular file)."""
    folder = tmp / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").write_text("x")
    except OSError:
        return folder
    (folder / "probe").unlink()
    folder.chmod(0o700)
    blocker = tmp / "a_file"
    blocker.write_text("not a folder")
    return blocker / "out"


def test_unwritable_out_is_a_clear_usage_error(tmp_path):
    out = unwritable_folder(tmp_path)
    done = run_verify(tmp_path, "--device", "cpu", "--out", out)
    assert done.returncode == 2
    assert f"--out {out}: cannot create or write to this folder" in done.stderr
    assert "line " not in done.stderr  # no raw bash error


def test_a_second_run_on_the_same_out_is_refused_and_names_the_first(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".run_verify.owner").write_text("run_verify.sh pid 4242, started 2026-12-01 10:00:00 on host\n")
    with open(out / ".run_verify.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what the first run holds while it runs
        done = run_verify(tmp_path, "--device", "cpu", "--weights", tiny_checkpoint, "--out", out)
    assert done.returncode == 2
    assert "is in use by run_verify.sh pid 4242" in done.stderr
    assert not (out / "log.txt").exists()


def test_ctrl_c_says_where_the_run_stopped_and_exits_130(tmp_path, tiny_checkpoint):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.Popen(["bash", str(SCRIPT), "--device", "cpu", "--weights", str(tiny_checkpoint), "--quick",
                             "--out", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    log = tmp_path / "run" / "log.txt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (log.exists() and "step 2/3" in log.read_text()):
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted at step 2/3: inference demo" in out
    assert "interrupted at step 2/3: inference demo" in log.read_text()
    assert not (tmp_path / "run" / "accuracy_summary.json").exists()
    time.sleep(0.5)
    leftovers = subprocess.run(["pgrep", "-f", f"{tmp_path}/run/output"], capture_output=True, text=True).stdout
    assert leftovers.strip() == "", leftovers  # the demo was stopped with the script


def test_unstable_timings_are_flagged(tmp_path):
    from verify.timing import summarize

    noisy = summarize([0.699, 2.316, 2.4, 2.2])
    assert noisy["unstable"] and noisy["median_over_min"] > 3
    assert not summarize([0.100, 0.101, 0.102, 0.100])["unstable"]


def test_help_documents_every_option_and_the_quick_budget(tmp_path):
    done = run_verify(tmp_path, "--help")
    for option in ("--no-timing", "--inject-fault", "--profile", "--cases", "--thresholds", "--prompt",
                   "--prompts-file", "--nproc", "--fusion=SPEC"):
        assert option in done.stdout
    assert "budget 45 s" in done.stdout and "minutes -> seconds" not in done.stdout
    readme = (REPO / "README.md").read_text()
    for option in ("--no-timing", "--inject-fault", "--profile", "--prompt"):
        assert option in readme


def test_no_module_of_a_script_folder_shadows_the_standard_library():
    # `python verify/accuracy_eval.py` and `python ascend/inference.py` put their folder on sys.path: a
    # verify/bisect.py once hid the standard `bisect` (and with it `random`, `tempfile`, torch itself)
    for folder in ("verify", "ascend"):
        clashes = [p.name for p in (REPO / folder).glob("*.py") if p.stem in sys.stdlib_module_names]
        assert clashes == [], f"{folder}/: {clashes} shadow standard modules"
