"""Certify a whole server: one process per card over torchrun, per-card verdicts, cross-card consistency.

    python -m verify.server --nproc all --out verify_out/server -- --require-weights --weights DIR
    python -m verify.server --nproc 2 --out /tmp/s -- --device cpu --quick --no-timing

The launcher starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m verify.server
--worker ...`` (``all`` = every visible NPU, else every visible GPU; ``ASCEND_RT_VISIBLE_DEVICES`` /
``CUDA_VISIBLE_DEVICES`` choose the cards; on a machine with neither, ``all`` is one CPU process, and any
``--nproc N`` runs N CPU processes, which is how the harness tests itself). Every rank (``verify.server_worker``)

1. opens the process group (``ascend.distributed``: hccl / nccl / gloo, the device bound by LOCAL_RANK),
   bounded by ``--collective-timeout``;
2. runs the collective check (``verify.collectives``: exact all-reduce and all-gather values, bus
   bandwidth per size);
3. runs the whole certification on its own card, in process: ``verify.accuracy_eval`` with ``--out
   OUT/rank<k> --device <its device> --save-outputs`` plus the options after ``--``, against the CPU fp32
   reference, the same inputs on every rank; the reference is computed once by rank 0 and shared as a
   golden set (OUT/golden; ``--reference-mode once``, the default on NPU/GPU) or by every rank
   (``per-rank``, the default on a CPU-only host, where the ranks share the CPU anyway);
4. sends its result to rank 0, which compares the ranks' outputs bit for bit (``verify.consistency``) and
   writes OUT/accuracy_summary.json: the representative rank's summary, ``ranks`` (one row per rank:
   rank, device, soc, verdict, failed_gates, timings, exit_code) and a ``server`` section (schema
   ``vtp-server-summary/1``: collectives, consistency, launch facts). Every rank also keeps
   OUT/rank<k>/status.json (its stage, pid and result), so nothing a rank finished is lost.

Faults. ``--collective-timeout`` bounds init and every collective; ``--timeout`` bounds the whole run (the
gather waits for slower cards up to it). When a rank crashes, torchrun stops the others; when the time is
up or on Ctrl-C the launcher stops torchrun and kills whatever is left of its process tree. Either way
the summary is rebuilt from the status files: each rank is named with its device and what happened
(CRASHED with the signal, TIMEOUT in stage X, ERROR, STOPPED after another rank failed). A rank that
had finished its certification keeps its verdict; torchrun stops the group as soon as one rank dies, so a
rank still certifying then is STOPPED: rerun without the suspect card (ASCEND_RT_VISIBLE_DEVICES).

On Ascend the launcher also sets HCCL_CONNECT_TIMEOUT (link set-up, 120..7200 s) and HCCL_EXEC_TIMEOUT
(a collective waiting for a peer, 68..17340 s, rounded down to a multiple of 68 by CANN) to
``--collective-timeout`` clamped to those ranges, unless they are set already.

Exit status: 0 every rank passed, the collectives are exact and the cards agree; 1 a card failed
(verdict, crash, hang, wrong collective, outputs unlike the others'); 2 an environment or usage error
on any rank (cannot init, missing weights, bad option) or an interrupted run.

Multi-node (not tested here): run the worker under torchrun on every node, with ``--out`` on a shared
file system (or collect rank<k>/ folders afterwards); rank 0 writes the summary, prints the table and
exits with the server's code (set HCCL_CONNECT_TIMEOUT / HCCL_EXEC_TIMEOUT yourself there):

    torchrun --nnodes 2 --node-rank 0|1 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29400 --rdzv-id vtp-cert -m verify.server --worker --out /shared/out -- --quick

Harness self-tests (environment variables, a rank number or a comma list):
  VTP_INJECT_FAULT_RANK        the pass-through ``--inject-fault`` applies on these ranks only (unset: all)
  VTP_SELFTEST_CRASH_RANK      the rank SIGKILLs itself when its certification starts
  VTP_SELFTEST_HANG_RANK       the rank sleeps forever instead of certifying
  VTP_SELFTEST_INIT_FAIL_RANK  the rank fails before init (an environment error)
  VTP_SELFTEST_COLLECTIVE_RANK the rank contributes a wrong value to the collective check
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as `python verify/server.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verify.server_summary import (EXIT_ENV, EXIT_FAIL, EXIT_PASS, build_summary,  # noqa: E402,F401
                                   server_report_lines)

logger = logging.getLogger("verify.server")

SUMMARY_NAME = "accuracy_summary.json"
STATUS_NAME = "status.json"
RUN_ID_ENV = "VTP_SERVER_RUN_ID"      # set by the launcher: the workers then leave the table to it
GRACE_S = 15.0                        # SIGTERM -> SIGKILL for what is left of the process tree


def selected_ranks(name: str, environ=os.environ) -> set:
    """The ranks named in environment variable ``name`` ("1" or "1,3"); empty when unset."""
    value = environ.get(name, "").strip()
    try:
        return {int(part) for part in value.split(",") if part.strip()} if value else set()
    except ValueError:
        raise SystemExit(f"error: {name}={value!r}: expected a rank number or a comma list of them") from None


# --------------------------------------------------------------------------------------------- options
def split_passthrough(argv: list) -> tuple:
    """(device request, --inject-fault spec, the other accuracy_eval options) from the pass-through.

    ``--out`` is dropped (each rank writes OUT/rank<k>); ``--device`` chooses the kind of device (the
    index is the rank's), ``--inject-fault`` is kept apart so that it can go to some ranks only.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out")
    parser.add_argument("--inject-fault")
    known, rest = parser.parse_known_args(argv)
    return known.device, known.inject_fault, rest


def count_devices(request: str) -> tuple:
    """(device kind, visible count) for ``--nproc all``: NPUs, else GPUs, else one CPU process."""
    kind = str(request).split(":")[0].strip().lower()
    if kind == "cpu":  # no torch import for that
        return "cpu", 1
    from ascend.device import _cuda_status
    from ascend.npu import npu_device_count, prepare_environment

    prepare_environment()
    if kind not in ("auto", "npu", "cuda"):
        raise SystemExit(f"error: --device {request!r}: expected auto, npu, cuda or cpu (the index is the rank's)")
    if kind in ("auto", "npu"):
        count, _ = npu_device_count()
        if count or kind == "npu":
            return "npu", count
    if kind in ("auto", "cuda"):
        count, _ = _cuda_status()
        if count or kind == "cuda":
            return "cuda", count
    return "cpu", 1


def resolve_nproc(nproc: str, request: str) -> tuple:
    """(kind, N) for ``--nproc N|all``; SystemExit (exit 2) with the reason when impossible."""
    if nproc != "all":
        try:
            wanted = int(nproc)
        except ValueError:
            raise SystemExit(f"error: --nproc {nproc!r}: expected a number or 'all'") from None
        if wanted < 1:
            raise SystemExit(f"error: --nproc {wanted}: at least 1 process")
    kind, count = count_devices(request)
    if kind != "cpu" and count == 0:
        raise SystemExit(f"error: --device {request}: no {kind.upper()} visible")
    if nproc == "all":
        if kind == "cpu":
            logger.warning("--nproc all: no NPU or GPU visible, so one CPU process (use --nproc N for N CPU "
                           "processes, e.g. to test the harness)")
        return kind, count
    if kind != "cpu" and wanted > count:
        env = "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES"
        raise SystemExit(f"error: --nproc {wanted}: only {count} {kind.upper()}(s) visible (check {env})")
    return kind, wanted


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m verify.server", description=__doc__.split("\n\n")[0],
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
                   help="the CPU fp32 reference: computed once by rank 0 and shared as a golden set in OUT/golden "
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
        from verify.server_worker import worker_main

        return worker_main(args, passthrough)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from verify.server_launch import launch

    try:
        return launch(args, passthrough)
    except SystemExit as exc:  # a usage or environment error found before anything started
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_ENV
        return EXIT_ENV if exc.code else EXIT_PASS


def read_json(path: Path) -> dict | None:
    """The JSON object in ``path``, or None when it is absent or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


if __name__ == "__main__":
    sys.exit(main())
