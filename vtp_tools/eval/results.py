"""The results file of an evaluation and its comparison with another run or the published figures.

Schema ``vtp-eval-result`` version 1 (one JSON object, written atomically)::

    schema, schema_version   "vtp-eval-result", 1
    task                     "zero-shot" | "linear-probe" | "reconstruction"
    metrics                  {name: float | None}: top1, top5 (percent; top5 None below 5 classes); psnr (dB),
                             ssim, lpips, rfid (None when skipped)
    num_samples              images evaluated (each exactly once, whatever the number of processes)
    dataset                  {path, num_images, num_classes, file_list_sha256, transform, image_size}
    weights                  ascend.runtime.load_weights identity ({"kind": "checkpoint", sha256...} | synthetic)
    model                    preset or checkpoint folder name
    device, device_type, world_size, precision, fusion (the spec)
    fusion_rules             {enabled, approximations, modules_patched}: the rules that produced the numbers
                             (absent in files of older kits; readers must not require it)
    options                  the task's own settings (class names source, truncation, grid, averaging, ...)
    timing                   {seconds, images_per_s_rank0, ...}
    created                  ISO-8601 UTC time

Gates (:data:`GATES`), ModelZoo style: a metric passes when the candidate is worse than the reference by
at most ``max(abs, rel * |reference|)`` in the metric's bad direction (better is always fine):

* top1, top5: 1.0 point (ModelZoo's "within 1 %" on accuracy).
* psnr: 1 % relative (0.25 dB at 25 dB). bf16 autocast moves a VTP reconstruction's PSNR by ~0.05 dB;
  a broken kernel moves it by dBs.
* ssim: 1 % relative (0.008 at 0.8), the same rule on a [0, 1] score.
* lpips: max(5 %, 0.005). LPIPS is small (~0.1), so 1 % (0.001) is below the spread of its own
  VGG kernels across devices; 0.005 is still a tenth of the gap between VTP-S and VTP-L.
* rfid: max(10 %, 0.05). FID of 50k samples has a sampling standard error of ~0.02 at rFID < 1
  and Inception kernels differ across devices by a few hundredths; 1 % of 0.36 (0.004) is noise.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from vtp.io_utils import atomic_write_json

logger = logging.getLogger(__name__)

SCHEMA = "vtp-eval-result"
SCHEMA_VERSION = 1
TASKS = ("zero-shot", "linear-probe", "reconstruction")
PUBLISHED_FILE = Path(__file__).with_name("published.json")
PUBLISHED_PREFIX = "published:"


class CompareError(ValueError):
    """The comparison cannot be made (unreadable file, other task, other dataset): a usage error, exit 2."""


@dataclass(frozen=True)
class Gate:
    higher_is_better: bool
    abs_tol: float
    rel_tol: float
    why: str

    def allowed(self, reference: float) -> float:
        return max(self.abs_tol, self.rel_tol * abs(reference))


GATES = {
    "top1": Gate(True, 1.0, 0.0, "top-1 drop at most 1 point (ModelZoo)"),
    "top5": Gate(True, 1.0, 0.0, "top-5 drop at most 1 point"),
    "psnr": Gate(True, 0.0, 0.01, "PSNR drop at most 1 %"),
    "ssim": Gate(True, 0.0, 0.01, "SSIM drop at most 1 %"),
    "lpips": Gate(False, 0.005, 0.05, "LPIPS rise at most max(5 %, 0.005)"),
    "rfid": Gate(False, 0.05, 0.10, "rFID rise at most max(10 %, 0.05)"),
}


def make_result(task: str, metrics: dict, num_samples: int, dataset: dict, run_fields: dict,
                options: dict, timing: dict) -> dict:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "task": task,
            "metrics": {k: (None if v is None else float(v)) for k, v in metrics.items()},
            "num_samples": int(num_samples), "dataset": dataset, **run_fields, "options": options,
            "timing": timing, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_result(path: "str | Path", result: dict) -> Path:
    return atomic_write_json(path, result)


def load_result(path: "str | Path") -> dict:
    """A results file, checked against the schema; CompareError says what is wrong."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CompareError(f"--compare-to {path}: cannot read a results JSON ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CompareError(f"--compare-to {path}: not a {SCHEMA} file (schema={data.get('schema') if isinstance(data, dict) else None!r})")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise CompareError(f"--compare-to {path}: schema_version {data.get('schema_version')!r}, this kit reads {SCHEMA_VERSION}")
    return data


