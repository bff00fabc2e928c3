"""The operating envelope: the input classes a port bug can depend on, what a plan covers of them, and a
seeded random sweep over them.

Bugs depend on input properties, per tower: a kernel specialised for batch 1 (serving, retrieval queries),
tiled for small or large batches, for a short sequence, the 16x16 base grid or a long one (tail tiles,
attention blocks over 1024 tokens); in the text tower, on the number of prompts and where end-of-text
sits (early, near the context limit, truncated into the last slot). The classes, per tower:

    image batch     single (1), small odd (3..7), large (>= 8)
    image tokens    short (< 256 patches), base grid (exactly 16x16), long (> 1024 patches)
    text batch      single prompt, small odd (3..7), large (>= 8)
    end-of-text     early (position < 16), late (within 6 of the context limit), truncated (longer than it)
    tools           the batch sizes VTP's own tools run at 256x256 (verify.envelope.TOOLS_BATCHES)

`coverage` reports, for each image task and for the text tower, which classes the plan reached and names
every class it did not (the gaps). `fuzz_specs` draws N extra cases from the envelope with a seed: the same
(N, seed) gives the same cases on every machine, so a failing sweep is replayed with ``--fuzz N --seed S``.
"""

from __future__ import annotations

import random
from typing import Dict, List, Tuple

BATCH_CLASSES = ("single", "small odd", "large")
TOKEN_CLASSES = ("short", "base grid", "long")
EOT_CLASSES = ("early", "late", "truncated")
BASE_GRID = 16           # patches per side of the 256x256 base resolution at patch 16
LONG_TOKENS = 1024       # a long sequence has more patches than this
LARGE_BATCH = 8
# The batch sizes VTP's own tools run (vtp_tools: zero-shot and linear probe 128, reconstruction 32,
# extraction 50; the originals' defaults), at 256x256. tests/test_envelope.py checks them against the tools.
TOOLS_BATCHES = {"zero-shot": 128, "linear-probe": 128, "reconstruction": 32, "extract": 50}
TOOLS_SIZE = (256, 256)


def batch_class(n: int) -> str:
    if n == 1:
        return "single"
    if n >= LARGE_BATCH:
        return "large"
    return "small odd" if n % 2 else "small even"


