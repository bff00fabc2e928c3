"""Prove the certification sound on this machine: inject realistic port bugs into the candidate only and
check that every one of them FAILS where it should, while the clean run PASSES.

    python -m verify.selftest --device npu:0 --profile quick
    python -m verify.selftest --precision bf16 --profile quick --out verify_out/selftest-bf16
    python -m verify.selftest --bugs batch_one_only,stale_replay --weights weights/VTP-Small-f16d64

Each bug is a class that an earlier harness let through (see verify/cases.yaml for the cases that expose
them): wrong only at batch 1, only off the 256x256 grid, only for long prompts, only for upper-vocabulary
token ids, a stale replay of an earlier output, wrong only after the warm-up calls, one bad token (a tail
tile), a bf16-only kernel error, and a 0.6 % error in fp32. They are forward hooks on the candidate's
modules; the reference is never touched.

A bug counts as caught only when its run FAILS with the case, call and gate its catalogue entry expects
(for the bugs confined to some cases, with no failure outside them). A run that crashes or stops with an
environment error is an ERROR, never a catch. Every precision the bugs run at gets a clean run of its own,
which must PASS. Each run keeps its outputs in OUT/<run>/ (accuracy_summary.json, log.txt, report.html,
console.txt: what the run printed); OUT/selftest.json has the results.

Exit 0: SOUND (every clean run passed, every bug was caught where expected); 1: NOT SOUND (a bug missed or
caught elsewhere, a clean run failed, a run crashed); 2: usage or environment error (the clean run could
not start).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import re
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Tuple

EXIT_SOUND, EXIT_UNSOUND, EXIT_ENV = 0, 1, 2
PRECISIONS = ("fp32", "fp16", "bf16")
ANY_PRECISION = PRECISIONS

logger = logging.getLogger("verify.selftest")


def off(t, eps: float):
    """``t`` off by a relative ``eps`` with alternating signs along the features: a kernel error that a
    following normalisation cannot absorb (a uniform scale would vanish in the next RMSNorm)."""
    import torch

    sign = torch.ones(t.shape[-1], dtype=t.dtype, device=t.device)
    sign[1::2] = -1
    return t * (1 + eps * sign)


def _hook(model, name: str, fn) -> None:
    dict(model.named_modules())[name].register_forward_hook(lambda module, args, out: fn(out, args))


def _last_block(model, prefix: str) -> str:
    names = [n for n, _ in model.named_modules() if n.startswith(prefix) and n[len(prefix):].isdigit()]
    return max(names, key=lambda n: int(n[len(prefix):]))


def batch_one_only(model):
    _hook(model, _last_block(model, "trunk.blocks."), lambda out, a: off(out, 0.03) if out.shape[0] == 1 else out)


def off_base_grid_only(model):
    """Right for the token count of the first input shape it sees (the base grid), off for any other."""
    seen = {}

    def fn(out, a):
        base = seen.setdefault("tokens", out.shape[1])
        return out if out.shape[1] == base else off(out, 0.03)
    _hook(model, _last_block(model, "trunk.blocks."), fn)


def long_prompts_only(model):
    def fn(out, a):
        out = out.clone()
        out[:, 14:] = off(out[:, 14:], 0.05)  # sequence positions past 14
        return out
    _hook(model, _last_block(model, "text_transformer.resblocks."), fn)


def upper_vocab_only(model):
    import torch

    dict(model.named_modules())["token_embedding"].register_forward_hook(
        lambda m, a, out: torch.where((a[0] > 40000)[..., None], off(out, 0.2), out))


def stale_replay(model):
    """The first output per input shape is returned again for later inputs of that shape."""
    cache = {}

    def fn(out, a):
        return cache.setdefault(tuple(a[0].shape), out)
    _hook(model, "trunk.blocks.0", fn)
    _hook(model, "text_transformer.resblocks.0", fn)


def after_warmup_only(model):
    """Right for the first 3 calls of an input shape, off after them."""
    calls = {}

    def fn(out, a):
        n = calls[tuple(a[0].shape)] = calls.get(tuple(a[0].shape), 0) + 1
        return off(out, 0.03) if n > 3 else out
    _hook(model, "trunk.norm", fn)


def one_bad_token(model):
    def fn(out, a):
        out = out.clone()
        out[:, -1] = off(out[:, -1], 0.15)
        return out
    _hook(model, _last_block(model, "trunk.blocks."), fn)


def bf16_only(model):
    import torch

    def fn(out, a):
        bf16 = out.dtype == torch.bfloat16 or (torch.is_autocast_enabled(out.device.type)
                                               and torch.get_autocast_dtype(out.device.type) == torch.bfloat16)
        return off(out, 0.03) if bf16 else out
    _hook(model, _last_block(model, "text_transformer.resblocks.") + ".mlp", fn)


def small_fp32_fault(model):
    _hook(model, _last_block(model, "trunk.blocks."), lambda out, a: off(out, 0.006))


class Expect(NamedTuple):
    """Where a run must fail for its bug to count as caught: a failed call of a case whose id matches
    ``case`` (a regular expression, searched), at ``call`` ("A", "B" or "warm"; None: any call), with one of
    ``gates`` among its failed gates (a ratio gate "error_ratio_*" is the same error measured against the
    same-precision reference). ``within``: the cases the bug can reach at all (a regular expression); a
    failure in any other case means the harness failed for a reason other than the bug."""
    case: str
    call: Optional[str]
    gates: Tuple[str, ...]
    within: Optional[str] = None


class Bug(NamedTuple):
    install: Callable
    precisions: Tuple[str, ...]  # where the bug exists; the self-test runs it at the first unless --precision
    imitates: str
    expect: Expect

    @property
    def precision(self) -> str:
        return self.precisions[0]


REL_L2 = ("max_rel_l2", "error_ratio_rel_l2")
ROW = ("max_row_rel_err", "error_ratio_row")
IMAGE_CASE = r"^(reconstruction|clip|ssl)/"

# The catalogue. 256x256 is the base grid of the shipped profiles (the first image shape a run sees).
BUGS: Dict[str, Bug] = {
    "batch_one_only": Bug(batch_one_only, ANY_PRECISION, "a kernel wrong only at batch 1",
                          Expect(IMAGE_CASE + r"b1/", "A", REL_L2, within=IMAGE_CASE + r"b1/")),
    "off_base_grid_only": Bug(off_base_grid_only, ANY_PRECISION, "wrong only off the 256x256 grid",
                              Expect(IMAGE_CASE + r"b\d+/(?!256x256$)", "A", REL_L2,
                                     within=IMAGE_CASE + r"b\d+/(?!256x256$)")),
    "long_prompts_only": Bug(long_prompts_only, ANY_PRECISION, "text wrong past 14 tokens",
                             Expect(r"^clip_text/long", "A", REL_L2, within=r"^clip_text/")),  # any long prompt
    "upper_vocab_only": Bug(upper_vocab_only, ANY_PRECISION, "embedding wrong for ids > 40000",
                            Expect(r"^clip(_text)?/", "A", REL_L2, within=r"^clip(_text)?/")),  # EOT is 49407
    "stale_replay": Bug(stale_replay, ANY_PRECISION, "a stale graph replay", Expect(r"", "B", REL_L2)),
    "after_warmup_only": Bug(after_warmup_only, ANY_PRECISION, "wrong only after warm-up",
                             Expect(r"", "warm", REL_L2)),
    "one_bad_token": Bug(one_bad_token, ANY_PRECISION, "one token 15 % off (a tail tile)",
                         Expect(IMAGE_CASE, "A", ROW)),
    "bf16_only": Bug(bf16_only, ("bf16",), "a bf16-only kernel error of 3 %",
                     Expect(r"^clip_text/", "A", ("error_ratio_rel_l2", "error_ratio_row"), within=r"^clip_text/")),
    "small_fp32_fault": Bug(small_fp32_fault, ("fp32",), "a 0.6 % error in fp32",
                            Expect(IMAGE_CASE, "A", ("max_rel_l2",))),
}


@contextlib.contextmanager
def candidate_bug(install: Callable):
    """While active, every candidate that ascend.runtime.prepare_candidate makes gets ``install``-ed."""
    import ascend.runtime

    original = ascend.runtime.prepare_candidate

    def prepare(*args, **kwargs):
        candidate, report = original(*args, **kwargs)
        install(candidate)
        return candidate, report

    ascend.runtime.prepare_candidate = prepare
    try:
        yield
    finally:
        ascend.runtime.prepare_candidate = original


def failed_calls(summary: dict) -> list:
    """[(case id, call, failed gates)] of every failed call record of an accuracy summary."""
    return [(c["case"], c["call"], list(c.get("failed_gates") or [])) for c in summary.get("cases") or []
            if c.get("verdict") != "PASS"]


def judge_bug_run(result: dict, summary: Optional[dict], expect: Expect) -> dict:
    """``result`` with "status" (caught, MISSED, ELSEWHERE or ERROR), "where" (the first expected failure,
    or what failed instead) and "unexpected" (failed calls outside the cases the bug can reach)."""
    if result.get("error") or summary is None or result["exit"] not in (0, 1):
        return {**result, "status": "ERROR", "where": result.get("error") or
                f"exit {result['exit']} and no accuracy_summary.json: the run did not finish"}
    if result["exit"] == 0 or summary.get("verdict") != "FAIL":
        return {**result, "status": "MISSED", "where": f"the run passed (verdict {summary.get('verdict')})"}
    calls = failed_calls(summary)
    pattern = re.compile(expect.case)
    hits = [(case, call, gates) for case, call, gates in calls if pattern.search(case)
            and (expect.call is None or call == expect.call) and any(g in expect.gates for g in gates)]
    outside = ([f"{case}@{call}" for case, call, _ in calls if not re.search(expect.within, case)]
               if expect.within else [])
    wanted = (f"a case matching /{expect.case}/" if expect.case else "any case") + \
        f" at call {expect.call or 'any'} with gate {' or '.join(expect.gates)}"
    if not hits:
        seen = ", ".join(f"{case}@{call} ({', '.join(gates) or 'no gate'})" for case, call, gates in calls[:3])
        checks = [c["check"] for c in summary.get("checks") or [] if c.get("verdict") == "FAIL"]
        return {**result, "status": "ELSEWHERE", "where": f"expected {wanted}; failed instead: "
                f"{seen or 'checks ' + ', '.join(checks) or 'nothing named'}"}
    if outside:
        return {**result, "status": "ELSEWHERE", "unexpected": outside,
                "where": f"also failed outside the bug's cases: {', '.join(outside[:3])}"
                         f"{f' and {len(outside) - 3} more' if len(outside) > 3 else ''}"}
    case, call, gates = hits[0]
    gate = next(g for g in gates if g in expect.gates)
    more = len(calls) - 1
    return {**result, "status": "caught",
            "where": f"{case}@{call} {gate}" + (f" (+{more} more failed calls)" if more else "")}


def judge_clean_run(result: dict, summary: Optional[dict]) -> dict:
    if result.get("error") or summary is None or result["exit"] not in (0, 1):
        return {**result, "status": "ERROR", "where": result.get("error") or
                f"exit {result['exit']} and no accuracy_summary.json: the run did not finish"}
    if result["exit"] == 0 and summary.get("verdict") == "PASS":
        return {**result, "status": "ok", "where": "PASS"}
    return {**result, "status": "FAILED", "where": result.get("first_failure") or "the clean run did not pass"}


class _Once(logging.Filter):
    """Lets a message through the first time only (each run's own console.txt still has every line)."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


_ONCE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _once(handler: logging.Handler) -> _Once:
    """The handler's own _Once (a filter shared by two handlers would let each message through only one)."""
    return _ONCE.setdefault(handler, _Once())


def run_one(argv: list, out: Path, install=None, verbose: bool = False) -> Tuple[dict, Optional[dict]]:
    """One certification run in process, its outputs in ``out``; (result, its accuracy summary or None).

    What the run prints and logs goes to ``out/console.txt`` (the terminal gets only its warnings and
    errors unless ``verbose``). An exception is recorded as the run's "error", never raised."""
    from verify import accuracy_eval

    out.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    record = logging.FileHandler(out / "console.txt", mode="w", encoding="utf-8")
    record.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    others = [(h, h.level) for h in root.handlers]
    for handler, _ in others:
        handler.setLevel(max(handler.level, logging.DEBUG if verbose else logging.WARNING))
        handler.addFilter(_once(handler))  # the same NOTICE from every run: the terminal shows it once
    root.addHandler(record)
    printed, error, code = io.StringIO(), None, None
    started = time.perf_counter()
    try:
        with candidate_bug(install) if install else contextlib.nullcontext(), contextlib.redirect_stdout(printed):
            code = accuracy_eval.main(argv + ["--out", str(out), "--quiet", "--no-timing", "--locate", "never"])
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a crash (SystemExit included) is an ERROR of the run, not a caught bug
        logger.debug("the run raised", exc_info=True)
        error = f"the run raised {type(exc).__name__}: {exc}"
        logging.getLogger("verify.selftest").error("%s (see %s)", error, out / "console.txt")
    finally:
        root.removeHandler(record)
        for handler, level in others:
            handler.setLevel(level)
            handler.removeFilter(_once(handler))
        with open(out / "console.txt", "a", encoding="utf-8") as f:
            f.write(printed.getvalue())
        record.close()
    summary_file = out / "accuracy_summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
    reasons = ((summary or {}).get("overall") or {}).get("reasons") or []
    result = {"exit": code, "verdict": (summary or {}).get("verdict"), "first_failure": reasons[0] if reasons else None,
              "failed_cases": ((summary or {}).get("overall") or {}).get("failed_cases", []),
              "seconds": round(time.perf_counter() - started, 1), "out": str(out)}
    if error:
        result["error"] = error
    return result, summary


def build_parser() -> argparse.ArgumentParser:
    from ascend.runtime import add_fusion_argument

    p = argparse.ArgumentParser(prog="python -m verify.selftest", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="examples:\n  python -m verify.selftest --device npu:0 --profile quick\n"
                                       "  python -m verify.selftest --precision bf16 --bugs stale_replay\n"
                                       "exit status: 0 SOUND (every bug failed where expected, the clean runs "
                                       "passed), 1 NOT SOUND (a bug missed or failing elsewhere, a clean run "
                                       "failed, a run crashed), 2 usage or environment error")
    p.add_argument("--device", default="auto", help="auto (NPU > CUDA > CPU), npu[:N], cuda[:N] or cpu")
    p.add_argument("--weights", type=Path, help="checkpoint folder (default: as the harness)")
    add_fusion_argument(p)
    p.add_argument("--profile", default="default", help="cases profile: quick, default (the default) or full")
    p.add_argument("--cases", type=Path, help="cases YAML (default verify/cases.yaml)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="run the clean run and every bug that exists at this precision at it (default: each bug "
                        "at its own precision, with a clean run at each)")
    p.add_argument("--bugs", help=f"comma list of bugs (default: all: {', '.join(BUGS)})")
    p.add_argument("--out", type=Path, help="folder for selftest.json and one folder per run "
                                            "(default verify_out/selftest-<timestamp>)")
    p.add_argument("-v", "--verbose", action="store_true", help="show every run's own log on the terminal")
    return p


def plan_runs(names: list, precision: Optional[str]) -> Tuple[list, list]:
    """([(run name, precision, bug name or None)], [skipped bug names]): a clean run per precision first."""
    chosen = [(n, precision or BUGS[n].precision) for n in names
              if precision is None or precision in BUGS[n].precisions]
    skipped = [n for n in names if precision is not None and precision not in BUGS[n].precisions]
    precisions = sorted({p for _, p in chosen} or {precision or "fp32"}, key=PRECISIONS.index)
    cleans = [("clean" if len(precisions) == 1 else f"clean-{p}", p, None) for p in precisions]
    return cleans + [(n, p, n) for n, p in chosen], skipped


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    names = [b.strip() for b in args.bugs.split(",") if b.strip()] if args.bugs else list(BUGS)
    unknown = [b for b in names if b not in BUGS]
    if unknown or not names:
        print(f"error: --bugs: unknown {unknown} (known: {', '.join(BUGS)})", file=sys.stderr)
        return EXIT_ENV
    runs, skipped = plan_runs(names, args.precision)
    if len(runs) == sum(bug is None for *_, bug in runs):
        print(f"error: none of the bugs {', '.join(names)} exists at {args.precision} (see --help)", file=sys.stderr)
        return EXIT_ENV
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger().setLevel(logging.DEBUG if args.verbose else logging.INFO)
    out = args.out or Path("verify_out") / f"selftest-{datetime.datetime.now().strftime('%Y%m%d-%H%M%S')}"
    base = ["--device", args.device, f"--fusion={args.fusion}", "--profile", args.profile]
    if args.weights:
        base += ["--weights", str(args.weights)]
    if args.cases:
        base += ["--cases", str(args.cases)]
    logger.info("self-test: %d runs (%s), outputs in %s", len(runs), ", ".join(r for r, *_ in runs), out)
    for name in skipped:
        logger.info("skipped %s: it exists only at %s, not at %s", name, ", ".join(BUGS[name].precisions),
                    args.precision)
    results, started = {}, time.perf_counter()
    for k, (run, precision, bug) in enumerate(runs, 1):
        what = "no bug: must PASS" if bug is None else BUGS[bug].imitates
        elapsed = time.perf_counter() - started
        eta = f", about {_clock(elapsed / (k - 1) * (len(runs) - k + 1))} left" if k > 1 else ""
        logger.info("run %d/%d: %s at %s (%s)  [elapsed %s%s]", k, len(runs), run, precision, what,
                    _clock(elapsed), eta)
        install = BUGS[bug].install if bug else None
        result, summary = run_one(base + ["--precision", precision], out / run, install, args.verbose)
        result["precision"] = precision
        if bug is None:
            result = judge_clean_run(result, summary)
            if result["exit"] == EXIT_ENV and k == 1:
                print(f"error: the clean run could not start (exit 2): see the error above and "
                      f"{out / run / 'console.txt'}", file=sys.stderr)
                return EXIT_ENV
        else:
            result = judge_bug_run(result, summary, BUGS[bug].expect)
            result["expect"] = BUGS[bug].expect._asdict()
        results[run] = result
        logger.info("run %d/%d: %s: %s: %s (%s)", k, len(runs), run, result["status"], result["where"][:160],
                    _clock(result["seconds"]))

    cleans = [r for r, _, bug in runs if bug is None]
    bugs = [r for r, _, bug in runs if bug is not None]
    caught = [r for r in bugs if results[r]["status"] == "caught"]
    sound = all(results[r]["status"] == "ok" for r in cleans) and len(caught) == len(bugs)
    print(f"\n{'run':<20} {'prec':<5} {'imitates':<36} {'result':<9} where")
    for run, precision, bug in runs:
        r = results[run]
        what = "no bug: must PASS" if bug is None else BUGS[bug].imitates
        print(f"{run:<20} {precision:<5} {what:<36} {r['status']:<9} {r['where'][:120]}")
    errors = [r for r in results if results[r]["status"] == "ERROR"]
    print(f"SELF-TEST: {'SOUND' if sound else 'NOT SOUND'}: "
          f"{sum(results[r]['status'] == 'ok' for r in cleans)}/{len(cleans)} clean run(s) passed, "
          f"{len(caught)}/{len(bugs)} injected bugs caught where expected"
          + (f"; {len(errors)} run(s) crashed (ERROR: {', '.join(errors)})" if errors else "")
          + (f"; skipped (not at {args.precision}): {', '.join(skipped)}" if skipped else ""))
    from vtp.io_utils import atomic_write_json

    report = atomic_write_json(out / "selftest.json", {
        "schema": "vtp-selftest/2", "sound": sound, "precision": args.precision, "profile": args.profile,
        "device": args.device, "skipped": skipped, "results": results})
    print(f"selftest.json: {report.resolve()} (each run's outputs in {out.resolve()}/<run>/)")
    return EXIT_SOUND if sound else EXIT_UNSOUND


if __name__ == "__main__":
    from verify.cli import exit_with

    exit_with(main, "the finished runs' folders are kept under --out; selftest.json is "
                    "written at the end: rerun the same command")
