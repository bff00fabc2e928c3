"""ascend/inference.py as a user runs it: `python ascend/inference.py ...` in a fresh process, on the CPU.

The demo runs on a tiny checkpoint; one run uses the synthetic VTP-Small fallback (SSL task only, to
keep it to seconds).
"""

import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO

SCRIPT = REPO / "ascend" / "inference.py"
DEFAULT_PROMPTS = ("a diagram", "a dog", "a cat", "a person")
PROMPT_LINE = re.compile(r"p=([0-9.]+) +\(.*\) +'(.*)'$", re.MULTILINE)


def run_demo(cwd, *args):
    """`python ascend/inference.py ARGS` with `cwd` as the working directory (no weights/ there)."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tiny_checkpoint):
    cwd = tmp_path_factory.mktemp("demo")
    done = run_demo(cwd, "--device", "cpu", "--weights", tiny_checkpoint, "--out", "out", "--log", "log.txt")
    return done, cwd


def test_demo_exits_0_and_writes_the_reconstruction(demo):
    done, cwd = demo
    assert done.returncode == 0, done.stderr
    png = cwd / "out" / "reconstructed.png"
    with Image.open(png) as img:
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (256, 256))
    with Image.open(cwd / "out" / "input.png") as img:  # the model's input, beside its reconstruction
        assert (img.format, img.mode, img.size) == ("PNG", "RGB", (256, 256))
    assert sorted(p.name for p in png.parent.iterdir()) == ["input.png", "reconstructed.png"]  # no temporary files


def test_log_has_the_three_tasks_with_their_numbers(demo):
    done, cwd = demo
    log = (cwd / "log.txt").read_text()
    for section in ("task 1/3: reconstruction", "task 2/3: CLIP zero-shot", "task 3/3: SSL features"):
        assert section in log
    psnr = float(re.search(r"PSNR: ([0-9.]+) dB", log).group(1))
    ssim = float(re.search(r"SSIM: (-?[0-9.]+)", log).group(1))
    assert psnr > 0 and -1 <= ssim <= 1
    assert re.search(r"time: encode [0-9.]+ ms, decode [0-9.]+ ms", log)
    assert "latents: shape (1, 8, 16, 16)" in log  # tiny config: bottleneck 8, 256 / 16 = 16

    found = PROMPT_LINE.findall(log)
    probs = [float(p) for p, _ in found]
    assert sorted(prompt for _, prompt in found) == sorted(DEFAULT_PROMPTS)
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)
    assert probs == sorted(probs, reverse=True)  # most likely prompt first

    assert "CLS token: shape (1, 32), L2 norm" in log
    assert "patch tokens: shape (1, 256, 32), L2 norm" in log
    assert "PSNR" in done.stderr  # the terminal gets the same lines


@pytest.mark.parametrize("case, words", [
    ("missing image", ["image file not found", "no_such_image.png"]),
    ("corrupt image", ["not a recognised image file", "corrupt.png"]),
    ("missing weights folder", ["weights folder not found", "no_such_weights"]),
    ("unusable device", ["npu:99", "not usable"]),
    ("require weights", ["--require-weights", "weights/VTP-Small-f16d64"]),
])
def test_bad_input_exits_2_with_a_message_that_names_it(tmp_path, tiny_checkpoint, case, words):
    args = {
        "missing image": ["--weights", tiny_checkpoint, "--image", "no_such_image.png"],
        "corrupt image": ["--weights", tiny_checkpoint, "--image", "corrupt.png"],
        "missing weights folder": ["--weights", "no_such_weights"],
        "unusable device": ["--weights", tiny_checkpoint, "--device", "npu:99"],
        "require weights": ["--require-weights"],
    }[case]
    (tmp_path / "corrupt.png").write_text("<html>not an image</html>")
    done = run_demo(tmp_path, "--device", "cpu", *args, "--out", "out", "--log", "log.txt")
    assert done.returncode == 2, done.stderr
    for word in words:
        assert word in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.png"]
    # a run refused for its input creates neither the output folder nor the log file


def test_bad_option_exits_2_before_any_work(tmp_path):
    done = run_demo(tmp_path, "--tasks", "segmentation")
    assert done.returncode == 2 and "tasks are reconstruction, clip, ssl" in done.stderr
    assert not (tmp_path / "log.txt").exists()


def test_help_shows_a_real_example(tmp_path):
    done = run_demo(tmp_path, "--help")
    assert done.returncode == 0
    assert "python ascend/inference.py --weights weights/VTP-Small-f16d64" in done.stdout
    assert "exit status" in done.stdout


def test_without_weights_it_runs_synthetic_small_with_a_notice(tmp_path):
    done = run_demo(tmp_path, "--device", "cpu", "--tasks", "ssl")
    assert done.returncode == 0, done.stderr
    log = (tmp_path / "log.txt").read_text()  # the default log file, in the working directory
    assert "NOTICE: no checkpoint found at weights/VTP-Small-f16d64; using SYNTHETIC random weights" in log
    assert done.stderr.count("SYNTHETIC") == 1 and log.count("SYNTHETIC") == 1  # said once, not per step
    assert "generated sample image" in log
    assert "patch tokens: shape (1, 256, " in log
    assert "task 1/3: reconstruction: skipped (--tasks)" in log
