"""Pre-norm transformer block of the encoder and decoder (spec §3.8)."""

from typing import Optional, Tuple

import torch
from torch import nn

from .attention import SelfAttention
from .ffn import make_ffn
from .layer_scale import LayerScale
from .norm import make_norm


class SelfAttentionBlock(nn.Module):
    """x ← x + ls1(attn(norm1(x))); x ← x + ls2(mlp(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, *, ffn: str, ffn_ratio: float, norm: str,
                 init_values: Optional[float] = None, qk_norm: bool = False):
        super().__init__()
        self.norm1 = make_norm(norm, dim)
        self.attn = SelfAttention(dim, num_heads, qk_norm=qk_norm)
        # falsy init values (None or 0) mean no LayerScale (spec trap 14)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = make_norm(norm, dim)
        self.mlp = make_ffn(ffn, dim, ffn_ratio)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope=rope))
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x
