"""One rank of ``python -m verify.server``: init, collective check, certification, gather (under torchrun).

Started by the launcher (``verify.server.launch``) or by hand on every node of a multi-node run as
``torchrun ... -m verify.server --worker --out OUT -- <accuracy_eval options>``. The rank records each
stage in OUT/rank<k>/status.json (atomically) before it starts it, with its pid, so that whoever
assembles the summary knows where a rank that never answered stopped. SIGTERM / SIGINT (torchrun
stopping the group, Ctrl-C) mark the status "terminated" and end the process at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

from verify.server.common import RUN_ID_ENV, STATUS_NAME, SUMMARY_NAME, read_json, selected_ranks, split_passthrough
from verify.report.server_table import server_report_lines
from verify.server.common import EXIT_ENV, EXIT_FAIL
from verify.server.summary import build_summary, rank_result

logger = logging.getLogger("verify.server")


class Status:
    """This rank's status.json: every update rewrites the whole record atomically."""

    def __init__(self, path: Path, **fields):
        self.path, self.data = path, dict(fields, state="running", stage_seconds={})
        self._stage_start = time.perf_counter()

    def update(self, **fields) -> None:
        from vtp.io_utils import atomic_write_json

        if "stage" in fields and fields["stage"] != self.data.get("stage") and self.data.get("stage"):
            self.data["stage_seconds"][self.data["stage"]] = round(time.perf_counter() - self._stage_start, 3)
            self._stage_start = time.perf_counter()
        self.data.update(fields)
        try:
            atomic_write_json(self.path, self.data)
        except (OSError, ValueError) as exc:  # a status that cannot be written must not kill the rank
            logger.error("cannot write %s: %s", self.path, exc)


def _on_signal(status: Status):
    def handler(signum, frame):
        name = signal.Signals(signum).name
        status.update(state="terminated", error=f"received {name} in stage {status.data.get('stage')}")
        logging.getLogger("verify.server").warning("rank %s: %s, stopping", status.data.get("rank"), name)
        os._exit(128 + signum)
    return handler


def _accuracy_argv(passthrough: list, rank: int, device: str, rank_dir: Path) -> list:
    """accuracy_eval's options for this rank: the user's, --inject-fault only where selected, ours last."""
    _, fault, rest = split_passthrough(passthrough)
    fault_ranks = selected_ranks("VTP_INJECT_FAULT_RANK")
    argv = list(rest)
    if fault and (not fault_ranks or rank in fault_ranks):
        argv += ["--inject-fault", fault]
    return argv + ["--quiet", "--out", str(rank_dir), "--device", device]


def certify(argv: list) -> int:
    """accuracy_eval.main in this process; its exit code (argparse errors and crashes included)."""
    from verify import accuracy_eval

    try:
        return accuracy_eval.main(argv + ["--save-outputs"])  # the outputs the cross-card check compares
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_ENV
    except Exception:
        logger.exception("the certification crashed")
        return EXIT_FAIL


def reference_mode(requested: str, ctx, argv: list) -> str:
    """"once" or "per-rank" (see verify.server --reference-mode); "given" when the user passed --reference."""
    if "--reference" in argv or any(a.startswith("--reference=") for a in argv):
        return "given"
    if not ctx.initialized:
        return "per-rank"
    if requested == "auto":
        return "per-rank" if ctx.device.type == "cpu" else "once"
    return requested


def certify_with_reference(ctx, argv: list, out: Path, requested: str, group) -> tuple:
    """(exit code, how the reference was had): per rank, or computed once by rank 0 and shared.

    In "once" mode rank 0 certifies first and saves the CPU reference as a golden set in a folder of this
    run only (OUT/golden-<token>, the token drawn by rank 0 and broadcast), then broadcasts the sha256 of its
    manifest; the other ranks wait for it (a barrier bounded by --timeout) and judge against that set,
    pinned by that sha256. A set that is missing is an environment error on the rank (exit 2): a rank never
    falls back to a folder an earlier run left behind.
    """
    import uuid

    import torch.distributed as dist

    mode = reference_mode(requested, ctx, argv)
    if mode != "once":
        return certify(argv), {"given": "the golden set given with --reference"}.get(mode, "computed by this rank")
    token = [uuid.uuid4().hex[:12] if ctx.is_main else None]
    dist.broadcast_object_list(token, src=0, group=group)
    golden = out / f"golden-{token[0]}"
    code = certify(argv + ["--save-golden", str(golden)]) if ctx.is_main else None
    pin = [None]
    if ctx.is_main and (golden / "manifest.json").is_file():
        from verify.golden import manifest_sha256

        pin = [manifest_sha256(golden)]
    dist.barrier(group=group)
    dist.broadcast_object_list(pin, src=0, group=group)
    if ctx.is_main:
        return code, f"computed by this rank and shared as {golden}"
    if pin[0] is None or not (golden / "manifest.json").is_file():
        logger.error("rank 0 wrote no golden set for this run at %s: this card cannot be judged against it "
                     "(see rank 0's log); rerun, or use --reference-mode per-rank", golden)
        return EXIT_ENV, f"no golden set from rank 0 at {golden} (environment error)"
    return (certify(argv + ["--reference", str(golden), "--reference-sha256", pin[0]]),
            f"golden set {golden} from rank 0 (manifest sha256 {pin[0][:16]}...)")


