"""CLIP byte-level BPE tokenizer (spec §7), the text input of `VTPModel.get_clip_text_feature`.

A prompt is cleaned, split by a regular expression into words, punctuation runs and single digits,
and each piece is byte-pair encoded with the OpenAI CLIP merges file. A batch becomes a zero-padded
int64 tensor `[49406, ids..., 49407, 0, ...]` of shape (N, context_length).
"""

from __future__ import annotations

import functools
import gzip
import html
import operator
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ftfy
import regex

if TYPE_CHECKING:
    import torch

BPE_PATH_ENV = "VTP_BPE_PATH"
DEFAULT_BPE_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
DEFAULT_CONTEXT_LENGTH = 77

SOT_TOKEN, EOT_TOKEN = "<start_of_text>", "<end_of_text>"
END_OF_WORD = "</w>"
# 49,408 ids = 256 bytes + 256 bytes</w> + merges + 2 special tokens.
NUM_MERGES = 49152 - 256 - 2  # 48,894: the merges file holds more lines than CLIP uses
HEADER_MARKER = "#version"

# Alternatives are tried in this order: special tokens, contractions, a letter run, ONE digit,
# a run of anything that is neither space, letter nor digit.
TOKEN_PATTERN = regex.compile(
    r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)

CLEAN_MODES = ("lower", "whitespace")


class TokenizerError(ValueError):
    """The vocabulary file exists but is not a usable CLIP merges file."""


