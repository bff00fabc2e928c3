"""Load-time operator fusion: swap VTP modules for Ascend fused-operator versions, per instance.

    from ascend.fusion import apply_fusions
    report = apply_fusions(model, "all", device="npu", record_path="fusion_result.json")
    print(report.summary())

A **rule** (:class:`FusionRule`) names one module type to replace (``rmsnorm``: ``vtp.layers.norm.RMSNorm``),
optional dotted-name globs that restrict it (``trunk.blocks.*.norm1``), how to build the replacement
from an instance (:mod:`ascend.fused_ops`, same parameters under the same state-dict keys), whether
it is exact or an approximation, the SoCs and dtypes it supports, and a ``kernel(target, module)``
decision that returns ``(kernel_name, reason)``: a torch_npu operator (``"torch_npu.npu_rms_norm"``),
an aclnn kernel torch reaches by itself, or ``"fallback: <torch op>"``.

The decision is made **at patch time** from a :class:`Target` (device type, SoC version, dtype) and
stored in each replacement module; ``forward`` then calls the fused operator when the stored kernel
is a ``torch_npu.*`` name, without looking at the tensors' device. Hence:

* ``device=None`` takes the device of the model's parameters; patch *after* ``model.to(device)`` or
  pass ``device=`` explicitly. On CPU every rule falls back to torch math (exact, except ``gelu``).
* ``device="npu"`` reads the SoC from torch_npu (:func:`ascend.npu.soc_version`); ``soc=`` overrides
  it ("Ascend910B3" or 223), which simulates an SoC without torch_npu (``fusion_result.json`` is made
  this way). A model patched for an NPU calls torch_npu in ``forward`` even on CPU tensors: that is
  how the tests drive the NPU code path with the stand-in torch_npu of ``tests/npu_standin.py``.
* Patching never touches classes, and replacements share the original tensors, so a deep copy taken
  before patching (the CPU reference) stays unpatched. Patching is additive: rules not enabled leave
  modules as they are, and patching twice re-decides the kernels of the enabled rules.

The record (``fusion_result.json``, schema ``vtp-fusion-result/1``) is described in
``ascend/FUSION.md``; write it with ``apply_fusions(..., record_path=...)`` or :func:`write_fusion_result`.

CLI (the committed record)::

    python -m ascend.fusion --preset VTP-Small-f16d64 --simulate-soc Ascend910B3 --out fusion_result.json
    python -m ascend.fusion --preset VTP-Small-f16d64 --simulate-soc Ascend910B3 --check fusion_result.json
"""

from __future__ import annotations

if __name__ == "__main__":  # before the first `import torch`: survive a torch_npu install without CANN
    from ascend.npu import prepare_environment

    prepare_environment()

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from vtp.layers.attention import SelfAttention
from vtp.layers.ffn import SwiGLUFFN
from vtp.layers.norm import RMSNorm
from vtp.text import QuickGELU

from . import npu as _npu
from .fused_ops import (
    AscendLayerNorm,
    AscendPixelShuffle,
    AscendQuickGELU,
    AscendRMSNorm,
    AscendSelfAttention,
    AscendSwiGLUFFN,
    TanhGELU,
)

logger = logging.getLogger(__name__)

SCHEMA = "vtp-fusion-result/1"
DEFAULT_CONFIG = Path(__file__).with_name("fusion.yaml")

# ``torch_npu.npu.utils.get_soc_version()`` values (torch_npu csrc/core/npu/NpuVariables.h).
SOC_VERSIONS = {
    "Ascend910PremiumA": 100, "Ascend910ProA": 101, "Ascend910A": 102, "Ascend910ProB": 103, "Ascend910B": 104,
    "Ascend310P1": 200, "Ascend310P2": 201, "Ascend310P3": 202, "Ascend310P4": 203, "Ascend310P5": 204,
    "Ascend310P7": 205,
    "Ascend910B1": 220, "Ascend910B2": 221, "Ascend910B2C": 222, "Ascend910B3": 223, "Ascend910B4": 224,
    "Ascend910B4-1": 225,
    "Ascend310B1": 240, "Ascend310B2": 241, "Ascend310B3": 242, "Ascend310B4": 243,
    "Ascend910_9391": 250, "Ascend910_9392": 251, "Ascend910_9381": 252, "Ascend910_9382": 253,
    "Ascend910_9372": 254, "Ascend910_9362": 255,
    "Ascend950": 260,
}
_SOC_NAMES = {v: k for k, v in SOC_VERSIONS.items()}

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ----------------------------------------------------------------------------------------------
# Target: what the model is patched for


def parse_soc(soc: Union[int, str]) -> Tuple[int, Optional[str]]:
    """``"Ascend910B3"``, ``"910B3"``, ``"223"`` or ``223`` -> ``(223, "Ascend910B3")``; ValueError if unknown."""
    if isinstance(soc, bool):
        raise ValueError(f"SoC must be a name such as 'Ascend910B3' or a version number, got {soc!r}")
    if isinstance(soc, int):
        return soc, _SOC_NAMES.get(soc)
    text = str(soc).strip()
    if text.isdigit():
        return int(text), _SOC_NAMES.get(int(text))
    lowered = {name.lower(): name for name in SOC_VERSIONS}
    name = lowered.get(text.lower()) or lowered.get(f"ascend{text}".lower())
    if name is None:
        raise ValueError(f"unknown SoC {soc!r}: use a torch.npu.get_device_name() value "
                         f"({', '.join(SOC_VERSIONS)}) or a get_soc_version() number")
    return SOC_VERSIONS[name], name


