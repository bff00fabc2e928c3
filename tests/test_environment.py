"""Tests of ascend.environment: the report on CPU, fail-safe probes, and NPU fields with a stand-in."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ascend import environment as env
from ascend import npu as npu_mod

from npu_standin import hide, make_npu_standin  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_import_cache():
    npu_mod._reset_cache()
    yield
    npu_mod._reset_cache()


@pytest.fixture
def no_ascend(monkeypatch, tmp_path):
    """No torch_npu, no CANN environment, no npu-smi on PATH."""
    hide(monkeypatch)
    monkeypatch.delenv("ASCEND_HOME_PATH", raising=False)
    monkeypatch.delenv("ASCEND_TOOLKIT_HOME", raising=False)
    monkeypatch.setattr(env, "_CANN_ROOTS", ())
    monkeypatch.setattr(env, "_DRIVER_VERSION_FILE", str(tmp_path / "no_driver_version.info"))
    monkeypatch.setenv("PATH", str(tmp_path))


def test_cpu_report_has_every_key_and_is_json(no_ascend):
    report = env.environment_report("cpu")
    assert list(report) == list(env.REPORT_KEYS)
    assert report["schema"] == env.SCHEMA_VERSION
    assert report["torch"] == torch.__version__
    assert report["device"] == "cpu" and report["device_type"] == "cpu"
    assert report["device_name"] == report["cpu_model"]
    assert report["cpu_count"] == os.cpu_count()
    assert report["torch_threads"] == torch.get_num_threads()
    assert report["torch_npu"] is None
    assert report["unavailable"]["torch_npu"] == "torch_npu is not installed"
    assert "ASCEND_HOME_PATH not set" in report["unavailable"]["cann"]
    assert "npu-smi not on PATH" in report["unavailable"]["driver"]
    json.dumps(report)  # must serialise as is


def test_format_environment_gives_one_line_per_fact(no_ascend):
    lines = env.format_environment(env.environment_report("cpu"))
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    assert f"torch: {torch.__version__} ({env._torch_build()})" in lines
    assert "device: cpu (type cpu)" in lines
    assert "torch_npu: unavailable (torch_npu is not installed)" in lines
    assert any(line.startswith("RAM: ") and line.endswith(" GiB") for line in lines)


def test_a_failing_probe_becomes_a_reason(no_ascend, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(env, "_cpu_model", broken)
    report = env.environment_report("cpu")
    assert report["cpu_model"] is None
    assert report["unavailable"]["cpu_model"] == "RuntimeError: boom"
    assert "CPU: unavailable (RuntimeError: boom)" in env.format_environment(report)


def test_an_unusable_device_is_recorded_not_raised(no_ascend):
    report = env.environment_report("npu:0")
    assert report["device"] is None
    assert report["device_type"] == "npu"
    assert "torch_npu is not installed" in report["unavailable"]["device"]


def test_cann_version_from_install_info(no_ascend, monkeypatch, tmp_path):
    info = tmp_path / "cann" / "x86_64-linux" / "ascend_toolkit_install.info"
    info.parent.mkdir(parents=True)
    info.write_text("package_name=Ascend-cann-toolkit\nversion=8.5.0\ninnerversion=V100R001C25\n")
    monkeypatch.setenv("ASCEND_HOME_PATH", str(tmp_path / "cann"))
    report = env.environment_report("cpu")
    assert report["cann"] == "8.5.0"
    assert report["cann_source"] == str(info)


def test_driver_version_from_npu_smi(no_ascend, tmp_path):
    tool = tmp_path / "npu-smi"
    tool.write_text(
        "#!/bin/sh\n"
        "echo '+------------------------------------------------------------------+'\n"
        "echo '| npu-smi 23.0.rc3                 Version: 23.0.rc3               |'\n"
    )
    tool.chmod(0o755)
    assert env.environment_report("cpu")["driver"] == "23.0.rc3"


def test_npu_fields_with_stand_in(make_npu_standin, monkeypatch, tmp_path):
    standin = make_npu_standin(rename_backend=True)  # the report resolves torch.device("npu", 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    report = env.environment_report()
    assert report["device"] == "npu:0"
    assert report["device_name"] == "Ascend910B3"
    assert report["device_count"] == 2
    assert report["soc_version"] == 223 and report["soc_family"] == "A2"
    assert report["device_memory_bytes"] == 64 * 2**30
    assert report["torch_npu"] == standin.version  # torch's release, so no warning
    assert (report["cann"], report["cann_source"]) == ("8.5.0", "torch.npu.utils.get_cann_version")
    assert report["warnings"] == []
    lines = env.format_environment(report)
    assert "SoC version: 223 (family A2)" in lines
    assert "device name: Ascend910B3" in lines


def test_torch_npu_version_mismatch_is_warned(make_npu_standin, monkeypatch, tmp_path):
    make_npu_standin(version="2.9.0.post2", rename_backend=True)
    monkeypatch.setenv("PATH", str(tmp_path))
    report = env.environment_report("npu:0")
    assert any("does not match torch" in note for note in report["warnings"])
