"""Bug classes the fixed cases of cases.yaml v1 could not reach, and the envelope and the sweep now do.

Each probe is a port bug that depends on one input property (a kernel specialised for large batches, for
sequences over 1024 patches, for a single prompt, for many prompts). Run on the v1 shapes (batch 1 and an
odd batch, 512x512 at most, 3-4 prompts per set) it PASSES: the fixed list cannot see it. The user's
envelope (--batch-sizes / --sizes) and the seeded sweep (--fuzz N --seed S) FAIL it, naming the case.
"""

import json
import textwrap

import pytest

from verify import accuracy_eval
from verify.selftest import off

# cases.yaml v1's classes, at the tiny model's scale: batch 1 and 3, the base grid, 512x512 (1024 patches,
# not more) and a non-square size; prompt sets of 3 and 2 prompts (early, late and truncated end-of-text)
V1_CASES = textwrap.dedent("""\
    schema: vtp-cases/1
    version: 1
    prompt_sets:
      default: ["a diagram", "a dog", "a cat"]
      long:
        - "a detailed photograph of a small brown dog with long ears sitting on a wooden bench in a sunny park"
        - "an extremely long caption that keeps going well past the seventy seven token context of the clip
          text tower so that the tokenizer has to cut it and put the end of text token into the very last
          slot which is exactly what the original implementation does with such prompts and more words"
    profiles:
      default:
        images: ["1x64x64", "3x64x64", "1x512x512", "2x48x80"]
        text: [default, long]
        zero_shot_prompts: default
        timing: ["1x64x64"]
        warmup: 0
        iters: 1
        repeat: true
    """)


def _last(model, prefix):
    names = [n for n, _ in model.named_modules() if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return dict(model.named_modules())[max(names, key=lambda n: int(n[len(prefix):]))]


def _image_bug(when):
    def install(model):
        _last(model, "trunk.blocks.").register_forward_hook(
            lambda m, a, out: off(out, 0.03) if when(out.shape[0], out.shape[1]) else out)
    return install


def _text_bug(when):
    def install(model):
        _last(model, "text_transformer.resblocks.").register_forward_hook(
            lambda m, a, out: off(out, 0.05) if when(out.shape[0]) else out)
    return install


PROBES = {  # name: (install, what the envelope adds to reach it, case id fragment of the expected failure)
    "large_batch_only": (_image_bug(lambda b, n: b >= 8), ["--batch-sizes", "9"], "/b9/"),
    "long_sequence_only": (_image_bug(lambda b, n: n > 1024 + 16), ["--sizes", "528x528"], "/528x528@"),
    "single_prompt_only": (_text_bug(lambda p: p == 1), ["--batch-sizes", "1"], "clip_text/batch1@"),
    "many_prompts_only": (_text_bug(lambda p: p >= 8), ["--batch-sizes", "9"], "clip_text/batch9@"),
}


@pytest.fixture(scope="module")
def v1_cases(tmp_path_factory):
    path = tmp_path_factory.mktemp("v1") / "cases.yaml"
    path.write_text(V1_CASES)
    return path


def _run(tmp_path, name, tiny_checkpoint, cases, monkeypatch, install, *extra):
    from verify.selftest import candidate_bug

    out = tmp_path / name
    with candidate_bug(install):
        code = accuracy_eval.main(["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases),
                                   "--out", str(out), "--quiet", "--no-timing", "--locate", "never", *extra])
    return code, json.loads((out / "accuracy_summary.json").read_text())


@pytest.mark.parametrize("probe", sorted(PROBES))
def test_the_envelope_reaches_what_the_fixed_cases_missed(tmp_path, tiny_checkpoint, v1_cases, monkeypatch, probe):
    install, envelope, where = PROBES[probe]
    code, summary = _run(tmp_path, "fixed", tiny_checkpoint, v1_cases, monkeypatch, install)
    assert code == 0, f"{probe}: the fixed v1 cases were expected to miss it"
    code, summary = _run(tmp_path, "envelope", tiny_checkpoint, v1_cases, monkeypatch, install, *envelope)
    failed = [c["id"] for c in summary["cases"] if c["verdict"] != "PASS"]
    assert code == 1 and failed and all(where in f for f in failed), failed


def test_the_seeded_sweep_reaches_a_large_batch_bug_and_replays(tmp_path, tiny_checkpoint, v1_cases, monkeypatch):
    from verify.cases import build_plan, load_cases
    from tests.conftest import tiny_config

    install = PROBES["large_batch_only"][0]
    seed = next(s for s in range(100) if any(c.batch and c.batch >= 8 for c in build_plan(
        load_cases(v1_cases), "default", tiny_config(), fuzz=4, seed=s).cases))
    code, summary = _run(tmp_path, "sweep", tiny_checkpoint, v1_cases, monkeypatch, install,
                         "--fuzz", "4", "--seed", str(seed))
    failed = {c["case"] for c in summary["cases"] if c["verdict"] != "PASS"}
    assert code == 1 and failed and all("/fuzz" in f for f in failed)
    assert summary["profile"]["fuzz"]["replay"] == f"--fuzz 4 --seed {seed}"
    code2, again = _run(tmp_path, "replay", tiny_checkpoint, v1_cases, monkeypatch, install,
                        "--fuzz", "4", "--seed", str(seed))
    assert code2 == 1 and {c["case"] for c in again["cases"] if c["verdict"] != "PASS"} == failed
