"""The certification end to end (in process) on a tiny checkpoint: the verdict follows the data.

Every class of realistic port bug that an earlier harness let through is injected into the candidate only
(the reference stays clean) and must FAIL, naming the case and the gate; clean runs must PASS in fp32,
fp16 and bf16.
"""

import json
import textwrap

import pytest
import torch

from verify import accuracy_eval
from verify.selftest import BUGS, judge_bug_run, off

# A tiny profile in the shape of the shipped default: batch 1 and an odd batch, the base size and a
# non-square one, short, long and upper-vocabulary prompts.
CASES = textwrap.dedent("""\
    schema: vtp-cases/1
    version: 1
    prompt_sets:
      default: ["a diagram", "a dog", "a cat"]
      long:
        - "a detailed photograph of a small brown dog with long ears sitting on a wooden bench in a sunny park"
        - "an extremely long caption that keeps going well past the seventy seven token context of the clip
          text tower so that the tokenizer has to cut it and put the end of text token into the very last
          slot which is exactly what the original implementation does with such prompts and more words"
      rare: ["verstappen archaeologists terracotta", "kombucha cereals and triplets in nunavut"]
    profiles:
      default:
        images: ["1x64x64", "3x64x64", "2x48x80"]
        text: [default, long, rare]
        zero_shot_prompts: default
        timing: ["1x64x64"]
        warmup: 2
        iters: 2
        repeat: true
    """)


@pytest.fixture(scope="module")
def cases_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cases") / "cases.yaml"
    path.write_text(CASES)
    return path


def run(tmp_path, tiny_checkpoint, cases_file, *extra):
    out = tmp_path / "out"
    argv = ["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases_file), "--out", str(out),
            "--quiet", *extra]
    code = accuracy_eval.main(argv)
    file = out / "accuracy_summary.json"
    return code, (json.loads(file.read_text()) if file.exists() else None)


def failed(summary):
    """{(case@call, tensor): set of failed gates}."""
    return {(c["id"], t["name"]): {g["gate"] for g in t["gates"] if not g["passed"]}
            for c in summary["cases"] for t in c["tensors"] if t["verdict"] != "PASS"}


# ------------------------------------------------------------------------------------------ clean runs
def test_unfused_fp32_is_exact_and_passes(tmp_path, tiny_checkpoint, cases_file):
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none")
    assert code == 0 and s["verdict"] == "PASS", s["overall"]["reasons"]
    assert s["schema"] == "vtp-accuracy-summary/2"
    for c in s["cases"]:
        for t in c["tensors"]:  # the same math; the memory-mapped reference and its copy may take other BLAS paths
            assert t["metrics"]["metrics"]["relative_l2_error"] < 1e-6, (c["id"], t["name"])
    ids = {c["id"] for c in s["cases"]}
    # coverage: batch 1 and odd batch, a non-square size, every text set, calls A, B and the warm call
    for expected in ("reconstruction/b1/64x64@A", "clip/b3/64x64@B", "ssl/b2/48x80@A", "clip_text/long@A",
                     "clip_text/rare@B", "reconstruction/b1/64x64@warm", "clip_text/default@warm"):
        assert expected in ids
    repeat = [c for c in s["checks"] if c["check"] == "repeat"]
    assert repeat and all(c["deterministic"] for c in repeat)
    assert {c["check"] for c in s["checks"]} == {"repeat", "determinism", "warmup", "coverage"}
    # every gate reports value, threshold and margin; the requirement is marked as such
    gates = s["cases"][0]["tensors"][0]["gates"]
    assert {g["gate"] for g in gates} >= {"max_rel_err", "min_cosine", "max_rel_l2", "max_row_rel_err",
                                          "max_frac_over_tol", "max_abs_scaled"}
    assert all({"value", "threshold", "margin", "passed"} <= set(g) for g in gates)
    assert {g["gate"] for g in gates if g["kind"] == "requirement"} == {"max_rel_err", "min_cosine"}