@dataclass(frozen=True)
class Target:
    """What a model is patched for: device type, SoC version (NPU only) and compute dtype.

    ``simulated`` is True when the SoC was given by the caller instead of read from torch_npu.
    """

    device: str
    soc: Optional[int] = None
    soc_name: Optional[str] = None
    dtype: torch.dtype = torch.float32
    simulated: bool = False

    @property
    def is_npu(self) -> bool:
        return self.device == "npu"

    @property
    def family(self) -> Optional[str]:
        """"A2", "A3", "910A", "310P", "310B", "950" or None (see :func:`ascend.npu.soc_family`)."""
        return _npu.soc_family(self.soc)

    @property
    def where(self) -> str:
        """``"Ascend910B3 (SoC 223, A2)"`` for messages."""
        if self.soc is None:
            return "NPU with unknown SoC"
        return f"{self.soc_name or 'SoC'} (SoC {self.soc}, {self.family or 'unknown family'})"

    def to_dict(self) -> dict:
        return {"device": self.device, "soc": self.soc, "soc_name": self.soc_name, "soc_family": self.family,
                "dtype": _dtype_name(self.dtype), "simulated": self.simulated}


def _device_type(device) -> str:
    if isinstance(device, torch.device):
        return device.type
    text = str(device).strip().lower()
    if text == "auto":
        from .device import resolve_device

        return resolve_device("auto").type
    kind = text.split(":", 1)[0]
    if not kind:
        raise ValueError(f"unknown device {device!r}: use 'cpu', 'npu', 'npu:0', 'cuda', 'meta' or 'auto'")
    return kind


def _model_tensor(model: Optional[nn.Module]) -> Optional[torch.Tensor]:
    if model is None:
        return None
    for t in model.parameters():
        if t.is_floating_point():
            return t
    return None


def resolve_target(model: Optional[nn.Module] = None, device=None, soc=None,
                   dtype: Optional[torch.dtype] = None) -> Target:
    """The :class:`Target` for patching ``model``.

    ``device``: None = the device of the model's first floating parameter (cpu when it has none),
    "auto" = :func:`ascend.device.resolve_device`, else a device string or ``torch.device``.
    ``soc`` (NPU only): a name or number that simulates that SoC; when None on an NPU it is read
    from torch_npu, and stays None (every SoC-dependent rule falls back) when torch_npu is missing.
    ``dtype``: the compute dtype the decisions assume; None = the model's parameter dtype.
    """
    first = _model_tensor(model)
    kind = _device_type(device) if device is not None else (first.device.type if first is not None else "cpu")
    dtype = dtype or (first.dtype if first is not None else torch.float32)
    if kind != "npu":
        if soc is not None:
            raise ValueError(f"soc={soc!r} was given but the device is {kind!r}: an SoC applies to device 'npu' only")
        return Target(kind, dtype=dtype)
    if soc is not None:
        number, name = parse_soc(soc)
        return Target("npu", number, name, dtype, simulated=True)
    number = _npu.soc_version()
    name = None
    module = _npu.npu_module()
    if module is not None:
        try:
            name = str(module.get_device_name())
        except Exception as exc:  # no device visible: the name is only cosmetic
            logger.debug("torch.npu.get_device_name failed: %s", exc)
    if number is None:
        logger.warning("patching for npu without a known SoC (%s): SoC-dependent rules fall back",
                       _npu.import_torch_npu()[1] or "get_soc_version unavailable")
    return Target("npu", number, name or _SOC_NAMES.get(number), dtype)


# ----------------------------------------------------------------------------------------------
# Rules

KernelChoice = Tuple[str, str]  # (kernel name, reason)


@dataclass(frozen=True)
class FusionRule:
    """One module swap. ``patterns`` are fnmatch globs on the dotted module name ("*" = any)."""

    name: str
    source: type
    replacement: type
    build: Callable[[nn.Module, str, Target], nn.Module]
    kernel: Callable[[Target, nn.Module], KernelChoice]
    exact: bool
    accuracy: str
    socs: Tuple[str, ...]
    dtypes: Tuple[str, ...]
    patterns: Tuple[str, ...] = ("*",)

    def matches(self, module: nn.Module, name: str) -> bool:
        if not isinstance(module, self.source):
            return False
        return self.patterns == ("*",) or any(fnmatch.fnmatchcase(name, p) for p in self.patterns)

    def with_patterns(self, patterns: Union[str, Sequence[str], None]) -> "FusionRule":
        if patterns is None:
            return self
        if isinstance(patterns, str):
            patterns = (patterns,)
        patterns = tuple(patterns)
        if not patterns or not all(isinstance(p, str) and p for p in patterns):
            raise ValueError(f"rule {self.name!r}: pattern must be a non-empty glob or list of globs, got {patterns!r}")
        return dataclasses.replace(self, patterns=patterns)


def _off_npu(target: Target, torch_op: str) -> KernelChoice:
    return f"fallback: {torch_op}", f"device is {target.device}: the original torch math runs"


def _unknown_soc(torch_op: str) -> KernelChoice:
    return f"fallback: {torch_op}", "NPU SoC unknown (torch_npu could not report get_soc_version)"


