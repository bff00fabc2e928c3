"""run_verify.sh end to end on a tiny checkpoint, on the CPU, with no terminal attached (as in CI)."""

import json
import os
import re
import subprocess
import sys

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
    assert summary["candidate"]["device"] == "cpu" and summary["weights"]["kind"] == "checkpoint"
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
    assert re.search(r"ssl +ssl_patch_tokens .* PASS", tail)
    assert re.search(r"inference demo +OK", tail) and re.search(r"accuracy and timing +PASS", tail)
    assert "VERDICT: PASS" in tail and "outputs: run" in tail and "run/accuracy_summary.json" in tail
    assert "\x1b[" not in done.stdout  # no terminal, no escape codes


def test_injected_fault_fails_the_verification(tmp_path, tiny_checkpoint):
    done = run_verify(tmp_path, "--device", "cpu", "--weights", tiny_checkpoint, "--quick", "--no-timing",
                      "--inject-fault", "trunk.blocks.0=1.02", "--out", "run")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "accuracy_summary.json").read_text())
    assert summary["verdict"] == "FAIL"
    assert summary["candidate"]["injected_fault"]["module"] == "trunk.blocks.0"
    assert "harness self-test" in done.stdout and "VERDICT: FAIL" in done.stdout
    assert re.search(r"accuracy and timing +FAIL", done.stdout)


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
    (["--device"], "option --device needs a value"),
    (["--precision", "fp64"], "--precision must be fp32, fp16 or bf16"),
    (["--quick=yes"], "option --quick takes no value"),
])
def test_usage_errors_exit_2_and_create_nothing(tmp_path, args, words):
    done = run_verify(tmp_path, *args)
    assert done.returncode == 2
    assert words in done.stderr and "run_verify.sh --help" in done.stderr
    assert list(tmp_path.iterdir()) == []


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
