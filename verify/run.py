"""Stage 2 of the certification: run the cases on the candidate and on the references.

For every case (verify.cases) the candidate answers, in this order:

    A        the case's inputs
    B        other inputs of the same shape (an operator that replays an earlier result fails here)
    A again  must equal the first answer (a stale or nondeterministic kernel shows here)
    warm     1 + warm-up + N more calls of A, timed when timing is on; the last answer is compared too
             (only for the profile's timing shapes)

The reference (the unfused model, CPU, strict fp32) answers A and B. For fp16/bf16 the reference model also
runs on the CPU at the candidate's precision (the same-precision reference): the judge compares the
candidate's error with that reference's own error to fp32. It is the unfused model on purpose: a bug in a
fused operator's code path would be shared by a fused CPU copy and hide in the ratio; the fusions' own
error (tanh GELU, 2.7e-4) is far below any fp16/bf16 error. Every output comes back as a CPU fp32 tensor.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- one task
def task_outputs(model, task: str, inputs: dict, device, precision: str) -> Dict[str, "object"]:
    """The tensors of one task (verify.cases.TASK_TENSORS) on ``device`` at ``precision``, as CPU fp32."""
    import torch

    from ascend.device import autocast

    with torch.no_grad(), autocast(device, precision):
        out = _raw_task(model, task, _to_device(inputs, device))
    return {k: v.detach().to("cpu", torch.float32) for k, v in out.items()}


def text_features_and_tokens(model, text):
    """(pooled text features (P, D), per-token hidden states (T, W)): the output of ``ln_final`` at every
    position up to and including each prompt's end-of-text token, prompts one after another."""
    import torch

    captured = []
    final_norm = model.ln_final  # read at call time: the fusion layer may have swapped the module
    handle = final_norm.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        features = model.get_clip_text_feature(text)
    finally:
        handle.remove()
    hidden = captured[-1]  # (P, L, W)
    eot = text.argmax(dim=-1)  # the end-of-text id is the largest id
    tokens = torch.cat([hidden[i, : int(eot[i]) + 1] for i in range(hidden.shape[0])])
    return features, tokens


# --------------------------------------------------------------------------------------------- one case
@dataclass
class CaseRun:
    """Everything one case produced: inputs and outputs per call, and the timing of its warm calls."""

    case: object
    described: Dict[str, list]
    inputs: Dict[str, dict]
    candidate: Dict[str, dict] = field(default_factory=dict)      # call -> {tensor: Tensor}
    reference: Dict[str, dict] = field(default_factory=dict)      # call -> {tensor: Tensor}
    same_precision: Dict[str, dict] = field(default_factory=dict)  # fp16/bf16: the reference at that precision
    cpu_fused: Dict[str, dict] = field(default_factory=dict)      # CPU fp32 fused (error attribution), call A
    timing: Optional[dict] = None
    compute_s: float = 0.0


def run_case(case, inputs: Dict[str, dict], *, candidate, reference, device, precision: str,
             cpu_fused=None, repeat: bool = True, warm: Optional[dict] = None, sync: Callable = lambda: None,
             candidate_is_cpu_fused: bool = False, golden: Optional[Dict[str, dict]] = None) -> CaseRun:
    """Run one case (see the module docstring). ``inputs``: {"A": ..., "B": ...} from
    verify.cases.make_case_inputs. ``warm``: {"warmup": int, "iters": int, "timed": bool} for a timing
    shape, else None. ``cpu_fused``: the fused model on the CPU (clean, no injected fault), or None when
    the candidate is that model (CPU fp32 without a fault: ``candidate_is_cpu_fused``). ``golden``: the
    reference's answers per call from a golden set (--reference), instead of running the reference."""
    import torch

    from ascend.device import strict_fp32

    cpu = torch.device("cpu")
    run = CaseRun(case=case, described={k: v["described"] for k, v in inputs.items()}, inputs=inputs)
    t0 = time.perf_counter()
    calls = ["A", "B"] if repeat else ["A"]

    classifiers = {}  # (model, precision) -> text features: the zero-shot prompts are the same in every call

    def prepared(model, call, where, at):  # the clip task: its classifier made by the model that answers
        if case.task != "clip" or inputs[call].get("text") is None:
            return inputs[call]
        key = (id(model), at)
        if key not in classifiers:
            classifiers[key] = classifier(model, inputs[call]["text"], where, at)
        return {**inputs[call], "text_features": classifiers[key]}

    cand_inputs = {call: prepared(candidate, call, device, precision) for call in calls}
    for call in calls:
        run.candidate[call] = task_outputs(candidate, case.task, cand_inputs[call], device, precision)
    if repeat:
        run.candidate["A2"] = task_outputs(candidate, case.task, cand_inputs["A"], device, precision)
    if warm is not None:
        run.timing, run.candidate["warm"] = warm_calls(candidate, case.task, cand_inputs["A"], device, precision,
                                                       sync=sync, **warm)
    with strict_fp32(cpu):  # the references are full fp32 (no TF32/HF32), whatever the candidate's settings
        for call in calls:
            run.reference[call] = (golden[call] if golden is not None
                                   else task_outputs(reference, case.task, prepared(reference, call, cpu, "fp32"),
                                                     cpu, "fp32"))
        if candidate_is_cpu_fused:
            run.cpu_fused["A"] = run.candidate["A"]
        elif cpu_fused is not None:
            run.cpu_fused["A"] = task_outputs(cpu_fused, case.task, prepared(cpu_fused, "A", cpu, "fp32"), cpu, "fp32")
        if precision != "fp32":  # the reference model's own error at the candidate's precision
            for call in calls:
                run.same_precision[call] = task_outputs(reference, case.task, prepared(reference, call, cpu, precision),
                                                        cpu, precision)
    run.compute_s = time.perf_counter() - t0
    return run


