"""Harness self-test: perturb one module's output on the candidate only (``--inject-fault``).

A sound certification must FAIL when the candidate is broken on purpose; `run_verify.sh --inject-fault`
proves it on the machine at hand. Spec: ``MODULE=FACTOR`` multiplies the module's output by FACTOR,
``MODULE=nan`` puts one NaN at its first element; MODULE is a dotted name of ``model.named_modules()``.
"""

from __future__ import annotations

import logging

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
    try:
        factor = float(value)
    except ValueError:
        raise UsageError(f"--inject-fault {spec!r}: {value!r} is neither a number nor 'nan'") from None
    if factor != factor or factor in (float("inf"), float("-inf")):
        raise UsageError(f"--inject-fault {spec!r}: the factor must be finite (use MODULE=nan for a NaN)")
    return name, factor


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

    def hook(module, args, output):
        if fault == "nan":
            output = output.clone()
            output[(0,) * output.dim()] = float("nan")  # exactly one NaN, at the first element
            return output
        return output * fault

    module.register_forward_hook(hook)
    logger.warning("injected fault on the candidate: %s -> %s", name, fault)
    return {"module": name, "fault": fault}
