"""LPIPS (Zhang et al. 2018), VGG16 variant v0.1, as the original reconstruction tool computes it.

    d(x, y) = sum_l mean_hw( w_l . (n(f_l(x)) - n(f_l(y)))^2 )

with ``f_l`` the VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of the scaled input
``(x - shift) / scale``, ``n`` the unit normalisation over channels (``v / (|v| + 1e-10)``) and ``w_l`` the
learned 1x1 heads (``lin{l}.model.1.weight``). Inputs in [-1, 1], (B, 3, H, W); output (B,).
Attribute names follow torchvision's ``vgg16().features`` so its weight file loads as is.
"""

from __future__ import annotations

import torch
import torch.nn as nn

CHANNELS = (64, 128, 256, 512, 512)
# VGG16 "D": conv widths, "M" = max pool
_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
TAPS = (3, 8, 15, 22, 29)  # features index of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def vgg16_features() -> nn.Sequential:
    layers, cin = [], 3
    for v in _CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


class NetLinLayer(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(cin, 1, 1, bias=False))


class LPIPS(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.features = vgg16_features()
        for i, c in enumerate(CHANNELS):
            setattr(self, f"lin{i}", NetLinLayer(c))

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):
            x = layer(x)
            if i in TAPS:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self.taps((x - self.shift) / self.scale), self.taps((y - self.shift) / self.scale)
        total = 0
        for i, (a, b) in enumerate(zip(fx, fy)):
            a = a / (a.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            head = getattr(self, f"lin{i}").model[1]
            total = total + head((a - b).square()).mean(dim=(2, 3))  # (B, 1)
        return total[:, 0]


def load_lpips(vgg_path: "str | None" = None, lpips_path: "str | None" = None) -> tuple[LPIPS, dict]:
    """LPIPS with torchvision's VGG16 weights and the v0.1 heads (located and verified); (model, identities)."""
    from .weightfiles import LPIPS_VGG, VGG16, locate

    vgg_id, heads_id = locate(VGG16, vgg_path), locate(LPIPS_VGG, lpips_path)
    model = LPIPS()
    vgg = torch.load(vgg_id["path"], map_location="cpu", weights_only=True)
    model.features.load_state_dict({k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")})
    heads = torch.load(heads_id["path"], map_location="cpu", weights_only=True)
    lin = {k: v for k, v in heads.items() if k.startswith("lin")}
    missing = [f"lin{i}.model.1.weight" for i in range(5) if f"lin{i}.model.1.weight" not in lin]
    if missing:
        raise ValueError(f"{heads_id['path']}: not an LPIPS v0.1 VGG head file (missing {', '.join(missing)})")
    model.load_state_dict(lin, strict=False)
    return model.eval(), {"vgg16": vgg_id, "lpips_heads": heads_id}
