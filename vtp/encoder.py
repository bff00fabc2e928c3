"""The vision encoder (`trunk`): a DINOv3-style ViT with 2-D RoPE, a cls token and the latent
bottleneck (spec §3)."""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .config import VTPConfig
from .layers import RopePositionEmbedding, SelfAttentionBlock, make_norm


class PatchEmbed(nn.Module):
    """Conv2d with kernel = stride = P; (B, 3, H, W) -> (B, Hp, Wp, D). The patch norm is the identity."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, D, Hp, Wp)
        B, D, H, W = x.shape
        x = self.norm(x.flatten(2).transpose(1, 2))  # (B, Hp·Wp, D), row-major
        return x.reshape(B, H, W, D)


class VisionTransformer(nn.Module):
    def __init__(self, config: VTPConfig):
        super().__init__()
        D = config.vision_embed_dim
        self.patch_size = config.vision_patch_size
        self.embed_dim = D
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.mask_token = nn.Parameter(torch.zeros(1, D))
        self.patch_embed = PatchEmbed(config.vision_patch_size, 3, D)
        self.rope_embed = RopePositionEmbedding(D, config.vision_num_heads)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(D, config.vision_num_heads, ffn=config.vision_ffn_layer,
                               ffn_ratio=config.vision_mlp_ratio, norm=config.vision_norm_layer,
                               init_values=config.vision_init_values, qk_norm=config.vision_use_qk_norm)
            for _ in range(config.vision_depth)
        )
        self.norm = make_norm(config.vision_norm_layer, D)
        self.head = nn.Identity()
        if config.has_bottleneck:
            self.feature_bottleneck = nn.Linear(D, config.vision_feature_bottleneck, bias=False)
        else:
            self.feature_bottleneck = None

    def prepare_tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.patch_embed(x)  # (B, Hp, Wp, D)
        B, H, W, _ = x.shape
        x = x.flatten(1, 2)
        # "+ 0·mask_token" keeps the original's NaN/Inf and signed-zero behaviour (spec §3.2)
        cls_token = self.cls_token + 0 * self.mask_token
        x = torch.cat([cls_token.expand(B, -1, -1), x], dim=1)  # (B, 1 + Hp·Wp, D)
        return x, (H, W)

    def run_blocks(self, x: torch.Tensor, collect: Optional[Sequence[int]] = None):
        x, (H, W) = self.prepare_tokens(x)
        rope = self.rope_embed(H=H, W=W)  # identical for every block; computed once
        taken: List[torch.Tensor] = []
        for i, blk in enumerate(self.blocks):
            x = blk(x, rope)
            if collect is not None and i in collect:
                taken.append(x)
        return x, taken

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.feature_bottleneck is None else self.feature_bottleneck(x)

    def forward_features(self, x: torch.Tensor, use_bottleneck: bool = False) -> Dict[str, torch.Tensor]:
        x, _ = self.run_blocks(x)
        x_norm = self.norm(x)
        cls, patches = x_norm[:, 0], x_norm[:, 1:]
        if use_bottleneck and self.feature_bottleneck is not None:
            B, N, D = patches.shape
            cls = self.feature_bottleneck(cls)
            patches = self.feature_bottleneck(patches.reshape(B * N, D)).reshape(B, N, -1)
        return {"x_norm_clstoken": cls, "x_norm_patchtokens": patches, "x_prenorm": x}

    def get_intermediate_layers(self, x: torch.Tensor, n: Union[int, Sequence[int]] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True):
        depth = len(self.blocks)
        if isinstance(n, int):
            if not 1 <= n <= depth:
                raise ValueError(f"n={n}: the encoder has {depth} blocks; ask for 1..{depth} last layers")
            take = list(range(depth - n, depth))
        else:
            take = list(n)
            bad = [i for i in take if not isinstance(i, int) or not 0 <= i < depth]
            if bad or not take:
                raise ValueError(f"layer indices {bad or take} are not valid: give non-negative block indices "
                                 f"0..{depth - 1} (negative indices are not supported, as in the original)")
        H, W = x.shape[-2:]
        _, outputs = self.run_blocks(x, collect=take)
        if norm:
            outputs = [self.norm(out) for out in outputs]
        class_tokens = [out[:, 0] for out in outputs]
        patches = [out[:, 1:] for out in outputs]
        if reshape:
            B, P = x.shape[0], self.patch_size
            patches = [out.reshape(B, H // P, W // P, -1).permute(0, 3, 1, 2).contiguous() for out in patches]
        if return_class_token:
            return tuple(zip(patches, class_tokens))
        return tuple(patches)
