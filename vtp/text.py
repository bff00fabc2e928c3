"""The OpenCLIP-style text tower (spec §5). Its parts are attached to `VTPModel` directly (no `text.`
prefix): `text_transformer.resblocks.*`, `token_embedding`, `positional_embedding`, `ln_final`."""

from typing import Optional

import torch
from torch import nn

from .layers import LayerScale


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output is cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        orig_type = x.dtype
        return super().forward(x).to(orig_type)


class QuickGELU(nn.Module):
    """x · sigmoid(1.702 x), OpenAI CLIP's activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TextMlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """x ← x + ls_1(MHA(ln_1(x), mask)); x ← x + ls_2(mlp(ln_2(x)))."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, ls_init_value: Optional[float], quick_gelu: bool):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=1e-5)
        # torch's own MHA: exact parity with the original (a hand-written SDPA agrees only to ~1e-6, spec §5.4)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        # text LayerScale exists whenever the init value is not None, 0.0 included (spec trap 14)
        self.ls_1 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = LayerNorm(width, eps=1e-5)
        self.mlp = TextMlp(width, int(width * mlp_ratio), quick_gelu)
        self.ls_2 = LayerScale(width, ls_init_value) if ls_init_value is not None else nn.Identity()

    def attention(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        attn_mask = attn_mask.to(x.dtype) if attn_mask is not None else None
        return self.attn(x, x, x, need_weights=False, attn_mask=attn_mask)[0]

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.ls_1(self.attention(self.ln_1(x), attn_mask))
        x = x + self.ls_2(self.mlp(self.ln_2(x)))
        return x


class TextTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, ls_init_value: Optional[float],
                 quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            ResidualAttentionBlock(width, heads, mlp_ratio, ls_init_value, quick_gelu) for _ in range(layers)
        )

    def get_cast_dtype(self) -> torch.dtype:
        return self.resblocks[0].mlp.c_fc.weight.dtype

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        return x


def causal_mask(context_length: int, device="cpu") -> torch.Tensor:
    """[C, C] fp32 additive mask: 0 on and below the diagonal, -inf above (token t sees 0..t).

    The device is explicit so that a model built under `torch.device("meta")` still gets a real mask."""
    mask = torch.empty(context_length, context_length, device=device)
    mask.fill_(float("-inf"))
    return mask.triu_(1)
