"""verify.levels and the harness at each level: options resolved or refused (exit 2), the level printed and
recorded, spot checks from level 2, a burn-in at level 3 that catches what level 2 cannot (outputs that
drift after more calls than the profile makes, a leak), named by call number."""

import json

import pytest

from verify import accuracy_eval
from verify.faults import UsageError
from verify.levels import announce, parse_level, resolve

CASES = """
schema: vtp-cases/1
version: 1
prompt_sets:
  default: ["a dog", "a cat"]
profiles:
  quick:
    images: ["1x64x64"]
    text: [default]
    zero_shot_prompts: default
    timing: ["1x64x64"]
    warmup: 0
    iters: 2
    repeat: true
  default:
    images: ["1x64x64"]
    text: [default]
    zero_shot_prompts: default
    timing: ["1x64x64"]
    warmup: 0
    iters: 2
    repeat: true
  full:
    images: ["1x64x64", "2x32x48"]
    text: [default]
    zero_shot_prompts: default
    timing: ["1x64x64"]
    warmup: 0
    iters: 2
    repeat: true
"""


@pytest.mark.parametrize("level,burn,profile,want", [
    (None, None, "default", (2, "default", None)), (None, None, "quick", (1, "quick", None)),
    ("1", None, "default", (1, "quick", None)), ("quick", None, "default", (1, "quick", None)),
    ("3", None, "default", (3, "default", 60.0)), ("long", "90s", "default", (3, "default", 90.0)),
    ("4", "2h", "default", (4, "default", 7200.0)), (None, "15m", "default", (4, "default", 900.0)),
    ("3", None, "full", (3, "full", 60.0)),
    ("3", "10s", "quick", (3, "quick", 10.0)),
])
def test_resolve(level, burn, profile, want):
    got = resolve(level, burn, profile, "cpu")
    assert (got.level, got.profile, got.burn_in_s) == want
    assert got.spot_checks == (got.level >= 2)


def test_level_3_on_a_device_burns_in_15_minutes_and_says_so_on_the_cpu():
    device = resolve("3", None, "default", "npu")
    assert (device.burn_in_s, device.profile) == (900.0, "full")
    cpu = resolve("3", None, "default", "cpu")
    assert any("60 s on the CPU" in n for n in cpu.notes)
    lines = announce(cpu)
    assert lines[0].startswith("level 3 (long)") and "burn-in 1 min" in lines[1]


@pytest.mark.parametrize("level,burn,words", [
    ("5", None, "expected 1, 2, 3, 4"), ("2", "60s", "not at level 2"), ("1", "1m", "not at level 1"),
    ("4", None, "needs its duration"), ("3", "soon", "not a duration"), ("3", "0s", "more than 0"),
])
def test_bad_combinations_are_usage_errors(level, burn, words):
    with pytest.raises(UsageError, match=words):
        resolve(level, burn, "default", "cpu")


def test_parse_level_names():
    assert [parse_level(x) for x in ("1", "default", "LONG", " soak ")] == [1, 2, 3, 4]


def certify(tmp_path, tiny_checkpoint, *extra):
    tmp_path.mkdir(parents=True, exist_ok=True)
    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES)
    out = tmp_path / "out"
    code = accuracy_eval.main(["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases),
                               "--out", str(out), "--quiet", *extra])
    summary = json.loads((out / "accuracy_summary.json").read_text()) if (out / "accuracy_summary.json").exists() \
        else None
    return code, summary, out


def test_level_2_records_spot_checks_and_contention(tmp_path, tiny_checkpoint, capsys):
    code, summary, out = certify(tmp_path, tiny_checkpoint, "--level", "2")
    assert code == 0 and summary["level"]["level"] == 2 and summary["burn_in"] is None
    assert summary["spot_checks"]["figures"]["matmul_fp32_tflops"]["tflops"] > 0
    assert summary["timings"]["contention"]["share"] is not None and summary["timings"]["threads"]["applied"]
    assert "level 2 (default)" in capsys.readouterr().out


def test_level_3_burn_in_passes_clean_and_is_in_the_report(tmp_path, tiny_checkpoint):
    code, summary, out = certify(tmp_path, tiny_checkpoint, "--level", "3", "--burn-in", "3s")
    burn = summary["burn_in"]
    assert code == 0 and burn["verdict"] == "PASS" and burn["calls"] > 3
    assert summary["level"]["burn_in_s"] == 3.0 and summary["level"]["profile"] == "default"
    assert 'id="burn-in"' in (out / "report.html").read_text()


def test_drift_after_the_profile_is_caught_at_level_3_not_level_2(tmp_path, tiny_checkpoint):
    fault = ["--inject-fault", "trunk.blocks.0=drift@30"]  # the profiles call trunk.blocks.0 fewer than 30 times
    code, summary, _ = certify(tmp_path / "l2", tiny_checkpoint, "--level", "2", *fault)
    assert code == 0, summary["overall"]["reasons"]
    code, summary, _ = certify(tmp_path / "l3", tiny_checkpoint, "--level", "3", "--burn-in", "4s", *fault)
    assert code == 1 and summary["verdict"] == "FAIL" and "burn_in" in summary["overall"]["failed_gates"]
    first = summary["burn_in"]["first_failure"]
    assert first["check"] == "repeat" and first["call"] > 1
    assert any(f"burn-in call {first['call']}" in r for r in summary["overall"]["reasons"])


def test_bad_level_is_exit_2_before_any_work(tmp_path, tiny_checkpoint, capsys):
    code, summary, _ = certify(tmp_path, tiny_checkpoint, "--level", "2", "--burn-in", "1m")
    assert code == 2 and summary is None and "not at level 2" in capsys.readouterr().err


def test_run_verify_documents_and_passes_the_level(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "run_verify.sh"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "--level L" in done.stdout and "--burn-in DURATION" in done.stdout and "4 soak" in done.stdout
    done = subprocess.run(["bash", str(script), "--device", "cpu", "--level", "2", "--burn-in", "60s", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=env, cwd=tmp_path,
                          stdin=subprocess.DEVNULL, timeout=120)
    assert done.returncode == 2 and "not at level 2" in done.stderr
