"""Stage 1 of the certification: which cases run, on which inputs.

A *case* is one task on one input shape (image tasks) or one prompt set (the text task). The cases come
from a versioned YAML file (default ``verify/cases.yaml``, schema ``vtp-cases/1``) with named profiles
(``quick``, ``default``, ``full``); `build_plan` expands one profile for one checkpoint into a `Plan`.

Inputs are made per case *and per call*: call ``A`` (the first answer), call ``B`` (other inputs of the same
shape, to catch an operator that replays an earlier result) and the repeat of ``A``. Every (case, call)
gets images of its own, from a seed derived from the case id and the call, so no two tasks or calls see the
same batch unless that is the point of the check.

Tasks and the tensors each one compares::

    reconstruction  images -> latents, reconstructed_image
    clip            images (+ the zero-shot prompts) -> clip_image_features, clip_probs
    clip_text       a prompt set -> clip_text_features, clip_text_tokens (every position up to end-of-text)
    ssl             images -> ssl_cls, ssl_patch_tokens
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

CASES_SCHEMA = "vtp-cases/1"
DEFAULT_CASES_PATH = Path(__file__).with_name("cases.yaml")
PROFILES = ("quick", "default", "full")
IMAGE_TASKS = ("reconstruction", "clip", "ssl")
TASK_TENSORS = {
    "reconstruction": ("latents", "reconstructed_image"),
    "clip": ("clip_image_features", "clip_probs"),
    "clip_text": ("clip_text_features", "clip_text_tokens"),
    "ssl": ("ssl_cls", "ssl_patch_tokens"),
}
CALLS = ("A", "B")  # the repeat of A reuses A's inputs
_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*$")
_PROFILE_KEYS = {"images", "text", "zero_shot_prompts", "timing", "warmup", "iters", "repeat"}


class CasesError(ValueError):
    """A cases file or profile that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Case:
    """One task on one input shape or prompt set. ``id`` is unique in a plan, e.g. "clip/b3/256x256"."""

    id: str
    task: str
    batch: Optional[int] = None
    height: Optional[int] = None
    width: Optional[int] = None
    prompt_set: Optional[str] = None

    @property
    def tensors(self) -> Tuple[str, ...]:
        return TASK_TENSORS[self.task]

    def describe(self) -> dict:
        size = None if self.height is None else [self.height, self.width]
        return {"id": self.id, "task": self.task, "batch": self.batch, "size": size, "prompt_set": self.prompt_set}


@dataclass
class Plan:
    """One profile expanded for one checkpoint: the cases, prompt sets, timing shapes and call counts."""

    profile: str
    source: str
    version: int
    cases: List[Case]
    prompt_sets: Dict[str, Tuple[str, ...]]
    zero_shot_prompts: str
    timing: List[Tuple[int, int, int]]
    warmup: int
    iters: int
    repeat: bool
    skipped_tasks: Dict[str, str] = field(default_factory=dict)
    envelope: Dict[str, list] = field(default_factory=dict)  # the user's --batch-sizes / --sizes
    fuzz: Optional[dict] = None                               # {"n", "seed", "cases"} of --fuzz N --seed S

    def to_dict(self) -> dict:
        return {
            "profile": self.profile, "file": self.source, "version": self.version,
            "cases": [c.describe() for c in self.cases],
            "prompt_sets": {k: list(v) for k, v in self.prompt_sets.items()},
            "zero_shot_prompts": self.zero_shot_prompts,
            "timing": [f"{b}x{h}x{w}" for b, h, w in self.timing],
            "warmup": self.warmup, "iters": self.iters, "repeat": self.repeat,
            "skipped_tasks": dict(self.skipped_tasks),
            "envelope": dict(self.envelope), "fuzz": self.fuzz,
        }


# --------------------------------------------------------------------------------------------- the file
def parse_shape(text, where: str) -> Tuple[int, int, int]:
    """"BxHxW" -> (batch, height, width), every number >= 1."""
    m = _SHAPE.match(str(text))
    if not m or min(int(g) for g in m.groups()) < 1:
        raise CasesError(f"{where}: {text!r} is not a shape BATCHxHEIGHTxWIDTH of positive integers "
                         f"(e.g. 1x256x256)")
    return tuple(int(g) for g in m.groups())


def load_cases(path=None) -> dict:
    """Read and check a cases file (default verify/cases.yaml). Raises CasesError naming file and key."""
    from omegaconf import OmegaConf

    path = Path(path) if path is not None else DEFAULT_CASES_PATH
    src = str(path)
    if not path.is_file():
        raise CasesError(f"{src}: cases file not found")
    try:
        raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as e:  # YAML syntax, duplicate keys
        raise CasesError(f"{src}: cannot read the cases file: {e}") from e
    if not isinstance(raw, dict):
        raise CasesError(f"{src}: the document must be a mapping")
    if raw.get("schema") != CASES_SCHEMA:
        raise CasesError(f"{src}: key 'schema' is {raw.get('schema')!r}; this reader supports {CASES_SCHEMA!r}")
    version = raw.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CasesError(f"{src}: key 'version' must be an integer >= 1, got {version!r}")
    sets = raw.get("prompt_sets")
    if not isinstance(sets, dict) or not sets:
        raise CasesError(f"{src}: key 'prompt_sets' must map names to lists of prompts")
    for name, prompts in sets.items():
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) and p.strip()
                                                                    for p in prompts):
            raise CasesError(f"{src}: prompt_sets.{name} must be a non-empty list of non-empty strings")
    profiles = raw.get("profiles")
    if not isinstance(profiles, dict) or not profiles:
        raise CasesError(f"{src}: key 'profiles' must map profile names to case lists")
    for name, prof in profiles.items():
        _check_profile(prof, sets, f"{src}: profiles.{name}")
    return {"source": src, "version": version, "prompt_sets": sets, "profiles": profiles}


