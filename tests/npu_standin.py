"""A stand-in ``torch_npu`` FOR TESTS ONLY, shared by the device-layer and the fusion tests.

One :class:`NpuStandin` plays both halves of torch_npu on a CPU host:

* ``torch.npu`` as :mod:`ascend.npu`, :mod:`ascend.device` and :mod:`ascend.environment` read it:
  device count and name, SoC version (and from it bf16 support, the AMP dtype list and the
  ``allow_internal_format`` default, as torch_npu does), ``matmul``/``conv.allow_hf32``,
  ``config.allow_internal_format``, ``set_option``, ``set_compile_mode``, ``synchronize``, memory
  statistics, device properties and the CANN version;
* the fused operators the fusion rules call (``npu_rms_norm``, ``npu_swiglu``,
  ``npu_fusion_attention``, ``npu_rotary_mul``, ``npu_fast_gelu``), each computing the documented
  math in torch (facts file §1).

Every call into either half is recorded (:attr:`NpuStandin.calls`, :meth:`NpuStandin.calls_to`,
:meth:`NpuStandin.trace`). That checks the *wiring* only: argument order, layout strings, explicit
eps/scale, contiguity, which half is gated, which tokens are rotated, which options are set. It says
nothing about the real kernels' numerics; that needs an NPU.

A fused operator raises :class:`ContractError` when a call breaks either the documented contract
(what the real op rejects: non-contiguous ``npu_swiglu`` input, a bad layout string, a dtype outside
the SoC's list, an invalid cos/sin broadcast shape) or the kit's own rule where the API default is a
trap (``npu_rms_norm`` without ``epsilon``: default 1e-6 vs VTP's 1e-5; ``npu_fusion_attention``
without ``scale``: default 1.0). Messages say which.

Installing (``monkeypatch`` undoes everything but the backend rename):

* ``npu_standin`` fixture: an Ascend910B3 (SoC 223, Atlas A2) with two NPUs;
  ``make_npu_standin(soc=..., name=..., rename_backend=...)`` for other configurations;
  :func:`install` is what both call.
* ``rename_backend=True`` also renames torch's privateuse1 backend to ``"npu"`` (as
  ``import torch_npu`` does) so that ``torch.device("npu")`` parses. **That rename is permanent for
  the process**: see :func:`rename_privateuse1_backend`. Without it, whether ``torch.device("npu")``
  parses depends on whether an earlier test in the same run asked for the rename, so a test that
  builds an NPU ``torch.device`` must ask for it, and no test may rely on it failing.
* ``no_torch_npu`` fixture / :func:`hide`: torch_npu not installed; :func:`break_import`: an
  installed torch_npu whose import raises (no CANN, no driver, a CUDA build).

Import into a test module with ``from npu_standin import npu_standin, make_npu_standin`` (pytest puts
tests/ on ``sys.path``).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import inspect
import re
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from ascend import npu as npu_mod

AS_STRIDED_TEXT = (
    "current tensor is running as_strided, don't perform inplace operations on the returned value. If you "
    "encounter this warning and have precision issues, you can try torch.npu.config.allow_internal_format = "
    "False to resolve precision issues."
)

FLOATS = (torch.float16, torch.bfloat16, torch.float32)
LAYOUTS = ("BSH", "SBH", "BSND", "BNSD", "TND")


class ContractError(AssertionError):
    """A call that breaks a fused operator's documented contract or the kit's argument rules."""


@dataclass
class Call:
    """One recorded call: the function's name, the arguments as the caller passed them, every
    parameter bound by name (defaults applied) and the names the caller passed explicitly."""

    op: str
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any]
    params: Dict[str, Any]
    explicit: frozenset

    def __getitem__(self, name: str):
        return self.params[name]


def _matching_version() -> str:
    """torch's release with a ``+standin`` tag ("2.13.0+standin"): a pair ascend.environment accepts."""
    match = re.match(r"\d+\.\d+\.\d+", torch.__version__)
    return f"{match.group(0) if match else torch.__version__}+standin"


