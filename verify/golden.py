"""Golden references: the inputs and the reference outputs of a run, saved once, judged against later.

A golden set is a folder (Polygraphy's ``--save-outputs/--load-outputs``; Ascend ModelZoo compares
NPU with GPU the same way)::

    inputs.safetensors      the inputs of every case      {"clip/b3/256x256/images": T, ...}
    reference.safetensors   the reference outputs         {"clip/b3/256x256/clip_text_features": T, ...}
    manifest.json           schema vtp-golden/1

manifest.json::

    {"schema": "vtp-golden/1", "created": iso time, "kit_version": str,
     "files": {"inputs.safetensors": {"sha256", "bytes"}, "reference.safetensors": {...}},
     "weights": identity (kind, sha256 | source/preset, files), "config": VTPConfig dict,
     "cases": any JSON (the case list the set covers), "reference": {"device", "precision", "fusion"},
     "environment": {"torch", "torch_npu", "cann", "device", "soc_version", "driver", ...},
     "tensors": {"inputs": [keys], "outputs": [keys]}, "info": other keys of save_golden's info}

`load_golden` refuses (GoldenError, a ValueError) a set of another schema, one made with other weights,
config or cases than expected, and a file whose sha256 differs from the manifest: the message says
what differs and what to do. The manifest is written last, so an interrupted save leaves no usable set.

The manifest cannot vouch for itself (a file edited together with its sha256 in the manifest passes the
checks above), so the user pins it: ``--save-golden`` prints and records `manifest_sha256`, and
``--reference DIR --reference-sha256 HEX`` refuses a set whose manifest.json has another sha256.
A set holds the CPU reference's answers (``"source": "reference"``) or a trusted device's
(``--golden-source candidate``: a validated GPU, an NPU certified on an earlier driver), named in
``reference.source`` of the manifest and in the summary of every run judged against it.
"""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path

from vtp.weights import sha256_file

SCHEMA = "vtp-golden/1"
INPUTS, OUTPUTS, MANIFEST = "inputs.safetensors", "reference.safetensors", "manifest.json"
ENV_KEYS = ("torch", "torch_build", "torch_npu", "cann", "device", "device_type", "device_name", "soc_version",
            "soc_family", "driver", "python", "platform", "cpu_model")

logger = logging.getLogger("verify.golden")


class GoldenError(ValueError):
    """A golden set that cannot be used: missing, tampered, or made for something else."""


