"""The operating envelope (verify.envelope): the shipped profiles cover every class per tower, the user's
envelope and the seeded sweep add cases, the sweep replays, and the coverage names what a run left out."""

import json

import pytest
from conftest import one_shape_cases

from verify.cases import CasesError, build_plan, load_cases, parse_batch_sizes, parse_sizes
from verify.envelope import TOOLS_BATCHES, batch_class, coverage, eot_class, fuzz_specs, token_class


@pytest.fixture(scope="module")
def small():
    from vtp import VTPConfig
    from vtp.tokenizers import get_tokenizer

    config = VTPConfig.from_preset("VTP-Small-f16d64")
    return config, get_tokenizer(context_length=config.text_context_length)


def _cover(plan, small):
    config, tok = small
    return coverage(plan, tok, config.text_vocab_size, config.text_context_length, config.vision_patch_size)


def test_the_shipped_profiles_reach_every_class_of_every_tower(small):
    config, _ = small
    doc = load_cases()
    full = _cover(build_plan(doc, "full", config), small)
    assert full["gaps"] == []
    default = _cover(build_plan(doc, "default", config), small)
    assert [g for g in default["gaps"] if "VTP's tools" not in g] == []  # the tools' batches: profile full
    for task in ("reconstruction", "clip", "ssl"):
        assert {"large", "single", "small odd"} <= set(default["image_tasks"][task]["batch_classes"])
        assert {"short", "base grid", "long"} <= set(default["image_tasks"][task]["token_classes"])
    assert {"single", "small odd", "large"} <= set(default["text"]["batch_classes"])
    assert {"early", "late", "truncated"} <= set(default["text"]["eot_classes"])
    quick = _cover(build_plan(doc, "quick", config), small)
    assert all(c in quick["image_tasks"]["ssl"]["batch_classes"] for c in ("single", "small odd", "large"))
    assert "ssl: no long sequence (> 1024 patches)" in quick["gaps"]  # named, not hidden


def test_a_plan_without_a_class_names_it(small):
    config, _ = small
    doc = {"source": "x", "version": 1, "prompt_sets": {"d": ["a dog"]}, "profiles": {"p": {
        "images": ["2x256x256"], "text": ["d"], "zero_shot_prompts": "d", "timing": ["2x256x256"],
        "warmup": 0, "iters": 1, "repeat": True}}}
    gaps = _cover(build_plan(doc, "p", config), small)["gaps"]
    for phrase in ("ssl: no single batch", "ssl: no small odd batch", "ssl: no large batch",
                   "ssl: no short sequence", "ssl: no long sequence", "ssl: no non-square image size",
                   "text: no large prompt set", "text: no prompt with end-of-text truncated", "text: no non-ASCII"):
        assert any(g.startswith(phrase) for g in gaps), phrase


def test_classes():
    assert [batch_class(n) for n in (1, 3, 7, 8, 128)] == ["single", "small odd", "small odd", "large", "large"]
    assert token_class(256, 256, 16) == "base grid" and token_class(528, 528, 16) == "long"
    assert token_class(512, 512, 16) == "medium" and token_class(64, 128, 16) == "short"
    assert [eot_class(n, 77) for n in (5, 40, 74, 77, 100)] == ["early", "middle", "late", "late", "truncated"]


