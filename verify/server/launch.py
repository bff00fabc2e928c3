"""The launcher of ``python -m verify.server``: torchrun under a watchdog, then one summary and one exit code.

It validates the options (a usage error costs no process), starts ``python -m torch.distributed.run
--standalone --nproc-per-node N -m verify.server --worker`` in a session of its own, echoes its output
(and keeps it in OUT/torchrun.log), and watches the clock. On ``--timeout`` or Ctrl-C (SIGINT) or SIGTERM
it sends SIGTERM to torchrun (which stops its workers), waits ``GRACE_S``, then SIGKILLs every process of
the tree it has seen (found through /proc, checked by start time so that a reused pid is never hit). The
summary written by rank 0 is kept when the run ended normally; otherwise it is rebuilt from the ranks'
status files and torchrun's failure report (rank, exit code, signal).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from verify.server.common import (GRACE_S, RUN_ID_ENV, STATUS_NAME, SUMMARY_NAME, new_run_id, read_json, resolve_nproc,
                           split_passthrough)
from verify.report.server_table import server_report_lines
from verify.server.common import EXIT_ENV
from verify.server.summary import build_summary

logger = logging.getLogger("verify.server")

_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)\s*\n\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)"
                      r"[^\n]*(?:\n[^\n]*?traceback\s*:\s*([^\n]*))?")


def parse_torchrun_failures(text: str) -> dict:
    """``{rank: {"exitcode", "pid", "text", "root_cause"}}`` from torchrun's ChildFailedError report.

    ``root_cause`` marks the rank torchrun observed failing first; the others it stopped itself.
    """
    failures = {}
    root_at = text.find("Root Cause")
    for match in _FAILURE.finditer(text):
        rank, exitcode, pid = int(match.group(1)), int(match.group(3)), int(match.group(4))
        if exitcode < 0:
            try:
                what = f"killed by {signal.Signals(-exitcode).name} (pid {pid})"
            except ValueError:
                what = f"killed by signal {-exitcode} (pid {pid})"
        else:
            what = f"exited with code {exitcode} (pid {pid})"
        failures.setdefault(rank, {"exitcode": exitcode, "pid": pid, "text": what,
                                   "root_cause": 0 <= root_at < match.start()})
    return failures


# --------------------------------------------------------------------------------------------- /proc
def _stat(pid: int) -> tuple | None:
    """(parent pid, start time in clock ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def descendants(root: int) -> set:
    """{(pid, start time)} of every live descendant of ``root``."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                children.setdefault(st[0], []).append((int(entry), st[1]))
    found, todo = set(), [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if (pid, start) not in found:
                found.add((pid, start))
                todo.append(pid)
    return found


def alive(known: set) -> set:
    return {(pid, start) for pid, start in known if (_stat(pid) or (None, None))[1] == start}


def _kill(known: set, sig: int) -> None:
    for pid, _ in alive(known):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------- launch
class _Interrupted(Exception):
    pass


def _raise_interrupt(signum, frame):
    raise _Interrupted(signal.Signals(signum).name)


def _validate(passthrough: list, collectives_only: bool) -> None:
    """A usage error in the accuracy options must come before N processes start: SystemExit(2)."""
    if collectives_only:
        return
    from verify import accuracy_eval

    _, _, rest = split_passthrough(passthrough)
    try:
        accuracy_eval.build_parser().parse_args(rest)
    except SystemExit as exc:
        raise SystemExit(f"error: the accuracy options after `--` are not valid ({' '.join(rest)})") if exc.code \
            else SystemExit(0) from None


def _prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / SUMMARY_NAME).unlink(missing_ok=True)  # an earlier run's verdict must not stand
        for folder in out.glob("rank*"):
            (folder / STATUS_NAME).unlink(missing_ok=True)
        for folder in out.glob("golden-*"):  # an earlier run's shared reference: never judged against again
            shutil.rmtree(folder, ignore_errors=True)
    except OSError as exc:
        raise SystemExit(f"error: --out {out}: cannot use it as the output folder ({exc})") from None


def _echo(stream, log_path: Path, keep: deque) -> None:
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        for line in iter(stream.readline, ""):
            sys.stderr.write(line)
            log.write(line)
            keep.append(line)
        log.flush()


def launch(args, passthrough: list) -> int:
    request, _, _ = split_passthrough(passthrough)
    _validate(passthrough, args.collectives_only)
    kind, nproc = resolve_nproc(str(args.nproc), request)
    out = Path(args.out or Path("verify_out") / datetime.datetime.now().strftime("server-%Y%m%d-%H%M%S"))
    _prepare_out(out)
    run_id = new_run_id()
    env = dict(os.environ, **{RUN_ID_ENV: run_id})
    if kind == "npu":  # HCCL's own clocks (CANN docs: ranges [120, 7200] and [68, 17340] s); the user's kept
        env.setdefault("HCCL_CONNECT_TIMEOUT", str(int(min(max(args.collective_timeout, 120), 7200))))
        env.setdefault("HCCL_EXEC_TIMEOUT", str(int(min(max(args.collective_timeout, 68), 17340))))
    if nproc > 1 and "OMP_NUM_THREADS" not in env:  # torchrun would set 1: the CPU reference needs more
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    _, fault, rest = split_passthrough(passthrough)
    passthrough = [*rest, "--device", kind] + (["--inject-fault", fault] if fault else [])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "--max-restarts", "0", "--monitor-interval", "0.2", "-m", "verify.server", "--worker",
               "--out", str(out), "--run-id", run_id, "--timeout", f"{args.timeout:g}",
               "--collective-timeout", f"{args.collective_timeout:g}", "--consistency", args.consistency,
               "--reference-mode", args.reference_mode,
               *(["--collectives-only"] if args.collectives_only else []), "--", *passthrough]
    logger.info("starting %d rank(s) on %s: %s", nproc, kind, " ".join(command))
    started = time.perf_counter()
    deadline = started + args.timeout
    lines: deque = deque(maxlen=4000)
    timed_out = interrupted = False
    known: set = set()
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc = reader = None
    try:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, errors="replace")
        reader = threading.Thread(target=_echo, args=(proc.stdout, out / "torchrun.log", lines), daemon=True)
        reader.start()
        while proc.poll() is None:
            known |= descendants(proc.pid)
            if time.perf_counter() > deadline:
                timed_out = True
                logger.error("--timeout %g s reached: stopping every rank", args.timeout)
                break
            time.sleep(0.2)
    except _Interrupted as exc:
        interrupted = True
        logger.error("%s: stopping every rank", exc)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # the clean-up below must run to its end
        if proc is not None:
            known |= descendants(proc.pid)
            _stop(proc, known)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if reader is not None:
        reader.join(timeout=5)
    elapsed = time.perf_counter() - started
    leftover = sorted(pid for pid, _ in alive(known))
    context = {"run_id": run_id, "command": " ".join(["python -m verify.server"] + sys.argv[1:]),
               "timeout_s": args.timeout, "collective_timeout_s": args.collective_timeout,
               "consistency_policy": args.consistency, "collectives_only": args.collectives_only,
               "failures": parse_torchrun_failures("".join(lines)), "timed_out": timed_out,
               "interrupted": interrupted,
               "launcher": {"torchrun_exit_code": None if proc is None else proc.returncode, "nproc": nproc,
                            "device_kind": kind, "elapsed_s": round(elapsed, 3), "timed_out": timed_out,
                            "interrupted": interrupted, "processes_left": leftover,
                            "torchrun_log": str(out / "torchrun.log")}}
    summary = read_json(out / SUMMARY_NAME)
    healthy = (summary is not None and (summary.get("server") or {}).get("run_id") == run_id
               and proc is not None and proc.returncode == 0 and not timed_out and not interrupted)
    if healthy:
        summary["server"]["launcher"] = context["launcher"]
    else:
        statuses = {}
        for rank in range(nproc):
            status = read_json(out / f"rank{rank}" / STATUS_NAME)
            statuses[rank] = status if status and status.get("run_id") == run_id else None
        summary = build_summary(statuses, nproc, out, context)
    from vtp.io_utils import atomic_write_json

    try:
        atomic_write_json(out / SUMMARY_NAME, summary)
    except OSError as exc:
        print(f"error: cannot write {out / SUMMARY_NAME} ({exc})", file=sys.stderr)
        return EXIT_ENV
    written = [out / SUMMARY_NAME]
    try:  # one page for the whole server, a row per card (each card's own page is in rank<k>/)
        from verify.report.server_html import write_server_report

        written.append(write_server_report(out / "report.html", summary, out))
    except Exception:  # noqa: BLE001  (the verdict stands without the page)
        logger.exception("the server's report.html could not be written")
    if not args.quiet:
        print("\n".join(server_report_lines(summary)), flush=True)
    written += [p for p in (out / "torchrun.log",) if p.exists()]
    ranks = [d.name + "/" for d in sorted(out.glob("rank[0-9]*")) if d.is_dir()]
    print(f"outputs: {', '.join(map(str, written))}; per card: {', '.join(ranks) or 'none'} in {out} "
          f"({elapsed:.1f} s)", flush=True)
    if leftover:
        logger.error("processes still alive after SIGKILL: %s", leftover)
    return summary["server"]["exit_code"]


def _stop(proc: subprocess.Popen, known: set) -> None:
    """End torchrun and every process it started: SIGTERM, then SIGKILL after GRACE_S."""
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)  # torchrun forwards it to its workers
        except OSError:
            pass
        end = time.monotonic() + GRACE_S
        while proc.poll() is None and time.monotonic() < end:
            known |= descendants(proc.pid)
            time.sleep(0.1)
    _kill(known, signal.SIGTERM)
    end = time.monotonic() + (GRACE_S if alive(known) else 0)
    while alive(known) and time.monotonic() < end:
        time.sleep(0.1)
    _kill(known, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    end = time.monotonic() + 5
    while alive(known) and time.monotonic() < end:  # SIGKILL is not instantaneous
        time.sleep(0.05)
