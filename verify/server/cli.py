"""``python -m verify.server``: the command line of the whole-server run (the package docstring explains it)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import verify.server
from verify.server.common import EXIT_ENV, EXIT_PASS

logger = logging.getLogger("verify.server")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify.server", description=verify.server.__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="python -m verify.server --nproc N|all [options] -- [verify/accuracy_eval.py options]",
        epilog="examples:\n"
               "  python -m verify.server --nproc all --out verify_out/server -- --require-weights --weights DIR\n"
               "  ASCEND_RT_VISIBLE_DEVICES=4,5,6,7 python -m verify.server --nproc all -- --precision bf16\n"
               "  python -m verify.server --nproc 2 --collectives-only -- --device cpu\n"
               "exit status: 0 PASS on every card, 1 a card FAILED, 2 environment or usage error / interrupted\n"
               "(see the module docstring: python -c 'import verify.server; help(verify.server)')")
    p.add_argument("--nproc", default="all", help="processes, one per device: a number or all (default all)")
    p.add_argument("--out", type=Path, help="output folder (default verify_out/server-<timestamp>)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds for the whole run; then every rank is stopped and reported (default 3600)")
    p.add_argument("--collective-timeout", type=float, default=120.0,
                   help="seconds for init and for each collective (default 120)")
    p.add_argument("--consistency", choices=["fail", "warn"], default="fail",
                   help="cards whose outputs differ from the majority: fail the run (default) or only report")
    p.add_argument("--reference-mode", choices=["auto", "once", "per-rank"], default="auto",
                   help="the CPU fp32 reference: computed once by rank 0 and shared as a golden set in OUT/golden-<token> "
                        "(once: 1/N of the CPU work; OUT must be shared across nodes), or by every rank in "
                        "parallel (per-rank: faster on a CPU-only host); auto (default): once on NPU/GPU, "
                        "per-rank on the CPU. A --reference DIR after -- is used by every rank")
    p.add_argument("--collectives-only", action="store_true", help="only the collective check (a link test)")
    p.add_argument("--quiet", action="store_true",
                   help="no table on stdout (the JSON has everything; python -m verify.report OUT prints it)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # one rank, under torchrun
    p.add_argument("--run-id", help=argparse.SUPPRESS)
    p.add_argument("passthrough", nargs=argparse.REMAINDER, help="`--` then verify/accuracy_eval.py options")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    passthrough = args.passthrough[1:] if args.passthrough[:1] == ["--"] else args.passthrough
    if args.timeout <= 0 or args.collective_timeout <= 0:
        print("error: --timeout and --collective-timeout must be positive", file=sys.stderr)
        return EXIT_ENV
    if args.worker:
        from verify.server.worker import worker_main

        return worker_main(args, passthrough)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from verify.server.launch import launch

    try:
        return launch(args, passthrough)
    except SystemExit as exc:  # a usage or environment error found before anything started
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_ENV
        return EXIT_ENV if exc.code else EXIT_PASS


if __name__ == "__main__":
    sys.exit(main())
