"""The shipped thresholds against their own derivation (verify/thresholds.yaml, section `calibration`).

Every gate of every precision has a calibration entry: the clean worst value measured on the CPU with the
margin range the derivation claims for it, or a stated reason where no measurement is its basis. A gate whose
threshold drifts outside its stated margin over the measured value fails here, and so does a gate with
neither a measurement nor a reason. The doctored tables below show that the check can fail.
"""
import copy

import pytest
from omegaconf import OmegaConf

from verify import verdict as V


def raw_default():
    """The shipped threshold file as a plain dict, to edit and write elsewhere."""
    return OmegaConf.to_container(OmegaConf.load(V.DEFAULT_THRESHOLDS_PATH))


def load(tmp_path, doc, name="doctored.yaml"):
    path = tmp_path / name
    OmegaConf.save(OmegaConf.create(doc), path)
    return V.load_thresholds(path)


@pytest.fixture(scope="module")
def table():
    return V.load_thresholds()


def cases_version():
    return OmegaConf.load(V.DEFAULT_THRESHOLDS_PATH.with_name("cases.yaml"))["version"]


# --- the shipped file ---------------------------------------------------------------------------------------
def test_every_gate_sits_within_its_stated_margin(table):
    findings = V.calibration_findings(table)
    assert findings == [], "gates outside their derivation:\n" + "\n".join(findings)


@pytest.mark.parametrize("precision", V.PRECISIONS)
@pytest.mark.parametrize("key", V.THRESHOLD_KEYS)
def test_every_gate_has_a_measurement_or_a_reason(table, precision, key):
    entry = table["calibration"][precision]["gates"].get(key)
    assert entry is not None, f"calibration.{precision}.gates.{key} missing"
    assert entry["reason"] or (entry["measured"] is not None and entry["margin"] is not None)
    if entry["margin"] is not None:  # a measured margin says where its worst value sits
        assert entry["tensor"] and entry["case"], f"calibration.{precision}.gates.{key}: tensor and case"


@pytest.mark.parametrize("precision", V.PRECISIONS)
def test_clean_worst_values_pass_with_room(table, precision):
    """A claimed margin below 1 would mean the clean run fails its own gate."""
    for key, entry in table["calibration"][precision]["gates"].items():
        if entry["margin"] is not None:
            assert entry["margin"][0] > 1.0, f"calibration.{precision}.gates.{key}.margin {entry['margin']}"


@pytest.mark.parametrize("precision", V.PRECISIONS)
def test_measured_at_the_current_cases_and_thresholds(table, precision):
    """Measured, not carried over: every precision names its run, at the shipped cases.yaml version and
    the threshold version it calibrates (bump both together when the cases change, and measure again)."""
    measured_on = table["calibration"][precision]["measured_on"]
    for key in ("date", "cases", "command", "load"):
        assert measured_on.get(key), f"calibration.{precision}.measured_on.{key}"
    assert measured_on.get("cases_version") == cases_version(), (
        f"calibration.{precision} was measured on cases v{measured_on.get('cases_version')}, "
        f"verify/cases.yaml is v{cases_version()}: measure again")
    assert measured_on.get("thresholds_version") == table["version"]
    assert f"--precision {precision}" in measured_on["command"]


# --- the check can fail ---------------------------------------------------------------------------------
def _measured_gate(doc, precision):
    """A gate of ``precision`` that the shipped calibration measured, with its entry."""
    gates = doc["calibration"][precision]["gates"]
    key = next(k for k in ("max_rel_l2", "max_row_rel_err", "max_abs_scaled") if gates.get(k, {}).get("margin"))
    return key, gates[key]


@pytest.mark.parametrize("precision", V.PRECISIONS)
@pytest.mark.parametrize("direction", ["loosened", "tightened"])
def test_a_gate_moved_outside_its_margin_fails(tmp_path, precision, direction):
    doc = raw_default()
    key, entry = _measured_gate(doc, precision)
    low, high = entry["margin"]
    doc["precisions"][precision][key] = entry["measured"] * (high * 1.5 if direction == "loosened" else low / 1.5)
    findings = V.calibration_findings(load(tmp_path, doc))
    assert len(findings) == 1
    assert f"precisions.{precision}.{key}: threshold" in findings[0]
    assert "outside the stated margin" in findings[0] and f"[{low:g}, {high:g}]" in findings[0]


def test_a_remeasured_value_outside_the_margin_fails(tmp_path):
    """The clean error grew (say, a new case) but the gate stayed: the margin shrinks below its claim."""
    doc = raw_default()
    key, entry = _measured_gate(doc, "fp16")
    entry["measured"] = doc["precisions"]["fp16"][key] / entry["margin"][0] * 1.2
    findings = V.calibration_findings(load(tmp_path, doc))
    assert len(findings) == 1 and f"precisions.fp16.{key}" in findings[0]