def kit_version() -> str:
    """vtp-ascend's installed version, else the one in pyproject.toml, else "unknown"."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("vtp-ascend")
    except (ImportError, PackageNotFoundError):
        pass
    try:
        import tomllib

        data = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
        return str(data["project"]["version"])
    except (ImportError, OSError, KeyError, ValueError):
        return "unknown"


def weights_key(identity) -> dict:
    """What identifies weights across machines: the content hash (not the folder path)."""
    identity = identity or {}
    if identity.get("kind") == "checkpoint":
        return {"kind": "checkpoint", "sha256": identity.get("sha256"), "files": identity.get("files")}
    return {"kind": identity.get("kind"), "source": identity.get("source"), "preset": identity.get("preset")}


def _config_dict(config):
    if config is None or isinstance(config, dict):
        return config
    return config.to_dict()


def _plain(obj):
    """``obj`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def environment_fingerprint(device=None) -> dict:
    """torch, torch_npu, CANN, device, SoC, driver... from ascend.environment.environment_report."""
    from ascend.environment import environment_report

    report = environment_report(device)
    return {k: report.get(k) for k in ENV_KEYS if k in report}


def save_golden(folder, inputs: dict, outputs: dict, info: dict) -> Path:
    """Write a golden set into ``folder``; returns the manifest path.

    inputs/outputs: {key: tensor}, free string keys ("clip/b3/256x256/clip_text_features"). info: at least
    "weights" (identity from ascend.runtime.load_weights), "config" (VTPConfig or dict) and "cases"; optional
    "reference" ({"device", "precision", "fusion"}), "device" (for the environment fingerprint), any other
    JSON-able keys (kept under "info").
    """
    import torch
    from safetensors.torch import save_file

    from vtp.io_utils import atomic_path, atomic_write_json

    missing = [k for k in ("weights", "config", "cases") if k not in info]
    if missing:
        raise GoldenError(f"save_golden: info lacks {missing} (the identity a later run is checked against)")
    for what, tensors in (("inputs", inputs), ("outputs", outputs)):
        bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad or not tensors:
            raise GoldenError(f"save_golden: {what} must be a non-empty dict of str -> Tensor (bad keys: {bad})")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # an interrupted save must not leave an old manifest vouching
    files = {}
    for name, tensors in ((INPUTS, inputs), (OUTPUTS, outputs)):
        with atomic_path(folder / name) as tmp:
            save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
        files[name] = {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
    known = ("weights", "config", "cases", "reference", "device")
    manifest = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kit_version": kit_version(),
        "files": files,
        "weights": weights_key(info["weights"]),
        "weights_identity": _plain(info["weights"]),
        "config": _plain(_config_dict(info["config"])),
        "cases": _plain(info["cases"]),
        "reference": _plain(info.get("reference") or {"device": "cpu", "precision": "fp32", "fusion": "none"}),
        "environment": environment_fingerprint(info.get("device", "cpu")),
        "tensors": {"inputs": sorted(inputs), "outputs": sorted(outputs)},
        "info": _plain({k: v for k, v in info.items() if k not in known}),
    }
    path = atomic_write_json(folder / MANIFEST, manifest)
    logger.info("golden set written to %s (%d inputs, %d outputs)", folder, len(inputs), len(outputs))
    return path


def read_manifest(folder) -> dict:
    folder = Path(folder)
    file = folder / MANIFEST
    if not folder.is_dir():
        raise GoldenError(f"{folder}: no golden set here (not a folder); make one with --save-golden {folder}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GoldenError(f"{file}: missing: {folder} is not a complete golden set (an interrupted save?); "
                          f"make it again with --save-golden {folder}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GoldenError(f"{file}: not readable JSON ({exc})") from None
    schema = manifest.get("schema") if isinstance(manifest, dict) else None
    if schema != SCHEMA:
        raise GoldenError(f"{file}: schema {schema!r}, this kit reads {SCHEMA!r}; make the set again with this kit "
                          f"(--save-golden)")
    return manifest


def _first_difference(a, b, path="") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}{k}: {'absent' if k not in a else repr(a[k])[:60]} vs " \
                       f"{'absent' if k not in b else repr(b[k])[:60]}"
            if a[k] != b[k]:
                return _first_difference(a[k], b[k], f"{path}{k}.")
    return f"{path.rstrip('.') or 'value'}: {repr(a)[:80]} vs {repr(b)[:80]}"


def manifest_sha256(folder) -> str:
    """The sha256 of the set's manifest.json file: what a user pins with --reference-sha256."""
    return sha256_file(Path(folder) / MANIFEST)


def check_pin(folder, pin: str) -> None:
    """GoldenError unless the manifest.json in ``folder`` has the sha256 ``pin`` (hex, case-insensitive)."""
    actual = manifest_sha256(folder)
    if actual != str(pin).strip().lower():
        raise GoldenError(f"{Path(folder) / MANIFEST}: sha256 {actual} is not the pinned {pin} "
                          "(--reference-sha256): this is not the golden set you trusted; do not use it")


def load_golden(folder, expect: dict, pin: str = None):
    """(inputs, outputs, manifest) of the set in ``folder``, after checking it.

    expect: any of "weights" (identity), "config" (VTPConfig or dict), "cases" - each must equal what the set
    was made with. Every file's sha256 must match the manifest, and the manifest's own sha256 ``pin`` when
    given. GoldenError otherwise.
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_manifest(folder)
    if pin is not None:
        check_pin(folder, pin)
    wanted = {}
    if "weights" in expect:
        wanted["weights"] = weights_key(expect["weights"])
    if "config" in expect:
        wanted["config"] = _plain(_config_dict(expect["config"]))
    if "cases" in expect:
        wanted["cases"] = _plain(expect["cases"])
    for key, value in wanted.items():
        if manifest.get(key) != value:
            raise GoldenError(
                f"{folder}: the golden set was made with other {key} ({_first_difference(manifest.get(key), value)}; "
                f"set vs this run): judge against a set made with the same {key}, or make a new one with "
                f"--save-golden DIR")
    files = manifest.get("files") or {}
    for name in (INPUTS, OUTPUTS):
        path = folder / name
        entry = files.get(name) or {}
        if not path.is_file():
            raise GoldenError(f"{path}: missing from the golden set; make it again with --save-golden {folder}")
        actual = sha256_file(path)
        if actual != entry.get("sha256"):
            raise GoldenError(f"{path}: sha256 {actual[:16]}... does not match the manifest "
                              f"({str(entry.get('sha256'))[:16]}...): the file was changed after the set was made; "
                              f"do not use it, make the set again with --save-golden {folder}")
    inputs, outputs = load_file(str(folder / INPUTS)), load_file(str(folder / OUTPUTS))
    listed = manifest.get("tensors") or {}
    if sorted(inputs) != listed.get("inputs") or sorted(outputs) != listed.get("outputs"):
        raise GoldenError(f"{folder}: the tensors in the files differ from the manifest's list")
    return inputs, outputs, manifest


def environment_differences(manifest: dict, device=None) -> dict:
    """{key: (golden set's value, this machine's value)} for the fingerprint keys that differ."""
    here = environment_fingerprint(device)
    there = manifest.get("environment") or {}
    return {k: (there.get(k), here.get(k)) for k in sorted(set(here) | set(there)) if there.get(k) != here.get(k)}


__all__ = ["GoldenError", "SCHEMA", "check_pin", "environment_differences", "kit_version", "load_golden",
           "manifest_sha256", "read_manifest", "save_golden", "weights_key"]
