"""Axial 2-D rotary position embedding, DINOv3 style (spec §3.3).

Every step runs in bfloat16 with a rounding after each elementary op, exactly as the original: the
periods buffer is bf16 (and stored so in the checkpoint), coordinates are bf16, and attention casts the
whole q and k to bf16 for the rotation. Do not "improve" this to fp32: parity depends on it (spec trap 1).

The tables and the rotation run with autocast switched off. Under bf16 autocast that changes nothing (every
operand is already bf16); under fp16 autocast it is needed at all: `torch.stack`/`torch.cat` of bf16
tensors there raise "Unexpected floating ScalarType in at::autocast::prioritize" (the original fails so).
"""

import contextlib
import math
from typing import Tuple

import torch
from torch import nn

ROPE_BASE = 100.0


def rope_periods(head_dim: int, base: float = ROPE_BASE, dtype: torch.dtype = torch.bfloat16,
                 device="cpu") -> torch.Tensor:
    """p_k = base ** (2k / (head_dim/2)), k < head_dim/4, every op rounded to `dtype`.

    The device is explicit so that a model built under `torch.device("meta")` still gets real periods."""
    k = torch.arange(head_dim // 4, dtype=dtype, device=device)
    return base ** (2 * k / (head_dim // 2))


class RopePositionEmbedding(nn.Module):
    """Returns (sin, cos), each [H·W, head_dim], for a patch grid of H rows and W columns."""

    def __init__(self, embed_dim: int, num_heads: int, base: float = ROPE_BASE, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.head_dim = embed_dim // num_heads
        self.base = base
        self.dtype = dtype
        self.register_buffer("periods", rope_periods(self.head_dim, base, dtype), persistent=True)

    def forward(self, *, H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor]:
        with no_autocast(self.periods.device.type):
            return self._tables(H, W)

    def _tables(self, H: int, W: int) -> Tuple[torch.Tensor, torch.Tensor]:
        dd = {"device": self.periods.device, "dtype": self.dtype}
        # normalize_coords="separate": each axis is divided by its own length
        coords_h = torch.arange(0.5, H, **dd) / H
        coords_w = torch.arange(0.5, W, **dd) / W
        coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1)  # [H, W, 2]
        coords = coords.flatten(0, 1)  # [HW, 2], row-major tokens
        coords = 2.0 * coords - 1.0  # [0, 1] -> [-1, 1]
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None, :]  # [HW, 2, head_dim/4]
        angles = angles.flatten(1, 2)  # [HW, head_dim/2]: [rows..., cols...]
        angles = angles.tile(2)  # [HW, head_dim]
        return torch.sin(angles), torch.cos(angles)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}, dtype={self.dtype}"


def no_autocast(device_type: str):
    """Autocast off for this device type (a no-op context when autocast is not active)."""
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, enabled=False)


def rope_rotate_half(x: torch.Tensor) -> torch.Tensor:
    """rot(x) = [-x2, x1] for the two halves of the last axis (NeoX layout, not interleaved)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_apply(x: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (rope_rotate_half(x) * sin)
