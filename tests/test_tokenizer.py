"""CLIP BPE tokenizer (spec §7): ids against the original implementation, batch rules, vocabulary errors."""

import gzip
import hashlib
import json
import shutil
import sys
import types

import pytest
import torch

from vtp.tokenizers import DEFAULT_BPE_PATH, SimpleTokenizer, TokenizerError, get_tokenizer
from vtp.tokenizers.simple_tokenizer import BPE_SHA256, NUM_MERGES, bytes_to_unicode

SOT, EOT = 49406, 49407
HEADER = '"bpe_simple_vocab_16e6.txt#version: 0.2\n'


@pytest.fixture(scope="module")
def tokenizer():
    return get_tokenizer(bpe_path=DEFAULT_BPE_PATH)


@pytest.fixture(scope="module")
def cased(tokenizer):
    return SimpleTokenizer(bpe_path=tokenizer.bpe_path, clean="whitespace")


def padded(ids, length=77):
    return ids + [0] * (length - len(ids))


# --- ids ------------------------------------------------------------------------------------------


def test_fixture_cases_match_original(tokenizer, parity_dir):
    fixture = json.loads((parity_dir / "tokenizer_cases.json").read_text(encoding="utf-8"))
    expected = torch.tensor(fixture["ids"], dtype=torch.int64)

    ids = tokenizer(fixture["cases"], context_length=fixture["context_length"])

    assert ids.dtype == torch.int64
    assert ids.shape == (len(fixture["cases"]), 77)
    wrong = [
        f"{text[:40]!r}: got {got[got != 0].tolist()}, expected {want[want != 0].tolist()}"
        for text, got, want in zip(fixture["cases"], ids, expected)
        if not torch.equal(got, want)
    ]
    assert not wrong, f"{len(wrong)} of {len(fixture['cases'])} cases differ:\n" + "\n".join(wrong)


@pytest.mark.parametrize(
    "text, ids",
    [("a", [320]), ("hello world", [3306, 1002]), ("123", [272, 273, 274]), ("don't", [847, 713])],
)
def test_spec_check_values_encode(tokenizer, text, ids):
    assert tokenizer.encode(text) == ids


def test_spec_check_values_batch(tokenizer):
    ids = tokenizer(["a dog", "a diagram", "a cat", "a person"])
    expected = [padded([SOT, 320, word, EOT]) for word in (1929, 22697, 2368, 2533)]
    assert torch.equal(ids, torch.tensor(expected, dtype=torch.int64))


def test_vocabulary_layout(tokenizer):
    assert tokenizer.vocab_size == 49408
    assert (tokenizer.sot_token_id, tokenizer.eot_token_id) == (SOT, EOT)
    assert tokenizer.decoder[0] == "!"
    assert tokenizer.decoder[256] == "!</w>"
    assert tokenizer.decoder[512] == "in"  # first merge of the file: "i n"
    assert len(tokenizer.merge_ranks) == NUM_MERGES == 48894


def test_byte_table_order():
    table = bytes_to_unicode()
    values = list(table.values())
    assert len(set(values)) == 256
    assert values[:3] == ["!", '"', "#"] and table[ord("A")] == "A"
    assert table[0] == chr(256) and table[ord(" ")] == chr(256 + 32) and values[188] == chr(256)


def test_whitespace_clean_keeps_case(tokenizer, cased):
    ids = cased.encode("  A   Dog ")
    assert ids != tokenizer.encode("A Dog")
    assert cased.decode(ids) == "A Dog "


def test_contractions_match_any_case(tokenizer, cased):
    assert cased.decode(cased.encode("DON'T")) == "DON 'T "  # "'T" is one pre-token, not "'" + "T"
    assert tokenizer.decode(tokenizer.encode("DON'T")) == "don 't "


def test_clean_collapses_whitespace_and_lowers(tokenizer):
    assert tokenizer.clean("  A  Photo\tof\n\u00a0a DOG ") == "a photo of a dog"


def test_html_is_unescaped_twice(tokenizer):
    # ftfy leaves entities alone in text that holds "<", so both unescapes are visible here.
    assert tokenizer.encode("x < y &amp;amp; z") == tokenizer.encode("x < y & z")


def test_special_tokens_in_text(tokenizer):
    assert tokenizer.encode("a <end_of_text> b") == [320, EOT, 321]


def test_unknown_clean_mode_is_rejected():
    with pytest.raises(ValueError, match="clean='upper' is not supported"):
        SimpleTokenizer(clean="upper")


def test_decode_round_trip(tokenizer):
    text = "a photo of a dog on the beach"
    assert tokenizer.decode(tokenizer.encode(text)).strip() == text


# --- batch call -----------------------------------------------------------------------------------


