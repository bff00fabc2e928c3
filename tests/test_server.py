"""Whole-server certification (verify.server): torchrun on the CPU with gloo, a tiny checkpoint, --quick.

The end-to-end tests start real processes: N ranks give N rows and one verdict; a fault on one rank
fails that rank only and the cross-card check names it; a rank killed mid-run, a hung rank and Ctrl-C
are reported by rank within the timeout and leave no process behind. The pure parts (rows, exit codes,
torchrun's failure report, options) are tested without processes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from verify.report import summary as report
from verify.server import cli as server, common as server_common, launch as server_launch
from verify.server.summary import build_summary, rank_row

ACCURACY = ["--device", "cpu", "--quick", "--no-timing"]


def server_command(out, nproc, *extra, weights=None, accuracy=ACCURACY):
    tail = list(accuracy) + (["--weights", str(weights)] if weights else [])
    return [sys.executable, "-m", "verify.server", "--nproc", str(nproc), "--out", str(out), *extra, "--", *tail]


def run_server(out, nproc, *extra, env=None, timeout=240, **kw):
    done = subprocess.run(server_command(out, nproc, *extra, **kw), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})))
    summary_file = Path(out) / "accuracy_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
    return done, summary


def processes_mentioning(text: str) -> list:
    """Live processes whose command line contains ``text`` (read from /proc, no psutil)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append((int(entry), cmdline))
    return found


