"""Replacement modules of the load-time fusion rules (:mod:`ascend.fusion`), one class per rule.

Every class subclasses the module it replaces and keeps its parameters, buffers and submodules under
the same attribute names, so ``state_dict()`` keys, shapes and values do not change and an original
checkpoint loads into a patched model. A replacement is made from an existing instance with
:func:`clone_as`: a new object of the replacement class that *shares* the original's parameters and
submodules (nothing is copied or allocated), so patching is cheap and the original instance, and any
deep copy of the model taken before, stay exactly as they were. Classes are never monkeypatched.

Which kernel runs is decided once, at patch time, and stored on the instance (``kernel`` or, for
attention, ``attention_kernel`` / ``rope_kernel``): a name starting with ``"torch_npu."`` means
``forward`` calls that torch_npu operator; anything else (``"fallback: ..."`` or an aclnn kernel
that torch reaches by itself) means ``forward`` runs the original torch math. ``forward`` never looks
at the tensor's device, which is what lets the tests drive the NPU code path with CPU tensors and
the stand-in torch_npu of ``tests/npu_standin.py``. A few per-call limits that depend on the input
(dtype pairs, batch and head counts for RoPE) are checked in ``forward``; outside them the module runs the
torch math for that call.

torch_npu itself is obtained through :func:`ascend.npu.import_torch_npu` on each fused call (cached),
never stored on a module, so patched models stay deep-copyable and picklable.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from vtp.layers.attention import SelfAttention
from vtp.layers.ffn import SwiGLUFFN
from vtp.layers.norm import RMSNorm
from vtp.layers.rope import no_autocast
from vtp.text import LayerNorm as TextLayerNorm
from vtp.text import QuickGELU

from . import npu as _npu

logger = logging.getLogger(__name__)

NPU_OP_PREFIX = "torch_npu."

# torch_npu's warning when an as_strided view is taken of a tensor in an internal format (facts §7).
AS_STRIDED_WARNING = re.compile(r"current tensor is running as_strided")
AS_STRIDED_NOTE = (
    "pixel_shuffle: filtered torch_npu's 'current tensor is running as_strided' warning. "
    "aten::pixel_shuffle has no NPU kernel in torch 2.13 and runs as view -> permute -> contiguous copy; "
    "the warning concerns in-place writes to the returned view, which VTP never does. If NPU and CPU "
    "images disagree, set torch.npu.config.allow_internal_format = False (ascend.device.ascend_options)"
)
_notes_logged: set = set()


def calls_npu_op(kernel: Optional[str]) -> bool:
    """True when a kernel decision means "forward calls a torch_npu operator"."""
    return kernel is not None and kernel.startswith(NPU_OP_PREFIX)


def torch_npu_ops():
    """The torch_npu module (real, or the test stand-in); RuntimeError with the reason when missing."""
    module, reason = _npu.import_torch_npu()
    if module is None:
        raise RuntimeError(
            f"this module was patched for an NPU and calls torch_npu fused operators, but torch_npu is not "
            f"usable here ({reason}); patch the model for the device it runs on, e.g. "
            "apply_fusions(model, fusion, device='cpu')"
        )
    return module


def clone_as(module: nn.Module, cls: type, **attributes) -> nn.Module:
    """A new ``cls`` instance with ``module``'s state: same parameters, buffers, submodules and hooks.

    The instance dictionary is copied one level deep (the ``_parameters``/``_buffers``/``_modules``
    and hook dictionaries are new dicts holding the same objects), so the new module shares every
    tensor with ``module`` while later changes to either module's structure stay separate. ``cls``
    must accept the attributes of ``type(module)``, i.e. be a subclass of it or of its base.
    """
    new = cls.__new__(cls)
    for key, value in module.__dict__.items():
        new.__dict__[key] = value.copy() if isinstance(value, dict) else value
    for key, value in attributes.items():
        setattr(new, key, value)
    return new


def _version(t: torch.Tensor) -> int:
    """The tensor's in-place version counter; -1 for inference tensors, which have none."""
    try:
        return t._version
    except RuntimeError:
        return -1


def _note_once(key: str, text: str) -> None:
    if key not in _notes_logged:
        _notes_logged.add(key)
        logger.info("%s", text)


# ----------------------------------------------------------------------------------------------
# gelu


