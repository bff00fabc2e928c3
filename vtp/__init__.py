"""VTP (Visual Tokenizer Pre-training, MiniMax): a faithful re-implementation of the inference model.

    from vtp import VTPModel, VTPConfig
    model = VTPModel.from_pretrained("weights/VTP-Small-f16d64")

The names are imported lazily, so `python -m vtp.weights` and the tokenizer do not pay for `import torch`.
"""

__version__ = "0.1.0"
__all__ = ["ConfigError", "VTPConfig", "VTPModel"]


def __getattr__(name):
    if name in ("ConfigError", "VTPConfig"):
        from . import config

        return getattr(config, name)
    if name == "VTPModel":
        from .model import VTPModel

        return VTPModel
    raise AttributeError(f"module 'vtp' has no attribute {name!r}")
