"""`VTPConfig`: the typed, frozen description of a VTP model, read from and written to the official
`config.json` (spec §1). Named presets (Small/Base/Large) are data, in `presets.json`."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

logger = logging.getLogger(__name__)

FFN_LAYERS = ("mlp", "swiglu", "swiglu32", "swiglu64", "swiglu128")
NORM_LAYERS = ("layernorm", "layernormbf16", "rmsnorm")
CLIP_FEATS = ("cls", "pooled")
POOL_TYPES = ("argmax", "first", "last", "none")

# Keys that transformers' PretrainedConfig writes next to the model fields; kept verbatim on a round trip.
META_KEYS = ("architectures", "model_type", "dtype", "torch_dtype", "transformers_version")

_PRESETS_FILE = Path(__file__).with_name("presets.json")


class ConfigError(ValueError):
    """A config.json that is not JSON, not a VTP config, or has a field of the wrong type or value."""


@dataclass(frozen=True)
class VTPConfig:
    """The 40 fields of the original `VTPConfig` (spec §1.1), with the original defaults.

    `meta` holds the transformers bookkeeping keys (architectures, model_type, dtype or torch_dtype,
    transformers_version); `extra` holds keys this class does not know. Both are written back unchanged.
    """

    image_size: int = 256
    train_clip: bool = True
    train_reconstruction: bool = True
    vision_patch_size: int = 16
    vision_embed_dim: int = 768
    vision_depth: int = 12
    vision_num_heads: int = 12
    vision_mlp_ratio: float = 4.0
    vision_ffn_layer: str = "swiglu"
    vision_norm_layer: str = "rmsnorm"
    vision_init_values: Optional[float] = None
    vision_use_qk_norm: bool = False
    vision_feature_bottleneck: Optional[int] = 64
    vision_bottleneck_ae_only: bool = True
    vision_clip_feat: str = "cls"
    text_context_length: int = 77
    text_vocab_size: int = 49408
    text_embed_dim: int = 768
    text_num_heads: int = 12
    text_depth: int = 12
    text_mlp_ratio: float = 4.0
    text_ls_init_value: Optional[float] = None
    text_embed_cls: bool = False
    text_pad_id: int = 0
    text_no_causal_mask: bool = False
    text_pool_type: str = "argmax"
    text_proj_type: str = "linear"
    text_proj_bias: bool = False
    text_output_tokens: bool = False
    text_quick_gelu: bool = False
    decoder_embed_dim: int = 768
    decoder_num_heads: int = 12
    decoder_depth: int = 12
    decoder_ffn_layer: str = "swiglu"
    decoder_norm_layer: str = "layernorm"
    decoder_init_values: Optional[float] = None
    decoder_use_qk_norm: bool = False
    init_logit_scale: Optional[float] = None
    init_logit_bias: Optional[float] = None
    nonscalar_logit_scale: bool = False

    meta: dict = field(default_factory=dict, compare=False)
    extra: dict = field(default_factory=dict, compare=False)
    source: Optional[str] = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        where = self.source or "VTPConfig"
        for f in model_fields():
            value = getattr(self, f.name)
            object.__setattr__(self, f.name, _coerce(f, value, where))
        self._validate(where)

    # ----------------------------------------------------------------------------------------------- checks
    def _validate(self, where: str) -> None:
        def bad(msg: str):
            raise ConfigError(f"{where}: {msg}")

        for name, allowed in (
            ("vision_ffn_layer", FFN_LAYERS),
            ("decoder_ffn_layer", FFN_LAYERS),
            ("vision_norm_layer", NORM_LAYERS),
            ("decoder_norm_layer", NORM_LAYERS),
            ("vision_clip_feat", CLIP_FEATS),
            ("text_pool_type", POOL_TYPES),
        ):
            if getattr(self, name) not in allowed:
                bad(f"{name}={getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("image_size", "vision_patch_size", "vision_embed_dim", "vision_depth", "vision_num_heads",
                     "text_context_length", "text_vocab_size", "text_embed_dim", "text_num_heads", "text_depth",
                     "decoder_embed_dim", "decoder_num_heads", "decoder_depth"):
            if getattr(self, name) <= 0:
                bad(f"{name}={getattr(self, name)} must be positive")
        for prefix, width, heads in (("vision", self.vision_embed_dim, self.vision_num_heads),
                                     ("decoder", self.decoder_embed_dim, self.decoder_num_heads)):
            if width % (4 * heads):
                bad(f"{prefix}_embed_dim={width} must be divisible by 4*{prefix}_num_heads={4 * heads} "
                    "(2-D RoPE splits each head into 4 parts)")
        if self.text_embed_dim % self.text_num_heads:
            bad(f"text_embed_dim={self.text_embed_dim} is not divisible by text_num_heads={self.text_num_heads}")
        if self.vision_feature_bottleneck is not None and self.vision_feature_bottleneck <= 0:
            bad(f"vision_feature_bottleneck={self.vision_feature_bottleneck} must be positive or null")
        if self.text_embed_cls:
            bad("text_embed_cls=true is not supported by VTPModel (the original never attaches the text CLS "
                "token; spec trap 14)")
        model_type = self.meta.get("model_type", "vtp")
        if model_type != "vtp":
            bad(f"model_type={model_type!r}, expected 'vtp': this is not a VTP config")

    # ------------------------------------------------------------------------------------------ derived
    @property
    def bottleneck_dim(self) -> int:
        """Latent channels b: the bottleneck width, or D when there is no bottleneck layer."""
        return self.vision_feature_bottleneck or self.vision_embed_dim

    @property
    def has_bottleneck(self) -> bool:
        b = self.vision_feature_bottleneck
        return b is not None and b != self.vision_embed_dim

    # ------------------------------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict, source: Optional[str] = None) -> "VTPConfig":
        where = source or "config"
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in model_fields()}
        if not known & set(data) and data.get("model_type") != "vtp":
            raise ConfigError(f"{where}: not a VTP config (no model_type 'vtp' and none of the VTP fields such "
                              f"as vision_embed_dim); keys found: {sorted(data)[:10]}")
        kwargs = {k: v for k, v in data.items() if k in known}
        meta = {k: data[k] for k in META_KEYS if k in data}
        extra = {k: v for k, v in data.items() if k not in known and k not in META_KEYS}
        if extra:
            logger.warning("%s: keeping %d unknown config key(s): %s", where, len(extra), ", ".join(sorted(extra)))
        return cls(**kwargs, meta=meta, extra=extra, source=source)

    @classmethod
    def from_json(cls, path: "str | os.PathLike") -> "VTPConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found; a VTP checkpoint folder holds config.json and "
                              "model.safetensors (see weights/README.md)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e}); re-download the checkpoint or fix the file") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "VTPConfig":
        presets = load_presets()
        if name not in presets:
            raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(presets)}")
        data = dict(presets[name]["config"])
        data.update(overrides)
        return cls.from_dict(data, source=f"preset {name}")

    @property
    def unknown_keys(self) -> list:
        return sorted(self.extra)

    def to_dict(self) -> dict:
        """The flat config.json object: model fields, bookkeeping keys and unknown keys, sorted by key."""
        out = {f.name: getattr(self, f.name) for f in model_fields()}
        out.update(self.meta)
        out.setdefault("architectures", ["VTPModel"])
        out.setdefault("model_type", "vtp")
        if "dtype" not in out and "torch_dtype" not in out:
            out["dtype"] = "float32"
        out.update(self.extra)
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self, folder: "str | os.PathLike") -> Path:
        """Write `folder/config.json` atomically."""
        from .io_utils import atomic_write_text

        path = Path(folder) / "config.json"
        atomic_write_text(path, self.to_json_string())
        return path

    def replace(self, **changes) -> "VTPConfig":
        return dataclasses.replace(self, **changes)


def model_fields():
    """The 40 model fields, in declaration order (bookkeeping fields excluded)."""
    return [f for f in fields(VTPConfig) if f.name not in ("meta", "extra", "source")]


def load_presets() -> dict:
    """Presets from `presets.json`: name -> {"approximate": bool, "note": str, "config": {...}}."""
    return json.loads(_PRESETS_FILE.read_text(encoding="utf-8"))


_INT_FIELDS = {f.name for f in fields(VTPConfig) if f.type in ("int", "Optional[int]")}
_FLOAT_FIELDS = {f.name for f in fields(VTPConfig) if f.type in ("float", "Optional[float]")}
_BOOL_FIELDS = {f.name for f in fields(VTPConfig) if f.type == "bool"}
_STR_FIELDS = {f.name for f in fields(VTPConfig) if f.type == "str"}
_OPTIONAL = {f.name for f in fields(VTPConfig) if f.type.startswith("Optional")}


def _coerce(f, value: Any, where: str) -> Any:
    """Check one field's JSON value; ints are accepted where floats are expected (e.g. "vision_mlp_ratio": 4)."""
    name = f.name
    if value is None:
        if name in _OPTIONAL:
            return None
        raise ConfigError(f"{where}: {name} is null but must be set")
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {name}={value!r} must be true or false")
        return value
    if name in _INT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{where}: {name}={value!r} must be an integer")
        return int(value)
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: {name}={value!r} must be a number")
        return float(value)
    if name in _STR_FIELDS:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {name}={value!r} must be a string")
        return value
    return value
