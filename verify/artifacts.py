"""What a certification run leaves behind besides its summary, and the golden sets it reads.

- ``candidate_outputs.safetensors`` (``--save-outputs``): the candidate's answers to calls A and B of every
  case, keys ``"<case id>@<call>/<tensor>"`` (the whole-server run compares them across cards);
- a golden set (``--save-golden DIR``, verify.golden): the inputs and the reference's answers of every case,
  keys ``"<case id>@<call>/images|text"`` and ``"<case id>@<call>/<tensor>"``; ``--reference DIR`` reads
  one back instead of recomputing the CPU reference;
- ``divergence.json`` (verify.locate) on a FAIL or with ``--locate``, and ``report.html`` (verify.report.html).
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

OUTPUTS_FILE = "candidate_outputs.safetensors"
REFERENCE_CALLS = ("A", "B")


def save_candidate_outputs(path: Path, runs) -> None:
    from safetensors.torch import save_file

    from vtp.io_utils import atomic_path

    tensors = {f"{run.case.id}@{call}/{name}": t.contiguous() for run in runs
               for call, outs in run.candidate.items() if call in REFERENCE_CALLS for name, t in outs.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


# --------------------------------------------------------------------------------------------- golden sets
def save_golden_set(folder: Path, runs, identity: dict, config, plan, source: str = "reference",
                    candidate: dict = None) -> dict:
    """Write the inputs and the answers of every case as a golden set; ``source`` "reference" (the CPU fp32
    reference) or "candidate" (this run's device: ``candidate`` = {"device", "precision", "fusion"}).
    Returns {"path", "manifest_sha256", "source"} for the summary."""
    from verify.golden import manifest_sha256, save_golden

    inputs, outputs = {}, {}
    for run in runs:
        for call, given in run.inputs.items():
            for kind in ("images", "text"):
                if given.get(kind) is not None:
                    inputs[f"{run.case.id}@{call}/{kind}"] = given[kind].contiguous()
        answers = run.reference if source == "reference" else run.candidate
        for call, outs in answers.items():
            if call not in REFERENCE_CALLS:
                continue
            for name, t in outs.items():
                outputs[f"{run.case.id}@{call}/{name}"] = t.contiguous()
    made_by = ({"device": "cpu", "precision": "fp32", "fusion": "none"} if source == "reference"
               else dict(candidate or {}))
    save_golden(folder, inputs, outputs, {"weights": identity, "config": config, "cases": plan.to_dict(),
                                          "reference": {**made_by, "source": source}})
    sha = manifest_sha256(folder)
    logger.info("golden set written to %s (%d inputs, %d %s outputs); manifest.json sha256 %s: pin it with "
                "--reference %s --reference-sha256 %s", folder, len(inputs), len(outputs), source, sha, folder, sha)
    return {"path": str(folder), "manifest_sha256": sha, "source": source, **made_by}


class GoldenReference:
    """The inputs and reference answers of a golden set, looked up by case and call."""

    def __init__(self, folder: Path, identity: dict, config, plan, device=None, pin: str = None):
        from verify.golden import environment_differences, load_golden, manifest_sha256

        self.folder = folder
        self.inputs, self.outputs, self.manifest = load_golden(
            folder, {"weights": identity, "config": config, "cases": plan.to_dict()}, pin=pin)
        self.manifest_sha256 = manifest_sha256(folder)
        self.pinned = pin is not None
        self.source = dict(self.manifest.get("reference") or {})
        self.source.setdefault("source", "reference")  # sets made before the source was recorded
        self.environment_differences = environment_differences(self.manifest, device)

    def case_inputs(self, case, call: str, described) -> dict:
        key = f"{case.id}@{call}"
        return {"images": self.inputs.get(f"{key}/images"), "text": self.inputs.get(f"{key}/text"),
                "described": described}

    def case_outputs(self, case, call: str) -> dict:
        return {name: self.outputs[f"{case.id}@{call}/{name}"] for name in case.tensors}


# --------------------------------------------------------------------------------------------- localisation
_LOCATE_TASK = {"reconstruction": "reconstruction", "clip": "clip", "clip_text": "clip", "ssl": "ssl"}


def locate_first_failure(runs, calls: list, reference, candidate, *, device, precision: str, thresholds) -> dict:
    """verify.locate on the inputs of the first failing case and call (the first case when none failed)."""
    from verify.locate import locate

    failing = next((c for c in calls if c["verdict"] != "PASS"), calls[0])
    run = next(r for r in runs if r.case.id == failing["case"])
    call = "A" if failing["call"] == "warm" else failing["call"]
    given = run.inputs[call]
    images = given.get("images")
    if images is None:  # a text case: the text tower is what matters; one image of the first image case
        images = next((r.inputs["A"]["images"][:1] for r in runs if r.inputs["A"].get("images") is not None), None)
    text = given.get("text")
    if text is None:
        text = next(r.inputs["A"]["text"] for r in runs if r.inputs["A"].get("text") is not None)
    logger.info("locating the first divergent module on the inputs of %s@%s", run.case.id, call)
    return locate(reference, candidate, {"images": images, "text": text}, device=device, precision=precision,
                  thresholds=thresholds, tasks=[_LOCATE_TASK[run.case.task]], case=f"{run.case.id}@{call}")


def recon_images(runs, limit: int = 4) -> list:
    """Input | reference | candidate of image 0 of call A of each reconstruction case, for report.html."""
    out = []
    for run in runs:
        if run.case.task != "reconstruction" or len(out) >= limit:
            continue
        out.append({"case": f"{run.case.id}@A", "input": run.inputs["A"]["images"][0],
                    "reference": run.reference["A"]["reconstructed_image"][0],
                    "candidate": run.candidate["A"]["reconstructed_image"][0]})
    return out
