"""Text tokenizer of the CLIP text tower (spec §7).

    >>> from vtp.tokenizers import get_tokenizer
    >>> tokenizer = get_tokenizer()
    >>> tokenizer(["a dog", "a cat"]).shape
    torch.Size([2, 77])
"""

from __future__ import annotations

import os

from .simple_tokenizer import (
    BPE_PATH_ENV,
    DEFAULT_BPE_PATH,
    DEFAULT_CONTEXT_LENGTH,
    SimpleTokenizer,
    TokenizerError,
)

__all__ = [
    "BPE_PATH_ENV",
    "DEFAULT_BPE_PATH",
    "DEFAULT_CONTEXT_LENGTH",
    "SimpleTokenizer",
    "TokenizerError",
    "get_tokenizer",
]


def get_tokenizer(
    model_name: str = "ViT-B-32",
    context_length: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    bpe_path: str | os.PathLike | None = None,
    **kwargs,
) -> SimpleTokenizer:
    """The CLIP BPE tokenizer, as the original VTP `get_tokenizer` returns it without open_clip.

    `model_name` is only recorded (every VTP text tower uses the same vocabulary) and `cache_dir` is
    accepted for call compatibility and ignored. The vocabulary is `bpe_path`, else $VTP_BPE_PATH,
    else the file shipped in this package. Other keyword arguments (`clean=`) go to `SimpleTokenizer`.
    """
    del cache_dir  # nothing is downloaded
    if context_length is None:
        context_length = DEFAULT_CONTEXT_LENGTH
    tokenizer = SimpleTokenizer(bpe_path=bpe_path, context_length=context_length, **kwargs)
    tokenizer.model_name = model_name
    return tokenizer