class TanhGELU(nn.GELU):
    """GELU with the tanh approximation, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). APPROXIMATION.

    Rule ``gelu`` (nn.GELU -> TanhGELU): |tanh - erf GELU| ≤ 4.7e-4 per element. On NPU, stock
    ``F.gelu`` ignores ``approximate`` and always computes tanh (aclnnGelu, facts §1.4), so this swap
    changes nothing there; it makes the *CPU* side compute what the NPU computes, for like-for-like
    comparisons. Supported wherever F.gelu is (NPU: bf16/fp16/fp32).
    """

    @classmethod
    def from_module(cls, module: nn.GELU, kernel: str) -> "TanhGELU":
        return clone_as(module, cls, approximate="tanh", kernel=kernel)


# ----------------------------------------------------------------------------------------------
# layernorm


class AscendLayerNorm(nn.LayerNorm):
    """LayerNorm through ``F.layer_norm`` (aclnnLayerNorm on NPU, facts §1.10). Exact.

    Rule ``layernorm``: replaces ``nn.LayerNorm`` and the text tower's ``vtp.text.LayerNorm``; for the
    latter ``cast_output`` is set and the output is cast back to the input dtype, as the original does.
    Same ``weight``/``bias`` parameters. NPU dtypes: bf16/fp16/fp32, every SoC.
    """

    cast_output: bool = False
    kernel: str = "fallback: F.layer_norm"

    @classmethod
    def from_module(cls, module: nn.LayerNorm, kernel: str) -> "AscendLayerNorm":
        cast = isinstance(module, TextLayerNorm) or bool(getattr(module, "cast_output", False))
        return clone_as(module, cls, cast_output=cast, kernel=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return y.to(x.dtype) if self.cast_output else y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, cast_output={self.cast_output}"


# ----------------------------------------------------------------------------------------------
# rmsnorm


class AscendRMSNorm(RMSNorm):
    """RMSNorm through ``torch_npu.npu_rms_norm(x, weight, epsilon=eps)[0]`` (facts §1.2).

    Exact on CPU (the original math). On NPU the fused op normalises and scales in one kernel, where
    the original casts the normalised value back to x's dtype *before* multiplying by the weight:
    expect ULP-level differences (none for fp32 x with an fp32 weight beyond summation order).
    ``eps`` is always passed: the API default is 1e-6, VTP's RMSNorm uses 1e-5. The output is cast to
    ``promote_types(x.dtype, weight.dtype)``, the dtype the original returns (bf16 x, fp32 weight ->
    fp32). A call whose (x, weight) dtype pair is not in ``dtype_pairs`` (set at patch time from the
    SoC: A2/A3 (fp16|bf16, fp32), (fp16, fp16), (bf16, bf16), (fp32, fp32); 910A/310P only the
    equal-dtype fp16/fp32 pairs) or whose x has fewer than 2 dims runs the torch math instead.
    """

    kernel: str = "fallback: RMSNorm torch math"
    dtype_pairs: frozenset = frozenset()

    @classmethod
    def from_module(cls, module: RMSNorm, kernel: str, dtype_pairs=frozenset()) -> "AscendRMSNorm":
        return clone_as(module, cls, kernel=kernel, dtype_pairs=frozenset(dtype_pairs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if calls_npu_op(self.kernel) and 2 <= x.dim() <= 8 and (x.dtype, self.weight.dtype) in self.dtype_pairs:
            y = torch_npu_ops().npu_rms_norm(x, self.weight, epsilon=self.eps)[0]
            return y.to(torch.promote_types(x.dtype, self.weight.dtype))
        return super().forward(x)


# ----------------------------------------------------------------------------------------------
# swiglu


class AscendSwiGLUFFN(SwiGLUFFN):
    """SwiGLU FFN as one matmul plus ``torch_npu.npu_swiglu`` (facts §1.5). Within ~1e-6 fp32.

    ``w3( npu_swiglu([w1 x | w2 x], dim=-1) )``: the concatenated projection puts the SiLU-gated w1
    half first (npu_swiglu computes silu(A)·B with A the first half). The ``w1``/``w2``/``w3``
    submodules stay as they are, so the state dict is unchanged.

    The concatenated weight ``[w1.weight; w2.weight]`` (and bias) is built on the first fused call and
    kept as a plain attribute (not a buffer: it is not in the state dict and does not follow
    ``.to()``). It is rebuilt whenever a source tensor changes: a new storage, device or dtype
    (``.to()``, ``load_state_dict`` with assign) or an in-place write (``load_state_dict`` bumps the
    version counter). Memory cost: one extra copy of w1 and w2, 2·hidden·(dim + 1) elements per FFN;
    for VTP-Small (24 FFNs, dim 384, hidden 1024) about 75 MB in fp32. With autograd recording and
    weights that require grad the concatenation is done per call instead, so gradients reach w1/w2.
    On CPU (or any fallback) nothing is concatenated and the original three-linear math runs: exact.
    """

    kernel: str = "fallback: SwiGLUFFN torch math"

    @classmethod
    def from_module(cls, module: SwiGLUFFN, kernel: str) -> "AscendSwiGLUFFN":
        return clone_as(module, cls, kernel=kernel, _w12_cache=None)

    def _w12_sources(self):
        return [t for t in (self.w1.weight, self.w2.weight, self.w1.bias, self.w2.bias) if t is not None]

    def fused_w12(self) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``([w1.weight; w2.weight], [w1.bias; w2.bias])``: the (2·hidden, dim) projection, A half first."""
        w1, w2 = self.w1, self.w2
        if torch.is_grad_enabled() and w1.weight.requires_grad:
            bias = None if w1.bias is None else torch.cat((w1.bias, w2.bias))
            return torch.cat((w1.weight, w2.weight)), bias
        key = tuple((t.data_ptr(), _version(t), t.device, t.dtype) for t in self._w12_sources())
        cache = getattr(self, "_w12_cache", None)
        if cache is None or cache[0] != key:
            with torch.no_grad():
                weight = torch.cat((w1.weight, w2.weight))
                bias = None if w1.bias is None else torch.cat((w1.bias, w2.bias))
            cache = (key, weight, bias)
            self._w12_cache = cache
        return cache[1], cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not calls_npu_op(self.kernel):
            return super().forward(x)
        weight, bias = self.fused_w12()
        h = F.linear(x, weight, bias)  # (..., 2·hidden) = [w1 x | w2 x]
        h = torch_npu_ops().npu_swiglu(h.contiguous(), dim=-1)  # silu(w1 x) · w2 x, (..., hidden)
        return self.w3(h)


# ----------------------------------------------------------------------------------------------
# attention and rope (both live in SelfAttention)


class AscendSelfAttention(SelfAttention):
    """SelfAttention with two independent switches, set by the ``attention`` and ``rope`` rules.

    ``attention_kernel`` (rule ``attention``; None = rule off): ``"torch_npu.npu_fusion_attention"``
    makes :meth:`attention` call ``npu_fusion_attention(q, k, v, num_heads, "BNSD",
    scale=1/√head_dim, keep_prob=1.0)[0]`` on contiguous q/k/v with no mask (facts §1.7: the scale
    default is 1.0, so it is always passed). Under autocast q/k/v are first cast to the autocast dtype,
    as autocast does for SDPA (the raw op is not autocast and needs one dtype; with qk_norm, q and k
    come out of RMSNorm in fp32 while v is bf16). Any other value keeps ``F.scaled_dot_product_attention``,
    which on SoC ≥ 910B1 reaches the same FlashAttention kernel by itself (facts §1.8). Exact on CPU;
    FlashAttention's blocked softmax differs from SDPA-math by ~1e-6 relative in fp32.

    ``rope_kernel`` (rule ``rope``; None = rule off): ``"torch_npu.npu_rotary_mul"`` makes
    :meth:`apply_rope` call ``npu_rotary_mul(x, cos, sin, rotary_mode="half")`` on the non-prefix
    tokens of q and k in BNSD with cos/sin broadcast as [1, 1, S, head_dim] (facts §1.6). As in the
    original, q and k are cast to the tables' dtype (bf16) first and back afterwards, with autocast off,
    so the inputs are identical. Rounding differs: the original rounds to bf16 after each of x·cos, rot(x)·sin and the
    sum, the fused op rounds once, so rotated q/k may differ by about one bf16 ulp (2⁻⁸ relative). A
    call with batch or heads ≥ 1000 (outside the op's limits) runs the torch math. Exact on CPU.
    """

    attention_kernel: Optional[str] = None
    rope_kernel: Optional[str] = None

    @classmethod
    def from_module(cls, module: SelfAttention, **kernels) -> "AscendSelfAttention":
        return clone_as(module, cls, **kernels)

    def apply_rope(self, q: torch.Tensor, k: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]):
        if not calls_npu_op(self.rope_kernel) or q.shape[0] >= 1000 or q.shape[1] >= 1000:
            return super().apply_rope(q, k, rope)
        sin, cos = rope
        q_dtype, k_dtype = q.dtype, k.dtype
        with no_autocast(q.device.type):  # bf16 math whatever the autocast dtype, as the original
            q, k = q.to(sin.dtype), k.to(sin.dtype)
            prefix = q.shape[-2] - sin.shape[-2]  # the cls token in the encoder, none in the decoder
            cos4, sin4 = cos[None, None], sin[None, None]  # [1, 1, S, head_dim]: BNSD with 11SD tables
            rotary_mul = torch_npu_ops().npu_rotary_mul
            q_rot = rotary_mul(q[:, :, prefix:].contiguous(), cos4, sin4, rotary_mode="half")
            k_rot = rotary_mul(k[:, :, prefix:].contiguous(), cos4, sin4, rotary_mode="half")
            if prefix:
                q_rot = torch.cat((q[:, :, :prefix], q_rot), dim=-2)
                k_rot = torch.cat((k[:, :, :prefix], k_rot), dim=-2)
        return q_rot.to(q_dtype), k_rot.to(k_dtype)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if not calls_npu_op(self.attention_kernel):
            return super().attention(q, k, v)
        device_type = q.device.type
        if torch.is_autocast_enabled(device_type):  # SDPA is autocast to the low dtype; the raw op is not
            low = torch.get_autocast_dtype(device_type)
            q, k, v = q.to(low), k.to(low), v.to(low)
        out = torch_npu_ops().npu_fusion_attention(
            q.contiguous(), k.contiguous(), v.contiguous(), self.num_heads, "BNSD",
            scale=self.head_dim ** -0.5, keep_prob=1.0,
        )
        return out[0]  # (attention_out, softmax_max, softmax_sum, reserved, seed, offset, mask_len)

    def extra_repr(self) -> str:
        return f"attention_kernel={self.attention_kernel!r}, rope_kernel={self.rope_kernel!r}"


# ----------------------------------------------------------------------------------------------
# quick_gelu


class AscendQuickGELU(QuickGELU):
    """QuickGELU x·sigmoid(1.702x) through ``torch_npu.npu_fast_gelu`` (facts §1.4). Exact math.

    npu_fast_gelu computes x / (1 + exp(−1.702x)), the same function (ULP-level differences on NPU).
    Supported on A2, A3, Atlas inference (310P) and Atlas training (910A); dtypes fp16/fp32, plus bf16
    on A2/A3. A call in another dtype runs the torch math.
    """

    kernel: str = "fallback: x * sigmoid(1.702 x)"
    dtypes: frozenset = frozenset()

    @classmethod
    def from_module(cls, module: QuickGELU, kernel: str, dtypes=frozenset()) -> "AscendQuickGELU":
        return clone_as(module, cls, kernel=kernel, dtypes=frozenset(dtypes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if calls_npu_op(self.kernel) and x.dtype in self.dtypes and x.dim() <= 8:
            return torch_npu_ops().npu_fast_gelu(x)
        return super().forward(x)


# ----------------------------------------------------------------------------------------------
# pixel_shuffle


class AscendPixelShuffle(nn.PixelShuffle):
    """PixelShuffle that filters torch_npu's as_strided warning around this one call. Exact.

    ``aten::pixel_shuffle`` has no NPU kernel in torch 2.13; the generic composite (view, 6-D permute,
    contiguous copy) may trigger torch_npu's "current tensor is running as_strided, don't perform
    inplace operations on the returned value..." warning (facts §7). When ``filter_as_strided`` is set
    (patched for an NPU), the call runs inside ``warnings.catch_warnings(record=True)``: that one
    warning is dropped and a note explaining it is logged once per process; every other warning raised
    during the call is re-issued unchanged through ``warnings.warn_explicit``, so the caller's filters
    (``error``, ``ignore``, pytest's recorder) still apply. Nothing is filtered outside this call.
    """

    filter_as_strided: bool = False
    kernel: str = "fallback: F.pixel_shuffle"

    @classmethod
    def from_module(cls, module: nn.PixelShuffle, kernel: str, filter_as_strided: bool) -> "AscendPixelShuffle":
        return clone_as(module, cls, kernel=kernel, filter_as_strided=bool(filter_as_strided))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.filter_as_strided:
            return F.pixel_shuffle(x, self.upscale_factor)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = F.pixel_shuffle(x, self.upscale_factor)
        for w in caught:
            if AS_STRIDED_WARNING.search(str(w.message)):
                _note_once("as_strided", AS_STRIDED_NOTE)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
        return y
