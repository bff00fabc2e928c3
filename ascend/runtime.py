"""What the demo and the verification harness share: finding the weights (or falling back to synthetic
ones, loudly), the default image, the prompt options and their tokenisation, and turning a reference
model into a device candidate."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "VTP-Small-f16d64"
DEFAULT_WEIGHTS = Path("weights") / DEFAULT_PRESET
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROMPTS = ("a diagram", "a dog", "a cat", "a person")
SYNTHETIC_NOTICE = ("NOTICE: no checkpoint found at {path}; using SYNTHETIC random weights ({preset}). Outputs "
                    "are not meaningful images or probabilities; accuracy and timing are still real measurements "
                    "of the model's computation. Download weights with `python -m vtp.weights download {preset}`.")


# The --fusion syntax, for the help of every entry point (ascend.fusion.parse_fusion_spec reads it).
FUSION_HELP = ("fused-operator rules (default all): 'all'; 'none'; 'auto' (only the rules flagged exact: all but the "
               "tanh gelu; on an NPU their kernels still differ by ULPs); a comma list of the rules to apply "
               "(gelu,layernorm); a comma list of rules to leave out, each with a leading '-' (-gelu,-rope = all "
               "but gelu and rope; 'all,-gelu' is the same as '-gelu'; --fusion -gelu works as --fusion=-gelu); "
               "or a YAML rule file (ascend/fusion.yaml). "
               "Rules: gelu, layernorm, rmsnorm, swiglu, attention, rope, quick_gelu, pixel_shuffle. A list that "
               "names rules both to apply and to leave out is refused.")
_SPEC_AFTER_DASH = re.compile(r"-[a-z_]{3,}(,-?[a-z_]{3,})*")


def join_fusion_value(argv: Sequence[str]) -> list:
    """``["--fusion", "-gelu,-rope"]`` -> ``["--fusion=-gelu,-rope"]``: argparse takes a value that starts with
    '-' for an option; a value that reads as a list of rules to leave out is joined to its option."""
    argv, out, i = list(argv), [], 0
    while i < len(argv):
        if argv[i] == "--fusion" and i + 1 < len(argv) and _SPEC_AFTER_DASH.fullmatch(argv[i + 1]):
            out.append(f"--fusion={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def add_fusion_argument(parser: argparse.ArgumentParser, default: str = "all", help: str = FUSION_HELP,
                        **kwargs) -> None:
    """--fusion SPEC, accepting ``--fusion -gelu`` as well as ``--fusion=-gelu`` (see `join_fusion_value`)."""
    import sys

    parser.add_argument("--fusion", default=default, help=help, **kwargs)
    original = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        return original(join_fusion_value(sys.argv[1:] if args is None else args), namespace)
    parser.parse_known_args = parse_known_args


PROMPT_HELP = ("one CLIP prompt; repeat the option for more prompts (a comma is part of the prompt: "
               "--prompt 'a dog, sitting' --prompt 'a cat')")
PROMPTS_FILE_HELP = ("a UTF-8 text file with one prompt per line; blank lines and lines starting with # are "
                     "ignored; its prompts come after those of --prompt")


class WeightsMissing(RuntimeError):
    """Weights were required (--require-weights) but not found, or the folder holds synthetic weights."""


class PromptError(ValueError):
    """A prompt option that cannot be used: an empty prompt, an unreadable or empty prompts file, the old
    --prompts option."""


# ------------------------------------------------------------------------------------------ prompts
def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--prompt TEXT`` (repeatable, one prompt each) and ``--prompts-file FILE`` to ``parser``.

    The old ``--prompts`` is still recognised, only to be refused by :func:`prompts_from_args` with the
    new spelling: the demo split its value on commas and the harness on spaces, so no reading of it is
    right for both. Read the result with :func:`prompts_from_args`.
    """
    parser.add_argument("--prompt", action="append", dest="prompt", metavar="TEXT", help=PROMPT_HELP +
                        f" (default: {', '.join(repr(p) for p in DEFAULT_PROMPTS)})")
    parser.add_argument("--prompts-file", type=Path, metavar="FILE", help=PROMPTS_FILE_HELP)
    # declared so that argparse does not take `--prompts` for an abbreviation of --prompts-file
    parser.add_argument("--prompts", nargs="+", dest="legacy_prompts", metavar="TEXT",
                        help="removed: use --prompt TEXT once per prompt (refused with that advice)")


