"""`VTPModel`: the VTP inference model with the original public API and state-dict layout (spec §2, §6)."""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .config import VTPConfig
from .decoder import UPSAMPLE, PixelDecoder
from .encoder import VisionTransformer
from .text import LayerNorm, TextTransformer, causal_mask

logger = logging.getLogger(__name__)

FORWARD_TYPES = ("clip", "rec", "feature")


class VTPModel(nn.Module):
    """Auto-encoder (image -> latents -> image), CLIP model and SSL feature extractor in one.

    Images are float tensors (B, 3, H, W) in ImageNet-normalised space, H and W multiples of the patch
    size; text is int64 token ids (B, text_context_length) from `vtp.tokenizers.get_tokenizer`.
    """

    def __init__(self, config: VTPConfig):
        super().__init__()
        self.config = config
        c = config
        # provenance: where the weights came from ("synthetic:...", or the checkpoint path); set by the loaders
        self.weights_source: Optional[str] = None
        # "synthetic:<preset>:seed=<seed>" for synthetic weights, made here or loaded from a folder that
        # save_pretrained marked as synthetic; None for real weights. Saved with the weights.
        self.synthetic_label: Optional[str] = None
        scalar_shape = (1,) if c.nonscalar_logit_scale else ()
        if c.train_clip:
            Wt = c.text_embed_dim
            self.positional_embedding = nn.Parameter(torch.empty(c.text_context_length, Wt))
            if c.text_proj_type == "none":
                self.text_projection = None
            elif c.text_proj_bias:
                self.text_projection = nn.Linear(Wt, Wt)
            else:
                self.text_projection = nn.Parameter(torch.empty(Wt, Wt))
            init_scale = c.init_logit_scale or math.log(1 / 0.07)
            self.logit_scale = nn.Parameter(torch.full(scalar_shape, init_scale))
            if c.init_logit_bias is not None:
                self.logit_bias = nn.Parameter(torch.full(scalar_shape, c.init_logit_bias))
            else:
                self.logit_bias = None
            mask = None if c.text_no_causal_mask else causal_mask(c.text_context_length)
            # built here, never read from a checkpoint (spec trap 8)
            self.register_buffer("attn_mask", mask, persistent=False)
        self.trunk = VisionTransformer(c)
        if c.train_clip:
            clip_in = c.vision_embed_dim if c.vision_bottleneck_ae_only else c.bottleneck_dim
            self.visual_proj = nn.Linear(clip_in, c.text_embed_dim, bias=False)
        else:
            self.visual_proj = None
        self.pixel_decoder = PixelDecoder(c) if c.train_reconstruction else None
        if c.train_clip:
            self.text_transformer = TextTransformer(c.text_embed_dim, c.text_depth, c.text_num_heads,
                                                    c.text_mlp_ratio, c.text_ls_init_value, c.text_quick_gelu)
            # `_weight` skips nn.Embedding's own normal_() init: on the meta device that call alone imports
            # torch._dynamo (about 1.5 s); init_weights() initialises it when no checkpoint is loaded
            self.token_embedding = nn.Embedding(c.text_vocab_size, c.text_embed_dim,
                                                _weight=torch.empty(c.text_vocab_size, c.text_embed_dim))
            self.ln_final = LayerNorm(c.text_embed_dim, eps=1e-5)
        else:
            self.text_transformer = None
        if not _on_meta(self):
            self.init_weights()
        self.eval()

    # ------------------------------------------------------------------------------------------ weights
    @torch.no_grad()
    def init_weights(self, generator: Optional[torch.Generator] = None) -> None:
        """Initialise every parameter as the original does for fresh models (truncated normal 0.02 for
        linears and convolutions, normal 0.02 for embeddings, ones/zeros for norms, the configured
        LayerScale and logit scale values). Loading a checkpoint never runs this."""
        from .layers import LayerScale, RMSNorm

        c = self.config
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=0.02, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.MultiheadAttention):
                nn.init.trunc_normal_(module.in_proj_weight, std=0.02, generator=generator)
                module.in_proj_bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0, 0.02, generator=generator)
            elif isinstance(module, (nn.LayerNorm, RMSNorm)):
                module.weight.fill_(1.0)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, LayerScale):
                module.gamma.fill_(module.init_values)
        self.trunk.cls_token.normal_(0, 0.02, generator=generator)
        self.trunk.mask_token.zero_()
        if c.train_clip:
            self.positional_embedding.normal_(0, 0.01, generator=generator)
            if isinstance(self.text_projection, nn.Parameter):
                self.text_projection.normal_(0, c.text_embed_dim ** -0.5, generator=generator)
            self.logit_scale.fill_(c.init_logit_scale or math.log(1 / 0.07))
            if self.logit_bias is not None:
                self.logit_bias.fill_(c.init_logit_bias)

    @classmethod
    def synthetic(cls, preset: Union[str, VTPConfig] = "VTP-Small-f16d64", seed: int = 0) -> "VTPModel":
        """Deterministic random weights of a preset's shape, for machines with no checkpoint.

        Norm gains, biases and LayerScales are perturbed away from their initial values so that every
        parameter matters. `weights_source` and `synthetic_label` are "synthetic:<preset>:seed=<seed>";
        `save_pretrained` records the label in the saved file, so the weights stay marked as synthetic
        wherever they are loaded (set `synthetic_label = None` first if real weights were loaded into
        the model since).
        """
        config = preset if isinstance(preset, VTPConfig) else VTPConfig.from_preset(preset)
        name = preset if isinstance(preset, str) else "custom"
        with torch.device("meta"):
            model = cls(config)
        model.to_empty(device="cpu")
        model.reset_buffers()
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # one normal_ per tensor: several times faster than the truncated-normal init
            for pname, p in model.named_parameters():
                leaf = pname.rsplit(".", 1)[-1]
                if pname == "logit_scale":
                    p.fill_(config.init_logit_scale or math.log(1 / 0.07))
                elif pname == "text_projection":
                    p.normal_(0, config.text_embed_dim ** -0.5, generator=g)
                elif p.dim() == 1 and leaf == "weight":  # norm gains
                    p.normal_(1.0, 0.1, generator=g)
                else:  # matrices, embeddings, biases, LayerScale gammas, cls/mask tokens, logit bias
                    p.normal_(0, 0.02, generator=g)
        model.weights_source = model.synthetic_label = f"synthetic:{name}:seed={seed}"
        logger.warning("using SYNTHETIC random weights (%s, seed %d): outputs are not meaningful", name, seed)
        return model

    def reset_buffers(self) -> None:
        """Rebuild the buffers that are computed, not learned: the causal mask and the RoPE periods."""
        from .layers.rope import rope_periods

        device = self.trunk.cls_token.device
        if self.config.train_clip and not self.config.text_no_causal_mask:
            self.attn_mask = causal_mask(self.config.text_context_length, device=device)
        for rope in self.rope_modules():
            rope.periods = rope_periods(rope.head_dim, rope.base, rope.dtype, device=device)

    def rope_modules(self):
        mods = [self.trunk.rope_embed]
        if self.pixel_decoder is not None:
            mods.append(self.pixel_decoder.rope_embed)
        return mods

    @property
    def is_synthetic(self) -> bool:
        """True for synthetic weights: made by `synthetic`, or loaded from a folder saved from such a model."""
        return bool(self.synthetic_label or (self.weights_source and self.weights_source.startswith("synthetic")))

    @classmethod
    def from_pretrained(cls, path: "str | os.PathLike", *, device: "str | torch.device" = "cpu",
                        dtype: torch.dtype = torch.float32, verify: str = "auto") -> "VTPModel":
        """Load an official checkpoint folder: config.json plus model.safetensors, a sharded
        model.safetensors.index.json, or pytorch_model.bin. `verify`: "auto" checks the folder's
        manifest.json (sha256 when the files changed since the last check), "full" always hashes,
        "none" skips it."""
        from .checkpoint import load_model

        return load_model(cls, path, device=device, dtype=dtype, verify=verify)

    def save_pretrained(self, folder: "str | os.PathLike", max_shard_bytes: Optional[int] = None) -> Path:
        """Write config.json and model.safetensors (or shards with an index) in the official layout.

        Synthetic weights are marked in the safetensors metadata (``vtp_synthetic``), which loaders of the
        official layout ignore; `from_pretrained` reads it back into `synthetic_label`."""
        from .checkpoint import save_model

        return save_model(self, folder, max_shard_bytes=max_shard_bytes)

    # ------------------------------------------------------------------------------------------ checks
    def _check_image(self, image: torch.Tensor, what: str = "image") -> None:
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{what} must be a torch.Tensor (B, 3, H, W), got {type(image).__name__}; "
                            "use vtp.image.preprocess to turn a file into one")
        if image.dim() != 4:
            raise ValueError(f"{what} must have 4 dims (B, 3, H, W), got shape {tuple(image.shape)}")
        if image.shape[1] != 3:
            raise ValueError(f"{what} must have 3 channels (RGB) in dim 1, got shape {tuple(image.shape)}")
        if not image.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor of ImageNet-normalised pixels, got {image.dtype}; "
                            "convert uint8 images with vtp.image.preprocess")
        if image.shape[0] == 0:
            raise ValueError(f"{what} is an empty batch (B=0)")
        P = self.config.vision_patch_size
        H, W = image.shape[-2:]
        if H % P or W % P or H == 0 or W == 0:
            raise ValueError(f"{what} size {H}x{W} is not divisible by the patch size {P}; resize or crop to a "
                             f"multiple of {P} (e.g. {max(P, H // P * P)}x{max(P, W // P * P)})")

    def _check_text(self, text) -> torch.Tensor:
        if isinstance(text, str) or (isinstance(text, (list, tuple)) and all(isinstance(t, str) for t in text)):
            if isinstance(text, (list, tuple)) and len(text) == 0:
                raise ValueError("empty prompt list: give at least one text")
            C = self.config.text_context_length
            texts = [text] if isinstance(text, str) else list(text)
            ids, lengths = _tokenizer(C).encode_batch(texts)
            for prompt, length in zip(texts, lengths):
                if length > C:
                    logger.warning("prompt %r is %d tokens long (start and end tokens included), longer than the "
                                   "text context of %d: it is cut", prompt if len(prompt) <= 60 else
                                   prompt[:60] + "…", length, C)
            return ids.to(self.token_embedding.weight.device)
        if not isinstance(text, torch.Tensor):
            raise TypeError(f"text must be token ids (B, {self.config.text_context_length}) or a list of strings, "
                            f"got {type(text).__name__}")
        C = self.config.text_context_length
        if text.dim() != 2 or text.shape[1] != C:
            raise ValueError(f"text ids must have shape (B, {C}), got {tuple(text.shape)}; "
                             f"tokenize with vtp.tokenizers.get_tokenizer(context_length={C})")
        if text.shape[0] == 0:
            raise ValueError("empty prompt list: text ids have batch size 0")
        if text.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"text ids must be int64 (or int32), got {text.dtype}")
        lo, hi = int(text.min()), int(text.max())
        if lo < 0 or hi >= self.config.text_vocab_size:
            raise ValueError(f"text ids must lie in [0, {self.config.text_vocab_size}), got [{lo}, {hi}]")
        return text

    def _require_clip(self, what: str) -> None:
        if not self.config.train_clip:
            raise RuntimeError(f"{what} needs the CLIP parts, but this model was built with train_clip=false")

    # ------------------------------------------------------------------------------------------ API
    def get_last_layer_feature(self, image: torch.Tensor, use_bottleneck: bool = False) -> Dict[str, torch.Tensor]:
        """SSL features: {"cls_token": (B, D), "patch_tokens": (B, Hp·Wp, D)} (b wide with the bottleneck)."""
        self._check_image(image)
        out = self.trunk.forward_features(image, use_bottleneck=use_bottleneck)
        return {"cls_token": out["x_norm_clstoken"], "patch_tokens": out["x_norm_patchtokens"]}

    def get_intermediate_layers_feature(self, image: torch.Tensor, n: Union[int, Sequence[int]] = 1,
                                        reshape: bool = False, return_class_token: bool = False, norm: bool = True):
        """Outputs of the last `n` blocks (or of the blocks with the given non-negative indices), each
        normed with the final norm; patches (B, N, D) or (B, D, Hp, Wp), optionally with the cls token."""
        self._check_image(image)
        return self.trunk.get_intermediate_layers(image, n=n, reshape=reshape,
                                                  return_class_token=return_class_token, norm=norm)

    def get_clip_image_feature(self, image: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        self._require_clip("get_clip_image_feature")
        self._check_image(image)
        out = self.trunk.forward_features(image, use_bottleneck=not self.config.vision_bottleneck_ae_only)
        if self.config.vision_clip_feat == "cls":
            feat = out["x_norm_clstoken"]
        else:  # "pooled"
            feat = out["x_norm_patchtokens"].mean(dim=1)
        feat = self.visual_proj(feat)
        return F.normalize(feat, dim=-1) if normalize else feat

    def get_clip_text_feature(self, text, normalize: bool = True, truncate: bool = False) -> torch.Tensor:
        """Text features (B, D). ``truncate=True`` runs the tower only up to the batch's last end-of-text
        token: exact up to float rounding where the tower is causal and pooled at that token
        (`can_truncate_text`), ignored elsewhere. The default is the original's full-length computation."""
        self._require_clip("get_clip_text_feature")
        text = self._check_text(text)
        cast_dtype = self.text_transformer.get_cast_dtype()
        positions, mask = self.positional_embedding, self.attn_mask
        if truncate and self.can_truncate_text:
            length = int(text.argmax(dim=-1).max()) + 1  # the end-of-text id is the largest id
            text, positions, mask = text[:, :length], positions[:length], mask[:length, :length]
        x = self.token_embedding(text).to(cast_dtype)
        x = x + positions.to(cast_dtype)
        x = self.text_transformer(x, attn_mask=mask)
        x = self.ln_final(x)
        x = self._text_pool(x, text)
        if isinstance(self.text_projection, nn.Linear):
            x = self.text_projection(x)
        elif self.text_projection is not None:
            x = x @ self.text_projection  # stored [in, out] (spec trap 7)
        return F.normalize(x, dim=-1) if normalize else x

    @property
    def can_truncate_text(self) -> bool:
        """True when the text tower is causal and pooled at the end-of-text token: positions after the
        batch's last end-of-text token cannot change the features."""
        c = self.config
        return c.text_pool_type == "argmax" and not c.text_no_causal_mask and self.attn_mask is not None

    def _text_pool(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        pool = self.config.text_pool_type
        if pool == "argmax":  # the EOT token: 49407 is the largest id
            return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
        if pool == "first":
            return x[:, 0]
        if pool == "last":
            return x[:, -1]
        return x

    def get_clip_logits(self, image: torch.Tensor, text):
        """(logits_per_image (Bi, Bt), logits_per_text (Bt, Bi)) = (exp(logit_scale)·img) @ txtᵀ [+ bias]."""
        image_features = self.get_clip_image_feature(image, normalize=True)
        text_features = self.get_clip_text_feature(text, normalize=True)
        logits = self.logits_from_features(image_features, text_features)
        return logits, logits.T

    def logits_from_features(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Image-to-text logits (Bi, Bt) from normalised features, as get_clip_logits computes them."""
        self._require_clip("logits_from_features")
        logits = self.logit_scale.exp() * image_features @ text_features.T
        if self.logit_bias is not None:
            logits = logits + self.logit_bias
        return logits

    def get_reconstruction_latents(self, image: torch.Tensor) -> torch.Tensor:
        """Latents (B, b, H/P, W/P): bottleneck of the final-normed patch tokens, channel-first."""
        self._check_image(image)
        patches = self.trunk.forward_features(image, use_bottleneck=True)["x_norm_patchtokens"]
        B, N, C = patches.shape
        P = self.config.vision_patch_size
        h, w = image.shape[-2] // P, image.shape[-1] // P
        if N != h * w:
            raise RuntimeError(f"got {N} patch tokens for a {h}x{w} grid")
        return patches.transpose(1, 2).reshape(B, C, h, w)

    def get_latents_decoded_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents (B, b, H', W') to ImageNet-normalised RGB (B, 3, 16H', 16W')."""
        if self.pixel_decoder is None:
            raise RuntimeError("get_latents_decoded_images needs the pixel decoder, but this model was built "
                               "with train_reconstruction=false")
        if not isinstance(latents, torch.Tensor) or latents.dim() != 4:
            raise ValueError(f"latents must be a tensor (B, {self.config.bottleneck_dim}, H', W'), got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}")
        if latents.shape[1] != self.pixel_decoder.in_channels:
            raise ValueError(f"latents have {latents.shape[1]} channels, the decoder expects "
                             f"{self.pixel_decoder.in_channels}: shape {tuple(latents.shape)}")
        if not latents.is_floating_point():
            raise TypeError(f"latents must be a floating tensor, got {latents.dtype}")
        return self.pixel_decoder(latents)

    def forward(self, image: Optional[torch.Tensor] = None, text=None, forward_type: str = "clip") -> dict:
        if forward_type == "clip":
            self._require_clip("forward(forward_type='clip')")
            out = {}
            if image is not None:
                out["image_features"] = self.get_clip_image_feature(image, normalize=True)
            if text is not None:
                out["text_features"] = self.get_clip_text_feature(text, normalize=True)
            out["logit_scale"] = self.logit_scale.exp()
            if self.logit_bias is not None:
                out["logit_bias"] = self.logit_bias
            return out
        if forward_type == "rec":
            latents = self.get_reconstruction_latents(image)
            return {"latents": latents, "reconstructed_image": self.get_latents_decoded_images(latents),
                    "target_image": image}
        if forward_type == "feature":
            return self.get_last_layer_feature(image, use_bottleneck=True)
        raise ValueError(f"forward_type={forward_type!r} is not one of {', '.join(FORWARD_TYPES)}")


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int):
    """The CLIP tokenizer for string prompts, built once per context length (a build costs ~20 ms)."""
    from .tokenizers import get_tokenizer

    return get_tokenizer(context_length=context_length)


def _on_meta(module: nn.Module) -> bool:
    p = next(module.parameters(), None)
    return p is not None and p.is_meta


__all__ = ["VTPModel", "UPSAMPLE"]