def _gelu_kernel(target: Target, module: nn.Module) -> KernelChoice:
    if not target.is_npu:
        return _off_npu(target, "F.gelu(approximate='tanh')")
    return ("aclnnGelu (F.gelu, approximate='tanh')",
            "stock NPU GELU computes the tanh approximation whatever `approximate` says (facts §1.4); the "
            "swap states it, so a CPU run of a model patched the same way computes the same function")


def _layernorm_kernel(target: Target, module: nn.Module) -> KernelChoice:
    if not target.is_npu:
        return _off_npu(target, "F.layer_norm")
    return ("aclnnLayerNorm (F.layer_norm)",
            "native F.layer_norm is the fused aclnnLayerNorm on every SoC (facts §1.10); "
            "npu_layer_norm_eval is planned for deprecation")


_RMS_PAIRS_A2 = frozenset({(torch.float16, torch.float32), (torch.bfloat16, torch.float32),
                           (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                           (torch.float32, torch.float32)})
_RMS_PAIRS_OLD = frozenset({(torch.float16, torch.float16), (torch.float32, torch.float32)})


def rms_norm_dtype_pairs(family: Optional[str]) -> frozenset:
    """(x, gamma) dtype pairs npu_rms_norm accepts on an SoC family (facts §1.2); empty if unsupported."""
    if family in ("A2", "A3"):
        return _RMS_PAIRS_A2
    if family in ("910A", "310P"):
        return _RMS_PAIRS_OLD
    return frozenset()


def _rmsnorm_kernel(target: Target, module: nn.Module) -> KernelChoice:
    torch_op = "RMSNorm torch math (fp32 normalise, cast back, times weight)"
    if not target.is_npu:
        return _off_npu(target, torch_op)
    if target.soc is None:
        return _unknown_soc(torch_op)
    pairs = rms_norm_dtype_pairs(target.family)
    if not pairs:
        return (f"fallback: {torch_op}",
                f"{target.where}: npu_rms_norm is documented for A2, A3, Atlas inference and Atlas training only")
    weight_dtype = module.weight.dtype
    if (target.dtype, weight_dtype) not in pairs:
        return (f"fallback: {torch_op}", f"{target.where}: npu_rms_norm does not take (x {_dtype_name(target.dtype)}, "
                                         f"weight {_dtype_name(weight_dtype)}) there (facts §1.2)")
    dim = module.weight.shape[-1]
    if target.family == "310P" and dim * 2 < 32:
        return f"fallback: {torch_op}", f"{target.where}: the 310P needs a tail axis of at least 32 bytes, got {dim}"
    return ("torch_npu.npu_rms_norm",
            f"{target.where}: supported for (x {_dtype_name(target.dtype)}, weight {_dtype_name(weight_dtype)}); "
            f"epsilon={module.eps:g} passed explicitly (API default 1e-6); output [0] used")


def _swiglu_kernel(target: Target, module: nn.Module) -> KernelChoice:
    torch_op = "SwiGLUFFN torch math (w3(silu(w1 x) * w2 x))"
    if not target.is_npu:
        return _off_npu(target, torch_op)
    if target.soc is None:
        return _unknown_soc(torch_op)
    if target.family != "A2":
        return (f"fallback: {torch_op}",
                f"{target.where}: npu_swiglu's product table lists only Atlas A2 training (facts §1.5)")
    if (module.w1.bias is None) != (module.w2.bias is None):
        return f"fallback: {torch_op}", "w1 and w2 differ in having a bias: cannot be concatenated"
    return ("torch_npu.npu_swiglu",
            f"{target.where}: Atlas A2 (facts §1.5); w1|w2 concatenated into one projection, SiLU-gated w1 "
            "half first, contiguous; the concatenated weight is cached (2·hidden·(dim+1) extra elements)")


def _attention_kernel(target: Target, module: nn.Module) -> KernelChoice:
    sdpa = "F.scaled_dot_product_attention"
    if not target.is_npu:
        return _off_npu(target, sdpa)
    if target.soc is None:
        return _unknown_soc(sdpa)
    head_dim, heads = module.head_dim, module.num_heads
    if target.family in ("A2", "950") and head_dim <= 768 and heads <= 256 and target.dtype in _DTYPE_NAMES:
        return ("torch_npu.npu_fusion_attention",
                f"{target.where}: in npu_fusion_attention's product table (A2 training, 950DT; facts §1.7); "
                f"called explicitly: BNSD, head_num {heads}, scale 1/sqrt({head_dim}) = {head_dim ** -0.5:g}, "
                "keep_prob 1, no mask, output [0]")
    if target.soc >= _npu.SOC_910B1 and target.family != "950":
        if head_dim > 512:
            return (f"fallback: {sdpa} (math path)",
                    f"{target.where}: head_dim {head_dim} > 512, SDPA does not dispatch to FlashAttention "
                    "(facts §1.8)")
        if target.dtype == torch.float32 and head_dim % 4:
            return (f"fallback: {sdpa} (math path)",
                    f"{target.where}: fp32 with head_dim {head_dim} not a multiple of 4 takes SDPA's math path")
        return (f"{sdpa} -> FlashAttention (torch_npu dispatch)",
                f"{target.where}: not in npu_fusion_attention's product table, but SDPA on SoC >= 910B1 with BNSD "
                f"inputs, no mask and head_dim {head_dim} <= 512 dispatches to the same kernel (facts §1.8)")
    return (f"fallback: {sdpa} (math path)",
            f"{target.where}: SoC before 910B1, SDPA takes the math path and npu_fusion_attention is not supported")


def _rope_kernel(target: Target, module: nn.Module) -> KernelChoice:
    torch_op = "rope_apply torch math (bf16, rounded after each op)"
    if not target.is_npu:
        return _off_npu(target, torch_op)
    if target.soc is None:
        return _unknown_soc(torch_op)
    head_dim = module.head_dim
    if target.family in ("A2", "A3"):
        if head_dim % 2 or head_dim >= 896:
            return (f"fallback: {torch_op}",
                    f"{target.where}: npu_rotary_mul needs an even head_dim < 896, got {head_dim}")
        return ("torch_npu.npu_rotary_mul",
                f"{target.where}: rotary_mode 'half' on BNSD non-prefix tokens with cos/sin as [1, 1, S, {head_dim}] "
                "(facts §1.6); rounds once where the original rounds to bf16 after each op")
    if target.family in ("910A", "310P"):
        return (f"fallback: {torch_op}",
                f"{target.where}: the jit_compile path supports head_dim 128 only (got {head_dim}) and VTP's bf16 "
                "rope tables need SoC >= 910B1 (facts §1.6)")
    return f"fallback: {torch_op}", f"{target.where}: not in npu_rotary_mul's product table (A2, A3, 910A, 310P)"


def fast_gelu_dtypes(family: Optional[str]) -> frozenset:
    """Input dtypes npu_fast_gelu accepts on an SoC family (facts §1.4); empty if unsupported."""
    if family in ("A2", "A3"):
        return frozenset({torch.float16, torch.float32, torch.bfloat16})
    if family in ("910A", "310P"):
        return frozenset({torch.float16, torch.float32})
    return frozenset()


def _quick_gelu_kernel(target: Target, module: nn.Module) -> KernelChoice:
    torch_op = "x * sigmoid(1.702 x)"
    if not target.is_npu:
        return _off_npu(target, torch_op)
    if target.soc is None:
        return _unknown_soc(torch_op)
    dtypes = fast_gelu_dtypes(target.family)
    if not dtypes:
        return (f"fallback: {torch_op}",
                f"{target.where}: npu_fast_gelu is documented for A2, A3, Atlas inference and Atlas training only")
    if target.dtype not in dtypes:
        return f"fallback: {torch_op}", f"{target.where}: npu_fast_gelu does not take {_dtype_name(target.dtype)} there"
    return "torch_npu.npu_fast_gelu", f"{target.where}: x / (1 + exp(-1.702 x)) is QuickGELU exactly (facts §1.4)"


def _pixel_shuffle_kernel(target: Target, module: nn.Module) -> KernelChoice:
    if not target.is_npu:
        return "fallback: F.pixel_shuffle", f"device is {target.device}: no torch_npu warning to filter"
    return ("composite pixel_shuffle (view, permute, contiguous copy)",
            "torch 2.13 has no NPU kernel for aten::pixel_shuffle (facts §7); the copy may warn 'current tensor is "
            "running as_strided', which is filtered around this call only and noted once in the log")


def _build_attention(module, kernel, target):
    return AscendSelfAttention.from_module(module, attention_kernel=kernel)


def _build_rope(module, kernel, target):
    return AscendSelfAttention.from_module(module, rope_kernel=kernel)


_ALL_SOCS = ("A2", "A3", "910A", "310P", "310B", "950")
_FLOAT_DTYPES = ("fp32", "fp16", "bf16")

RULES = {
    rule.name: rule
    for rule in (
        FusionRule(
            "gelu", nn.GELU, TanhGELU, lambda m, k, t: TanhGELU.from_module(m, k), _gelu_kernel,
            exact=False,
            accuracy="APPROXIMATION: erf GELU -> tanh GELU, |difference| <= 4.7e-4 per element; stock NPU GELU "
                     "is tanh already, so this matches the NPU (apply it to the CPU reference too)",
            socs=_ALL_SOCS, dtypes=_FLOAT_DTYPES),
        FusionRule(
            "layernorm", nn.LayerNorm, AscendLayerNorm, lambda m, k, t: AscendLayerNorm.from_module(m, k),
            _layernorm_kernel, exact=True,
            accuracy="exact: the same F.layer_norm call (the text tower's cast back to the input dtype is kept)",
            socs=_ALL_SOCS, dtypes=_FLOAT_DTYPES),
        FusionRule(
            "rmsnorm", RMSNorm, AscendRMSNorm,
            lambda m, k, t: AscendRMSNorm.from_module(m, k, rms_norm_dtype_pairs(t.family)),
            _rmsnorm_kernel, exact=True,
            accuracy="exact on CPU (original math); on NPU the fused normalise-and-scale gives ULP-level differences",
            socs=("A2", "A3", "910A", "310P"), dtypes=("fp32", "fp16", "bf16 (A2/A3)")),
        FusionRule(
            "swiglu", SwiGLUFFN, AscendSwiGLUFFN, lambda m, k, t: AscendSwiGLUFFN.from_module(m, k),
            _swiglu_kernel, exact=True,
            accuracy="exact on CPU (original three linears); the fused path's single matmul agrees to ~1e-6 in fp32",
            socs=("A2",), dtypes=_FLOAT_DTYPES),
        FusionRule(
            "attention", SelfAttention, AscendSelfAttention, _build_attention, _attention_kernel, exact=True,
            accuracy="exact on CPU (same SDPA call); FlashAttention's blocked softmax agrees to ~1e-6 in fp32",
            socs=("A2", "950", "A3 (via SDPA)"), dtypes=_FLOAT_DTYPES),
        FusionRule(
            "rope", SelfAttention, AscendSelfAttention, _build_rope, _rope_kernel, exact=True,
            accuracy="exact on CPU; on NPU the fused op rounds to bf16 once where the original rounds after each "
                     "op: rotated q/k may differ by about one bf16 ulp (2^-8 relative)",
            socs=("A2", "A3"), dtypes=_FLOAT_DTYPES),
        FusionRule(
            "quick_gelu", QuickGELU, AscendQuickGELU,
            lambda m, k, t: AscendQuickGELU.from_module(m, k, fast_gelu_dtypes(t.family)),
            _quick_gelu_kernel, exact=True,
            accuracy="exact math (x / (1 + exp(-1.702 x)) = x * sigmoid(1.702 x)); ULP-level differences on NPU",
            socs=("A2", "A3", "910A", "310P"), dtypes=("fp32", "fp16", "bf16 (A2/A3)")),
        FusionRule(
            "pixel_shuffle", nn.PixelShuffle, AscendPixelShuffle,
            lambda m, k, t: AscendPixelShuffle.from_module(m, k, filter_as_strided=t.is_npu),
            _pixel_shuffle_kernel, exact=True,
            accuracy="exact: the same F.pixel_shuffle call; only torch_npu's as_strided warning is filtered",
            socs=_ALL_SOCS, dtypes=_FLOAT_DTYPES),
    )
}
RULE_NAMES = tuple(RULES)


# ----------------------------------------------------------------------------------------------
# Fusion spec


def _unknown(names: Iterable[str], where: str) -> ValueError:
    names = sorted(set(names))
    return ValueError(f"{where}: unknown fusion rule(s) {', '.join(repr(n) for n in names)}; "
                      f"known rules: {', '.join(RULE_NAMES)} (or 'all', 'none', '-<rule>', a YAML file)")


def _looks_like_file(text: str) -> bool:
    return text.lower().endswith((".yaml", ".yml")) or os.sep in text or os.path.isfile(text)


def _from_tokens(tokens: Iterable[str], where: str) -> List[FusionRule]:
    """Rules of a comma list: names to apply, or only names to leave out ("-gelu": all but gelu), with
    "all" and "none" as starting points; names to apply and to leave out in one list are refused."""
    items = [t.strip() for t in tokens if t.strip()]
    drops = [t[1:].strip() for t in items if t.startswith("-")]
    keeps = [t for t in items if not t.startswith("-") and t not in ("all", "none", "auto")]
    bad = [n for n in drops + keeps if n not in RULES]
    if bad:
        raise _unknown(bad, where)
    if drops and keeps:
        raise ValueError(f"{where}: names rules to apply ({', '.join(keeps)}) and rules to leave out "
                         f"({', '.join('-' + n for n in drops)}); use one form: 'gelu,layernorm' applies only "
                         "those, '-gelu,-rope' applies all but those")
    if drops and "none" in items:
        raise ValueError(f"{where}: 'none' with rules to leave out ({', '.join('-' + n for n in drops)}) leaves "
                         "nothing to leave out; use '-gelu,...' alone for all but those rules, or 'none'")
    if "auto" in items and (keeps or "all" in items or "none" in items):
        raise ValueError(f"{where}: 'auto' is a whole spec (the exact rules), optionally with rules to leave out "
                         "('auto,-rope'); it does not combine with rule names, 'all' or 'none'")
    if "auto" in items:  # the rules that compute the original function: every rule but the approximations
        chosen = [n for n in RULE_NAMES if RULES[n].exact and n not in drops]
    elif drops:  # only exclusions: start from every rule (with or without an explicit "all")
        chosen = [n for n in RULE_NAMES if n not in drops]
    elif "all" in items:
        chosen = list(RULE_NAMES)
    else:
        chosen = keeps
    return [RULES[n] for n in RULE_NAMES if n in chosen]


def _from_mapping(data, where: str) -> List[FusionRule]:
    if not isinstance(data, Mapping) or "rules" not in data:
        raise ValueError(f"{where}: expected a mapping with a 'rules' key, e.g. rules: {{gelu: true}}")
    extra = set(data) - {"rules", "version"}
    if extra:
        raise ValueError(f"{where}: unknown top-level key(s) {', '.join(sorted(map(str, extra)))}; "
                         "allowed: rules, version")
    rules = data["rules"] or {}
    if not isinstance(rules, Mapping):
        raise ValueError(f"{where}: 'rules' must map rule names to true/false or {{enabled, pattern}}")
    unknown = [str(n) for n in rules if n not in RULES]
    if unknown:
        raise _unknown(unknown, where)
    selected = {}
    for name, value in rules.items():
        if isinstance(value, bool):
            enabled, pattern = value, None
        elif isinstance(value, Mapping):
            keys = set(value) - {"enabled", "pattern"}
            if keys:
                raise ValueError(f"{where}: rule {name!r} has unknown key(s) {', '.join(sorted(map(str, keys)))}; "
                                 "allowed: enabled, pattern")
            enabled = value.get("enabled", True)
            if not isinstance(enabled, bool):
                raise ValueError(f"{where}: rule {name!r}: enabled must be true or false, got {enabled!r}")
            pattern = value.get("pattern")
            if pattern is not None and not isinstance(pattern, str):
                pattern = list(pattern)
        else:
            raise ValueError(f"{where}: rule {name!r} must be true, false or {{enabled, pattern}}, got {value!r}")
        if enabled:
            selected[name] = RULES[name].with_patterns(pattern)
    return [selected[n] for n in RULE_NAMES if n in selected]


def load_fusion_config(path: Union[str, os.PathLike]) -> List[FusionRule]:
    """The enabled rules of a YAML rule config (see ``ascend/fusion.yaml``), read with omegaconf."""
    from omegaconf import OmegaConf

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"fusion config {str(path)!r} not found; see {DEFAULT_CONFIG} for the format")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return _from_mapping(data, str(path))


