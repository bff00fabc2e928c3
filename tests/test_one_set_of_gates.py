"""One set of gates: for every bug class of the self-test catalogue (verify.selftest.BUGS), at fp32 and bf16,
the harness's verdict (verify.accuracy_eval.main), its localisation's verdict (divergence.json, verify.locate on
the failing case's inputs) and the bisection's verdict on the candidate as given (verify.bisection, the harness's
cases and calls) are the same. Before, locate judged with rel-L2/cosine/abs-scale only and bisection without
the same-precision reference, so the bf16-only bug passed both while the harness failed it."""

import json

import pytest

from verify.selftest import BUGS, candidate_bug

PRECISIONS = ("fp32", "bf16")


@pytest.fixture(scope="module")
def setup(tiny_checkpoint, tmp_path_factory):
    from ascend.runtime import default_image, load_weights
    from tests.gates_helpers import write_tiny_cases
    from verify.bisection import plan_for
    from verify.verdict import load_thresholds

    cases = write_tiny_cases(tmp_path_factory.mktemp("cases"))
    reference, _ = load_weights(tiny_checkpoint)
    return {"weights": tiny_checkpoint, "cases": cases, "reference": reference, "thresholds": load_thresholds(),
            "plan": plan_for(reference, "quick", cases), "first_image": default_image(tiny_checkpoint)[0]}


def _install(bug):
    return None if bug == "clean" else BUGS[bug][0]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("bug", ["clean", *BUGS])
def test_locate_and_bisection_agree_with_the_harness(setup, tmp_path, bug, precision):
    from verify import accuracy_eval
    from verify.bisection import bisect_fusion

    install = _install(bug)
    argv = ["--device", "cpu", "--weights", str(setup["weights"]), "--cases", str(setup["cases"]), "--profile",
            "quick", "--precision", precision, "--no-timing", "--quiet", "--locate", "always", "--out",
            str(tmp_path / "run")]
    with candidate_bug(install) if install else _nothing():
        code = accuracy_eval.main(argv)
    assert code in (0, 1), f"the harness could not run ({code})"
    harness = json.loads((tmp_path / "run" / "accuracy_summary.json").read_text())["verdict"]
    divergence = json.loads((tmp_path / "run" / "divergence.json").read_text())
    assert divergence["schema"] == "vtp-divergence/2"
    assert divergence["verdict"] == harness, (divergence["first_divergent"], divergence["outputs"])
    if harness == "FAIL":  # a failing verdict is always localised to a module or to the task's own code
        assert divergence["first_divergent"] is not None or divergence["first_nonfinite"] is not None
    with candidate_bug(install) if install else _nothing():
        bisect = bisect_fusion(setup["reference"], setup["plan"], device="cpu", precision=precision, fusion="all",
                               thresholds=setup["thresholds"], first_image=setup["first_image"])
    assert bisect["verdict"] == harness, bisect["runs"][0]


def _nothing():
    import contextlib

    return contextlib.nullcontext()
