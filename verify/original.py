"""Importing the original MiniMax-AI/VTP checkout next to this package (under the alias ``vtp_original``,
torchvision stubbed when it cannot be imported) and loading its model: used by ``python -m verify.bench_original``
and the tools parity harness (vtp_tools.parity)."""

from __future__ import annotations

import importlib
import logging
import importlib.util
import sys
import types
from pathlib import Path
from typing import Dict, Tuple

import torch

logger = logging.getLogger("verify.bench_original")

ORIGINAL_ALIAS = "vtp_original"
INSTALL_HINT = ("python -m venv --system-site-packages /tmp/origvenv && "
                "/tmp/origvenv/bin/pip install 'transformers==4.57.1'   "
                "(do not install torch/torchvision into it; run this tool with /tmp/origvenv/bin/python)")


class OriginalUnavailable(RuntimeError):
    """The original repository or one of its dependencies is missing."""


def _stub_torchvision() -> bool:
    """The original imports `torchvision.ops.misc.FrozenBatchNorm2d` in an open_clip helper that VTPModel
    never calls. If torchvision is absent or broken, put a stub in sys.modules. Returns True if stubbed."""
    try:
        importlib.import_module("torchvision.ops.misc")
        return False
    except Exception as e:  # noqa: BLE001 - a broken torchvision raises all sorts of errors
        logger.info("torchvision not usable (%s: %s); stubbing torchvision.ops.misc", type(e).__name__, e)
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")

    class FrozenBatchNorm2d(torch.nn.Module):  # never instantiated by VTPModel
        def __init__(self, *a, **k):
            raise RuntimeError("torchvision stub (verify.bench_original): FrozenBatchNorm2d is unavailable")

    misc.FrozenBatchNorm2d = FrozenBatchNorm2d
    tv.ops, ops.misc = ops, misc
    sys.modules.update({"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.misc": misc})
    return True


def _namespace_package(name: str, path: Path) -> None:
    """Register `name` as a package rooted at `path` WITHOUT running its __init__ (the original's top-level
    __init__ pulls in the legacy training class and omegaconf, which VTPModel does not need)."""
    if name in sys.modules:
        return
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    mod.__file__ = str(path / "__init__.py")
    mod.__package__ = name
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    spec.submodule_search_locations = [str(path)]
    mod.__spec__ = spec
    sys.modules[name] = mod


def import_original(repo: Path) -> types.SimpleNamespace:
    """Import the original `VTPModel`, `VTPConfig` and tokenizer from a checkout at `repo`.

    Raises OriginalUnavailable with an installation hint when something is missing."""
    repo = Path(repo).expanduser().resolve()
    pkg = repo / "vtp"
    if not (pkg / "models" / "vtp_hf" / "modeling_vtp.py").is_file():
        raise OriginalUnavailable(
            f"{repo} is not a checkout of https://github.com/MiniMax-AI/VTP "
            f"(no vtp/models/vtp_hf/modeling_vtp.py); get it with "
            f"`git clone https://github.com/MiniMax-AI/VTP {repo}`")
    try:
        import transformers
        # resolve the lazy PreTrainedModel BEFORE the torchvision stub goes in: transformers probes
        # importlib.util.find_spec("torchvision"), which fails on a stub module
        transformers.PreTrainedModel
    except Exception as e:  # noqa: BLE001
        raise OriginalUnavailable(f"the original needs `transformers` ({type(e).__name__}: {e}). "
                                  f"Install it: {INSTALL_HINT}") from e
    stubbed = _stub_torchvision()
    _namespace_package(ORIGINAL_ALIAS, pkg)
    _namespace_package(f"{ORIGINAL_ALIAS}.models", pkg / "models")
    try:
        hf = importlib.import_module(f"{ORIGINAL_ALIAS}.models.vtp_hf")
        tok = importlib.import_module(f"{ORIGINAL_ALIAS}.tokenizers")
    except ModuleNotFoundError as e:
        raise OriginalUnavailable(f"importing the original code failed: missing module {e.name!r}. "
                                  f"Install it with pip (never torch/torchvision/timm/open_clip); "
                                  f"see: {INSTALL_HINT}") from e
    except Exception as e:  # noqa: BLE001
        raise OriginalUnavailable(f"importing the original code failed: {type(e).__name__}: {e}") from e
    return types.SimpleNamespace(VTPModel=hf.VTPModel, VTPConfig=hf.VTPConfig, tokenizers=tok, repo=repo,
                                 transformers_version=transformers.__version__, torchvision_stubbed=stubbed)


def causal_mask_reference(n: int) -> torch.Tensor:
    return torch.full((n, n), float("-inf")).triu_(1)


def load_original_model(orig, folder: Path) -> Tuple[torch.nn.Module, Dict[str, object]]:
    """`from_pretrained` of the original, fp32, eval. Repairs the non-persistent causal mask if the
    installed transformers left it uninitialised (spec trap 8: transformers 5.x)."""
    model, info = orig.VTPModel.from_pretrained(str(folder), output_loading_info=True)
    model = model.float() if any(p.dtype != torch.float32 for p in model.parameters()) else model
    model.eval()
    notes: Dict[str, object] = {k: sorted(v) if isinstance(v, (set, list)) else v for k, v in info.items()
                                if k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    notes["attn_mask"] = "absent"
    mask = getattr(model, "attn_mask", None)
    if mask is not None:
        ref = causal_mask_reference(mask.shape[-1])
        if torch.equal(mask.float(), ref):
            notes["attn_mask"] = "built correctly by from_pretrained"
        else:
            model.attn_mask = ref.to(mask.device)
            notes["attn_mask"] = (f"WRONG after from_pretrained (transformers {orig.transformers_version}; "
                                  f"{int(torch.isnan(mask).sum())} NaN); rebuilt")
            logger.warning("original attn_mask was not initialised by transformers %s; rebuilt it",
                           orig.transformers_version)
    return model, notes