def parse_fusion_spec(spec=None) -> List[FusionRule]:
    """The enabled rules, in the canonical order, from a fusion spec.

    ``spec`` is one of:

    - None or "all": every rule; "none" or "": no rule; "auto": the exact rules only (``FusionRule.exact``:
      every rule but approximations such as ``gelu``'s tanh GELU), "auto,-rope" the same without rope;
    - a comma list of rules to apply, "gelu,layernorm" (only those);
    - a comma list of rules to leave out, each with a leading "-": "-gelu,-rope" is every rule but gelu
      and rope ("all,-gelu,-rope" says the same);
    - a list of names or :class:`FusionRule` objects (the same forms, one item each);
    - a path to a YAML file (``rules: {gelu: true, rmsnorm: {enabled: true, pattern: "trunk.*"}}``), or the
      same as a mapping / omegaconf DictConfig.

    Raises ValueError for an unknown rule name (listing the known ones) and for a list that names rules
    both to apply and to leave out ("gelu,-rope": its meaning is unclear).
    """
    if spec is None:
        return [RULES[n] for n in RULE_NAMES]
    if isinstance(spec, os.PathLike):
        return load_fusion_config(spec)
    if isinstance(spec, str):
        if _looks_like_file(spec.strip()) and "," not in spec:
            return load_fusion_config(spec.strip())
        return _from_tokens(spec.split(","), f"fusion spec {spec!r}")
    if isinstance(spec, Mapping) or type(spec).__name__ == "DictConfig":
        if type(spec).__name__ == "DictConfig":
            from omegaconf import OmegaConf

            spec = OmegaConf.to_container(spec, resolve=True)
        return _from_mapping(spec, "fusion config")
    if isinstance(spec, (list, tuple)):
        custom = [r for r in spec if isinstance(r, FusionRule)]
        names = [r for r in spec if not isinstance(r, FusionRule)]
        if any(not isinstance(n, str) for n in names):
            raise ValueError(f"fusion spec list must hold rule names or FusionRule objects, got {spec!r}")
        by_name = {r.name: r for r in _from_tokens(names, f"fusion spec {list(names)!r}")}
        by_name.update({r.name: r for r in custom})
        order = list(RULE_NAMES) + [r.name for r in custom if r.name not in RULES]
        return [by_name[n] for n in order if n in by_name]
    raise ValueError(f"fusion spec must be 'all', 'none', a comma list of rules, a list or a YAML path, got {spec!r}")