def test_long_text_is_truncated_with_end_token(tokenizer):
    ids = tokenizer("word " * 200)
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == SOT and ids[0, -1].item() == EOT
    assert (ids[0, 1:-1] == tokenizer.encode("word")[0]).all()


def test_context_length_argument(tokenizer):
    ids = tokenizer(["a dog", "word " * 20], context_length=5)
    assert ids.tolist() == [[SOT, 320, 1929, EOT, 0], [SOT, 2653, 2653, 2653, EOT]]


def test_single_string_is_a_batch_of_one(tokenizer):
    assert torch.equal(tokenizer("a dog"), tokenizer(["a dog"]))


def test_empty_list_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="no prompts given"):
        tokenizer([])


def test_non_string_prompt_names_its_index(tokenizer):
    with pytest.raises(TypeError, match="prompt at index 1 is int, expected str"):
        tokenizer(["a dog", 3])


@pytest.mark.parametrize("length", [0, -1, 7.0])
def test_bad_context_length(tokenizer, length):
    with pytest.raises(ValueError, match="context_length must be a positive int"):
        tokenizer("a dog", context_length=length)


def test_get_tokenizer_defaults_and_ignores_open_clip(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("open_clip must not be used")

    monkeypatch.setitem(sys.modules, "open_clip", types.SimpleNamespace(get_tokenizer=refuse))
    monkeypatch.delenv("VTP_BPE_PATH", raising=False)
    tokenizer = get_tokenizer("ViT-L-14")
    assert isinstance(tokenizer, SimpleTokenizer)
    assert tokenizer.model_name == "ViT-L-14"
    assert tokenizer.context_length == 77
    assert tokenizer.bpe_path == DEFAULT_BPE_PATH
    assert get_tokenizer(context_length=16)("a dog").shape == (1, 16)


# --- vocabulary file ------------------------------------------------------------------------------


def test_packaged_vocabulary_is_the_clip_file():
    assert hashlib.sha256(DEFAULT_BPE_PATH.read_bytes()).hexdigest() == BPE_SHA256


def test_env_var_overrides_packaged_file(tmp_path, monkeypatch):
    copy = tmp_path / "vocab.txt.gz"
    shutil.copyfile(DEFAULT_BPE_PATH, copy)
    monkeypatch.setenv("VTP_BPE_PATH", str(copy))
    tokenizer = get_tokenizer()
    assert tokenizer.bpe_path == copy
    assert tokenizer("a dog")[0, :4].tolist() == [SOT, 320, 1929, EOT]


def test_bpe_path_argument_wins_over_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("VTP_BPE_PATH", str(tmp_path / "absent.txt.gz"))
    assert get_tokenizer(bpe_path=DEFAULT_BPE_PATH).bpe_path == DEFAULT_BPE_PATH


@pytest.mark.parametrize("via_env", [False, True], ids=["bpe_path", "env"])
def test_missing_vocabulary_names_path_and_fix(tmp_path, monkeypatch, via_env):
    missing = tmp_path / "nowhere" / "bpe.txt.gz"
    if via_env:
        monkeypatch.setenv("VTP_BPE_PATH", str(missing))
    with pytest.raises(FileNotFoundError) as error:
        get_tokenizer(bpe_path=None if via_env else missing)
    message = str(error.value)
    assert str(missing) in message
    assert "VTP_BPE_PATH" in message and "reinstall" in message
    assert ("$VTP_BPE_PATH" if via_env else "bpe_path argument") in message


def _truncated(data):
    return data[: len(data) // 2]


def _bit_flipped(data):
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize(
    "make_bytes, words",
    [
        (lambda good: b"this is not gzip", "not a readable gzip"),
        (_truncated, "not a readable gzip"),
        (_bit_flipped, "not a readable gzip"),
        (lambda good: gzip.compress(b"merges\ni n\n"), "does not start with a CLIP merges header"),
        (lambda good: gzip.compress((HEADER + "i n\n" * 10).encode()), "holds 10 merge lines; CLIP needs 48894"),
        (lambda good: gzip.compress((HEADER + "i n\n" * 99 + "i n x\n" * NUM_MERGES).encode()), "line 101"),
    ],
    ids=["not-gzip", "truncated", "bit-flipped", "bad-header", "too-few-merges", "bad-merge-line"],
)
def test_corrupt_vocabulary_is_reported(tmp_path, make_bytes, words):
    corrupt = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    corrupt.write_bytes(make_bytes(DEFAULT_BPE_PATH.read_bytes()))
    with pytest.raises(TokenizerError, match=words) as error:
        SimpleTokenizer(bpe_path=corrupt)
    assert str(corrupt) in str(error.value)
