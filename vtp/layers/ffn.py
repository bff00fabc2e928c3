"""Feed-forward networks (spec §3.5): SwiGLU with three separate linears, and the GELU MLP."""

import torch
import torch.nn.functional as F
from torch import nn

SWIGLU_ALIGN = {"swiglu": 8, "swiglu32": 32, "swiglu64": 64, "swiglu128": 128}


def swiglu_hidden_dim(dim: int, ratio: float, align: int = 8) -> int:
    """round-up-to-align( int( int(dim·ratio) · 2/3 ) ): 1024 -> 2736, 768 -> 2048, 384 -> 1024."""
    d = int(int(dim * ratio) * 2 / 3)
    return d + (-d) % align


class SwiGLUFFN(nn.Module):
    """FFN(x) = w3( SiLU(w1 x) ⊙ w2 x ); w1 is the gated branch."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.w1(x)
        x2 = self.w2(x)
        return self.w3(F.silu(x1) * x2)


class Mlp(nn.Module):
    """FFN(x) = fc2( GELU(fc1 x) ), exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def make_ffn(kind: str, dim: int, ratio: float) -> nn.Module:
    if kind == "mlp":
        return Mlp(dim, int(dim * ratio))
    if kind in SWIGLU_ALIGN:
        return SwiGLUFFN(dim, swiglu_hidden_dim(dim, ratio, SWIGLU_ALIGN[kind]))
    raise ValueError(f"unknown ffn layer {kind!r}")
