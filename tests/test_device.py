"""Tests of ascend.npu and ascend.device on CPU, and of the NPU wiring with a stand-in torch_npu.

The stand-in is the shared one of ``npu_standin.py`` (a plain module put into
``sys.modules["torch_npu"]`` and ``torch.npu``); it records the calls the device layer makes. It
checks the wiring only: real NPU behaviour needs an NPU.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ascend import device as dev
from ascend import npu as npu_mod
from ascend.device import DeviceError
from npu_standin import NpuStandin, break_import, make_npu_standin, no_torch_npu  # noqa: F401

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible; auto-detect would pick it")


@pytest.fixture
def standin(make_npu_standin) -> NpuStandin:
    """Two Ascend910B3 NPUs (SoC 223). The device layer builds ``torch.device("npu", i)``, so this
    renames torch's privateuse1 backend to "npu" (permanent for the process, see npu_standin)."""
    return make_npu_standin(rename_backend=True)


@pytest.fixture(autouse=True)
def _fresh_import_cache():
    npu_mod._reset_cache()
    yield
    npu_mod._reset_cache()


# ----------------------------------------------------------------------------------------------
# resolve_device


@pytest.mark.parametrize("bad", ["gpu", "npu:x", "cuda:-1", "auto:0", "NPU 0", ""])
def test_malformed_device_string_is_refused_with_usage(bad):
    with pytest.raises(DeviceError, match="unknown device") as info:
        dev.resolve_device(bad)
    assert '"npu:<index>"' in str(info.value)


def test_cpu_index_other_than_zero_is_refused():
    with pytest.raises(DeviceError, match="no index 1"):
        dev.resolve_device("cpu:1")


@pytest.mark.parametrize("requested", ["cpu", "CPU", "cpu:0", torch.device("cpu")])
def test_explicit_cpu(requested):
    assert dev.resolve_device(requested) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("requested", [None, "auto"])
def test_auto_falls_back_to_cpu(no_torch_npu, requested):
    assert dev.resolve_device(requested) == torch.device("cpu")


@pytest.mark.skipif(torch.version.cuda is not None, reason="needs a CPU-only build of torch")
def test_cuda_on_cpu_build_names_the_cause(no_torch_npu):
    with pytest.raises(DeviceError) as info:
        dev.resolve_device("cuda:0")
    message = str(info.value)
    assert "'cuda:0'" in message
    assert "built without CUDA" in message
    assert "Available: cpu" in message


def test_npu_without_torch_npu(no_torch_npu):
    with pytest.raises(DeviceError, match="torch_npu is not installed") as info:
        dev.resolve_device("npu")
    assert "requested device 'npu'" in str(info.value)
    assert npu_mod.npu_available() is False


@pytest.mark.parametrize(
    "error, diagnosis",
    [
        (
            ImportError("libhccl.so: cannot open shared object file: No such file or directory"),
            "CANN not found: source set_env.sh",
        ),
        (OSError("libascend_hal.so: cannot open shared object file"), "Ascend driver not found"),
        (RuntimeError("Two accelerators cannot be used at the same time in PyTorch: npu and cuda."), "CUDA build"),
    ],
)
def test_import_failure_reason_reaches_the_device_error(monkeypatch, error, diagnosis):
    finder = break_import(monkeypatch, error)
    with pytest.raises(DeviceError) as info:
        dev.resolve_device("npu")
    message = str(info.value)
    assert diagnosis in message
    assert f"{type(error).__name__}: {error}" in message  # the exact original text is kept
    assert "Available: cpu" in message
    module, reason = npu_mod.import_torch_npu()
    assert module is None and diagnosis in reason
    assert finder.imports == 1  # the failed import is cached, not retried


def test_chained_autoload_error_keeps_the_root_cause(monkeypatch):
    try:
        try:
            raise ImportError("libhccl.so: cannot open shared object file")
        except ImportError as root:
            raise RuntimeError("Failed to load the backend extension: torch_npu.") from root
    except RuntimeError as exc:
        chained = exc
    break_import(monkeypatch, chained)
    _, reason = npu_mod.import_torch_npu()
    assert reason.startswith("CANN not found")
    assert "RuntimeError: Failed to load the backend extension" in reason
    assert "ImportError: libhccl.so" in reason


def test_npu_index_within_count(standin):
    assert dev.resolve_device("npu:1") == torch.device("npu", 1)
    assert dev.resolve_device("npu").type == "npu"
    assert dev.available_devices()[:2] == ["npu:0", "npu:1"]


def test_npu_index_out_of_range_names_the_count(standin):
    with pytest.raises(DeviceError) as info:
        dev.resolve_device("npu:3")
    message = str(info.value)
    assert "device index 3 out of range: 2 NPU(s) visible (npu:0..npu:1)" in message
    assert "Available: npu:0, npu:1" in message