def test_the_users_envelope_adds_cases_in_every_tower(small):
    config, _ = small
    plan = build_plan(load_cases(), "quick", config, batch_sizes=(5, 16), sizes=((224, 336),))
    ids = {c.id for c in plan.cases}
    for task in ("reconstruction", "clip", "ssl"):
        assert {f"{task}/b5/256x256", f"{task}/b16/256x256", f"{task}/b1/224x336"} <= ids
    assert len(plan.prompt_sets["batch16"]) == 16 and "clip_text/batch16" in ids
    assert plan.to_dict()["envelope"] == {"batch_sizes": [5, 16], "sizes": ["224x336"]}
    with pytest.raises(CasesError, match="multiple of the patch size"):
        build_plan(load_cases(), "quick", config, sizes=((100, 100),))
    assert parse_batch_sizes("1, 5,16") == (1, 5, 16) and parse_sizes("224x224,336x512") == ((224, 224), (336, 512))
    for bad in ("0", "a", ""):
        with pytest.raises(CasesError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    with pytest.raises(CasesError, match="--sizes"):
        parse_sizes("224")


def test_the_sweep_is_seeded_bounded_and_reaches_every_class():
    tasks = ("reconstruction", "clip", "ssl", "clip_text")
    assert fuzz_specs(8, 7, tasks) == fuzz_specs(8, 7, tasks)
    assert fuzz_specs(8, 7, tasks) != fuzz_specs(8, 8, tasks)
    specs = fuzz_specs(400, 1, tasks)
    images = [s for s in specs if s[0] == "image"]
    assert {batch_class(b) for _, _, b, _, _ in images} >= {"single", "small odd", "large"}
    assert {token_class(h, w, 16) for _, _, _, h, w in images} >= {"short", "base grid", "long"}
    assert all(h % 16 == 0 and w % 16 == 0 for _, _, _, h, w in images)
    assert all(b == 1 or b * (h // 16) * (w // 16) <= 2304 for _, _, b, h, w in images)
    texts = [s[1] for s in specs if s[0] == "text"]
    assert {batch_class(len(p)) for p in texts} >= {"single", "small odd", "large"}


def test_fuzz_cases_are_recorded_for_a_replay(small):
    config, tok = small
    plan = build_plan(load_cases(), "quick", config, fuzz=6, seed=42)
    again = build_plan(load_cases(), "quick", config, fuzz=6, seed=42)
    assert plan.to_dict() == again.to_dict()
    record = plan.to_dict()["fuzz"]
    assert record["seed"] == 42 and record["replay"] == "--fuzz 6 --seed 42" and len(record["cases"]) == 6
    assert len({c.id for c in plan.cases}) == len(plan.cases)


def test_tools_batches_are_the_tools_defaults():
    from vtp_tools.eval.cli import ORIGINAL

    assert TOOLS_BATCHES["zero-shot"] == ORIGINAL["zero-shot"][2]
    assert TOOLS_BATCHES["linear-probe"] == ORIGINAL["linear-probe"][2]
    assert TOOLS_BATCHES["reconstruction"] == ORIGINAL["reconstruction"][2]


def test_a_fuzzed_run_records_its_seed_and_cases(tmp_path, tiny_checkpoint):
    from verify import accuracy_eval

    cases = one_shape_cases(tmp_path / "cases.yaml", repeat=False)
    out = tmp_path / "out"
    code = accuracy_eval.main(["--device", "cpu", "--weights", str(tiny_checkpoint), "--cases", str(cases),
                               "--out", str(out), "--quiet", "--no-timing", "--fuzz", "3"])
    summary = json.loads((out / "accuracy_summary.json").read_text())
    fuzz = summary["profile"]["fuzz"]
    assert code == 0 and fuzz["n"] == 3 and isinstance(fuzz["seed"], int)
    ran = {c["case"] for c in summary["cases"]}
    assert set(fuzz["cases"]) <= ran
    coverage_check = next(c for c in summary["checks"] if c["check"] == "coverage")
    assert coverage_check["detail"]["fuzz"]["seed"] == fuzz["seed"]


def test_a_failed_sweep_says_how_to_replay_it_on_the_console():
    from verify.report.glance import glance_lines
    from verify.report.table import check_lines

    fuzz = {"n": 4, "seed": 17, "replay": "--fuzz 4 --seed 17", "cases": ["ssl/b9/64x64/fuzz0"]}
    summary = {"verdict": "FAIL", "overall": {"verdict": "FAIL", "reasons": ["x"]}, "profile": {"fuzz": fuzz},
               "cases": [], "checks": [{"check": "coverage", "id": "profile quick", "detail": {"fuzz": fuzz}}]}
    assert any("replay these cases with --fuzz 4 --seed 17" in line for line in glance_lines(summary))
    assert any("seed 17; replay them with --fuzz 4 --seed 17" in line for line in check_lines(summary))
