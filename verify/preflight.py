"""Check every option of a certification run in the first seconds, before any model is loaded.

    python -m verify.preflight --weights DIR --fusion=-gelu --inject-fault trunk.blocks.0=1.02 --profile quick

run_verify.sh runs this first, so that a malformed --inject-fault, an unknown fusion rule, a bad cases or
thresholds file, an unwritable --out or a weights folder whose files cannot be read (a zero-byte
model.safetensors, say) is an error (exit 2) before the environment check, the demo and the evaluation
spend their minutes. Every problem is listed, not only the first. Exit 0: ready; 2: usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def check_weights_folder(folder: Path) -> list:
    """Problems of a checkpoint folder that show without loading it: config.json readable, the weights files
    the loader would read present, not empty, with a header that parses (vtp.layout's rules)."""
    from vtp.layout import CONFIG_NAME, missing_files, unreadable_files

    if not folder.is_dir():
        return [f"--weights {folder}: no such folder"]
    hint = ("fetch it again (python -m vtp.weights download ...) or place it by hand (an official checkpoint "
            "folder has config.json and model.safetensors; see weights/README.md)")
    problems = [f"--weights {folder}: {name} is missing; {hint}" for name in missing_files(folder)]
    config = folder / CONFIG_NAME
    if config.is_file():
        try:
            json.loads(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            problems.append(f"--weights {config}: not a readable JSON file ({e})")
    return problems + [f"--weights {line}; {hint}" for line in unreadable_files(folder)]


def check_out_folder(out: Path, option: str = "--out") -> list:
    """The output folder can be created and written (vtp.io_utils.folder_write_problem)."""
    from vtp.io_utils import folder_write_problem

    reason = folder_write_problem(out)
    return [] if reason is None else [f"{option} {out}: cannot write there ({reason}); choose a writable folder "
                                      f"with {option} DIR"]


def problems_of(args) -> list:
    from ascend.fusion import parse_fusion_spec
    from verify.cases import CasesError, load_cases
    from verify.faults import UsageError, parse_fault
    from verify.verdict import ThresholdsError, load_thresholds

    problems = []
    if args.out is not None:
        problems += check_out_folder(args.out)
    from verify.levels import resolve as resolve_level

    try:  # --level / --burn-in; the level's profile is the one that must exist
        args.profile = resolve_level(args.level, args.burn_in, args.profile).profile
    except UsageError as e:
        problems.append(str(e))
    try:
        parse_fusion_spec(args.fusion)
    except ValueError as e:
        problems.append(f"--fusion {args.fusion!r}: {e}")
    if args.inject_fault:
        try:
            parse_fault(args.inject_fault)
        except UsageError as e:
            problems.append(str(e))
    try:
        doc = load_cases(args.cases)
        if args.profile not in doc["profiles"]:
            problems.append(f"--profile {args.profile!r}: no such profile in {doc['source']} "
                            f"(known: {', '.join(doc['profiles'])})")
    except CasesError as e:
        problems.append(f"--cases: {e}")
    try:
        load_thresholds(args.thresholds)
    except (ThresholdsError, FileNotFoundError) as e:
        problems.append(f"--thresholds: {e}")
    if args.weights is not None:
        problems += check_weights_folder(args.weights)
    if args.reference is not None and not (args.reference / "manifest.json").is_file():
        problems.append(f"--reference {args.reference}: no golden set here (manifest.json missing); make one with "
                        "--save-golden DIR")
    problems += envelope_problems(args)
    if args.reference_sha256 is not None:
        if args.reference is None:
            problems.append("--reference-sha256 pins a golden set: give the set with --reference DIR too")
        elif (args.reference / "manifest.json").is_file():
            from verify.golden import GoldenError, check_pin

            try:
                check_pin(args.reference, args.reference_sha256)
            except GoldenError as e:
                problems.append(f"--reference-sha256: {e}")
    if args.fp32_modules is not None:
        from verify.fp32_modules import load_fp32_modules

        try:
            load_fp32_modules(args.fp32_modules)
        except ValueError as e:
            problems.append(f"--fp32-modules: {e}")
    if args.save_golden is not None:
        problems += check_out_folder(args.save_golden, "--save-golden")
    if args.dataset is not None:
        if not args.dataset.is_dir():
            problems.append(f"--dataset {args.dataset}: no such folder (an ImageFolder layout: DIR/<class>/<image>)")
        elif not any(d.is_dir() for d in args.dataset.iterdir()):
            problems.append(f"--dataset {args.dataset}: no class folders in it (an ImageFolder layout: "
                            "DIR/<class>/<image>)")
    for prompt in args.prompt or []:
        if not prompt.strip():
            problems.append("--prompt: an empty prompt")
    return problems


def envelope_problems(args) -> list:
    """--batch-sizes, --sizes, --fuzz and --seed well formed."""
    from verify.cases import CasesError, parse_batch_sizes, parse_sizes

    problems = []
    for value, parse in ((args.batch_sizes, parse_batch_sizes), (args.sizes, parse_sizes)):
        if value is not None:
            try:
                parse(value)
            except CasesError as e:
                problems.append(str(e))
    if args.fuzz is not None and args.fuzz < 0:
        problems.append(f"--fuzz {args.fuzz}: expected a number of cases >= 0")
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m verify.preflight", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", type=Path, help="checkpoint folder to check")
    p.add_argument("--fusion", default="all", help="fusion spec to check")
    p.add_argument("--inject-fault", help="fault spec to check (MODULE=FACTOR, MODULE=nan, MODULE=drift@N, "
                                          "MODULE=leak or MODULE=sleep:MS)")
    p.add_argument("--cases", type=Path, help="cases YAML (default verify/cases.yaml)")
    p.add_argument("--profile", default="default", help="profile that must exist in the cases file")
    p.add_argument("--thresholds", type=Path, help="thresholds YAML (default verify/thresholds.yaml)")
    p.add_argument("--reference", type=Path, help="golden set folder that must exist")
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--fp32-modules", type=Path, help="fp32 module list that must be readable")
    p.add_argument("--save-golden", type=Path, help="golden set folder that must be writable")
    p.add_argument("--dataset", type=Path, help="ImageFolder dataset that must exist")
    p.add_argument("--out", type=Path, help="output folder that must be writable")
    p.add_argument("--reference-sha256", help="sha256 the --reference set's manifest.json must have")
    p.add_argument("--batch-sizes", help="extra batch sizes, e.g. 1,5,16")
    p.add_argument("--sizes", help="extra image sizes, e.g. 224x224,336x512")
    p.add_argument("--fuzz", type=int, help="number of extra random cases (>= 0)")
    p.add_argument("--seed", type=int, help="seed of --fuzz")
    p.add_argument("--level", help="certification level: 1|2|3|4 or quick|default|long|soak")
    p.add_argument("--burn-in", help="burn-in duration (level 3 or 4), e.g. 60s, 15m, 2h")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    problems = problems_of(args)
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
