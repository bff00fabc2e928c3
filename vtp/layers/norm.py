"""Normalisation layers (spec §3.6): RMSNorm (eps 1e-5) and the LayerNorm variants of the config."""

import torch
from torch import nn


class RMSNorm(nn.Module):
    """y = (x̂ · rsqrt(mean(x̂²) + eps)).to(x.dtype) · weight, with x̂ = x in fp32.

    The weight multiplies *after* the cast back, as in DINOv3, so a bf16 input gives an fp32 output.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int) -> nn.Module:
    """`layernorm`: LayerNorm eps 1e-6; `layernormbf16`: LayerNorm eps 1e-5 (despite its name);
    `rmsnorm`: RMSNorm eps 1e-5."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-6)
    if kind == "layernormbf16":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=1e-5)
    raise ValueError(f"unknown norm layer {kind!r}")
