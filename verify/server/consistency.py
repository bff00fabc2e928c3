"""Cross-card consistency: the candidate outputs of every rank compared with each other, bit for bit.

Every rank of ``python -m verify.server`` runs the same kernels on the same inputs, so the cards must
agree exactly; a card whose outputs differ from the majority is named as **suspect**, even when its
error against the CPU reference is inside the gates (a marginal HBM cell, a wrong driver state or a bad
firmware shows up here first).

Each rank saves its outputs in ``rank<k>/candidate_outputs.safetensors`` (``accuracy_eval
--save-outputs``; keys ``"<case id>/<tensor name>"``) and reduces them to a digest per tensor
(:func:`digest_file`: sha256 of the raw bytes, dtype, shape), which is small enough to gather from
every node. :func:`compare` groups the ranks by their digests:

- every rank identical: PASS;
- a strict majority identical: every other rank is a suspect;
- no strict majority (two ranks that differ, a 2-2 split): the ranks that also failed their own
  certification are the suspects; if none did, every disagreeing rank is listed, with "no majority".

Where the ranks' files can be read (one node, or ``--out`` on a shared file system) the report also
gives, for a few differing tensors of each suspect, the largest absolute difference to the majority
and how many elements differ. A rank without outputs (crashed, stopped) is listed as missing.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from pathlib import Path

logger = logging.getLogger("verify.server.consistency")

SCHEMA = "vtp-consistency/1"
OUTPUTS_NAME = "candidate_outputs.safetensors"
EXAMPLES = 5  # differing tensors described per suspect


def _raw_bytes(tensor) -> bytes:
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def digest_file(path: "str | Path") -> dict:
    """``{key: {"sha256", "dtype", "shape"}}`` of every tensor in a safetensors file."""
    from safetensors import safe_open

    digests = {}
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(f.keys()):
            tensor = f.get_tensor(key)
            digests[key] = {"sha256": hashlib.sha256(_raw_bytes(tensor)).hexdigest(),
                            "dtype": str(tensor.dtype).replace("torch.", ""), "shape": list(tensor.shape)}
    return digests


def _signature(digests: dict) -> tuple:
    return tuple(sorted((key, d["sha256"], d["dtype"], tuple(d["shape"])) for key, d in digests.items()))


def _differing_keys(mine: dict, theirs: dict) -> list:
    keys = sorted(set(mine) | set(theirs))
    return [k for k in keys if k not in mine or k not in theirs or mine[k] != theirs[k]]


def _difference(a_path: Path, b_path: Path, key: str) -> dict:
    """Max |a - b| and the count of differing elements of one tensor in two files."""
    import torch
    from safetensors import safe_open

    with safe_open(str(a_path), framework="pt") as fa, safe_open(str(b_path), framework="pt") as fb:
        if key not in fa.keys() or key not in fb.keys():
            return {"tensor": key, "note": "missing on one side"}
        a, b = fa.get_tensor(key), fb.get_tensor(key)
    if a.shape != b.shape:
        return {"tensor": key, "note": f"shape {list(a.shape)} vs {list(b.shape)}"}
    a, b = a.to(torch.float64), b.to(torch.float64)
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    differs = (a != b) & ~(nan_a & nan_b)
    finite = differs & torch.isfinite(a) & torch.isfinite(b)
    max_abs = float((a - b)[finite].abs().max()) if bool(finite.any()) else 0.0
    scale = float(b[torch.isfinite(b)].abs().max()) if bool(torch.isfinite(b).any()) else 0.0
    return {"tensor": key, "numel": a.numel(), "elements_differing": int(differs.sum()),
            "nonfinite_mismatch": int((nan_a ^ nan_b).sum()), "max_abs_diff": max_abs,
            "max_abs_diff_relative_to_scale": max_abs / scale if scale else None}


def compare(digests: dict, devices: dict | None = None, verdicts: dict | None = None,
            files: dict | None = None) -> dict:
    """Compare the ranks' outputs.

    ``digests``: ``{rank: {key: digest} or None}`` (None: the rank has no outputs); ``devices`` and
    ``verdicts``: ``{rank: str}`` for the messages and the tie-break; ``files``: ``{rank: Path}`` of
    readable safetensors files, for the size of the differences (optional).
    """
    devices, verdicts, files = devices or {}, verdicts or {}, files or {}
    present = {int(r): d for r, d in digests.items() if d is not None}
    missing = sorted(int(r) for r, d in digests.items() if d is None)
    result = {"schema": SCHEMA, "ranks_compared": sorted(present), "ranks_missing": missing,
              "tensors": len(set().union(*present.values())) if present else 0,
              "groups": [], "majority": None, "suspects": [], "reasons": []}
    if len(present) < 2:
        result.update(verdict="SKIPPED", identical=None,
                      note="fewer than two ranks have outputs: nothing to compare")
        return result
    groups = defaultdict(list)
    for rank, d in sorted(present.items()):
        groups[_signature(d)].append(rank)
    ordered = sorted(groups.values(), key=lambda ranks: (-len(ranks), ranks[0]))
    result["groups"] = [{"ranks": ranks} for ranks in ordered]
    if len(ordered) == 1:
        result.update(verdict="PASS", identical=True, majority=ordered[0])
        if missing:
            result["note"] = f"rank(s) {_ranks(missing)} have no outputs and were not compared"
        return result

    if len(ordered[0]) * 2 > len(present):
        majority, suspects = ordered[0], [r for ranks in ordered[1:] for r in ranks]
        why = "differs from the majority (ranks {})".format(_ranks(majority))
    else:
        majority = None
        failed = [r for r in present if verdicts.get(r, "PASS") != "PASS"]
        suspects = sorted(failed) if 0 < len(failed) < len(present) else sorted(present)
        why = "no majority among {} ranks; {}".format(
            len(present), "it also failed its certification" if 0 < len(failed) < len(present)
            else "every disagreeing rank is listed")
    result.update(verdict="FAIL", identical=False, majority=majority)
    reference_rank = (majority or [r for r in sorted(present) if r not in suspects] or sorted(present))[0]
    for rank in sorted(suspects):
        keys = _differing_keys(present[rank], present[reference_rank])
        entry = {"rank": rank, "device": devices.get(rank), "compared_with_rank": reference_rank,
                 "differing_tensors": len(keys), "of_tensors": len(present[rank]), "why": why, "examples": []}
        a, b = files.get(rank), files.get(reference_rank)
        if rank != reference_rank and a and b and Path(a).is_file() and Path(b).is_file():
            for key in keys[:EXAMPLES]:
                try:
                    entry["examples"].append(_difference(Path(a), Path(b), key))
                except Exception as exc:  # a damaged file is reported, not fatal for the summary
                    entry["examples"].append({"tensor": key, "note": f"{type(exc).__name__}: {exc}"})
        else:
            entry["examples"] = [{"tensor": key} for key in keys[:EXAMPLES]]
        result["suspects"].append(entry)
        worst = max((e.get("max_abs_diff") or 0.0 for e in entry["examples"]), default=0.0)
        result["reasons"].append(
            f"rank {rank} ({devices.get(rank) or 'device ?'}) is suspect: {len(keys)} of {len(present[rank])} "
            f"output tensor(s) not bit-identical to rank {reference_rank}"
            + (f" (max |diff| {worst:.3g})" if worst else "") + f"; {why}")
    return result


def _ranks(ranks) -> str:
    return ", ".join(str(r) for r in ranks)
