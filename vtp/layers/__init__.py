"""Building blocks of the VTP vision encoder and pixel decoder (DINOv3-style ViT layers)."""

from .attention import SelfAttention
from .block import SelfAttentionBlock
from .ffn import Mlp, SwiGLUFFN, make_ffn, swiglu_hidden_dim
from .layer_scale import LayerScale
from .norm import RMSNorm, make_norm
from .rope import RopePositionEmbedding, rope_apply, rope_rotate_half

__all__ = [
    "LayerScale", "Mlp", "RMSNorm", "RopePositionEmbedding", "SelfAttention", "SelfAttentionBlock", "SwiGLUFFN",
    "make_ffn", "make_norm", "rope_apply", "rope_rotate_half", "swiglu_hidden_dim",
]