def published_reference(spec: str, task: str) -> dict:
    """``published:<model>`` -> a reference result with the shipped figures for ``task``."""
    name = spec[len(PUBLISHED_PREFIX):]
    table = json.loads(PUBLISHED_FILE.read_text(encoding="utf-8"))
    if name not in table["models"]:
        raise CompareError(f"--compare-to {spec}: no published figures for {name!r}; "
                           f"known: {', '.join('published:' + m for m in table['models'])}")
    metrics = table["models"][name].get(task)
    if not metrics:
        raise CompareError(f"--compare-to {spec}: no published {task} figure for {name}")
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "task": task, "metrics": metrics,
            "dataset": table["dataset"], "model": name, "weights": {"kind": "published"},
            "source": table["source"]}


def reference_for(spec: str, task: str) -> dict:
    return published_reference(spec, task) if spec.startswith(PUBLISHED_PREFIX) else load_result(spec)


def compare(candidate: dict, reference: dict) -> dict:
    """Deltas and verdict of ``candidate`` against ``reference`` on the metrics the reference has.

    Returns {"verdict": "pass"|"fail", "rows": [{metric, candidate, reference, delta, allowed, pass, rule}],
    "notes": [...]}. Raises CompareError when the two are not comparable (other task or other dataset).
    """
    if candidate["task"] != reference["task"]:
        raise CompareError(f"cannot compare a {candidate['task']} result with a {reference['task']} reference")
    notes, rows = [], []
    published = reference.get("weights", {}).get("kind") == "published"
    ref_sha = reference.get("dataset", {}).get("file_list_sha256")
    if ref_sha and ref_sha != candidate["dataset"].get("file_list_sha256"):
        raise CompareError("the reference was computed on another dataset (file_list_sha256 differs: "
                           f"{ref_sha[:12]} vs {candidate['dataset'].get('file_list_sha256', '')[:12]}); "
                           "compare runs on the same images")
    failed = False
    if published:
        n_ref = reference["dataset"].get("num_images")
        if candidate["num_samples"] != n_ref:
            notes.append(f"the published figures are on {n_ref} ImageNet-val images; this run has "
                         f"{candidate['num_samples']}: the comparison only indicates")
        if candidate.get("weights", {}).get("kind") != "checkpoint":
            notes.append("synthetic weights cannot reproduce published figures: verdict fail")
            failed = True
    for name, ref_value in reference["metrics"].items():
        gate = GATES.get(name)
        value = candidate["metrics"].get(name)
        if gate is None or ref_value is None:
            continue
        if value is None or not math.isfinite(value):
            rows.append({"metric": name, "candidate": value, "reference": ref_value, "delta": None,
                         "allowed": gate.allowed(ref_value), "pass": False, "rule": gate.why})
            failed = True
            continue
        delta = value - ref_value
        worse = -delta if gate.higher_is_better else delta
        ok = worse <= gate.allowed(ref_value) + 1e-12
        failed |= not ok
        rows.append({"metric": name, "candidate": value, "reference": ref_value, "delta": delta,
                     "allowed": gate.allowed(ref_value), "pass": ok, "rule": gate.why})
    if not rows:
        raise CompareError(f"no metric in common: candidate {sorted(candidate['metrics'])}, "
                           f"reference {sorted(reference['metrics'])}")
    return {"verdict": "fail" if failed else "pass", "rows": rows, "notes": notes,
            "reference": {k: reference.get(k) for k in ("model", "device", "precision", "source") if reference.get(k)}}


def format_comparison(cmp: dict) -> str:
    lines = [f"{'metric':<8} {'candidate':>11} {'reference':>11} {'delta':>9} {'allowed':>8}  verdict"]
    for r in cmp["rows"]:
        cand = "missing" if r["candidate"] is None else f"{r['candidate']:.4f}"
        delta = "-" if r["delta"] is None else f"{r['delta']:+.4f}"
        lines.append(f"{r['metric']:<8} {cand:>11} {r['reference']:>11.4f} {delta:>9} {r['allowed']:>8.4f}  "
                     f"{'PASS' if r['pass'] else 'FAIL'} ({r['rule']})")
    lines += [f"note: {n}" for n in cmp["notes"]]
    lines.append(f"verdict: {cmp['verdict'].upper()}")
    return "\n".join(lines)