def prompts_from_args(args: argparse.Namespace) -> Tuple[str, ...]:
    """The prompts of ``--prompt`` then ``--prompts-file``, in order; DEFAULT_PROMPTS when neither is given.

    Raises PromptError (a ValueError) for an empty or blank prompt, a prompts file that cannot be read
    as UTF-8 text or holds no prompt, and for the removed ``--prompts`` option.
    """
    legacy = getattr(args, "legacy_prompts", None)
    if legacy:
        raise PromptError(f"--prompts {' '.join(legacy)!r}: this option was removed (the demo split it on commas, "
                          "the harness on spaces); give each prompt its own --prompt, e.g. "
                          "--prompt 'a dog' --prompt 'a cat', or put one prompt per line in a file and pass "
                          "--prompts-file FILE")
    prompts = []
    for index, text in enumerate(getattr(args, "prompt", None) or [], 1):
        if not text.strip():
            raise PromptError(f"--prompt number {index} is empty; give a text, e.g. --prompt 'a dog'")
        prompts.append(text.strip())
    path = getattr(args, "prompts_file", None)
    if path is not None:
        prompts.extend(read_prompts_file(path))
    return tuple(prompts) if prompts else tuple(DEFAULT_PROMPTS)


def read_prompts_file(path: "str | os.PathLike") -> Tuple[str, ...]:
    """One prompt per line of a UTF-8 file; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark written by some editors is not a prompt
    except FileNotFoundError:
        raise PromptError(f"--prompts-file {path}: file not found") from None
    except IsADirectoryError:
        raise PromptError(f"--prompts-file {path}: is a folder; give a text file with one prompt per line") from None
    except UnicodeDecodeError as exc:
        raise PromptError(f"--prompts-file {path}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it "
                          "as UTF-8") from None
    except OSError as exc:
        raise PromptError(f"--prompts-file {path}: cannot be read ({exc.strerror or exc})") from None
    prompts = tuple(line.strip() for line in text.splitlines()
                    if line.strip() and not line.lstrip().startswith("#"))
    if not prompts:
        raise PromptError(f"--prompts-file {path}: no prompt in it (blank lines and lines starting with # are "
                          "ignored); write one prompt per line")
    return prompts


def shorten(text: str, n: int = 60) -> str:
    """``text`` as it is when it has at most ``n`` characters, else its first ``n`` and "…" (for logs)."""
    text = str(text)
    return text if len(text) <= n else text[:n] + "…"


def tokenize_prompts(prompts: Sequence[str], context_length: int):
    """Token ids (N, context_length) of ``prompts``, the ids of the CLIP tokenizer unchanged; a prompt
    longer than the context is cut there, and a warning names each such prompt once, with its length."""
    from vtp.tokenizers import get_tokenizer

    ids, lengths = get_tokenizer(context_length=context_length).encode_batch(list(prompts))
    for index, (prompt, length) in enumerate(zip(prompts, lengths), 1):
        if length > context_length:
            logger.warning("prompt %d %r is %d tokens long (start and end tokens included) but the text context is "
                           "%d: it is cut to the first %d tokens", index, shorten(prompt), length, context_length,
                           context_length)
    return ids


def default_weights_dir() -> Path:
    """`weights/VTP-Small-f16d64` under the current directory when it holds a checkpoint, else the same folder
    in this checkout (so `bash /path/to/run_verify.sh` finds the checkout's weights from anywhere)."""
    for folder in (DEFAULT_WEIGHTS, REPO_ROOT / DEFAULT_WEIGHTS):
        if (folder / "config.json").is_file():
            return folder
    return DEFAULT_WEIGHTS


def load_weights(weights: "str | os.PathLike | None" = None, *, require: bool = False,
                 preset: str = DEFAULT_PRESET, seed: int = 0):
    """(model on CPU in fp32, identity dict). `weights` None means `weights/VTP-Small-f16d64` when it exists,
    else synthetic weights of `preset` (unless `require`). An explicit folder must exist.

    identity: {"kind": "checkpoint", "synthetic": False, "path", "files", "sha256", "manifest"} (the files the
    loader read); {"kind": "synthetic", "synthetic": True, "source", "preset"} for the fallback; and for a
    folder of synthetic weights saved with ``save_pretrained`` (marked in the file, see
    ``vtp.checkpoint.synthetic_mark``) the checkpoint's keys with "kind": "synthetic", "synthetic": True and
    "source" (how they were made). `require` refuses both kinds of synthetic weights with WeightsMissing.
    """
    from vtp.checkpoint import CheckpointError, synthetic_mark
    from vtp import VTPModel
    from vtp import weights as vtp_weights

    folder = Path(weights) if weights is not None else default_weights_dir()
    if weights is None and not (folder / "config.json").is_file():
        if require:
            raise WeightsMissing(f"no checkpoint at {folder} and --require-weights is set; download it with "
                                 f"`python -m vtp.weights download {preset}` or pass --weights DIR")
        logger.warning(SYNTHETIC_NOTICE.format(path=folder, preset=preset))
        model_logger = logging.getLogger("vtp.model")
        quiet = model_logger.disabled
        model_logger.disabled = True  # its own "using SYNTHETIC" warning would repeat the NOTICE just given
        try:
            model = VTPModel.synthetic(preset, seed=seed)
        finally:
            model_logger.disabled = quiet
        return model, {"kind": "synthetic", "synthetic": True, "source": model.weights_source, "preset": preset}
    if require and folder.is_dir():
        try:
            mark = synthetic_mark(folder)
        except CheckpointError:
            mark = None  # the loader below names what is wrong with the folder
        if mark:
            raise WeightsMissing(f"{folder} holds SYNTHETIC weights ({mark}, written by save_pretrained of a "
                                 "VTPModel.synthetic model), and --require-weights needs a real checkpoint; "
                                 f"download one with `python -m vtp.weights download {preset}` or pass --weights DIR")
    model = VTPModel.from_pretrained(folder)
    # the identity of the files the loader actually read, not of whatever else lies in the folder
    files = vtp_weights.weights_identity(folder, files=model.checkpoint_files)
    if model.is_synthetic:
        logger.warning("NOTICE: %s holds SYNTHETIC weights (%s): outputs are not meaningful images or "
                       "probabilities", folder, model.synthetic_label)
        return model, {"kind": "synthetic", "synthetic": True, "source": model.synthetic_label, **files}
    return model, {"kind": "checkpoint", "synthetic": False, **files}


def default_image(weights: "str | os.PathLike | None" = None, size: int = 256):
    """(PIL RGB image, description): the checkpoint folder's figures/dog.png when present, else the
    project's own deterministic sample image."""
    from vtp.image import load_image, make_sample_image

    folder = Path(weights) if weights is not None else default_weights_dir()
    dog = folder / "figures" / "dog.png"
    if dog.is_file():
        return load_image(dog), str(dog)
    return make_sample_image(size=size, seed=0), "generated sample image (vtp.image.make_sample_image, seed 0)"


def prepare_candidate(reference, device, *, fusion="all", precision: str = "fp32",
                      record_path: Optional[Path] = None, copy_model: bool = True) -> Tuple[object, object]:
    """A copy of `reference` with the fusion rules applied for `device` and the compute dtype of
    `precision` (the kernel decisions depend on it), moved to `device`.

    The reference itself is never modified (the fusion layer swaps modules per instance).
    Returns (candidate, fusion report).
    """
    from ascend.device import PRECISIONS
    from ascend.fusion import apply_fusions

    candidate = copy.deepcopy(reference) if copy_model else reference
    report = apply_fusions(candidate, fusion=fusion, device=device, record_path=record_path,
                           dtype=PRECISIONS[precision])
    candidate = candidate.to(device)
    candidate.eval()
    return candidate, report
