"""Modules kept in fp32 inside an fp16/bf16 run (Polygraphy's "precision constraints"): the file format
(YAML, schema ``vtp-fp32-modules/1``, written by ``python -m verify.bisection precision``) and how a
model applies it (``--fp32-modules FILE`` of the demo and the harness).
"""

from __future__ import annotations

from pathlib import Path

FP32_SCHEMA = "vtp-fp32-modules/1"


def apply_fp32_modules(model, names) -> list:
    """Run each module of ``names`` in fp32 inside autocast: its forward is wrapped (on this instance)
    so that autocast is off and its floating tensor inputs are cast to float32. Returns the names.

    Apply it to the final model (after copying and fusing): a deep copy keeps wrappers that point at
    the original module. Unknown names raise ValueError naming them; applying twice is a no-op.
    """
    import torch

    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        raise ValueError(f"fp32 modules not in the model: {unknown} (names as in model.named_modules(), "
                         f"e.g. trunk.blocks.0, pixel_decoder.norm)")

    def up(x):
        if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
            return x.float()
        if isinstance(x, (tuple, list)):
            return type(x)(up(v) for v in x)
        return x

    for name in names:
        module = modules[name]
        if getattr(module, "_vtp_fp32", False):
            continue

        def forward(*args, _orig=module.forward, **kwargs):
            tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
            kind = tensors[0].device.type if tensors else "cpu"
            with torch.autocast(device_type=kind, enabled=False):
                return _orig(*up(args), **{k: up(v) for k, v in kwargs.items()})

        module.forward = forward
        module._vtp_fp32 = True
    return list(names)


def write_fp32_modules(path, names, *, precision=None, note=None) -> Path:
    """Write the set as YAML (schema vtp-fp32-modules/1), atomically."""
    from vtp.io_utils import atomic_write_text

    lines = [f"# modules kept in fp32 for a {precision or 'low-precision'} run; written by python -m verify.bisection",
             f"# use: python ascend/inference.py ... --fp32-modules {Path(path).name}", f"schema: {FP32_SCHEMA}"]
    if precision:
        lines.append(f"precision: {precision}")
    if note:
        lines.append(f"note: {note!r}")
    lines.append("modules:" + ("" if names else " []"))
    lines += [f"  - {n}" for n in names]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def load_fp32_modules(path) -> list:
    """Module names from a file written by `write_fp32_modules`, or a plain text file (one name a line,
    ``#`` comments). ValueError naming the file when it is unreadable or of another schema."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the fp32 module list ({exc})") from None
    if "schema:" not in text:
        return [ln.split("#", 1)[0].strip() for ln in text.splitlines() if ln.split("#", 1)[0].strip()]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != FP32_SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: schema {got!r}, expected {FP32_SCHEMA!r}")
    names = data.get("modules") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{path}: 'modules' must be a list of module names")
    return names