def test_auto_prefers_npu(standin):
    assert dev.resolve_device() == torch.device("npu", 0)
    assert dev.is_npu(dev.resolve_device("auto"))


def test_npu_with_zero_devices_is_refused(make_npu_standin):
    make_npu_standin(device_count=0, rename_backend=True)
    with pytest.raises(DeviceError, match="is_available\\(\\) is False"):
        dev.resolve_device("npu")


# ----------------------------------------------------------------------------------------------
# prepare_environment


@pytest.fixture
def clean_env(monkeypatch):
    """No autoload setting and no CANN environment; restored afterwards."""
    for name in (npu_mod.AUTOLOAD_ENV, *npu_mod.CANN_ENV_VARS):
        monkeypatch.setenv(name, "placeholder")  # so that monkeypatch restores the original state
        monkeypatch.delenv(name)


def test_prepare_environment_disables_autoload_without_cann(monkeypatch, standin, clean_env):
    monkeypatch.delitem(sys.modules, "torch")  # as if called before `import torch`
    result = npu_mod.prepare_environment()
    assert result["autoload"] == "disabled"
    assert os.environ[npu_mod.AUTOLOAD_ENV] == "0"
    assert "ASCEND_HOME_PATH" in result["reason"]


def test_prepare_environment_respects_user_and_cann(monkeypatch, standin, clean_env):
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setenv(npu_mod.AUTOLOAD_ENV, "1")
    assert npu_mod.prepare_environment()["autoload"] == "unchanged"
    monkeypatch.delenv(npu_mod.AUTOLOAD_ENV)
    monkeypatch.setenv("ASCEND_HOME_PATH", "/usr/local/Ascend/ascend-toolkit/latest")
    monkeypatch.setenv("ASCEND_OPP_PATH", "/usr/local/Ascend/ascend-toolkit/latest/opp")
    assert npu_mod.prepare_environment()["autoload"] == "unchanged"
    assert npu_mod.AUTOLOAD_ENV not in os.environ


def test_prepare_environment_after_torch_import_is_too_late(standin, clean_env):
    result = npu_mod.prepare_environment()
    assert result["autoload"] == "unchanged" and "too late" in result["reason"]


def test_prepare_environment_without_torch_npu(no_torch_npu, clean_env):
    assert npu_mod.prepare_environment() == {
        "torch_npu_installed": False,
        "autoload": "unchanged",
        "reason": "torch_npu is not installed",
    }


# ----------------------------------------------------------------------------------------------
# synchronize, memory, timing


def test_npu_sync_and_memory_go_to_torch_npu(standin):
    dev.synchronize("npu:1")
    assert dev.peak_memory_bytes("npu:1") == 12345
    assert dev.reset_peak_memory(torch.device("npu", 1)) is True
    assert standin.trace() == [("synchronize", (1,), {}), ("reset_peak_memory_stats", (1,), {})]


def test_cpu_sync_memory_and_timer():
    dev.synchronize("cpu")  # nothing to wait for, must not raise
    peak = dev.peak_memory_bytes("cpu")
    if sys.platform.startswith("linux"):
        assert isinstance(peak, int) and peak > 0
    assert isinstance(dev.reset_peak_memory("cpu"), bool)
    with dev.timed("cpu") as timing:
        torch.ones(8) @ torch.ones(8)
    assert 0 <= timing.ms < 5_000


# ----------------------------------------------------------------------------------------------
# autocast


def test_fp32_profile_does_not_autocast():
    with dev.autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_cpu_autocast_profiles(precision, dtype):
    with dev.autocast("cpu", precision):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
    assert not torch.is_autocast_enabled("cpu")


def test_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        dev.autocast("cpu", "int8")


def test_bf16_refused_on_npu_without_bf16(make_npu_standin):
    make_npu_standin(soc=202, name="Ascend310P3", rename_backend=True)  # 310P: no bf16
    with pytest.raises(DeviceError, match="bf16 is not supported on this NPU") as info:
        dev.autocast("npu:0", "bf16")
    assert "family 310P" in str(info.value)


def test_dtype_missing_from_npu_amp_list_is_refused(standin, monkeypatch):
    monkeypatch.setattr(standin.npu, "get_amp_supported_dtype", lambda: [torch.float32])
    with pytest.raises(DeviceError, match="NPU autocast does not support torch.float16"):
        dev.autocast("npu", "fp16")


def test_npu_fp16_autocast_is_enabled(standin):
    with dev.autocast("npu:0", "fp16"):
        assert torch.is_autocast_enabled("npu")
    assert not torch.is_autocast_enabled("npu")


# ----------------------------------------------------------------------------------------------
# strict fp32 and Ascend options