def warm_calls(model, task: str, inputs: dict, device, precision: str, *, warmup: int, iters: int,
               timed: bool, sync: Callable) -> tuple:
    """(timing dict or None, the last call's outputs): 1 first call + ``warmup`` + ``iters`` calls of the
    task on the same inputs, each synchronised; with ``timed`` false the calls still run, untimed."""
    import torch

    from ascend.device import autocast
    from verify.timing import time_calls

    moved = _to_device(inputs, device)

    def call():
        return _raw_task(model, task, moved)

    with torch.no_grad(), autocast(device, precision):
        stats, last = time_calls(call, sync, warmup=warmup, iters=iters)
    outputs = {k: v.detach().to("cpu", torch.float32) for k, v in last.items()}
    return (stats if timed else None), outputs


def _to_device(inputs: dict, device) -> dict:
    """A copy of the inputs on ``device``, always new storage: the candidate and the references never share
    an input tensor (on the CPU ``.to`` alone would hand over the same one), so an in-place operation in one
    model's kernels cannot feed the other."""
    keys = ("images", "text", "text_features")
    return {k: (inputs[k].to(device, copy=True) if inputs.get(k) is not None else None) for k in keys}


def classifier(model, text, device, precision: str):
    """The clip task's zero-shot classifier: the prompts' text features, computed once by ``model`` at
    ``precision``. Every call of a clip case then times and compares the image side and the logits; the text
    tower itself is certified by the clip_text cases."""
    return task_outputs(model, "clip_text", {"text": text}, device, precision)["clip_text_features"]


def _raw_task(model, task: str, inputs: dict) -> dict:
    """The task's tensors on the device (no copy to the CPU: the timed part is the model's work)."""
    if task == "reconstruction":
        latents = model.get_reconstruction_latents(inputs["images"])
        return {"latents": latents, "reconstructed_image": model.get_latents_decoded_images(latents)}
    if task == "clip":
        img = model.get_clip_image_feature(inputs["images"])
        txt = inputs.get("text_features")  # the zero-shot classifier, built once (as a real classifier is)
        if txt is None:
            txt = model.get_clip_text_feature(inputs["text"])
        return {"clip_image_features": img, "clip_probs": model.logits_from_features(img, txt).float().softmax(-1)}
    if task == "clip_text":
        features, tokens = text_features_and_tokens(model, inputs["text"])
        return {"clip_text_features": features, "clip_text_tokens": tokens}
    if task == "ssl":
        ssl = model.get_last_layer_feature(inputs["images"])
        return {"ssl_cls": ssl["cls_token"], "ssl_patch_tokens": ssl["patch_tokens"]}
    raise ValueError(f"unknown task {task!r}")


# --------------------------------------------------------------------------------------------- one batch
# The simple form, for tools that run every task once on one batch (verify.locate, verify.bisection).
TASKS = {
    "reconstruction": ("latents", "reconstructed_image"),
    "clip": ("clip_image_features", "clip_text_features", "clip_probs"),
    "ssl": ("ssl_cls", "ssl_patch_tokens"),
}


def task_plan(config) -> tuple:
    """({task: tensor names} of TASKS this checkpoint can run, {task: why it is skipped})."""
    tasks, skipped = {}, {}
    for task, flag, why in (("reconstruction", config.train_reconstruction, "no pixel decoder"),
                            ("clip", config.train_clip, "no CLIP parts")):
        if flag:
            tasks[task] = TASKS[task]
        else:
            skipped[task] = f"the checkpoint has {why}"
    tasks["ssl"] = TASKS["ssl"]
    return tasks, skipped


def run_tasks(model, images, text, device, precision: str, tasks=TASKS) -> dict:
    """Every task of ``tasks`` once on one batch of images and prompts; CPU fp32 tensors by name."""
    out = {}
    inputs = {"images": images, "text": text}
    if "reconstruction" in tasks:
        out.update(task_outputs(model, "reconstruction", inputs, device, precision))
    if "clip" in tasks:  # the text tower runs once: its features are also the zero-shot classifier
        out["clip_text_features"] = classifier(model, text, device, precision)
        out.update(task_outputs(model, "clip", {**inputs, "text_features": out["clip_text_features"]}, device,
                                precision))
    if "ssl" in tasks:
        out.update(task_outputs(model, "ssl", inputs, device, precision))
    return out


def make_inputs(weights, batch: int, size: int, prompts, context_length: int = 77):
    """(images (batch, 3, size, size), descriptions, token ids (P, context_length)): the sample image
    and ``batch - 1`` synthetic ones."""
    import torch

    from ascend.runtime import default_image
    from vtp.image import make_synthetic_batch, preprocess
    from vtp.tokenizers import get_tokenizer

    pil, source = default_image(weights, size=size)
    images, described = [preprocess(pil, size=size)], [source]
    if batch > 1:
        images.append(make_synthetic_batch(batch - 1, size=size, seed=1))
        described += [f"synthetic image seed {1 + i}" for i in range(batch - 1)]
    return torch.cat(images), described, get_tokenizer(context_length=context_length)(list(prompts))