def test_cosine_is_judged_as_one_minus_cosine(tmp_path):
    doc = raw_default()
    entry = doc["calibration"]["bf16"]["gates"]["min_cosine"]
    assert entry.get("margin"), "the bf16 cosine gate is calibrated by measurement"
    # 1 - threshold at 100x the upper claim: 0.9999 -> 0.99 style loosening
    doc["precisions"]["bf16"]["min_cosine"] = 1.0 - entry["measured"] * entry["margin"][1] * 100
    findings = V.calibration_findings(load(tmp_path, doc))
    assert len(findings) == 1 and "precisions.bf16.min_cosine: 1 - threshold" in findings[0]


def test_a_gate_without_measurement_or_reason_fails(tmp_path):
    doc = raw_default()
    del doc["calibration"]["bf16"]["gates"]["max_frac_over_tol"]
    findings = V.calibration_findings(load(tmp_path, doc))
    assert findings == [f"{tmp_path / 'doctored.yaml'}: precisions.bf16.max_frac_over_tol: no calibration entry "
                        f"(neither a measured value nor a stated reason)"]


def test_a_switched_off_gate_that_claims_a_margin_fails(tmp_path):
    doc = raw_default()
    key, _ = _measured_gate(doc, "fp32")
    doc["precisions"]["fp32"][key] = None
    findings = V.calibration_findings(load(tmp_path, doc))
    assert len(findings) == 1 and "is null (off) but" in findings[0] and f"gates.{key} claims a margin" in findings[0]


def test_a_table_without_calibration_fails_the_check_but_loads(tmp_path):
    doc = raw_default()
    del doc["calibration"]
    table = load(tmp_path, doc)
    assert table["calibration"] is None
    assert V.calibration_findings(table) == [f"{tmp_path / 'doctored.yaml'}: no calibration section: no gate has "
                                             f"a stated derivation"]


# --- the section's form (load_thresholds) -------------------------------------------------------------------
@pytest.mark.parametrize("edit, words", [
    (lambda c: c["bf16"]["gates"].update(max_rel_l2={"measured": 0.01}),
     "key 'calibration.bf16.gates.max_rel_l2' has neither a measured value with a margin nor a reason"),
    (lambda c: c["fp16"]["gates"]["max_rel_l2"].update(margin=[5, 3]),
     "key 'calibration.fp16.gates.max_rel_l2.margin' must be [low, high] with 0 < low <= high"),
    (lambda c: c["fp16"]["gates"]["max_rel_l2"].update(margin=[3]),
     "key 'calibration.fp16.gates.max_rel_l2.margin' must be [low, high]"),
    (lambda c: c["fp16"]["gates"]["max_rel_l2"].update(measured=0),
     "key 'calibration.fp16.gates.max_rel_l2.margin' needs a measured value > 0"),
    (lambda c: c["fp16"]["gates"]["max_rel_l2"].update(measured="1e-3"),
     "key 'calibration.fp16.gates.max_rel_l2.measured' must be a finite number >= 0"),
    (lambda c: c["fp16"]["gates"]["max_rel_l2"].update(note="x"),
     "unknown key 'calibration.fp16.gates.max_rel_l2.note'"),
    (lambda c: c["fp16"]["gates"].update(max_rel_l3={"reason": "x"}),
     "unknown key 'calibration.fp16.gates.max_rel_l3'"),
    (lambda c: c["fp32"]["gates"]["tol_rtol"].update(reason=""),
     "key 'calibration.fp32.gates.tol_rtol.reason' must be a non-empty string"),
    (lambda c: c.update(fp8={"gates": {}}), "unknown precision 'calibration.fp8'"),
    (lambda c: c["bf16"]["measured_on"].pop("date"), "missing key 'calibration.bf16.measured_on.date'"),
    (lambda c: c["bf16"].update(extra=1), "unknown key 'calibration.bf16.extra'"),
])
def test_malformed_calibration_names_file_and_key(tmp_path, edit, words):
    doc = raw_default()
    edit(doc["calibration"])
    with pytest.raises(V.ThresholdsError) as info:
        load(tmp_path, doc, "bad.yaml")
    assert str(info.value).startswith(str(tmp_path / "bad.yaml") + ": ")
    assert words in str(info.value)


def test_the_calibration_does_not_change_the_limits(table, tmp_path):
    """The section is documentation with a check: judging reads the precisions and overrides only."""
    doc = raw_default()
    del doc["calibration"]
    bare = load(tmp_path, doc)
    for p in V.PRECISIONS:
        for name in (None, "clip_probs", "latents"):
            assert V.select_thresholds(bare, p, name) == V.select_thresholds(table, p, name)
    assert copy.deepcopy(table["precisions"]) == bare["precisions"]
