"""The pixel decoder: latents (B, b, H', W') -> ImageNet-normalised RGB (B, 3, 16H', 16W') (spec §4)."""

import torch
from torch import nn

from .config import VTPConfig
from .layers import RopePositionEmbedding, SelfAttentionBlock, make_norm

DECODER_FFN_RATIO = 4.0
UPSAMPLE = 16  # hard-wired in the original, independent of vision_patch_size (spec trap 11)


class PixelDecoder(nn.Module):
    def __init__(self, config: VTPConfig):
        super().__init__()
        Dd = config.decoder_embed_dim
        self.in_channels = config.bottleneck_dim
        self.proj_in = nn.Conv2d(self.in_channels, Dd, kernel_size=1)
        self.rope_embed = RopePositionEmbedding(Dd, config.decoder_num_heads)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(Dd, config.decoder_num_heads, ffn=config.decoder_ffn_layer,
                               ffn_ratio=DECODER_FFN_RATIO, norm=config.decoder_norm_layer,
                               init_values=config.decoder_init_values, qk_norm=config.decoder_use_qk_norm)
            for _ in range(config.decoder_depth)
        )
        self.norm = make_norm(config.decoder_norm_layer, Dd)
        self.proj_out = nn.Conv2d(Dd, 3 * UPSAMPLE * UPSAMPLE, kernel_size=1)
        self.pixel_shuffle = nn.PixelShuffle(UPSAMPLE)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(z)  # (B, Dd, H, W)
        B, C, H, W = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, H·W, Dd)
        rope = self.rope_embed(H=H, W=W)
        for blk in self.blocks:
            x = blk(x, rope)
        x = self.norm(x)
        x = x.transpose(1, 2).reshape(B, C, H, W)
        x = self.proj_out(x)  # (B, 768, H, W)
        return self.pixel_shuffle(x)  # (B, 3, 16H, 16W)