def _check_profile(prof, sets: dict, where: str) -> None:
    if not isinstance(prof, dict):
        raise CasesError(f"{where} must be a mapping")
    unknown = set(prof) - _PROFILE_KEYS
    if unknown:
        raise CasesError(f"{where}: unknown key(s) {sorted(unknown)} (known: {sorted(_PROFILE_KEYS)})")
    for key in ("images", "text", "timing"):
        if not isinstance(prof.get(key), list) or not prof[key]:
            raise CasesError(f"{where}.{key} must be a non-empty list")
    for i, shape in enumerate(prof["images"] + prof["timing"]):
        parse_shape(shape, f"{where} shape #{i}")
    for name in prof["text"] + [prof.get("zero_shot_prompts")]:
        if name not in sets:
            raise CasesError(f"{where}: prompt set {name!r} is not in prompt_sets (known: {sorted(sets)})")
    for key, low in (("warmup", 0), ("iters", 1)):
        v = prof.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise CasesError(f"{where}.{key} must be an integer >= {low}, got {v!r}")
    if not isinstance(prof.get("repeat"), bool):
        raise CasesError(f"{where}.repeat must be true or false")


def build_plan(doc: dict, profile: str, config, prompts: Optional[Tuple[str, ...]] = None,
               batch_sizes: Tuple[int, ...] = (), sizes: Tuple[Tuple[int, int], ...] = (), fuzz: int = 0,
               seed: int = 0) -> Plan:
    """Expand ``profile`` of a `load_cases` document for a model config.

    Tasks the checkpoint cannot run are left out and named in ``skipped_tasks``; shapes that are not a
    multiple of the patch size raise CasesError. ``prompts`` (the user's --prompt) replaces the
    zero-shot prompt set and is added as a text case of its own. The user's envelope adds cases:
    ``batch_sizes`` every image task at each batch size (at the profile's first image size) and a prompt
    set of that many prompts; ``sizes`` every image task at batch 1 at each (height, width); ``fuzz`` N cases
    drawn from the envelope with ``seed`` (verify.envelope.fuzz_specs).
    """
    if profile not in doc["profiles"]:
        raise CasesError(f"{doc['source']}: no profile {profile!r} (known: {', '.join(doc['profiles'])})")
    prof = doc["profiles"][profile]
    where = f"{doc['source']}: profiles.{profile}"
    sets = {k: tuple(v) for k, v in doc["prompt_sets"].items()}
    zero_shot = prof["zero_shot_prompts"]
    text_sets = list(dict.fromkeys(prof["text"]))
    if prompts:
        sets["user"] = tuple(prompts)
        zero_shot = "user"
        text_sets.append("user")

    skipped = {}
    if not config.train_reconstruction:
        skipped["reconstruction"] = "the checkpoint has no pixel decoder (train_reconstruction=false)"
    if not config.train_clip:
        skipped["clip"] = skipped["clip_text"] = "the checkpoint has no CLIP parts (train_clip=false)"
    patch = config.vision_patch_size

    def shape(text, what):
        b, h, w = parse_shape(text, f"{where}.{what}")
        if h % patch or w % patch:
            raise CasesError(f"{where}.{what}: {text} is not a multiple of the patch size {patch}")
        return b, h, w

    cases = []
    timing = list(dict.fromkeys(shape(s, "timing") for s in prof["timing"]))
    # every timed shape is a case too: the last timed call's answer is compared with the reference
    shapes = list(dict.fromkeys([shape(s, "images") for s in prof["images"]] + timing))
    for task in IMAGE_TASKS:
        if task in skipped:
            continue
        cases += [Case(f"{task}/b{b}/{h}x{w}", task, b, h, w) for b, h, w in shapes]
    base_h, base_w = shapes[0][1], shapes[0][2]
    extra = [(b, base_h, base_w) for b in batch_sizes] + [(1, h, w) for h, w in sizes]
    for b, h, w in extra:
        if h % patch or w % patch:
            raise CasesError(f"--sizes: {h}x{w} is not a multiple of the patch size {patch}")
    extra = [s for s in dict.fromkeys(extra) if s not in shapes]
    for task in IMAGE_TASKS:
        if task not in skipped:
            cases += [Case(f"{task}/b{b}/{h}x{w}", task, b, h, w) for b, h, w in extra]
    pool = [p for name in text_sets for p in sets[name]]
    for b in dict.fromkeys(batch_sizes):  # the text tower at the user's batch sizes, prompts of every length
        sets[f"batch{b}"] = tuple(pool[i % len(pool)] for i in range(b))
        text_sets.append(f"batch{b}")
    if "clip_text" not in skipped:
        cases += [Case(f"clip_text/{name}", "clip_text", prompt_set=name) for name in text_sets]
    fuzz_record = None
    if fuzz:
        from verify.envelope import fuzz_specs

        tasks = [t for t in IMAGE_TASKS + ("clip_text",) if t not in skipped]
        for i, spec in enumerate(fuzz_specs(fuzz, seed, tasks, patch)):
            if spec[0] == "text":
                sets[f"fuzz{i}"] = spec[1]
                cases.append(Case(f"clip_text/fuzz{i}", "clip_text", prompt_set=f"fuzz{i}"))
            else:
                _, task, b, h, w = spec
                cases.append(Case(f"{task}/b{b}/{h}x{w}/fuzz{i}", task, b, h, w))
        fuzz_record = {"n": fuzz, "seed": seed, "replay": f"--fuzz {fuzz} --seed {seed}",
                       "cases": [c.id for c in cases if "fuzz" in c.id]}
    envelope = {"batch_sizes": list(dict.fromkeys(batch_sizes)), "sizes": [f"{h}x{w}" for h, w in sizes]}
    return Plan(profile=profile, source=doc["source"], version=doc["version"], cases=cases, prompt_sets=sets,
                zero_shot_prompts=zero_shot, timing=timing, warmup=prof["warmup"], iters=prof["iters"],
                repeat=prof["repeat"], skipped_tasks=skipped, envelope=envelope, fuzz=fuzz_record)