def wait_for_stage(status_file: Path, stage: str, proc, timeout: float = 120) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            status = json.loads(status_file.read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("stage") == stage:
            return status
        time.sleep(0.05)
    raise AssertionError(f"{status_file} never reached stage {stage!r}")


# --------------------------------------------------------------------------------------------- end to end
def test_two_ranks_give_two_rows_one_verdict_and_identical_outputs(tmp_path, tiny_checkpoint):
    # --reference-mode once: rank 0 computes the CPU reference, rank 1 judges against its golden set
    done, summary = run_server(tmp_path / "out", 2, "--reference-mode", "once", weights=tiny_checkpoint)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert summary["schema"].startswith("vtp-accuracy-summary/")
    assert summary["verdict"] == "PASS" and summary["server"]["exit_code"] == 0
    assert [(r["rank"], r["device"], r["verdict"], r["exit_code"]) for r in summary["ranks"]] == \
        [(0, "cpu", "PASS", 0), (1, "cpu", "PASS", 0)]
    assert all(r["soc"] and r["failed_gates"] == [] and r["timings"]["stages_s"] for r in summary["ranks"])
    consistency = summary["server"]["consistency"]
    assert consistency["verdict"] == "PASS" and consistency["identical"] and consistency["tensors"] > 0
    assert summary["server"]["collectives"]["values_ok"]
    for rank in (0, 1):
        assert (tmp_path / "out" / f"rank{rank}" / "accuracy_summary.json").is_file()
        assert (tmp_path / "out" / f"rank{rank}" / "candidate_outputs.safetensors").is_file()
    assert "SERVER VERDICT: PASS (exit 0): 2 of 2 rank(s) passed" in done.stdout
    assert summary["server"]["launcher"]["processes_left"] == []
    assert summary["ranks"][0]["reference"].startswith("computed by this rank and shared as")
    assert summary["ranks"][1]["reference"].startswith("golden set") and "from rank 0" in summary["ranks"][1]["reference"]
    shared = list((tmp_path / "out").glob("golden-*/manifest.json"))  # this run's set, pinned by its sha256
    assert len(shared) == 1 and "manifest sha256" in summary["ranks"][1]["reference"]


def test_fault_on_one_rank_fails_that_rank_and_consistency_names_it(tmp_path, tiny_checkpoint):
    done, summary = run_server(tmp_path / "out", 3, weights=tiny_checkpoint,
                               accuracy=ACCURACY + ["--inject-fault", "trunk.blocks.0=1.02"],
                               env={"VTP_INJECT_FAULT_RANK": "1"})
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert [r["verdict"] for r in summary["ranks"]] == ["PASS", "FAIL", "PASS"]
    assert summary["ranks"][1]["failed_gates"] and summary["ranks"][1]["exit_code"] == 1
    consistency = summary["server"]["consistency"]
    assert consistency["verdict"] == "FAIL" and consistency["majority"] == [0, 2]
    assert [s["rank"] for s in consistency["suspects"]] == [1]
    assert consistency["suspects"][0]["examples"][0]["max_abs_diff"] > 0
    assert {r["reference"] for r in summary["ranks"]} == {"computed by this rank"}  # per-rank on the CPU
    assert any(reason.startswith("rank 1 (cpu) FAIL") for reason in summary["overall"]["reasons"])
    assert "rank 1 (cpu) is suspect" in done.stdout


def test_rank_killed_mid_run_is_named_and_leaves_no_process(tmp_path, tiny_checkpoint):
    out = tmp_path / "killed"
    proc = subprocess.Popen(server_command(out, 2, "--timeout", "120", weights=tiny_checkpoint), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        status = wait_for_stage(out / "rank1" / "status.json", "certification", proc)
        os.kill(status["pid"], signal.SIGKILL)
        started = time.monotonic()
        output, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - started < 60
    assert proc.returncode == 1, output[-3000:]
    summary = json.loads((out / "accuracy_summary.json").read_text())
    row = summary["ranks"][1]
    assert row["verdict"] == "CRASHED" and "SIGKILL" in row["error"] and row["device"] == "cpu"
    assert summary["ranks"][0]["verdict"] in ("PASS", "STOPPED")
    assert "rank 1 (cpu) CRASHED" in output
    assert processes_mentioning(str(out)) == []


def test_hung_rank_is_stopped_at_the_timeout_and_named(tmp_path):
    out = tmp_path / "hung"
    start = time.monotonic()
    done, summary = run_server(out, 2, "--timeout", "12", "--collectives-only", "--quiet",
                               env={"VTP_SELFTEST_HANG_RANK": "1"}, timeout=120)
    assert time.monotonic() - start < 12 + server_common.GRACE_S + 20
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    rows = summary["ranks"]
    assert rows[1]["verdict"] == "TIMEOUT" and "--timeout 12 s" in rows[1]["error"]
    assert rows[0]["verdict"] == "PASS"  # its own work finished: kept
    assert summary["server"]["launcher"]["timed_out"]
    assert "SERVER VERDICT" not in done.stdout  # --quiet: the JSON only
    assert processes_mentioning(str(out)) == []


def test_ctrl_c_stops_every_rank(tmp_path):
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(server_command(out, 2, "--collectives-only"), cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, VTP_SELFTEST_HANG_RANK="0,1"))
    try:
        wait_for_stage(out / "rank1" / "status.json", "certification", proc)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, output[-3000:]
    summary = json.loads((out / "accuracy_summary.json").read_text())
    assert [r["verdict"] for r in summary["ranks"]] == ["INTERRUPTED", "INTERRUPTED"]
    assert "interrupted (Ctrl-C)" in output
    assert processes_mentioning(str(out)) == []


def test_bad_accuracy_option_is_a_usage_error_before_anything_starts(tmp_path):
    out = tmp_path / "never"
    done = subprocess.run(server_command(out, 2, accuracy=["--device", "cpu", "--precision", "fp8"]), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the accuracy options after `--` are not valid" in done.stderr
    assert "invalid choice: 'fp8'" in done.stderr
    assert not out.exists()


@pytest.mark.parametrize("nproc, words", [("0", "at least 1 process"), ("two", "expected a number or 'all'")])
def test_bad_nproc(tmp_path, nproc, words, capsys):
    assert server.main(["--nproc", nproc, "--out", str(tmp_path / "x"), "--", "--device", "cpu"]) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_help_shows_a_real_example():
    text = server.build_parser().format_help()
    assert "python -m verify.server --nproc all --out verify_out/server -- --require-weights" in text
    assert "exit status: 0 PASS" in text


def test_nproc_all_on_a_cpu_is_one_process():
    assert server_common.resolve_nproc("all", "cpu") == ("cpu", 1)
    assert server_common.resolve_nproc("3", "cpu") == ("cpu", 3)


def test_passthrough_keeps_the_fault_apart_and_drops_out():
    device, fault, rest = server_common.split_passthrough(["--quick", "--device=npu", "--out", "x",
                                                    "--inject-fault", "trunk.blocks.0=2", "--precision", "bf16"])
    assert (device, fault, rest) == ("npu", "trunk.blocks.0=2", ["--quick", "--precision", "bf16"])


# --------------------------------------------------------------------------------------------- pure parts
TORCHRUN_REPORT = """
Failures:
[1]:
  time      : 2026-12-01_23:26:38
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : 143 (pid: 15971)
  error_file: <N/A>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_23:26:38
  host      : localhost
  rank      : 3 (local_rank: 3)
  exitcode  : -9 (pid: 15972)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 15972
"""


def test_torchrun_failure_report_is_parsed():
    failures = server_launch.parse_torchrun_failures(TORCHRUN_REPORT)
    assert failures[3] == {"exitcode": -9, "pid": 15972, "text": "killed by SIGKILL (pid 15972)", "root_cause": True}
    assert failures[0]["text"] == "exited with code 143 (pid 15971)" and not failures[0]["root_cause"]


def _status(rank, stage="gather", state="running", verdict=None, **extra):
    status = {"rank": rank, "local_rank": rank, "host": "h", "pid": 100 + rank, "device": f"npu:{rank}",
              "stage": stage, "state": state, "backend": "hccl"}
    if verdict:
        status.update(exit_code={"PASS": 0, "FAIL": 1, "ERROR": 2}[verdict],
                      result={"verdict": verdict, "failed_gates": [] if verdict == "PASS" else ["g"],
                              "timings": {}, "soc": "Ascend910B3"})
    status.update(extra)
    return status


@pytest.mark.parametrize("status, context, verdict, words", [
    (None, {}, "MISSING", "never started"),
    (_status(1, "init", "error", error="cannot init: DeviceError: no NPU"), {}, "ERROR", "cannot init"),
    (_status(1, "certification"), {"failures": {1: {"exitcode": -9, "text": "killed by SIGKILL", "root_cause": True}}},
     "CRASHED", "died in stage certification: killed by SIGKILL"),
    (_status(1, "init"), {"failures": {1: {"exitcode": -9, "text": "killed by SIGKILL", "root_cause": False}}},
     "STOPPED", "after another rank failed (killed by SIGKILL)"),
    (_status(1, "init"), {"failures": {1: {"exitcode": -15, "text": "killed by SIGTERM", "root_cause": True}}},
     "STOPPED", "after another rank failed"),
    (_status(1, "certification", "terminated"), {"timed_out": True, "timeout_s": 30}, "TIMEOUT", "--timeout 30 s"),
    (_status(1, "certification", "terminated"), {}, "STOPPED", "after another rank failed"),
    (_status(1, "certification", "terminated"), {"interrupted": True}, "INTERRUPTED", "Ctrl-C"),
    (_status(1, "certification"), {}, "CRASHED", "gone without a word"),
])
def test_rank_row_says_what_happened(status, context, verdict, words):
    row = rank_row(1, status, context)
    assert row["verdict"] == verdict
    assert words in row["error"]


@pytest.mark.parametrize("verdicts, extra, code", [
    (["PASS", "PASS"], {}, 0),
    (["PASS", "FAIL"], {}, 1),
    (["ERROR", "FAIL"], {}, 2),
    (["PASS", None], {}, 2),                       # a rank with no status at all
    (["PASS", "PASS"], {"interrupted": True}, 2),
])
def test_one_exit_code_for_the_server(tmp_path, verdicts, extra, code):
    statuses = {r: _status(r, verdict=v) if v else None for r, v in enumerate(verdicts)}
    summary = build_summary(statuses, len(verdicts), tmp_path, dict(extra, collectives_only=True))
    assert summary["server"]["exit_code"] == code
    assert summary["verdict"] == ("PASS" if code == 0 else "FAIL") and summary["overall"]["exit_code"] == code
    assert summary["weights"]["kind"]  # verify.report refuses a summary without it
    (tmp_path / "accuracy_summary.json").write_text(json.dumps(summary, allow_nan=False))
    assert report.load_summary(tmp_path)["server"]["exit_code"] == code  # verify.report reads it
    assert summary["schema"].startswith("vtp-accuracy-summary/")


def test_wrong_collective_fails_the_contributing_rank(tmp_path):
    collectives = {"verdict": "FAIL", "values_ok": False, "suspect_ranks": [1], "bandwidth": [],
                   "reasons": ["rank 1 contributed wrong values"]}
    statuses = {r: _status(r, verdict="PASS", collectives=collectives) for r in range(2)}
    summary = build_summary(statuses, 2, tmp_path, {"collectives_only": True})
    assert summary["server"]["exit_code"] == 1
    assert [r["verdict"] for r in summary["ranks"]] == ["PASS", "FAIL"]
    assert "collective check" in summary["ranks"][1]["failed_gates"][0]


def test_descendants_are_found_through_proc():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = {pid for pid, _ in server_launch.descendants(os.getpid())}
        assert child.pid in pids
    finally:
        child.kill()
        child.wait()
    assert child.pid not in {pid for pid, _ in server_launch.alive(server_launch.descendants(os.getpid()))}


def test_rank_that_cannot_init_is_an_environment_error(tmp_path):
    out = tmp_path / "noinit"
    start = time.monotonic()
    done, summary = run_server(out, 2, "--collectives-only", env={"VTP_SELFTEST_INIT_FAIL_RANK": "1"}, timeout=120)
    assert time.monotonic() - start < 25  # torchrun's 30 s grace is not waited for: SIGTERM acts in init
    assert done.returncode == 2, done.stdout + done.stderr[-3000:]
    assert [(r["verdict"], r["device"]) for r in summary["ranks"]] == [("STOPPED", "cpu"), ("ERROR", "cpu")]
    assert "cannot init: DeviceError: self-test" in summary["ranks"][1]["error"]
    assert "collective check: NOT RUN" in done.stdout
    assert processes_mentioning(str(out)) == []


def _with_outputs(rank, deterministic, sha):
    status = _status(rank, verdict="PASS")
    status["result"]["deterministic"] = deterministic
    status["digests"] = {"case@A/latents": {"sha256": sha, "dtype": "float32", "shape": [1]}}
    return status


@pytest.mark.parametrize("deterministic, code, policy", [(True, 1, "fail"), (False, 0, "warn")])
def test_cards_that_differ_fail_unless_the_kernels_are_nondeterministic(tmp_path, deterministic, code, policy):
    statuses = {r: _with_outputs(r, deterministic, "b" if r == 2 else "a") for r in range(3)}
    summary = build_summary(statuses, 3, tmp_path, {})
    consistency = summary["server"]["consistency"]
    assert [s["rank"] for s in consistency["suspects"]] == [2]
    assert summary["server"]["exit_code"] == code and summary["server"]["consistency_policy"] == policy
    assert summary["ranks"][2]["suspect"] and "cross-card" in summary["ranks"][2]["failed_gates"][0]


def test_a_rank_never_judges_against_a_golden_set_an_earlier_run_left(tmp_path, monkeypatch):
    """--reference-mode once: rank 0 wrote nothing this run, an old OUT/golden* holds a complete set: the
    other ranks stop with an environment error instead of judging against it."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from verify.server import worker

    for old in ("golden", "golden-0123456789ab"):
        (tmp_path / old).mkdir()
        (tmp_path / old / "manifest.json").write_text("{}")
    calls = []
    monkeypatch.setattr(worker, "certify", lambda argv: calls.append(argv) or 0)
    monkeypatch.setattr(dist, "barrier", lambda group=None: None)
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objs, src=0, group=None: None)  # rank 0 sent None
    ctx = SimpleNamespace(is_main=False, initialized=True, device=SimpleNamespace(type="npu"))
    code, how = worker.certify_with_reference(ctx, ["--quick"], tmp_path, "once", None)
    assert code == 2 and "no golden set from rank 0" in how and calls == []


def test_the_golden_set_is_this_runs_and_pinned(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch.distributed as dist

    from verify.server import worker

    calls, sent, replay = [], [], []

    def broadcast(objs, src=0, group=None):  # rank 0 records what it sends; rank 1 receives it in order
        if replay:
            objs[:] = replay.pop(0)
        else:
            sent.append(list(objs))

    def certify(argv):
        calls.append(argv)
        if "--save-golden" in argv:
            folder = Path(argv[argv.index("--save-golden") + 1])
            folder.mkdir()
            (folder / "manifest.json").write_text('{"x": 1}')
        return 0

    monkeypatch.setattr(worker, "certify", certify)
    monkeypatch.setattr(dist, "barrier", lambda group=None: None)
    monkeypatch.setattr(dist, "broadcast_object_list", broadcast)
    main = SimpleNamespace(is_main=True, initialized=True, device=SimpleNamespace(type="npu"))
    assert worker.certify_with_reference(main, [], tmp_path, "once", None)[0] == 0
    folder = Path(calls[0][calls[0].index("--save-golden") + 1])
    assert folder.parent == tmp_path and folder.name.startswith("golden-") and folder.name != "golden-"
    replay.extend(sent)  # rank 1 receives rank 0's token and pin
    other = SimpleNamespace(is_main=False, initialized=True, device=SimpleNamespace(type="npu"))
    code, how = worker.certify_with_reference(other, [], tmp_path, "once", None)
    assert code == 0 and calls[-1][calls[-1].index("--reference") + 1] == str(folder)
    assert calls[-1][calls[-1].index("--reference-sha256") + 1] == sent[1][0] and len(sent[1][0]) == 64