# ----------------------------------------------------------------------------------------------
# The walk (DINOv3's named_replace contract) and the report


def replace_modules(fn: Callable[..., nn.Module], module: nn.Module, name: str = "", depth_first: bool = True,
                    include_root: bool = False) -> nn.Module:
    """Call ``fn(module=child, name=dotted_name)`` on every submodule and put the result in its place.

    The contract of DINOv3's ``named_replace``: children are visited recursively through
    ``named_children()``; with ``depth_first`` (the default) a module's children are replaced before
    the module itself (post-order), otherwise before them; the root goes through ``fn`` only with
    ``include_root``. Returns the root (or what ``fn`` made of it).
    """
    if include_root and not depth_first:
        module = fn(module=module, name=name)
    for child_name, child in list(module.named_children()):
        dotted = f"{name}.{child_name}" if name else child_name
        new = replace_modules(fn, child, dotted, depth_first=depth_first, include_root=True)
        if new is not child:
            setattr(module, child_name, new)
    if include_root and depth_first:
        module = fn(module=module, name=name)
    return module


@dataclass
class Hit:
    """One replaced module: dotted name, type before this patch, and the kernel decision."""

    module: str
    original_type: str
    kernel: str
    reason: str


@dataclass
class RuleResult:
    rule: FusionRule
    enabled: bool
    hits: List[Hit] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.hits)

    @property
    def modules(self) -> List[str]:
        return [h.module for h in self.hits]

    @property
    def kernels(self) -> dict:
        """{kernel name: number of modules} for this rule."""
        out: dict = {}
        for h in self.hits:
            out[h.kernel] = out.get(h.kernel, 0) + 1
        return out

    def to_dict(self) -> dict:
        rule = self.rule
        out = {
            "name": rule.name,
            "enabled": self.enabled,
            "exact": rule.exact,
            "accuracy": rule.accuracy,
            "pattern": {"type": _qualname(rule.source), "glob": list(rule.patterns)},
            "replacement_type": _qualname(rule.replacement),
            "supported": {"socs": list(rule.socs), "dtypes": list(rule.dtypes)},
            "count": self.count,
            "original_types": {},
            "kernel": None,
            "reason": None,
        }
        for h in self.hits:
            out["original_types"][h.original_type] = out["original_types"].get(h.original_type, 0) + 1
        groups: dict = {}
        for h in self.hits:
            groups.setdefault((h.kernel, h.reason), []).append(h.module)
        if len(groups) == 1:
            (out["kernel"], out["reason"]), = groups.keys()
        elif groups:
            out["kernel"], out["reason"] = "mixed", "the decision differs between modules: see decisions"
            out["decisions"] = [{"kernel": k, "reason": r, "count": len(m), "modules": m}
                                for (k, r), m in groups.items()]
        elif not self.enabled:
            out["reason"] = "rule not enabled"
        else:
            out["reason"] = "no module matched"
        out["modules"] = self.modules
        return out


