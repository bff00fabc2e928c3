"""Model parity against the original: every public method of both models on fixed inputs (two 256x256
images, one 224x224 image, four prompts), relative L2 and max abs error per output, and the tokenizers
(``python -m verify.bench_original``)."""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

PROMPTS = ["a diagram", "a dog", "a cat", "a person"]
# extra strings for the tokenizer comparison (digits, contractions, html entities, unicode, truncation)
TOKENIZER_PROBES = PROMPTS + ["hello world", "123", "don't", "A  Photo&amp;of   a DOG!", "café naïve 東京",
                              "word " * 100]


@dataclass
class ParityRow:
    case: str
    output: str
    shape: str
    rel_l2: float
    max_abs: float
    ok: bool
    note: str = ""


def _flatten(out, prefix: str = "") -> List[Tuple[str, object]]:
    """Nested dict/tuple/list of tensors -> [(path, tensor)]."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if isinstance(out, dict):
        items = []
        for k in sorted(out):
            items += _flatten(out[k], f"{prefix}.{k}" if prefix else str(k))
        return items
    if isinstance(out, (tuple, list)):
        items = []
        for i, v in enumerate(out):
            items += _flatten(v, f"{prefix}[{i}]")
        return items
    return [(prefix or "out", out)]


def compare(ours: torch.Tensor, ref: torch.Tensor) -> Tuple[float, float]:
    """(relative L2 error ||ours - ref|| / ||ref||, max |ours - ref|) in float64; inf on shape mismatch
    or non-finite values."""
    if not isinstance(ours, torch.Tensor) or not isinstance(ref, torch.Tensor) or ours.shape != ref.shape:
        return math.inf, math.inf
    a = ours.detach().to(torch.float64)
    b = ref.detach().to(torch.float64)
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return math.inf, math.inf
    diff = a - b
    den = torch.linalg.vector_norm(b).item()
    num = torch.linalg.vector_norm(diff).item()
    rel = num / den if den > 0 else (0.0 if num == 0 else math.inf)
    return rel, (diff.abs().max().item() if diff.numel() else 0.0)


def make_inputs(ours_tokenizer) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    img2 = torch.randn(2, 3, 256, 256, generator=g)
    img224 = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ids = ours_tokenizer(PROMPTS)
    return {"img2": img2, "img1": img2[:1].clone(), "img224": img224, "ids": ids}


def parity_cases(inp: Dict[str, torch.Tensor], depth: int, orig_latents: Dict[str, torch.Tensor]
                 ) -> List[Tuple[str, Callable]]:
    img2, img224, ids = inp["img2"], inp["img224"], inp["ids"]
    layers = sorted({0, depth // 2, depth - 1})
    return [
        ("get_reconstruction_latents(img2)", lambda m: m.get_reconstruction_latents(img2)),
        ("get_latents_decoded_images(orig latents)", lambda m: m.get_latents_decoded_images(orig_latents["z"])),
        ("encode+decode (own latents)",
         lambda m: m.get_latents_decoded_images(m.get_reconstruction_latents(img2))),
        ("get_reconstruction_latents(img224)", lambda m: m.get_reconstruction_latents(img224)),
        ("get_clip_image_feature(img2)", lambda m: m.get_clip_image_feature(img2)),
        ("get_clip_image_feature(img2, normalize=False)", lambda m: m.get_clip_image_feature(img2, normalize=False)),
        ("get_clip_image_feature(img224)", lambda m: m.get_clip_image_feature(img224)),
        ("get_clip_text_feature(4 prompts)", lambda m: m.get_clip_text_feature(ids)),
        ("get_clip_text_feature(4 prompts, normalize=False)",
         lambda m: m.get_clip_text_feature(ids, normalize=False)),
        ("get_clip_logits(img2, 4 prompts)", lambda m: m.get_clip_logits(img2, ids)),
        ("get_last_layer_feature(img2)", lambda m: m.get_last_layer_feature(img2)),
        ("get_last_layer_feature(img2, use_bottleneck=True)",
         lambda m: m.get_last_layer_feature(img2, use_bottleneck=True)),
        ("get_last_layer_feature(img224)", lambda m: m.get_last_layer_feature(img224)),
        ("get_intermediate_layers_feature(img2, n=4, cls)",
         lambda m: m.get_intermediate_layers_feature(img2, n=4, return_class_token=True)),
        (f"get_intermediate_layers_feature(img2, n={layers}, reshape, norm=False)",
         lambda m: m.get_intermediate_layers_feature(img2, n=layers, reshape=True, norm=False)),
        ("get_intermediate_layers_feature(img224, n=2, reshape)",
         lambda m: m.get_intermediate_layers_feature(img224, n=2, reshape=True)),
        ("forward(img2, ids, 'clip')", lambda m: m(img2, ids, forward_type="clip")),
        ("forward(img2, 'rec')", lambda m: m(img2, forward_type="rec")),
        ("forward(img2, 'feature')", lambda m: m(img2, forward_type="feature")),
    ]


def _interop_row(ours, orig_model) -> ParityRow:
    """Write the checkpoint with the ORIGINAL save_pretrained, load it with ours: same tensors? The note
    lists config.json keys written by only one side."""
    from vtp import VTPModel

    with tempfile.TemporaryDirectory(prefix="vtp_interop_") as d_orig, \
            tempfile.TemporaryDirectory(prefix="vtp_interop_") as d_ours:
        orig_model.save_pretrained(d_orig)
        ours.save_pretrained(d_ours)
        back = VTPModel.from_pretrained(d_orig)
        sd_b, sd_r = back.state_dict(), orig_model.state_dict()
        same = set(sd_b) == set(sd_r) and all(sd_b[k].dtype == sd_r[k].dtype and torch.equal(sd_b[k], sd_r[k])
                                              for k in sd_r)
        cfg_r = json.loads(Path(d_orig, "config.json").read_text())
        cfg_o = json.loads(Path(d_ours, "config.json").read_text())
    notes = []
    if set(cfg_r) - set(cfg_o):
        notes.append(f"config.json keys only the original writes: {sorted(set(cfg_r) - set(cfg_o))}")
    if set(cfg_o) - set(cfg_r):
        notes.append(f"config.json keys only ours writes: {sorted(set(cfg_o) - set(cfg_r))}")
    differ = sorted(k for k in set(cfg_r) & set(cfg_o) if cfg_r[k] != cfg_o[k] and k != "transformers_version")
    if differ:
        notes.append(f"config.json values differ: {differ}")
    return ParityRow("original save_pretrained -> ours from_pretrained", f"{len(sd_b)} tensors", "-",
                     0.0 if same else math.inf, 0.0 if same else math.inf, same and not differ, "; ".join(notes))


@torch.no_grad()
def run_parity(ours, orig_model, orig, inp: Dict[str, torch.Tensor], tol: float) -> List[ParityRow]:
    rows: List[ParityRow] = []
    # static checks: same state dict, same RoPE periods
    sd_o, sd_r = ours.state_dict(), orig_model.state_dict()
    missing, extra = sorted(set(sd_r) - set(sd_o)), sorted(set(sd_o) - set(sd_r))
    differ = sorted(k for k in set(sd_o) & set(sd_r) if sd_o[k].shape != sd_r[k].shape
                    or sd_o[k].dtype != sd_r[k].dtype or not torch.equal(sd_o[k], sd_r[k]))
    ok = not missing and not extra and not differ
    problems = [f"{what} {len(keys)}: {', '.join(keys[:3])}" for what, keys in
                (("missing in ours", missing), ("only in ours", extra), ("differ", differ)) if keys]
    rows.append(ParityRow("state_dict (keys, shapes, dtypes, values)", f"{len(sd_o)} vs {len(sd_r)} keys", "-",
                          0.0 if ok else math.inf, 0.0 if ok else math.inf, ok, "; ".join(problems)))
    if getattr(ours, "attn_mask", None) is not None:
        rel, mx = (0.0, 0.0) if torch.equal(ours.attn_mask, orig_model.attn_mask) else (math.inf, math.inf)
        rows.append(ParityRow("attn_mask buffer", "attn_mask", str(tuple(ours.attn_mask.shape)), rel, mx, rel == 0))

    # file interop: the original's save_pretrained read back by ours
    try:
        rows.append(_interop_row(ours, orig_model))
    except Exception as e:  # noqa: BLE001
        rows.append(ParityRow("original save_pretrained -> ours from_pretrained", "-", "-", math.inf, math.inf,
                              False, f"{type(e).__name__}: {e}"))

    # tokenizer: ours vs the original SimpleTokenizer (exact ids)
    from vtp.tokenizers import get_tokenizer

    try:
        theirs_tok = orig.tokenizers.SimpleTokenizer(context_length=ours.config.text_context_length)
        a = get_tokenizer(context_length=ours.config.text_context_length)(TOKENIZER_PROBES)
        b = theirs_tok(TOKENIZER_PROBES)
        same = torch.equal(a.long(), b.long())
        rows.append(ParityRow("tokenizer ids (10 probes)", "ids", str(tuple(a.shape)), 0.0 if same else math.inf,
                              float((a.long() - b.long()).abs().max()), same))
    except Exception as e:  # noqa: BLE001
        rows.append(ParityRow("tokenizer ids", "ids", "-", math.inf, math.inf, False, f"{type(e).__name__}: {e}"))

    latents = {"z": orig_model.get_reconstruction_latents(inp["img2"])}
    for case, fn in parity_cases(inp, ours.config.vision_depth, latents):
        try:
            out_r = fn(orig_model)
        except Exception as e:  # noqa: BLE001
            rows.append(ParityRow(case, "-", "-", math.nan, math.nan, False, f"original raised {e!r}"))
            continue
        try:
            out_o = fn(ours)
        except Exception as e:  # noqa: BLE001
            rows.append(ParityRow(case, "-", "-", math.inf, math.inf, False, f"ours raised {e!r}"))
            continue
        flat_r, flat_o = dict(_flatten(out_r)), dict(_flatten(out_o))
        for name in sorted(set(flat_r) | set(flat_o), key=lambda s: (len(s), s)):
            tr, to = flat_r.get(name), flat_o.get(name)
            rel, mx = compare(to, tr)
            shape = str(tuple(tr.shape)) if isinstance(tr, torch.Tensor) else type(tr).__name__
            note = "" if name in flat_r and name in flat_o else ("only in ours" if name in flat_o else
                                                                   "only in original")
            rows.append(ParityRow(case, name, shape, rel, mx, rel <= tol and not note, note))
    return rows