def _selftest(rank: int, stage: str) -> None:
    if stage == "init" and rank in selected_ranks("VTP_SELFTEST_INIT_FAIL_RANK"):
        from ascend.device import DeviceError

        raise DeviceError(f"self-test VTP_SELFTEST_INIT_FAIL_RANK: rank {rank} refuses to init")
    if stage == "certification" and rank in selected_ranks("VTP_SELFTEST_CRASH_RANK"):
        logger.warning("self-test VTP_SELFTEST_CRASH_RANK: rank %d kills itself (SIGKILL)", rank)
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "certification" and rank in selected_ranks("VTP_SELFTEST_HANG_RANK"):
        logger.warning("self-test VTP_SELFTEST_HANG_RANK: rank %d hangs", rank)
        while True:
            time.sleep(1)


def worker_main(args, passthrough: list) -> int:
    """Run one rank; 0 when it took part in the whole protocol (its verdict is in the files).

    Rank 0 of a run started by hand (no launcher) returns the server's exit code, so that torchrun's
    own exit status says PASS (0) or not.
    """
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    logging.basicConfig(level=logging.INFO, datefmt="%H:%M:%S",
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    out = Path(args.out or "verify_out/server")
    rank_dir = out / f"rank{rank}"
    run_id = args.run_id or os.environ.get(RUN_ID_ENV) or "manual"
    status = Status(rank_dir / STATUS_NAME, run_id=run_id, rank=rank, local_rank=local_rank,
                    world_size=world_size, host=socket.gethostname(), pid=os.getpid(), device=None)
    request, _, _ = split_passthrough(passthrough)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # see below: no Python handler while the rendezvous blocks
    kind = request.split(":")[0]
    status.update(stage="init", device={"cpu": "cpu", "npu": f"npu:{local_rank}", "cuda": f"cuda:{local_rank}"}
                  .get(kind))

    import torch.distributed as dist

    from ascend.distributed import init_distributed, shutdown
    from ascend.npu import prepare_environment

    try:
        prepare_environment()
        _selftest(rank, "init")
        ctx = init_distributed(request, timeout_s=args.collective_timeout)
        # the gather waits for the slowest card's certification: its own group, bounded by --timeout
        results_group = (dist.new_group(backend="gloo", timeout=timedelta(seconds=args.timeout))
                         if ctx.initialized else None)
    except Exception as exc:
        logger.error("rank %d cannot init: %s: %s", rank, type(exc).__name__, exc)
        status.update(state="error", exit_code=EXIT_ENV, error=f"cannot init: {type(exc).__name__}: {exc}")
        return EXIT_ENV
    # Until here SIGTERM/SIGINT keep their default action: the rendezvous blocks in C++, where a Python
    # handler would only run after torchrun's 30 s grace. From here on they mark the status first.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal(status))
    status.update(stage="collectives", device=str(ctx.device), backend=ctx.backend)

    from verify.report.server_table import format_table
    from verify.server.collectives import run_check

    try:
        collectives = run_check(ctx)
    except Exception as exc:
        logger.error("collective check failed on rank %d: %s", rank, exc)
        collectives = {"verdict": "ERROR", "values_ok": False, "suspect_ranks": [], "bandwidth": [],
                       "reasons": [f"rank {rank}: {type(exc).__name__}: {exc}"]}
    if ctx.is_main:
        for line in format_table(collectives):
            logger.info("%s", line)
    status.update(stage="certification", collectives=collectives)

    _selftest(rank, "certification")
    if not args.collectives_only:
        argv = _accuracy_argv(passthrough, rank, str(ctx.device), rank_dir)
        code, reference = certify_with_reference(ctx, argv, out, args.reference_mode, results_group)
        status.update(reference=reference)
        result = rank_result(read_json(rank_dir / SUMMARY_NAME), code)
        from verify.server.consistency import OUTPUTS_NAME, digest_file

        outputs = rank_dir / OUTPUTS_NAME
        digests = digest_file(outputs) if outputs.is_file() and code in (0, 1) else None
        status.update(exit_code=code, result=result, digests=digests)
    else:
        status.update(exit_code=0, result={"verdict": "PASS", "failed_gates": [], "timings": {},
                                           "note": "--collectives-only: no certification"})
    status.update(stage="gather")

    try:
        if ctx.initialized:
            gathered = [None] * world_size if ctx.is_main else None
            dist.gather_object(status.data, gathered, dst=0, group=results_group)
        else:
            gathered = [status.data]
    except Exception as exc:
        logger.error("rank %d: the gather failed (%s): a peer died or hung; the launcher reports from the "
                     "status files", rank, exc)
        status.update(state="error", error=f"gather failed: {type(exc).__name__}: {exc}")
        return EXIT_FAIL
    code = 0
    if ctx.is_main:
        summary = write_server_summary(out, {s["rank"]: s for s in gathered}, world_size, run_id, args)
        if os.environ.get(RUN_ID_ENV) != run_id:  # torchrun by hand: its exit status is the server's
            code = summary["server"]["exit_code"]
    status.update(stage="done", state="done")
    shutdown(ctx)
    return code


def write_server_summary(out: Path, statuses: dict, world_size: int, run_id: str, args) -> dict:
    from vtp.io_utils import atomic_write_json

    context = {"run_id": run_id, "command": " ".join(["python -m verify.server"] + sys.argv[1:]),
               "timeout_s": args.timeout, "collective_timeout_s": args.collective_timeout,
               "consistency_policy": args.consistency, "collectives_only": args.collectives_only,
               "failures": {}, "launcher": None}
    summary = build_summary(statuses, world_size, out, context)
    atomic_write_json(out / SUMMARY_NAME, summary)
    if os.environ.get(RUN_ID_ENV) != run_id:  # torchrun by hand: no launcher prints the table
        print("\n".join(server_report_lines(summary)), flush=True)
    return summary