def model_identity(model: nn.Module) -> dict:
    """Preset (when built from one), config source and hash, a short config summary, weights source."""
    config = getattr(model, "config", None)
    out = {"class": _qualname(type(model)), "preset": None, "config_source": None, "config_sha256": None,
           "summary": None, "weights_source": getattr(model, "weights_source", None)}
    if config is not None and hasattr(config, "to_json_string"):
        source = config.source or None
        out["preset"] = source[len("preset "):] if source and source.startswith("preset ") else None
        out["config_source"] = source
        out["config_sha256"] = hashlib.sha256(config.to_json_string().encode("utf-8")).hexdigest()
        c = config
        out["summary"] = {
            "vision": f"{c.vision_embed_dim}d x{c.vision_depth} h{c.vision_num_heads} {c.vision_ffn_layer} "
                      f"{c.vision_norm_layer}{' qk_norm' if c.vision_use_qk_norm else ''}",
            "decoder": (f"{c.decoder_embed_dim}d x{c.decoder_depth} h{c.decoder_num_heads} {c.decoder_ffn_layer} "
                        f"{c.decoder_norm_layer}{' qk_norm' if c.decoder_use_qk_norm else ''}"
                        if c.train_reconstruction else None),
            "text": (f"{c.text_embed_dim}d x{c.text_depth} h{c.text_num_heads} "
                     f"{'quick_gelu' if c.text_quick_gelu else 'gelu'}" if c.train_clip else None),
            "bottleneck": c.vision_feature_bottleneck,
        }
    return out


