"""Multi-head self-attention of the vision encoder and the pixel decoder (spec §3.4)."""

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .norm import RMSNorm
from .rope import no_autocast, rope_apply


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim, bias=True)
        # registered after proj, as the original (state-dict order)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()

    def apply_rope(self, q: torch.Tensor, k: torch.Tensor, rope: Tuple[torch.Tensor, torch.Tensor]):
        """Rotate q and k of the non-prefix tokens; the whole of q and k round-trips through the table dtype."""
        sin, cos = rope
        q_dtype, k_dtype = q.dtype, k.dtype
        with no_autocast(q.device.type):  # bf16 math whatever the autocast dtype (see vtp.layers.rope)
            q, k = q.to(sin.dtype), k.to(sin.dtype)
            prefix = q.shape[-2] - sin.shape[-2]  # the cls token in the encoder, none in the decoder
            q = torch.cat((q[:, :, :prefix], rope_apply(q[:, :, prefix:], sin, cos)), dim=-2)
            k = torch.cat((k[:, :, :prefix], rope_apply(k[:, :, prefix:], sin, cos)), dim=-2)
        return q.to(q_dtype), k.to(k_dtype)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ / √head_dim) v on [B, heads, N, head_dim]; the fusion layer swaps this method's module."""
        return F.scaled_dot_product_attention(q, k, v)

    def forward(self, x: torch.Tensor, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))  # each [B, heads, N, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = self.apply_rope(q, k, rope)
        x = self.attention(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, C)  # heads concatenated, head-major
        return self.proj(x)
