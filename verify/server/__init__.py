"""Certify a whole server: one process per card over torchrun, per-card verdicts, cross-card consistency.

    python -m verify.server --nproc all --out verify_out/server -- --require-weights --weights DIR
    python -m verify.server --nproc 2 --out /tmp/s -- --device cpu --quick --no-timing

The launcher starts ``python -m torch.distributed.run --standalone --nproc-per-node N -m verify.server
--worker ...`` (``all`` = every visible NPU, else every visible GPU; ``ASCEND_RT_VISIBLE_DEVICES`` /
``CUDA_VISIBLE_DEVICES`` choose the cards; on a machine with neither, ``all`` is one CPU process, and any
``--nproc N`` runs N CPU processes, which is how the harness tests itself). Every rank (``verify.server.worker``)

1. opens the process group (``ascend.distributed``: hccl / nccl / gloo, the device bound by LOCAL_RANK),
   bounded by ``--collective-timeout``;
2. runs the collective check (``verify.server.collectives``: exact all-reduce and all-gather values, bus
   bandwidth per size);
3. runs the whole certification on its own card, in process: ``verify.accuracy_eval`` with ``--out
   OUT/rank<k> --device <its device> --save-outputs`` plus the options after ``--``, against the CPU fp32
   reference, the same inputs on every rank; the reference is computed once by rank 0 and shared as a
   golden set (OUT/golden-<token>, this run's only; ``--reference-mode once``, the default on NPU/GPU) or by every rank
   (``per-rank``, the default on a CPU-only host, where the ranks share the CPU anyway);
4. sends its result to rank 0, which compares the ranks' outputs bit for bit (``verify.server.consistency``) and
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