def test_strict_fp32_turns_off_hf32_and_restores(standin, torch_fp32_flags):
    standin.npu.matmul.allow_hf32 = True
    torch.set_float32_matmul_precision("medium")
    with dev.strict_fp32("npu:0") as previous:
        assert standin.npu.matmul.allow_hf32 is False
        assert standin.npu.conv.allow_hf32 is False
        assert torch.get_float32_matmul_precision() == "highest"
    assert previous["npu.matmul.allow_hf32"] is True and previous["npu.conv.allow_hf32"] is True
    assert standin.npu.matmul.allow_hf32 is True and standin.npu.conv.allow_hf32 is True
    assert torch.get_float32_matmul_precision() == "medium"
    assert not standin.calls  # an A2 SoC needs no precision-mode change


def test_set_strict_fp32_off_allows_hf32(standin, torch_fp32_flags):
    previous = dev.set_strict_fp32("npu", enabled=False)
    assert standin.npu.matmul.allow_hf32 is True and standin.npu.conv.allow_hf32 is True
    assert torch.backends.cuda.matmul.allow_tf32
    dev.restore_fp32_state(previous)
    assert standin.npu.matmul.allow_hf32 is False and standin.npu.conv.allow_hf32 is True
    assert dev._read_torch_flags() == torch_fp32_flags


def test_strict_fp32_on_old_soc_keeps_fp32_kernels(make_npu_standin):
    standin = make_npu_standin(soc=102, name="Ascend910A", rename_backend=True)
    with dev.strict_fp32("npu:0"):
        pass
    modes = [call.args[0]["ACL_PRECISION_MODE"] for call in standin.calls_to("set_option")]
    assert modes == ["must_keep_origin_dtype", "allow_fp32_to_fp16"]


@pytest.fixture
def torch_fp32_flags():
    """Puts torch's fp32 math flags back after the test, whatever it did to them."""
    saved = dev._read_torch_flags()
    yield saved
    dev._write_torch_flags(saved)


def test_strict_fp32_on_cpu_sets_matmul_precision(torch_fp32_flags):
    torch.set_float32_matmul_precision("medium")
    entry = dev._read_torch_flags()
    with dev.strict_fp32("cpu") as previous:
        assert torch.get_float32_matmul_precision() == "highest"
        assert not torch.backends.cuda.matmul.allow_tf32
    assert previous == {"device_type": "cpu", **entry}
    assert dev._read_torch_flags() == entry
    assert torch.get_float32_matmul_precision() == "medium"


@pytest.mark.skipif(not hasattr(torch.backends, "fp32_precision"), reason="needs torch >= 2.9 fp32_precision API")
def test_strict_fp32_survives_flags_set_through_the_new_api(torch_fp32_flags):
    # In this state torch's legacy getters (allow_tf32, get_float32_matmul_precision) raise.
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    entry = dev._read_torch_flags()
    assert entry["float32_matmul_precision"] is None  # torch refused to read it
    with dev.strict_fp32("cpu"):
        assert torch.backends.cuda.matmul.fp32_precision == "ieee"
        assert torch.get_float32_matmul_precision() == "highest"
        assert torch.backends.cudnn.allow_tf32 is False
    assert dev._read_torch_flags() == entry
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"


@pytest.mark.parametrize("jit_compile", [False, True])
def test_ascend_options_pins_format_and_compile_mode(standin, jit_compile):
    standin.npu.config.allow_internal_format = True  # the 910A/310P default, so that the pin shows
    applied = dev.ascend_options("npu:0", jit_compile=jit_compile)
    assert standin.npu.config.allow_internal_format is False
    assert standin.trace() == [("set_compile_mode", (), {"jit_compile": jit_compile})]
    assert applied == {"applied": True, "allow_internal_format": False, "jit_compile": jit_compile}


def test_ascend_options_leaves_compile_mode_alone_by_default(standin):
    assert dev.ascend_options("npu")["jit_compile"] is None
    assert standin.calls == []


def test_ascend_options_off_npu_is_a_no_op():
    assert dev.ascend_options("cpu") == {"applied": False, "reason": "device is cpu, not npu"}


# ----------------------------------------------------------------------------------------------
# SoC helpers and the package surface


@pytest.mark.parametrize(
    "version, family", [(102, "910A"), (202, "310P"), (223, "A2"), (240, "310B"), (253, "A3"), (260, "950"), (999, None)]
)
def test_soc_family(version, family):
    assert npu_mod.soc_family(version) == family


def test_soc_version_from_standin(standin):
    assert npu_mod.soc_version() == 223


def test_package_import_is_lazy_and_exports_helpers():
    import ascend

    assert ascend.resolve_device is dev.resolve_device
    assert ascend.soc_version is npu_mod.soc_version
    with pytest.raises(AttributeError):
        ascend.no_such_helper


def test_importing_the_package_does_not_import_torch():
    # prepare_environment() must be callable before `import torch`; a fresh interpreter checks that.
    code = "import sys, ascend, ascend.npu; ascend.prepare_environment; print('torch' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