def test_fused_fp32_with_tanh_gelu_passes(tmp_path, tiny_checkpoint, cases_file):
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "all")
    assert code == 0, s["overall"]["reasons"]
    text = next(c for c in s["cases"] if c["id"] == "clip_text/long@A")
    tokens = next(t for t in text["tensors"] if t["name"] == "clip_text_tokens")
    assert 0 < tokens["metrics"]["metrics"]["relative_l2_error"] < 1e-3  # the tanh GELU of the text MLP
    # the per-token states cover every position up to each end-of-text (the truncated prompt: all 77)
    assert tokens["metrics"]["candidate"]["shape"][0] > 77


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_clean_low_precision_passes_with_error_ratio(tmp_path, tiny_checkpoint, cases_file, precision):
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--precision", precision, "--no-timing")
    assert code == 0, s["overall"]["reasons"]
    gates = {g["gate"] for c in s["cases"] for t in c["tensors"] for g in t["gates"]}
    assert {"error_ratio_rel_l2", "error_ratio_row"} <= gates


# ------------------------------------------------------------------------------------------ injected bugs
def with_bug(monkeypatch, install):
    """Run `install(candidate)` on the candidate only, right after it is prepared."""
    import ascend.runtime

    original = ascend.runtime.prepare_candidate

    def prepare(*args, **kwargs):
        candidate, report = original(*args, **kwargs)
        install(candidate)
        return candidate, report

    monkeypatch.setattr(ascend.runtime, "prepare_candidate", prepare)


def hook(model, name, fn):
    dict(model.named_modules())[name].register_forward_hook(lambda m, a, out: fn(out, a))


@pytest.mark.parametrize("bug,case,gate", [
    ("batch_one_only", "@", None),
    ("off_base_grid_only", "/48x80@", None),
    ("long_prompts_only", "clip_text/long@", None),
    ("upper_vocab_only", "clip_text/rare@", None),
    ("stale_replay", "@B", None),
    ("after_warmup_only", "@warm", None),
    ("one_bad_token", "@", "max_row_rel_err"),
    ("bf16_only", "clip_text/", "error_ratio"),
    ("small_fp32_fault", "/", "max_rel_l2"),
])
def test_each_class_of_port_bug_fails_and_names_case_and_gate(tmp_path, tiny_checkpoint, cases_file,
                                                               monkeypatch, bug, case, gate):
    install, precision = BUGS[bug].install, BUGS[bug].precision
    with_bug(monkeypatch, install)
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--precision", precision, "--fusion", "none")
    assert code == 1 and s["verdict"] == "FAIL"
    bad = failed(s)
    assert any(case in cid for cid, _ in bad), bad
    if gate:
        assert any(g.startswith(gate) for gates in bad.values() for g in gates), bad
    judged = judge_bug_run({"exit": code}, s, BUGS[bug].expect)  # where the self-test's catalogue expects it
    assert judged["status"] == "caught", judged["where"]
    # the failure lines name the case and the gate
    reasons = s["overall"]["reasons"]
    assert any(line.startswith("[") and "@" in line and "threshold" in line for line in reasons), reasons


def test_batch_one_bug_is_seen_only_in_batch_one_cases(tmp_path, tiny_checkpoint, cases_file, monkeypatch):
    with_bug(monkeypatch, BUGS["batch_one_only"][0])
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none", "--no-timing")
    assert code == 1
    image_failures = {cid for cid, _ in failed(s) if not cid.startswith("clip_text")}
    assert image_failures and all("/b1/" in cid for cid in image_failures)


def test_stale_replay_fails_call_b_and_not_a(tmp_path, tiny_checkpoint, cases_file, monkeypatch):
    with_bug(monkeypatch, BUGS["stale_replay"][0])
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none", "--no-timing")
    calls = {cid.rsplit("@", 1)[1] for cid, _ in failed(s)}
    assert code == 1 and "B" in calls
    assert "reconstruction/b1/64x64@A" not in {cid for cid, _ in failed(s)}  # the very first answer is right


def test_nondeterministic_candidate_fails_the_repeat_check(tmp_path, tiny_checkpoint, cases_file, monkeypatch):
    gen = torch.Generator().manual_seed(0)

    def noisy(model):
        hook(model, "trunk.norm", lambda out, a: off(out, 1e-3 * float(torch.rand(1, generator=gen))))
    with_bug(monkeypatch, noisy)
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none", "--no-timing")
    repeat = [c for c in s["checks"] if c["check"] == "repeat" and c["verdict"] == "FAIL"]
    assert code == 1 and repeat and not repeat[0]["deterministic"]
    assert "repeat_max_abs_scaled" in " ".join(s["overall"]["reasons"])