@functools.lru_cache(maxsize=None)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable character, so BPE never sees whitespace or control bytes.

    The 188 printable bytes (33-126, 161-172, 174-255) map to themselves; the other 68, in increasing
    order, to code points 256, 257, .... Insertion order (printable bytes first) is the vocabulary order.
    """
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]  # "!".."~", "¡".."¬", "®".."ÿ"
    table = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(others)})
    return table


def resolve_bpe_path(bpe_path: str | os.PathLike | None = None) -> Path:
    """The vocabulary file to use: `bpe_path` if given, else $VTP_BPE_PATH, else the packaged file."""
    if bpe_path is not None:
        path, origin = Path(bpe_path), "the bpe_path argument"
    elif os.environ.get(BPE_PATH_ENV):
        path, origin = Path(os.environ[BPE_PATH_ENV]), f"${BPE_PATH_ENV}"
    else:
        path, origin = DEFAULT_BPE_PATH, "the file shipped with vtp-ascend"
    if not path.is_file():
        raise FileNotFoundError(
            f"CLIP BPE vocabulary not found: {path} (from {origin}). Point ${BPE_PATH_ENV} or "
            f"bpe_path= at a copy of bpe_simple_vocab_16e6.txt.gz (sha256 {BPE_SHA256}), "
            f"or reinstall vtp-ascend, which ships it."
        )
    return path


def load_merges(path: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """The first NUM_MERGES merge pairs of a gzip-compressed CLIP merges file, parsed once per file.

    The cache is keyed by the absolute path, modification time and size, so a replaced file is read again.
    """
    path = Path(path).absolute()
    stat = path.stat()
    return _load_merges(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _load_merges(path: Path, mtime_ns: int, size: int) -> tuple[tuple[str, str], ...]:
    del mtime_ns, size  # cache key only
    try:
        # Reading to the end makes gzip check the CRC and length of the whole file.
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().rstrip("\n").split("\n")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise TokenizerError(
            f"{path} is not a readable gzip-compressed CLIP merges file ({type(e).__name__}: {e}); "
            f"expected bpe_simple_vocab_16e6.txt.gz with sha256 {BPE_SHA256}."
        ) from e

    if HEADER_MARKER not in lines[0]:
        raise TokenizerError(
            f"{path} does not start with a CLIP merges header (a line containing {HEADER_MARKER!r}); "
            f"its first line is {lines[0][:80]!r}."
        )
    merge_lines = lines[1 : NUM_MERGES + 1]
    if len(merge_lines) < NUM_MERGES:
        raise TokenizerError(f"{path} holds {len(merge_lines)} merge lines; CLIP needs {NUM_MERGES}.")
    merges = tuple(tuple(line.split()) for line in merge_lines)
    for number, pair in enumerate(merges, start=2):
        if len(pair) != 2:
            raise TokenizerError(f"{path}, line {number}: expected two symbols, got {merge_lines[number - 2]!r}.")
    return merges


def basic_clean(text: str) -> str:
    """Repair mojibake, undo (double) HTML escaping, strip."""
    text = ftfy.fix_text(text)
    return html.unescape(html.unescape(text)).strip()


def whitespace_clean(text: str) -> str:
    """Collapse every whitespace run to one space and strip."""
    return " ".join(text.split())


class SimpleTokenizer:
    """CLIP BPE tokenizer: `tokenizer(texts)` -> int64 tensor (N, context_length).

    Args:
        bpe_path: the merges file; default $VTP_BPE_PATH, else the file shipped in this package.
        context_length: length of each output row (77 for CLIP).
        clean: "lower" (default) lower-cases after cleaning; "whitespace" keeps the case.
    """

    def __init__(
        self,
        bpe_path: str | os.PathLike | None = None,
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        clean: str = "lower",
    ):
        if clean not in CLEAN_MODES:
            raise ValueError(f"clean={clean!r} is not supported; use one of {CLEAN_MODES}.")
        self.bpe_path = resolve_bpe_path(bpe_path)
        self.context_length = _check_length(context_length)
        self.clean_mode = clean
        self.model_name: str | None = None  # recorded by get_tokenizer; it does not change the vocabulary

        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        merges = load_merges(self.bpe_path)

        byte_chars = list(self.byte_encoder.values())
        vocab = [*byte_chars, *(c + END_OF_WORD for c in byte_chars), *("".join(pair) for pair in merges)]
        vocab += [SOT_TOKEN, EOT_TOKEN]
        self.encoder = dict(zip(vocab, range(len(vocab))))
        self.decoder = {i: symbol for symbol, i in self.encoder.items()}
        self.merge_ranks = dict(zip(merges, range(len(merges))))
        self.cache: dict[str, tuple[str, ...]] = {SOT_TOKEN: (SOT_TOKEN,), EOT_TOKEN: (EOT_TOKEN,)}

        self.vocab_size = len(vocab)
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.all_special_ids = [self.sot_token_id, self.eot_token_id]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(bpe_path='{self.bpe_path}', context_length={self.context_length}, "
            f"clean={self.clean_mode!r})"
        )

    def clean(self, text: str) -> str:
        text = whitespace_clean(basic_clean(text))
        return text.lower() if self.clean_mode == "lower" else text

    def bpe(self, token: str) -> tuple[str, ...]:
        """Merge the characters of one pre-token (already byte-mapped) into vocabulary symbols."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + END_OF_WORD]
        while len(word) > 1:
            best = min(zip(word, word[1:]), key=lambda pair: self.merge_ranks.get(pair, float("inf")))
            if best not in self.merge_ranks:
                break
            word = _merge(word, best)
        self.cache[token] = tuple(word)
        return self.cache[token]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without the start and end tokens."""
        ids = []
        for token in TOKEN_PATTERN.findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(token))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; every end of word becomes a space, invalid UTF-8 is replaced."""
        text = "".join(self.decoder[int(i)] for i in ids)
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids of `texts` as an int64 tensor (N, context_length), zero-padded.

        A text too long for the context is cut and its last kept id set to <end_of_text>;
        :meth:`encode_batch` also returns each text's length before the cut.
        """
        return self.encode_batch(texts, context_length)[0]

    def encode_batch(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """(ids, lengths): the ids of :meth:`__call__` and, per text, its token count before any cut
        (start and end tokens included); a length above the context length means the text was cut."""
        import torch  # here, so that importing the tokenizer does not import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("no prompts given: pass a string or a non-empty list of strings.")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"prompt at index {index} is {type(text).__name__}, expected str: {text!r:.80}")
        length = self.context_length if context_length is None else _check_length(context_length)

        result = torch.zeros(len(texts), length, dtype=torch.int64)
        lengths = []
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            lengths.append(len(ids))
            if len(ids) > length:
                ids = ids[:length]
                ids[-1] = self.eot_token_id
            result[row, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
        return result, lengths


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    """Replace every non-overlapping occurrence of `pair` in `word`, left to right, by one symbol."""
    first, second = pair
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
            merged.append(first + second)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def _check_length(context_length: int) -> int:
    try:
        length = operator.index(context_length)  # int, numpy integer; not float or str
    except TypeError:
        length = 0
    if length < 1 or isinstance(context_length, bool):
        raise ValueError(f"context_length must be a positive int, got {context_length!r}.")
    return length
