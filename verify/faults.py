"""Harness self-test: perturb one module's output on the candidate only (``--inject-fault``).

A sound certification must FAIL when the candidate is broken on purpose; `run_verify.sh --inject-fault`
proves it on the machine at hand. Spec: ``MODULE=FACTOR`` multiplies the module's output by FACTOR,
``MODULE=nan`` puts one NaN at its first element; MODULE is a dotted name of ``model.named_modules()``.

Degradations that only time shows (the burn-in's self-tests, verify.burn_in):

- ``MODULE=drift@N`` or ``MODULE=drift@N:FACTOR``: correct for the module's first N calls, then its output
  is multiplied by FACTOR (default 1.02) on every later call (outputs that drift after N calls);
- ``MODULE=leak`` or ``MODULE=leak:COPIES``: outputs unchanged, but the hook keeps a copy of every output
  (COPIES copies, default 1) for the life of the process (a candidate that keeps references to its outputs);
- ``MODULE=sleep:MS``: outputs unchanged, the module sleeps MS milliseconds in every call (a card that is
  right but slow; with ``VTP_INJECT_FAULT_RANK`` only one rank of a multi-card run).

`parse_fault` returns ``(name, float)`` or ``(name, "nan")`` for the first two kinds, as it always has, and
``(name, {"kind": ..., ...})`` (a JSON-able dict) for the others.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """A command-line option that cannot be used (exit 2)."""


def parse_fault(spec: str):
    """"MODULE=FACTOR" -> (name, float) or "MODULE=nan" -> (name, "nan"); UsageError otherwise."""
    if "=" not in spec:
        raise UsageError(f"--inject-fault {spec!r}: expected MODULE=FACTOR or MODULE=nan, "
                         "e.g. trunk.blocks.0=1.02")
    name, value = spec.rsplit("=", 1)
    if not name.strip():
        raise UsageError(f"--inject-fault {spec!r}: the module name before '=' is empty")
    if value.lower() == "nan":
        return name, "nan"
    kind = value.split("@", 1)[0].split(":", 1)[0].strip().lower()
    if kind in TIMED_KINDS:
        return name, _parse_timed(spec, kind, value.strip())
    try:
        factor = float(value)
    except ValueError:
        raise UsageError(f"--inject-fault {spec!r}: {value!r} is neither a number, 'nan', drift@N[:FACTOR], "
                         "leak[:COPIES] nor sleep:MS") from None
    if factor != factor or factor in (float("inf"), float("-inf")):
        raise UsageError(f"--inject-fault {spec!r}: the factor must be finite (use MODULE=nan for a NaN)")
    return name, factor


TIMED_KINDS = ("drift", "leak", "sleep")
DRIFT_FACTOR = 1.02


def _number(spec: str, text: str, what: str, cast, low):
    try:
        value = cast(text)
    except ValueError:
        raise UsageError(f"--inject-fault {spec!r}: {what} {text!r} is not a number") from None
    if not (value >= low) or value in (float("inf"),):
        raise UsageError(f"--inject-fault {spec!r}: {what} must be at least {low}, got {text}")
    return value


def _parse_timed(spec: str, kind: str, value: str) -> dict:
    """drift@N[:FACTOR], leak[:COPIES], sleep:MS -> {"kind": ..., parameters}; UsageError otherwise."""
    head, _, param = value.partition(":")
    if kind == "drift":
        if "@" not in head:
            raise UsageError(f"--inject-fault {spec!r}: write drift@N (after N calls) or drift@N:FACTOR, "
                             "e.g. trunk.blocks.0=drift@300")
        after = _number(spec, head.split("@", 1)[1], "the call count N of drift@N", int, 0)
        factor = _number(spec, param, "the drift factor", float, 0.0) if param else DRIFT_FACTOR
        if factor == 1.0:
            raise UsageError(f"--inject-fault {spec!r}: a drift factor of 1 changes nothing")
        return {"kind": "drift", "after_calls": after, "factor": factor}
    if "@" in head:
        raise UsageError(f"--inject-fault {spec!r}: '@N' belongs to drift@N only")
    if kind == "leak":
        return {"kind": "leak", "copies": _number(spec, param, "COPIES of leak:COPIES", int, 1) if param else 1}
    if not param:
        raise UsageError(f"--inject-fault {spec!r}: write sleep:MS (milliseconds per call), "
                         "e.g. trunk.blocks.0=sleep:50")
    return {"kind": "sleep", "ms": _number(spec, param, "MS of sleep:MS", float, 0.0)}


def fault_target(model, spec: str):
    """(module, factor or "nan") for `spec`; UsageError when the model has no such module."""
    name, fault = parse_fault(spec)
    modules = dict(model.named_modules())
    if name not in modules:
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        close = [n for n in modules if n and n.startswith(parent)][:8] or ["trunk.blocks.0", "pixel_decoder.blocks.0",
                                                                         "text_transformer.resblocks.0"]
        raise UsageError(f"--inject-fault: no module named {name!r} in the model (e.g. {', '.join(close)})")
    return modules[name], fault


def inject_fault(model, spec: str) -> dict:
    """Register a forward hook that perturbs one module's output; returns {"module", "fault"}."""
    module, fault = fault_target(model, spec)
    name = parse_fault(spec)[0]

    if isinstance(fault, dict):
        hook = _timed_hook(fault)
        module.register_forward_hook(hook)
        logger.warning("injected fault on the candidate: %s -> %s", name, fault)
        return {"module": name, "fault": fault}

    def hook(module, args, output):
        if fault == "nan":
            output = output.clone()
            output[(0,) * output.dim()] = float("nan")  # exactly one NaN, at the first element
            return output
        return output * fault

    module.register_forward_hook(hook)
    logger.warning("injected fault on the candidate: %s -> %s", name, fault)
    return {"module": name, "fault": fault}


def _timed_hook(fault: dict):
    """The forward hook of a drift, leak or sleep fault. The hook counts the module's calls itself; the leak's
    copies hang on the hook (``hook.kept``), so they live as long as the model does."""
    state = {"calls": 0}

    def hook(module, args, output):
        state["calls"] += 1
        if fault["kind"] == "drift":
            return output * fault["factor"] if state["calls"] > fault["after_calls"] else output
        if fault["kind"] == "leak":
            hook.kept.extend(output.detach().clone() for _ in range(fault["copies"]))
            return output
        time.sleep(fault["ms"] / 1e3)
        return output

    hook.kept = []
    hook.state = state
    return hook