def test_a_looser_threshold_file_takes_effect(tmp_path, tiny_checkpoint, cases_file, monkeypatch):
    from omegaconf import OmegaConf

    from verify.verdict import DEFAULT_THRESHOLDS_PATH

    raw = OmegaConf.to_container(OmegaConf.load(DEFAULT_THRESHOLDS_PATH))
    loose = dict(max_rel_err=0.5, min_cosine=0.9, max_rel_l2=0.5, max_row_rel_err=0.5, max_frac_over_tol=1.0,
                 max_abs_scaled=1.0, max_prob_abs=0.5, min_top1=0.0)
    raw["precisions"]["fp32"].update(loose)
    path = tmp_path / "loose.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    with_bug(monkeypatch, BUGS["small_fp32_fault"][0])
    assert run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none", "--no-timing")[0] == 1
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--fusion", "none", "--no-timing", "--thresholds", str(path))
    assert code == 0, s["overall"]["reasons"]


def test_injected_nan_fails(tmp_path, tiny_checkpoint, cases_file):
    code, s = run(tmp_path, tiny_checkpoint, cases_file, "--no-timing", "--inject-fault", "trunk.blocks.0=nan")
    assert code == 1 and any("NaN" in r for r in s["overall"]["reasons"])


# ------------------------------------------------------------------------------------------ usage errors
@pytest.mark.parametrize("extra,words", [
    (["--inject-fault", "trunk.blocks.0"], "MODULE=FACTOR"),
    (["--inject-fault", "no.such.module=1.1"], "no module named"),
    (["--fusion", "gelu,nonsense"], "--fusion"),
    (["--profile", "nonsense"], "no profile 'nonsense'"),
    (["--iters", "0"], "--iters"),
])
def test_usage_errors_exit_2_before_work(tmp_path, tiny_checkpoint, cases_file, capsys, extra, words):
    code, s = run(tmp_path, tiny_checkpoint, cases_file, *extra)
    assert code == 2 and s is None
    assert words in capsys.readouterr().err


def test_bad_cases_file_is_a_usage_error(tmp_path, tiny_checkpoint, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(CASES.replace('"2x48x80"', '"2x50x80"'))
    code, s = run(tmp_path, tiny_checkpoint, bad)
    assert code == 2 and "multiple of the patch size 16" in capsys.readouterr().err


def test_every_image_of_every_call_is_new_input_on_the_production_path(tmp_path, tiny_checkpoint, cases_file):
    """The inputs the harness really ran (read back from its golden set): no image is used twice, in any
    case or call; the natural sample image may be image 0 of call A only."""
    from safetensors.torch import load_file

    code, summary = run(tmp_path, tiny_checkpoint, cases_file, "--no-timing", "--save-golden", str(tmp_path / "g"))
    assert code == 0, summary["overall"]["reasons"]
    inputs = load_file(str(tmp_path / "g" / "inputs.safetensors"))
    images = [(key, i, batch[i]) for key, batch in sorted(inputs.items()) if key.endswith("/images")
              for i in range(batch.shape[0])]
    assert any(key.startswith("clip/b1/") for key, _, _ in images)  # the case the old harness replayed
    natural = {(key, i) for key, i, _ in images if key.startswith("clip/") and key.endswith("@A/images") and i == 0}
    for n, (key, i, image) in enumerate(images):
        for other_key, j, other in images[n + 1:]:
            if {(key, i), (other_key, j)} <= natural:  # the sample picture, image 0 of each clip case's call A
                continue
            assert image.shape != other.shape or not torch.equal(image, other), (key, i, other_key, j)
    texts = {key: t for key, t in inputs.items() if key.startswith("clip_text/")}
    for key, t in texts.items():
        if key.endswith("@A/text"):
            assert not torch.equal(t, texts[key.replace("@A/", "@B/")]), key