@dataclass
class NpuStandin:
    """The stand-in: ``module`` goes into ``sys.modules["torch_npu"]``, ``npu`` into ``torch.npu``.

    bf16 support, the AMP dtype list and the ``allow_internal_format`` default follow from ``soc``
    as in torch_npu (Atlas A2 and newer: bf16, internal format off; 910A/310P: no bf16, internal
    format on). ``npu`` is a plain namespace: tests read and set its flags and may monkeypatch its
    functions.
    """

    soc: int = 223
    name: str = "Ascend910B3"
    device_count: int = 2
    version: str = field(default_factory=_matching_version)  # torch_npu.__version__
    cann_version: str = "8.5.0"  # torch.npu.utils.get_cann_version()
    peak_memory: int = 12345  # torch.npu.max_memory_allocated(), bytes
    total_memory: int = 64 * 2**30  # torch.npu.get_device_properties().total_memory, bytes
    calls: List[Call] = field(default_factory=list)

    def __post_init__(self):
        self.module = types.ModuleType("torch_npu")
        self.module.__version__ = self.version
        self.module.__file__ = __file__
        for op in ("npu_rms_norm", "npu_swiglu", "npu_fusion_attention", "npu_rotary_mul", "npu_fast_gelu"):
            setattr(self.module, op, getattr(self, op))
        count, soc, name = self.device_count, self.soc, self.name
        bf16 = soc >= npu_mod.SOC_910B1
        amp_dtypes = [torch.float16, torch.bfloat16, torch.float32] if bf16 else [torch.float16, torch.float32]
        properties = types.SimpleNamespace(name=name, total_memory=self.total_memory)
        self.npu = types.SimpleNamespace(
            is_available=lambda: count > 0,
            device_count=lambda: count,
            current_device=lambda: 0,
            get_device_name=lambda device=None: name,
            get_device_properties=lambda device=None: properties,
            get_soc_version=lambda: soc,
            is_bf16_supported=lambda: bf16,
            get_amp_supported_dtype=lambda: list(amp_dtypes),
            max_memory_allocated=lambda device=None: self.peak_memory,
            synchronize=self._recorder("synchronize", _SIG_DEVICE),
            reset_peak_memory_stats=self._recorder("reset_peak_memory_stats", _SIG_DEVICE),
            set_option=self._recorder("set_option", _SIG_SET_OPTION),
            set_compile_mode=self._recorder("set_compile_mode", _SIG_COMPILE_MODE),
            matmul=types.SimpleNamespace(allow_hf32=False),  # torch_npu defaults (facts §2)
            conv=types.SimpleNamespace(allow_hf32=True),
            config=types.SimpleNamespace(allow_internal_format=soc < npu_mod.SOC_910B1),
            utils=types.SimpleNamespace(get_soc_version=lambda: soc,
                                        get_cann_version=lambda module="CANN": self.cann_version),
        )
        self.module.npu = self.npu

    @property
    def family(self) -> Optional[str]:
        return npu_mod.soc_family(self.soc)

    def calls_to(self, op: str) -> List[Call]:
        """The recorded calls of one function, in order."""
        return [c for c in self.calls if c.op == op]

    def trace(self) -> List[Tuple[str, Tuple[Any, ...], Dict[str, Any]]]:
        """Every recorded call as ``(op, args, kwargs)``, exactly as the caller passed them."""
        return [(c.op, c.args, c.kwargs) for c in self.calls]

    # -------------------------------------------------------------------------------- bookkeeping
    def _record(self, op: str, signature, args, kwargs) -> Call:
        bound = signature.bind(*args, **kwargs)  # a TypeError here is a call torch_npu would refuse too
        explicit = frozenset(bound.arguments)
        bound.apply_defaults()
        call = Call(op, tuple(args), dict(kwargs), dict(bound.arguments), explicit)
        self.calls.append(call)
        return call

    def _recorder(self, op: str, signature):
        """A ``torch.npu`` function that only records its call (and returns None)."""

        def record(*args, **kwargs) -> None:
            self._record(op, signature, args, kwargs)

        record.__name__ = op
        return record

    @staticmethod
    def _fail(op: str, what: str, rule: str = "documented contract") -> None:
        raise ContractError(f"{op}: {what} ({rule})")

    def _check_dtype(self, op: str, t: torch.Tensor, allowed, role: str = "input") -> None:
        if t.dtype not in allowed:
            names = ", ".join(str(d).replace("torch.", "") for d in allowed)
            self._fail(op, f"{role} dtype {t.dtype} not supported on {self.name} (allowed: {names})")

    # -------------------------------------------------------------------------------- npu_rms_norm
    def npu_rms_norm(self, *args, **kwargs):
        """(y, rstd): y = x / sqrt(mean(x², normalised dims) + eps) · gamma (fp32 math, x's dtype out)."""
        call = self._record("npu_rms_norm", _SIG_RMS, args, kwargs)
        x, gamma, eps = call["self"], call["gamma"], call["epsilon"]
        if "epsilon" not in call.explicit:
            self._fail("npu_rms_norm", "epsilon not passed: the API default is 1e-6, VTP's RMSNorm uses 1e-5",
                       "kit rule: pass eps explicitly")
        if not 2 <= x.dim() <= 8:
            self._fail("npu_rms_norm", f"input must have 2 to 8 dims, got {x.dim()}")
        if tuple(x.shape[x.dim() - gamma.dim():]) != tuple(gamma.shape):
            self._fail("npu_rms_norm", f"gamma shape {tuple(gamma.shape)} is not a suffix of x shape {tuple(x.shape)}")
        pairs = {(torch.float16, torch.float16), (torch.float32, torch.float32)}
        if self.family in ("A2", "A3"):
            pairs |= {(torch.float16, torch.float32), (torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16)}
        if (x.dtype, gamma.dtype) not in pairs:
            self._fail("npu_rms_norm", f"dtype pair (x {x.dtype}, gamma {gamma.dtype}) not supported on {self.name}")
        dims = tuple(range(x.dim() - gamma.dim(), x.dim()))
        xf = x.float()
        rstd = torch.rsqrt(xf.pow(2).mean(dims, keepdim=True) + eps)
        y = (xf * rstd * gamma.float()).to(x.dtype)
        return y, rstd

    # -------------------------------------------------------------------------------- npu_swiglu
    def npu_swiglu(self, *args, **kwargs):
        """silu(A) · B with A, B the first and second halves of ``input`` along ``dim``."""
        call = self._record("npu_swiglu", _SIG_SWIGLU, args, kwargs)
        x, dim = call["input"], call["dim"]
        if not x.is_contiguous():
            self._fail("npu_swiglu", "non-contiguous input is not supported")
        if x.numel() == 0:
            self._fail("npu_swiglu", "empty input is not supported")
        if not 1 <= x.dim() <= 8:
            self._fail("npu_swiglu", f"input must have 1 to 8 dims, got {x.dim()}")
        if x.shape[dim] % 2:
            self._fail("npu_swiglu", f"size {x.shape[dim]} along dim {dim} is odd")
        self._check_dtype("npu_swiglu", x, FLOATS)
        a, b = x.chunk(2, dim=dim)
        return F.silu(a) * b

    # -------------------------------------------------------------------------------- npu_fusion_attention
    def npu_fusion_attention(self, *args, **kwargs):
        """7-tuple (out, softmax_max, softmax_sum, reserved, seed, offset, mask_len);
        out = softmax(scale · q kᵀ, atten_mask True = masked out) v."""
        op = "npu_fusion_attention"
        call = self._record(op, _SIG_FA, args, kwargs)
        q, k, v = call["query"], call["key"], call["value"]
        heads, layout, scale, mask = call["head_num"], call["input_layout"], call["scale"], call["atten_mask"]
        if layout not in LAYOUTS:
            self._fail(op, f"input_layout {layout!r} is not one of {', '.join(LAYOUTS)}")
        if layout == "TND":
            raise NotImplementedError("the stand-in does not implement the varlen TND layout")
        if "scale" not in call.explicit:
            self._fail(op, "scale not passed: the API default is 1.0, attention needs 1/sqrt(head_dim)",
                       "kit rule: pass scale explicitly")
        if not 0.0 < call["keep_prob"] <= 1.0:
            self._fail(op, f"keep_prob {call['keep_prob']} must be in (0, 1]")
        for name, t in (("query", q), ("key", k), ("value", v)):
            if not t.is_contiguous():
                self._fail(op, f"{name} is not contiguous", "kit rule: contiguous q/k/v")
            if t.dtype != q.dtype:
                self._fail(op, f"{name} dtype {t.dtype} differs from query dtype {q.dtype}")
        self._check_dtype(op, q, FLOATS, "query")
        qb, kb, vb = (_to_bnsd(t, layout, heads, op) for t in (q, k, v))
        if qb.shape[1] != heads:
            self._fail(op, f"head_num {heads} does not match the {qb.shape[1]} heads of query in {layout}")
        if not 1 <= qb.shape[-1] <= 768:
            self._fail(op, f"head dim {qb.shape[-1]} outside [1, 768]")
        if heads > 256 or heads % kb.shape[1]:
            self._fail(op, f"head_num {heads} must be <= 256 and a multiple of the {kb.shape[1]} key heads")
        scores = scale * (qb.float() @ kb.float().repeat_interleave(heads // kb.shape[1], 1).transpose(-1, -2))
        if mask is not None:
            if mask.dtype not in (torch.bool, torch.uint8):
                self._fail(op, f"atten_mask dtype {mask.dtype} must be bool or uint8 (1/True = masked out)")
            scores = scores.masked_fill(mask.bool(), float("-inf"))
        softmax_max = scores.amax(-1, keepdim=True)
        softmax_sum = (scores - softmax_max).exp().sum(-1, keepdim=True)
        probs = torch.softmax(scores, dim=-1)
        out = (probs @ vb.float().repeat_interleave(heads // vb.shape[1], 1)).to(q.dtype)
        out = _from_bnsd(out, layout, q.shape)
        empty = torch.empty(0)
        return out, softmax_max, softmax_sum, empty, 0, 0, 0

    # -------------------------------------------------------------------------------- npu_rotary_mul
    def npu_rotary_mul(self, *args, **kwargs):
        """x·r1 + rotate(x)·r2 (r1 = cos, r2 = sin); 'half': rotate(x) = cat(-x2, x1).

        Computed op by op in the input dtype, i.e. the reference math of the original RoPE. The real
        fused kernel rounds once at the end, which may differ by about one ulp of the dtype.
        """
        op = "npu_rotary_mul"
        call = self._record(op, _SIG_ROTARY, args, kwargs)
        x, r1, r2, mode = call["input"], call["r1"], call["r2"], call["rotary_mode"]
        if mode not in ("half", "interleave"):
            self._fail(op, f"rotary_mode {mode!r} must be 'half' or 'interleave'")
        if x.dim() not in (3, 4):
            self._fail(op, f"input must be 3-D or 4-D, got {x.dim()}-D")
        if r1.shape != r2.shape:
            self._fail(op, f"r1 shape {tuple(r1.shape)} differs from r2 shape {tuple(r2.shape)}")
        for name, t in (("input", x), ("r1", r1), ("r2", r2)):
            self._check_dtype(op, t, FLOATS, name)
        if r1.dtype != x.dtype or r2.dtype != x.dtype:
            self._fail(op, f"r1/r2 dtype {r1.dtype}/{r2.dtype} differ from input dtype {x.dtype}")
        D = x.shape[-1]
        if D % 2 or D >= 896:
            self._fail(op, f"last dim {D} must be even and < 896")
        if x.dim() == 4 and not _valid_rotary_broadcast(tuple(x.shape), tuple(r1.shape), mode):
            self._fail(op, f"cos/sin shape {tuple(r1.shape)} is not a valid broadcast of input {tuple(x.shape)} "
                           "(BNSD: 11SD/B1SD/BNSD; BSND: 1S1D/BS1D/BSND; SBND: S11D/SB1D/SBND)")
        if r1.abs().max() > 1 or r2.abs().max() > 1:
            self._fail(op, "r1/r2 values must lie in [-1, 1]")
        if mode == "half":
            x1, x2 = x.chunk(2, dim=-1)
            rotated = torch.cat((-x2, x1), dim=-1)
        else:
            pairs = x.unflatten(-1, (-1, 2))
            rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return (x * r1) + (rotated * r2)

    # -------------------------------------------------------------------------------- npu_fast_gelu
    def npu_fast_gelu(self, *args, **kwargs):
        """x / (1 + exp(-1.702 x)), written as x · sigmoid(1.702 x)."""
        call = self._record("npu_fast_gelu", _SIG_FAST_GELU, args, kwargs)
        x = call["input"]
        if x.dim() > 8:
            self._fail("npu_fast_gelu", f"input must have at most 8 dims, got {x.dim()}")
        allowed = FLOATS if self.family in ("A2", "A3") else (torch.float16, torch.float32)
        self._check_dtype("npu_fast_gelu", x, allowed)
        return x * torch.sigmoid(1.702 * x)

    # -------------------------------------------------------------------------------- pixel_shuffle
    def warn_in_pixel_shuffle(self, monkeypatch, other: Optional[str] = None) -> None:
        """Make ``F.pixel_shuffle`` warn like torch_npu's as_strided path (and ``other``, if given).

        Real torch_npu warns from C++ when an as_strided view is taken of a tensor in an internal
        format; here the functional is wrapped so that every call warns (monkeypatch undoes it).
        """
        original = F.pixel_shuffle

        def pixel_shuffle(x, upscale_factor):
            warnings.warn(AS_STRIDED_TEXT, UserWarning)
            if other is not None:
                warnings.warn(other, UserWarning)
            return original(x, upscale_factor)

        monkeypatch.setattr(F, "pixel_shuffle", pixel_shuffle)


def _to_bnsd(t: torch.Tensor, layout: str, heads: int, op: str) -> torch.Tensor:
    if layout == "BNSD":
        need = 4
    elif layout == "BSND":
        need = 4
    else:
        need = 3
    if t.dim() != need:
        raise ContractError(f"{op}: layout {layout} needs {need}-D tensors, got shape {tuple(t.shape)}")
    if layout == "BNSD":
        return t
    if layout == "BSND":
        return t.transpose(1, 2)
    if layout == "BSH":
        B, S, H = t.shape
        return t.reshape(B, S, heads, H // heads).transpose(1, 2)
    S, B, H = t.shape  # SBH
    return t.reshape(S, B, heads, H // heads).permute(1, 2, 0, 3)


def _from_bnsd(out: torch.Tensor, layout: str, shape) -> torch.Tensor:
    if layout == "BNSD":
        return out.contiguous()
    if layout == "BSND":
        return out.transpose(1, 2).contiguous()
    if layout == "BSH":
        return out.transpose(1, 2).reshape(shape).contiguous()
    return out.permute(2, 0, 1, 3).reshape(shape).contiguous()


def _valid_rotary_broadcast(x_shape, r_shape, mode: str) -> bool:
    """Whether cos/sin of ``r_shape`` is one of the documented broadcasts of a 4-D input."""
    if len(r_shape) != 4 or r_shape[-1] != x_shape[-1]:
        return False
    a, b, c, _ = x_shape
    # BNSD -> 11SD/B1SD/BNSD, BSND -> 1S1D/BS1D/BSND, SBND -> S11D/SB1D/SBND; the position axis is
    # (BNSD: c, BSND: b, SBND: a). 'interleave' allows only the first (11SD/1S1D/S11D) form.
    if mode == "interleave":
        allowed = {(1, 1, c), (1, b, 1), (a, 1, 1)}
    else:
        allowed = {(1, 1, c), (a, 1, c), (a, b, c), (1, b, 1), (a, b, 1), (a, 1, 1)}
    return tuple(r_shape[:3]) in allowed


# Documented signatures (facts §1.2, §1.4-1.7, torch_npu.npu); defaults as in torch_npu.
def _sig(fn) -> inspect.Signature:
    return inspect.signature(fn)


def _rms_norm(self, gamma, epsilon=1e-06): ...
def _swiglu(input, dim=-1): ...
def _fusion_attention(query, key, value, head_num, input_layout, pse=None, padding_mask=None, atten_mask=None,
                      scale=1.0, keep_prob=1.0, pre_tockens=2147483647, next_tockens=2147483647, inner_precise=0,
                      prefix=None, actual_seq_qlen=None, actual_seq_kvlen=None, sparse_mode=0,
                      gen_mask_parallel=True, sync=False, softmax_layout="", sink=None): ...
def _rotary_mul(input, r1, r2, rotary_mode="half", rotate=None): ...
def _fast_gelu(input): ...
def _device_function(device=None): ...
def _set_option(option): ...
def _set_compile_mode(jit_compile=True): ...


_SIG_RMS = _sig(_rms_norm)
_SIG_SWIGLU = _sig(_swiglu)
_SIG_FA = _sig(_fusion_attention)
_SIG_ROTARY = _sig(_rotary_mul)
_SIG_FAST_GELU = _sig(_fast_gelu)
_SIG_DEVICE = _sig(_device_function)  # synchronize, reset_peak_memory_stats
_SIG_SET_OPTION = _sig(_set_option)
_SIG_COMPILE_MODE = _sig(_set_compile_mode)


# ------------------------------------------------------------------------------------ installing
def rename_privateuse1_backend() -> None:
    """Rename torch's privateuse1 backend to ``"npu"``, as ``import torch_npu`` does, so that
    ``torch.device("npu")`` and ``torch.is_autocast_enabled("npu")`` accept the name.

    PERMANENT FOR THE PROCESS: torch cannot undo the rename and monkeypatch does not restore it. From
    the first test that asks for it on, ``torch.device("npu")`` parses in every later test of the
    same pytest run; before it, it fails. So a test that needs the name must ask for it itself, and
    no test may rely on the name being unknown. With no kernels registered under it, nothing else in
    torch changes. Skips the calling test when the backend already has another name.
    """
    backend = torch._C._get_privateuse1_backend_name()
    if backend == "privateuseone":
        torch.utils.rename_privateuse1_backend("npu")
    elif backend != "npu":
        pytest.skip(f"privateuse1 backend already renamed to {backend!r}")


def install(monkeypatch, *, rename_backend: bool = False, **config) -> NpuStandin:
    """Put a stand-in into ``sys.modules["torch_npu"]``, ``torch.npu`` and ascend.npu's import cache.

    ``config`` sets :class:`NpuStandin` fields (``soc``, ``name``, ``device_count``, ``version``, ...).
    ``monkeypatch`` undoes ``sys.modules`` and ``torch.npu`` at teardown; the caller resets the import
    cache (the fixtures do). ``rename_backend=True`` also calls :func:`rename_privateuse1_backend`,
    which is permanent for the process; only code that builds an NPU ``torch.device`` needs it (the
    device layer does, the fusion layer takes device strings and never builds one).
    """
    if rename_backend:
        rename_privateuse1_backend()
    standin = NpuStandin(**config)
    monkeypatch.setitem(sys.modules, "torch_npu", standin.module)
    monkeypatch.setattr(torch, "npu", standin.npu, raising=False)
    npu_mod._reset_cache()
    module, reason = npu_mod.import_torch_npu()  # caches the stand-in as "the" torch_npu
    assert module is standin.module, reason
    return standin


def hide(monkeypatch) -> None:
    """torch_npu not installed, even on a host where it is (``None`` in sys.modules blocks the import)."""
    monkeypatch.setitem(sys.modules, "torch_npu", None)
    monkeypatch.delattr(torch, "npu", raising=False)
    npu_mod._reset_cache()


class BrokenImport(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An installed torch_npu whose import raises ``error``, like one without CANN; counts the tries."""

    def __init__(self, error: BaseException):
        self.error = error
        self.imports = 0

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name == "torch_npu" else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        self.imports += 1
        raise self.error


def break_import(monkeypatch, error: BaseException) -> BrokenImport:
    """Make ``import torch_npu`` raise ``error`` (monkeypatch removes the finder at teardown)."""
    finder = BrokenImport(error)
    monkeypatch.delitem(sys.modules, "torch_npu", raising=False)
    monkeypatch.delattr(torch, "npu", raising=False)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    npu_mod._reset_cache()
    return finder


@pytest.fixture
def make_npu_standin(monkeypatch):
    """Factory: ``make_npu_standin(soc=202, name="Ascend310P3")`` installs a stand-in for that SoC;
    takes :func:`install`'s keywords (``rename_backend=True`` for ``torch.device("npu")``)."""

    def make(**config) -> NpuStandin:
        return install(monkeypatch, **config)

    yield make
    npu_mod._reset_cache()


@pytest.fixture
def npu_standin(make_npu_standin) -> NpuStandin:
    """A stand-in torch_npu: two Ascend910B3 (SoC 223, Atlas A2), removed after the test; the
    privateuse1 backend is not renamed."""
    return make_npu_standin()


@pytest.fixture
def no_torch_npu(monkeypatch):
    """torch_npu not installed, even on a host where it is; the import cache is reset around the test."""
    hide(monkeypatch)
    yield
    npu_mod._reset_cache()
