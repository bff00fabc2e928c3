"""Certification levels, as hardware diagnostics have them (``--level 1|2|3|4`` or quick/default/long/soak).

    level 1  quick    the quick profile: deployment check, ~45 s on the CPU
    level 2  default  the default profile + device spot checks (matmul TFLOPS, copy GB/s): ~2 min
    level 3  long     the full profile + spot checks + a burn-in (15 min on a device; 60 s on the CPU, stated)
    level 4  soak     the full profile + spot checks + a burn-in of --burn-in DURATION (e.g. 2h)

On the CPU levels 3 and 4 run the default profile (the full one takes about 20 min there; --profile full
runs it anyway): the CPU is the reference machine, not a card under test.

Every level also calibrates the machine at the start and the end of the run (verify.spot_checks: the share
of normal throughput the run had; timings marked CONTENDED below 0.8). From level 3 a card that is right
but slow in a multi-card run fails (verify.slow_ranks). Without ``--level`` a run is level 1 for the quick
profile and level 2 otherwise, as before; ``--burn-in`` alone means level 4.

This module turns the options into a `Level`, prints what it will do before the run starts, and holds the
two steps the harness calls around its cases: `start` (calibration, spot checks) and `finish` (burn-in,
calibration at the end), plus `annotate` (the summary's ``level``, ``spot_checks``, ``burn_in`` sections and
the CONTENDED mark on the timings).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

from verify.burn_in import CPU_BURN_IN_S, DEVICE_BURN_IN_S, parse_duration
from verify.faults import UsageError

logger = logging.getLogger("verify.levels")

NAMES = {1: "quick", 2: "default", 3: "long", 4: "soak"}
PROFILES = {1: "quick", 2: "default", 3: "full", 4: "full"}
BUDGETS = {1: "about 45 s (synthetic Small, 2 CPU cores)", 2: "about 2 min (synthetic Small, 2 CPU cores)"}
CONTENT = {
    1: "the quick profile (every task at 3 shapes: batch 1, 3 and 8; 4 prompt sets; 3 timed calls)",
    2: "the default profile (every task at 5 shapes: batch 1 to 9, up to 1089 patches; 6 prompt sets; 10 timed "
       "calls) + device spot checks",
    3: "the full profile (default on the CPU) + device spot checks + burn-in (every answer checked, memory, "
       "latency drift, sensors)",
    4: "the full profile (default on the CPU) + device spot checks + burn-in of the given duration",
}
LEVEL_HELP = ("certification level: 1|quick (the quick profile), 2|default (default profile + device spot checks), "
              "3|long (full profile, default on the CPU, + spot checks + burn-in: 15 min on a device, 60 s on the "
              "CPU), 4|soak (as 3, "
              "burn-in of --burn-in DURATION); default: 1 with --quick, else 2")
BURN_IN_HELP = ("burn-in duration, e.g. 60s, 15m, 2h: the certified tasks back to back, every answer checked "
                "(level 3: overrides its default; alone: level 4)")


@dataclass
class Level:
    level: int
    name: str
    profile: str
    burn_in_s: Optional[float]
    spot_checks: bool
    content: str
    given: bool                      # --level or --burn-in was on the command line
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_level(text) -> int:
    """"1".."4" or quick/default/long/soak -> 1..4; UsageError otherwise."""
    value = str(text).strip().lower()
    for number, name in NAMES.items():
        if value in (str(number), name):
            return number
    raise UsageError(f"--level {text!r}: expected 1, 2, 3, 4 or quick, default, long, soak")


def resolve(level_text, burn_in_text, profile: Optional[str], device_type: str = "cpu") -> Level:
    """The run's level from --level, --burn-in and --profile (``profile`` "default" counts as not given, as it
    is the option's default). UsageError for a combination that cannot run: --burn-in at level 1 or 2, level 4
    without --burn-in, a malformed duration."""
    burn_in_s = None
    if burn_in_text is not None:
        try:
            burn_in_s = parse_duration(burn_in_text)
        except ValueError as e:
            raise UsageError(f"--burn-in: {e}") from None
    given = level_text is not None or burn_in_text is not None
    if level_text is not None:
        level = parse_level(level_text)
    elif burn_in_s is not None:
        level = 4
    else:
        level = 1 if profile == "quick" else 2
    if burn_in_s is not None and level < 3:
        raise UsageError(f"--burn-in {burn_in_text}: a burn-in runs at level 3 (long) or 4 (soak), not at level "
                         f"{level} ({NAMES[level]})")
    if level == 4 and burn_in_s is None:
        raise UsageError("--level 4 (soak) needs its duration: --burn-in DURATION, e.g. --burn-in 2h")
    notes = []
    if level == 3 and burn_in_s is None:
        burn_in_s = CPU_BURN_IN_S if device_type == "cpu" else DEVICE_BURN_IN_S
        if device_type == "cpu":
            notes.append(f"burn-in {CPU_BURN_IN_S:.0f} s on the CPU (15 min on a device): the CPU is the shared "
                         "machine, not a card under test; --burn-in sets another duration")
    chosen = PROFILES[level]
    if chosen == "full" and device_type == "cpu":
        chosen = "default"
        notes.append("profile default on the CPU (the full profile's batches of 32, 50 and 128 take about 20 min "
                     "there); --profile full runs it")
    if given and profile not in (None, "default", chosen):
        notes.append(f"profile {profile} (from --profile) instead of the level's {chosen}")
        chosen = profile
    elif not given:
        chosen = profile or chosen
    return Level(level=level, name=NAMES[level], profile=chosen, burn_in_s=burn_in_s if level >= 3 else None,
                 spot_checks=level >= 2, content=CONTENT[level], given=given, notes=notes)


def announce(level: Level) -> list:
    """The lines printed before the run starts: the level, what it runs and how long it takes."""
    how_long = BUDGETS.get(level.level) or (f"the profile, then a burn-in of {_seconds(level.burn_in_s)}")
    lines = [f"level {level.level} ({level.name}): {level.content}",
             f"  profile {level.profile}; burn-in {_seconds(level.burn_in_s) if level.burn_in_s else 'none'}; "
             f"spot checks {'yes' if level.spot_checks else 'no'}; duration: {how_long}"]
    return lines + [f"  note: {n}" for n in level.notes]


def _seconds(s: Optional[float]) -> str:
    if s is None:
        return "-"
    if s >= 3600:
        return f"{s / 3600:g} h"
    if s >= 60:
        return f"{s / 60:g} min"
    return f"{s:g} s"


# --------------------------------------------------------------------------------------------- around the cases
def start(level: Level, device) -> dict:
    """Before the cases: the calibration and, from level 2, the spot checks. Returns the extras."""
    from verify.spot_checks import calibration, spot_checks, spot_lines
    from verify.threads import apply_threads, describe, prepare

    t0 = time.perf_counter()
    threads = {"environment": prepare(), "applied": apply_threads()}  # prepare(): a no-op when main did it first
    logger.info("%s", describe(threads["environment"], threads["applied"]))
    extras = {"threads": threads, "calibration_start": calibration(device), "spot_checks": None}
    if level.spot_checks:
        extras["spot_checks"] = spot_checks(device)
        for line in spot_lines(extras["spot_checks"]):
            logger.info("%s", line)
    extras["seconds"] = time.perf_counter() - t0
    return extras


def finish(level: Level, extras: dict, *, setup, runs, calls, precision: str) -> dict:
    """After the cases: the burn-in (level 3 and 4; skipped with the reason when the certification already
    failed), then the calibration at the end."""
    from ascend.device import synchronize
    from verify.burn_in import burn_in, burn_tasks
    from verify.spot_checks import calibration

    t0 = time.perf_counter()
    extras["burn_in"] = None
    if level.burn_in_s:
        if any(c["verdict"] != "PASS" for c in calls):
            extras["burn_in"] = {"verdict": "SKIPPED", "reasons": [], "findings": [],
                                 "note": "skipped: the certification already failed"}
        else:
            tasks = burn_tasks(runs, setup.candidate, setup.device, precision)
            logger.info("burn-in of %s: %d tasks", _seconds(level.burn_in_s), len(tasks))
            extras["burn_in"] = burn_in(tasks, model=setup.candidate, device=setup.device, precision=precision,
                                        thresholds=setup.thresholds, patch=setup.config.vision_patch_size,
                                        duration_s=level.burn_in_s, sync=lambda: synchronize(setup.device))
    extras["calibration_end"] = calibration(setup.device)
    extras["seconds"] = extras.get("seconds", 0.0) + time.perf_counter() - t0
    return extras


def burn_in_check(extras: dict) -> list:
    """The burn-in as a check record for verify.judge.overall (none when no burn-in ran)."""
    section = extras.get("burn_in")
    if not section or section.get("verdict") == "SKIPPED":
        return []
    return [{"check": "burn_in", "id": "burn-in", "verdict": section["verdict"], "reasons": section["reasons"],
             "first_failure": section.get("first_failure"), "findings": section.get("findings")}]


def annotate(summary: dict, level: Level, extras: dict) -> list:
    """The summary's ``level``, ``spot_checks``, ``burn_in`` sections and ``timings.contention`` (the
    CONTENDED mark); returns the console lines to add under the verdict table."""
    from verify.burn_in import burn_in_lines
    from verify.spot_checks import contention

    cont = contention(extras.get("calibration_start"), extras.get("calibration_end"))
    harness_s = ((summary.get("timings") or {}).get("harness") or {}).get("total_s")
    summary["level"] = {**level.to_dict(), "elapsed_s": harness_s}
    summary["spot_checks"] = extras.get("spot_checks")
    summary["burn_in"] = extras.get("burn_in")
    timings = summary.setdefault("timings", {})
    timings["contention"] = {**cont, "calibration_start": extras.get("calibration_start"),
                             "calibration_end": extras.get("calibration_end")}
    timings["threads"] = extras.get("threads")
    from verify.threads import restore_threads

    restore_threads((extras.get("threads") or {}).get("applied"))  # the process as the run found it
    harness = timings.get("harness")
    if isinstance(harness, dict) and harness.get("overhead_s") is not None:  # the level's own steps are not overhead
        harness["level_checks_s"] = extras.get("seconds", 0.0)
        harness["overhead_s"] -= harness["level_checks_s"]
        compute = harness.get("model_compute_s")
        harness["overhead_fraction_of_compute"] = harness["overhead_s"] / compute if compute else None
        harness["note"] = (harness.get("note", "") + "; level_checks_s (spot checks, calibrations, burn-in: "
                           "the burn-in reports its own overhead) is not counted as overhead")
    lines = [f"level {level.level} ({level.name}): profile {level.profile}"
             + (f", burn-in {_seconds(level.burn_in_s)}" if level.burn_in_s else "")]
    if cont.get("contended"):
        timings["contended_note"] = cont["note"]  # the console table prints it under the timings
    section = extras.get("burn_in")
    if section and section.get("verdict") == "SKIPPED":
        lines.append(f"burn-in {section['note']}")
    elif section:
        lines += burn_in_lines(section)
    if extras.get("spot_checks"):
        flags = extras["spot_checks"]["flags"]
        lines.append(f"spot checks: {len(flags)} flagged" + (f": {'; '.join(flags)}" if flags else
                                                              f" ({extras['spot_checks']['peak_note']})"))
    return lines