def _environment(target: Target) -> dict:
    if target.simulated:
        return {"torch": None, "torch_npu": None,
                "note": "simulated SoC: versions left out so that the record is reproducible"}
    module = _npu.import_torch_npu()[0] if target.is_npu else None
    return {"torch": torch.__version__, "torch_npu": getattr(module, "__version__", None) if module else None}


@dataclass
class FusionReport:
    """What :func:`named_replace` did; ``to_dict()`` is the ``fusion_result.json`` record."""

    target: Target
    rules: List[RuleResult]
    model: dict
    environment: dict

    def rule(self, name: str) -> RuleResult:
        for r in self.rules:
            if r.rule.name == name:
                return r
        raise KeyError(f"no rule {name!r} in this report; rules: {', '.join(r.rule.name for r in self.rules)}")

    def count(self, name: str) -> int:
        return self.rule(name).count

    def modules(self, name: str) -> List[str]:
        return self.rule(name).modules

    @property
    def enabled(self) -> List[str]:
        return [r.rule.name for r in self.rules if r.enabled]

    @property
    def patched_modules(self) -> List[str]:
        """Distinct dotted names of the modules replaced (attention and rope share one module)."""
        seen: dict = {}
        for r in self.rules:
            for m in r.modules:
                seen.setdefault(m, None)
        return list(seen)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "target": self.target.to_dict(),
            "environment": self.environment,
            "fusion": {"enabled": self.enabled, "modules_patched": len(self.patched_modules)},
            "rules": [r.to_dict() for r in self.rules],
        }

    def summary(self) -> str:
        """One line per rule: ``rmsnorm: 25 modules -> torch_npu.npu_rms_norm``."""
        t = self.target
        head = f"fusion for {t.device}" + (f" {t.where}" if t.is_npu else "") + f", {_dtype_name(t.dtype)}"
        lines = [head]
        for r in self.rules:
            if not r.enabled:
                lines.append(f"  {r.rule.name}: off")
                continue
            kernels = ", ".join(f"{k} ({n})" for k, n in r.kernels.items()) or "-"
            lines.append(f"  {r.rule.name}: {r.count} module(s) -> {kernels}")
        return "\n".join(lines)


def named_replace(model: nn.Module, rules=None, device=None, *, soc=None,
                  dtype: Optional[torch.dtype] = None) -> FusionReport:
    """Replace, in place, every submodule of ``model`` that an enabled rule matches; return the report.

    ``rules``: anything :func:`parse_fusion_spec` takes (None = all). ``device``/``soc``/``dtype``:
    see :func:`resolve_target`; the kernel decisions are stored in the replacement modules. Rules are
    applied in the canonical order on each module, children before parents (post-order). The root
    module itself is never replaced.
    """
    selected = parse_fusion_spec(rules)
    target = resolve_target(model, device, soc, dtype)
    results = {r.name: RuleResult(r, True) for r in selected}

    def swap(module: nn.Module, name: str) -> nn.Module:
        original = _qualname(type(module))
        for rule in selected:
            if rule.matches(module, name):
                kernel, reason = rule.kernel(target, module)
                module = rule.build(module, kernel, target)
                results[rule.name].hits.append(Hit(name, original, kernel, reason))
        return module

    replace_modules(swap, model)
    ordered = [results.get(n) or RuleResult(RULES[n], False) for n in RULE_NAMES]
    ordered += [r for n, r in results.items() if n not in RULES]
    report = FusionReport(target, ordered, model_identity(model), _environment(target))
    logger.info("patched %d module(s) for %s: %s", len(report.patched_modules), target.device,
                ", ".join(f"{r.rule.name}={r.count}" for r in ordered if r.enabled) or "no rule enabled")
    return report


