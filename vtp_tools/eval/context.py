"""What every evaluation shares: the distributed context, the model on its device, progress, gathering.

:func:`open_run` turns the common command-line options (``--device --precision --fusion --weights
--require-weights``) into a :class:`Run`; :func:`gather_by_index` merges per-rank results keyed by
sample index into one list in dataset order, each sample exactly once.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import torch

from ascend.distributed import DistContext, gather_objects, init_distributed

logger = logging.getLogger(__name__)


@dataclass
class Run:
    """One evaluation process: where it runs, the model it evaluates and how."""

    ctx: DistContext
    model: Any
    weights: dict
    precision: str
    fusion: str
    fusion_report: Any = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    def autocast(self):
        from ascend.device import autocast

        return autocast(self.device, self.precision)

    def input_dtype(self) -> torch.dtype:
        from ascend.device import PRECISIONS

        return PRECISIONS[self.precision]

    def fusion_rules(self) -> dict:
        """The fusion rules that produced the numbers: ``enabled`` (names), ``approximations`` (the enabled
        rules that do not compute the original function, e.g. gelu's tanh GELU) and ``modules_patched``."""
        report = self.fusion_report
        if report is None:
            return {"enabled": [], "approximations": [], "modules_patched": 0}
        return {"enabled": report.enabled,
                "approximations": [r.rule.name for r in report.rules if r.enabled and not r.rule.exact],
                "modules_patched": len(report.patched_modules)}

    def describe(self) -> dict:
        """The run fields of a result: device, precision, fusion spec and rules, world size, weights identity."""
        return {"device": str(self.device), "device_type": self.device.type, "world_size": self.ctx.world_size,
                "precision": self.precision, "fusion": self.fusion, "fusion_rules": self.fusion_rules(),
                "weights": self.weights,
                "model": self.weights.get("preset") or Path(str(self.weights.get("path", ""))).name or None}


def open_run(device: str = "auto", precision: str = "fp32", fusion: str = "auto", weights: Optional[str] = None,
             require_weights: bool = False, model: Any = None, identity: Optional[dict] = None) -> Run:
    """The distributed context, and the model loaded (or synthetic, with a notice) and prepared for the device.

    ``model`` / ``identity`` inject an already built model (tests); otherwise ``ascend.runtime.load_weights``.
    """
    from ascend.runtime import load_weights, prepare_candidate

    ctx = init_distributed(device)
    if model is None:
        model, identity = load_weights(weights, require=require_weights)
    identity = identity or {"kind": "injected"}
    model.eval()
    model, report = prepare_candidate(model, ctx.device, fusion=fusion, precision=precision, copy_model=False)
    for p in model.parameters():
        p.requires_grad_(False)
    if ctx.is_main:
        logger.info("model: %s weights on %s, precision %s, fusion %s (rules: %s), %d process(es)",
                    identity.get("kind"), ctx.device, precision, fusion, ", ".join(report.enabled) or "none",
                    ctx.world_size)
    return Run(ctx=ctx, model=model, weights=identity, precision=precision, fusion=fusion, fusion_report=report)


class Progress:
    """A progress line per ~10 % (or tqdm when installed and stderr is a terminal); only on rank 0."""

    def __init__(self, total: int, desc: str, enabled: bool = True, unit: str = "img"):
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.enabled = enabled
        self.t0 = time.perf_counter()
        self._next = 0.1
        self._bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=desc, unit=unit)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        frac = self.done / max(self.total, 1)
        if frac >= self._next or self.done >= self.total:
            rate = self.done / max(time.perf_counter() - self.t0, 1e-9)
            logger.info("%s: %d/%d %s (%.0f %%), %.1f %s/s", self.desc, self.done, self.total, self.unit,
                        100 * frac, rate, self.unit)
            while self._next <= frac:
                self._next += 0.1

    def close(self) -> float:
        """Seconds since the start."""
        if self._bar is not None:
            self._bar.close()
        return time.perf_counter() - self.t0

    def wrap(self, iterable: Iterable, size=len) -> Iterator:
        for item in iterable:
            yield item
            self.update(size(item))


def gather_by_index(ctx: DistContext, indices: list[int], values: list, total: int) -> Optional[list]:
    """On rank 0: ``values`` of every rank placed at their sample ``indices`` (dataset order), else None.

    Raises RuntimeError when an index arrives twice or one is missing: a result is counted exactly once.
    """
    parts = gather_objects(ctx, (list(indices), list(values)))
    if parts is None:
        return None
    merged: dict[int, Any] = {}
    for idx, vals in parts:
        for i, v in zip(idx, vals):
            if i in merged:
                raise RuntimeError(f"sample {i} was evaluated twice (sharding error)")
            merged[i] = v
    if len(merged) != total or sorted(merged) != list(range(total)):
        missing = sorted(set(range(total)) - set(merged))[:5]
        raise RuntimeError(f"gathered {len(merged)} results for {total} samples; missing e.g. {missing}")
    return [merged[i] for i in range(total)]