def parse_batch_sizes(text: str) -> Tuple[int, ...]:
    """"1,5,16" -> (1, 5, 16); CasesError naming the option otherwise."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise CasesError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,5,16") from None
    if not values or min(values) < 1:
        raise CasesError(f"--batch-sizes {text!r}: expected comma-separated positive integers, e.g. 1,5,16")
    return values


def parse_sizes(text: str) -> Tuple[Tuple[int, int], ...]:
    """"224x224,336x512" -> ((224, 224), (336, 512)); CasesError naming the option otherwise."""
    out = []
    for part in str(text).split(","):
        if part.strip():
            _, h, w = parse_shape(f"1x{part.strip()}", f"--sizes {text!r}")
            out.append((h, w))
    if not out:
        raise CasesError(f"--sizes {text!r}: expected HEIGHTxWIDTH[,HEIGHTxWIDTH...], e.g. 224x224,336x512")
    return tuple(out)


# --------------------------------------------------------------------------------------------- inputs
def input_seed(case_id: str, call: str) -> int:
    """A seed of its own for every (case, call); stable across runs, machines and Python versions."""
    return zlib.crc32(f"{case_id}|{call}".encode()) % 1_000_000


def case_images(case: Case, call: str, first_image=None):
    """(images (B, 3, H, W) ImageNet-normalised, descriptions). ``first_image`` (PIL, a natural picture)
    replaces image 0 of call A only: every other call gets images of its own, so that a candidate that
    replays an earlier answer cannot pass call B."""
    import torch

    from vtp.image import make_sample_image, preprocess

    seed = input_seed(case.id, call)
    images, described = [], []
    side = max(case.height, case.width)
    for i in range(case.batch):
        if i == 0 and first_image is not None and call == "A":
            pil, what = first_image, "the sample image"
        else:  # a square sample image, its centre cropped to the case's shape
            top, left = (side - case.height) // 2, (side - case.width) // 2
            pil = make_sample_image(side, seed + i).crop((left, top, left + case.width, top + case.height))
            what = f"synthetic seed {seed + i}"
        images.append(preprocess(pil, size=(case.height, case.width))[0])  # no resampling at the same size
        described.append(what)
    return torch.stack(images), described


def case_prompts(plan: Plan, case: Case, call: str) -> Tuple[str, ...]:
    """The prompts of a text case for a call: A the set itself, B the same number of other prompts
    (the set reversed, each with a prefix), so that the token tensor keeps its shape and changes."""
    prompts = plan.prompt_sets[case.prompt_set]
    if call == "A":
        return prompts
    return tuple(f"a picture of {p}" for p in reversed(prompts))


def make_case_inputs(plan: Plan, case: Case, call: str, tokenizer, first_image=None) -> dict:
    """{"images": Tensor | None, "text": LongTensor | None, "described": [str]} for one case and call."""
    inputs = {"images": None, "text": None, "described": []}
    if case.task == "clip_text":
        prompts = case_prompts(plan, case, call)
        inputs["text"], inputs["described"] = tokenizer(list(prompts)), list(prompts)
        return inputs
    inputs["images"], inputs["described"] = case_images(case, call, first_image)
    if case.task == "clip":
        inputs["text"] = tokenizer(list(plan.prompt_sets[plan.zero_shot_prompts]))
    return inputs