def apply_fusions(model: nn.Module, fusion="all", device=None, record_path=None, *, soc=None,
                  dtype: Optional[torch.dtype] = None) -> FusionReport:
    """Patch ``model`` with the rules of ``fusion`` for ``device``; optionally write the record.

    ``fusion``: "all" | "none" | "gelu,layernorm,..." | a list | a YAML path (see :func:`parse_fusion_spec`).
    ``record_path``: where to write ``fusion_result.json`` (atomically), or None.
    """
    report = named_replace(model, fusion, device, soc=soc, dtype=dtype)
    if record_path is not None:
        write_fusion_result(report, record_path)
    return report


def write_fusion_result(report: FusionReport, path: Union[str, os.PathLike]) -> Path:
    """Write the record atomically (temporary file in the same folder, then ``os.replace``)."""
    from vtp.io_utils import atomic_write_json

    path = atomic_write_json(path, report.to_dict())
    logger.info("fusion record written to %s", path)
    return path


def load_fusion_result(path: Union[str, os.PathLike]) -> dict:
    """Read a record and check its schema; ValueError names the file and what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable fusion record ({exc})") from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith("vtp-fusion-result/"):
        raise ValueError(f"{path}: no 'schema': 'vtp-fusion-result/N' key: not a fusion record")
    if schema != SCHEMA:
        raise ValueError(f"{path}: schema {schema!r}, this kit reads {SCHEMA!r}")
    return data


def fusion_record_for_preset(preset: str = "VTP-Small-f16d64", soc: Union[int, str] = "Ascend910B3",
                             fusion="all", dtype: torch.dtype = torch.float32) -> FusionReport:
    """Patch a preset built on the meta device (no memory, ~50 ms) for a simulated NPU SoC.

    Needs no torch_npu: the decisions depend only on the device type, the SoC and the dtype.
    """
    from vtp import VTPConfig, VTPModel

    with torch.device("meta"):
        model = VTPModel(VTPConfig.from_preset(preset))
    return named_replace(model, fusion, "npu", soc=soc, dtype=dtype)


def _first_difference(a, b, path: str = "") -> Optional[str]:
    if type(a) is not type(b):
        return f"{path or '/'}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for key in list(a) + [k for k in b if k not in a]:
            if key not in a or key not in b:
                return f"{path}/{key}: present on one side only"
            diff = _first_difference(a[key], b[key], f"{path}/{key}")
            if diff:
                return diff
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _first_difference(x, y, f"{path}/{i}")
            if diff:
                return diff
        return None if len(a) == len(b) else f"{path}: {len(a)} items != {len(b)} items"
    return None if a == b else f"{path}: {a!r} != {b!r}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ascend.fusion",
        description="Patch a VTP preset (built on the meta device) with the fusion rules and write the record.",
        epilog="example: python -m ascend.fusion --preset VTP-Small-f16d64 --simulate-soc Ascend910B3 "
               "--out fusion_result.json   (add --check FILE to compare with a committed record; exit 1 if "
               "it differs)",
    )
    parser.add_argument("--preset", default="VTP-Small-f16d64", help="model preset (default %(default)s)")
    parser.add_argument("--fusion", default="all", help="'all', 'none', 'gelu,layernorm', 'all,-gelu' or a YAML file")
    parser.add_argument("--simulate-soc", metavar="SOC",
                        help="patch for this NPU SoC (e.g. Ascend910B3) without torch_npu; otherwise the SoC "
                             "of the visible NPU is read from torch_npu")
    parser.add_argument("--dtype", choices=sorted(_DTYPE_NAMES.values()), default="fp32",
                        help="compute dtype the decisions assume (default %(default)s)")
    parser.add_argument("--out", help="write the record here (atomically)")
    parser.add_argument("--check", metavar="FILE", help="compare the regenerated record with FILE")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    dtype = {v: k for k, v in _DTYPE_NAMES.items()}[args.dtype]
    try:
        if args.simulate_soc is None and _npu.soc_version() is None:
            raise ValueError(f"no NPU SoC to patch for ({_npu.import_torch_npu()[1] or 'get_soc_version failed'}): "
                             "pass --simulate-soc, e.g. --simulate-soc Ascend910B3")
        report = fusion_record_for_preset(args.preset, args.simulate_soc, args.fusion, dtype) \
            if args.simulate_soc is not None else _record_on_device(args.preset, args.fusion, dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_fusion_result(report, args.out)
    if args.check:
        try:
            committed = load_fusion_result(args.check)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        diff = _first_difference(report.to_dict(), committed)
        if diff:
            print(f"DIFFERS from {args.check}: {diff}; regenerate with --out {args.check}")
            return 1
        print(f"OK: {args.check} matches the regenerated record")
    print(report.summary())
    return 0


def _record_on_device(preset: str, fusion, dtype: torch.dtype) -> FusionReport:
    from vtp import VTPConfig, VTPModel

    with torch.device("meta"):
        model = VTPModel(VTPConfig.from_preset(preset))
    return named_replace(model, fusion, "npu", dtype=dtype)


if __name__ == "__main__":
    sys.exit(main())