def token_class(height: int, width: int, patch: int) -> str:
    tokens = (height // patch) * (width // patch)
    if tokens > LONG_TOKENS:
        return "long"
    if height // patch == BASE_GRID and width // patch == BASE_GRID:
        return "base grid"
    return "short" if tokens < BASE_GRID * BASE_GRID else "medium"


def eot_class(n_tokens: int, context_length: int) -> str:
    """``n_tokens``: the prompt's length with start- and end-of-text (before truncation)."""
    if n_tokens > context_length:
        return "truncated"
    if n_tokens - 1 >= context_length - 6:
        return "late"
    return "early" if n_tokens - 1 < 16 else "middle"


# --------------------------------------------------------------------------------------------- coverage
def coverage(plan, tokenizer, vocab_size: int, context_length: int, patch: int = 16) -> dict:
    """What ``plan`` (verify.cases.Plan) covers of the envelope, per image task and for the text tower, and
    the gaps: one phrase per class it did not reach."""
    per_task: Dict[str, dict] = {}
    gaps: List[str] = []
    image_cases = [c for c in plan.cases if c.task != "clip_text"]
    for task in sorted({c.task for c in image_cases}):
        cases = [c for c in image_cases if c.task == task]
        batches = {batch_class(c.batch) for c in cases}
        tokens = {token_class(c.height, c.width, patch) for c in cases}
        tools = sorted({c.batch for c in cases if (c.height, c.width) == TOOLS_SIZE and c.batch in
                        TOOLS_BATCHES.values()})
        per_task[task] = {"batch_classes": sorted(batches), "token_classes": sorted(tokens),
                          "non_square": any(c.height != c.width for c in cases), "tools_batches": tools}
        gaps += [f"{task}: no {name} batch" for name in BATCH_CLASSES if name not in batches]
        gaps += [f"{task}: no {name} sequence ({_tokens_phrase(name)})" for name in TOKEN_CLASSES
                 if name not in tokens]
        if not per_task[task]["non_square"]:
            gaps.append(f"{task}: no non-square image size")
        missing_tools = sorted(set(TOOLS_BATCHES.values()) - set(tools))
        if missing_tools:
            gaps.append(f"{task}: not at the batch sizes VTP's tools run ({', '.join(map(str, missing_tools))} "
                        f"at {TOOLS_SIZE[0]}x{TOOLS_SIZE[1]}; in profile full)")

    text_cases = [c for c in plan.cases if c.task == "clip_text"]
    prompts = [p for c in text_cases for p in plan.prompt_sets[c.prompt_set]]
    ids = [tokenizer.encode(p) for p in prompts]
    lengths = [len(i) + 2 for i in ids]  # + start and end of text
    text = {"batch_classes": sorted({batch_class(len(plan.prompt_sets[c.prompt_set])) for c in text_cases}),
            "eot_classes": sorted({eot_class(n, context_length) for n in lengths}),
            "prompts": len(prompts), "longest_prompt_tokens": max(lengths, default=0),
            "truncated_prompts": sum(n > context_length for n in lengths),
            "max_token_id": max((max(i) for i in ids if i), default=0),
            "non_ascii": any(not p.isascii() for p in prompts)}
    if text_cases:
        gaps += [f"text: no {name} prompt set" for name in BATCH_CLASSES if name not in text["batch_classes"]]
        gaps += [f"text: no prompt with end-of-text {name}" for name in EOT_CLASSES
                 if name not in text["eot_classes"]]
        if text["max_token_id"] < 0.9 * vocab_size:
            gaps.append(f"text: no token id in the top tenth of the vocabulary (max {text['max_token_id']})")
        if not text["non_ascii"]:
            gaps.append("text: no non-ASCII prompt")
    shapes = sorted({(c.batch, c.height, c.width) for c in image_cases})
    return {"image_tasks": per_task, "text": text,
            "batches": sorted({b for b, _, _ in shapes}), "sizes": sorted({f"{h}x{w}" for _, h, w in shapes}),
            "prompts": text["prompts"], "longest_prompt_tokens": text["longest_prompt_tokens"],
            "truncated_prompts": text["truncated_prompts"], "max_token_id": text["max_token_id"],
            "fuzz": getattr(plan, "fuzz", None), "gaps": gaps}


def _tokens_phrase(name: str) -> str:
    return {"short": f"< {BASE_GRID * BASE_GRID} patches", "base grid": f"{BASE_GRID}x{BASE_GRID} patches",
            "long": f"> {LONG_TOKENS} patches"}[name]


# --------------------------------------------------------------------------------------------- the sweep
_WORDS = ("a", "photo", "of", "the", "dog", "cat", "red", "small", "on", "with", "and", "in", "old", "car",
          "tree", "river", "house", "girl", "boy", "blue", "green", "two", "three", "running", "sleeping")
_RARE = ("verstappen", "terracotta", "mogadishu", "hebrides", "guwahati", "kombucha", "nunavut", "missoula",
         "thunderbird", "archaeologists", "emporium", "mistletoe")
_NON_ASCII = ("été", "café", "naïve", "Straße", "一只猫", "草地", "🐶", "☕", "façade", "smörgåsbord")
_LENGTH_WORDS = {"early": (1, 6), "late": (66, 72), "truncated": (90, 130)}


def fuzz_specs(n: int, seed: int, tasks, patch: int = 16, max_side: int = 576) -> List[Tuple]:
    """``n`` cases drawn from the envelope: ("image", task, batch, height, width) or ("text", prompts).

    Each draw picks a tower, then a class of each property uniformly, then a value inside the class. Image
    work is bounded (batch x patches <= 2304, a long sequence runs at batch 1) so that a sweep of 8 stays
    within about a minute of CPU time on VTP-Small."""
    rng = random.Random(seed)
    image_tasks = [t for t in tasks if t != "clip_text"]
    specs = []
    for _ in range(n):
        if "clip_text" in tasks and (not image_tasks or rng.random() < 0.3):
            specs.append(("text", tuple(_prompts(rng))))
            continue
        task = rng.choice(image_tasks)
        tokens = rng.choice(TOKEN_CLASSES)
        if tokens == "long":
            side = max_side // patch
            gh = rng.randint(LONG_TOKENS // side + 1, side)
            gw = rng.randint(LONG_TOKENS // gh + 1, side)
            batch = 1
        elif tokens == "base grid":
            gh = gw = BASE_GRID
            batch = rng.choice((1, 3, 5, 8))
        else:
            gh, gw = rng.randint(2, 12), rng.randint(2, 12)
            batch = rng.choice((1, rng.choice((3, 5, 7)), rng.randint(LARGE_BATCH, 16)))
        while batch > 1 and batch * gh * gw > 2304:
            batch -= 1
        specs.append(("image", task, batch, gh * patch, gw * patch))
    return specs


def _prompts(rng) -> List[str]:
    count = rng.choice((1, rng.choice((3, 5, 7)), rng.randint(LARGE_BATCH, 12)))
    out = []
    for _ in range(count):
        low, high = _LENGTH_WORDS[rng.choice(EOT_CLASSES)]
        words = [rng.choice(_WORDS) for _ in range(rng.randint(low, high))]
        for pool in (_RARE, _NON_ASCII):  # sometimes a rare word or non-ASCII text, anywhere
            if rng.random() < 0.4:
                words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
        out.append(" ".join(words))
    return out
