"""VTP (Visual Tokenizer Pre-training, MiniMax): a faithful re-implementation of the inference model.

    from vtp import VTPModel, VTPConfig
    model = VTPModel.from_pretrained("weights/VTP-Small-f16d64")
"""

from .config import ConfigError, VTPConfig
from .model import VTPModel

__all__ = ["ConfigError", "VTPConfig", "VTPModel"]
__version__ = "0.1.0"
