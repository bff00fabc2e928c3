"""The collective check of a server: all-reduce and all-gather of known tensors, exact values, bus bandwidth.

Run by every rank of ``python -m verify.server`` before the certification, over the process group that
:func:`ascend.distributed.init_distributed` opened (``hccl`` on NPU, ``nccl`` on CUDA, ``gloo`` on CPU).

Values. Every rank contributes a tensor of small integers stored as float32, so every sum is exact and a
single wrong bit shows. Rank r sends ``pattern + r + 1`` to the all-reduce (``pattern[i] = i % 13``), so
every element of the result must equal ``n * pattern + n (n + 1) / 2``; and ``pattern + 16 (r + 1)`` to
the all-gather, so the chunk received from rank r must equal exactly that and names its sender. A wrong
all-reduce sum says that something in the ring is broken; the all-gather says whose contribution it was
(the sender that the majority of ranks received wrongly is the suspect), and a rank that alone sees wrong
results is named as the receiver at fault. Every size of the bandwidth table is checked the same way
(the ``#wrong`` column, as in nccl-tests).

Bandwidth, in the shape of nccl-tests and HCCL Test: for each size, the time of one operation (the mean
over ``iters`` calls after ``warmup`` calls, the slowest rank's), ``algbw = size / time`` and the bus
bandwidth ``busbw = algbw * 2 (n - 1) / n`` for all-reduce and ``algbw * (n - 1) / n`` for all-gather
(nccl-tests' PERFORMANCE.md: the factor that makes busbw comparable with the link speed whatever the rank
count). ``size`` is the bytes of one rank's all-reduce buffer, and for the all-gather the bytes of the
whole gathered output (each rank sends ``size / n``), as nccl-tests prints them. GB/s are 1e9 bytes/s.

Every collective is bounded by the process group's timeout (``--collective-timeout`` of the server).

Harness self-test: ``VTP_SELFTEST_COLLECTIVE_RANK=K`` (a comma list is allowed) makes rank K add 1 to
the first element of everything it contributes; a sound check then fails and names rank K.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.distributed as dist

logger = logging.getLogger("verify.server.collectives")

SCHEMA = "vtp-collectives/1"
SELFTEST_ENV = "VTP_SELFTEST_COLLECTIVE_RANK"
VALUE_COUNT = 4096                                   # elements per rank in the exact-value check
SIZES_CPU = (64 * 2**10, 1 * 2**20, 4 * 2**20)       # bytes; gloo on a CPU is slow, keep it under seconds
SIZES_DEVICE = (1 * 2**20, 16 * 2**20, 64 * 2**20, 256 * 2**20)
ITERS = {"cpu": (1, 3), "device": (5, 20)}           # (warm-up calls, timed calls)
_PERIOD = 13                                         # pattern[i] = i % 13


def selftest_ranks(environ=os.environ) -> set:
    """The ranks named in VTP_SELFTEST_COLLECTIVE_RANK (empty when unset)."""
    value = environ.get(SELFTEST_ENV, "").strip()
    return {int(part) for part in value.split(",") if part.strip()} if value else set()


# ------------------------------------------------------------------------------- expected values (pure)
def pattern(count: int) -> torch.Tensor:
    return (torch.arange(count) % _PERIOD).to(torch.float32)


def allreduce_contribution(count: int, rank: int) -> torch.Tensor:
    """What rank ``rank`` sends to the all-reduce: ``pattern + rank + 1``."""
    return pattern(count) + float(rank + 1)


def allreduce_expected(count: int, world_size: int) -> torch.Tensor:
    """The exact all-reduce (sum) result: ``n * pattern + n (n + 1) / 2``."""
    return pattern(count) * world_size + float(world_size * (world_size + 1) // 2)


def allgather_contribution(count: int, rank: int) -> torch.Tensor:
    """What rank ``rank`` sends to the all-gather: ``pattern + 16 (rank + 1)`` (it names the sender)."""
    return pattern(count) + float(16 * (rank + 1))


def count_wrong(received: torch.Tensor, expected: torch.Tensor) -> int:
    """Elements of ``received`` that are not bit-for-bit ``expected`` (NaN counts as wrong)."""
    return int((received.detach().cpu() != expected).sum())


def bandwidth(op: str, size_bytes: int, seconds: float, world_size: int) -> tuple:
    """(algbw, busbw) in GB/s (1e9 bytes/s) of one ``op`` of ``size_bytes`` taking ``seconds``."""
    if seconds <= 0:
        return None, None  # below the clock's resolution: no figure rather than infinity
    algbw = size_bytes / seconds / 1e9
    factor = {"all_reduce": 2 * (world_size - 1) / world_size,
              "all_gather": (world_size - 1) / world_size}[op]
    return algbw, algbw * factor


# ------------------------------------------------------------------------------- one rank's part
def _sync(device: torch.device) -> None:
    from ascend.device import synchronize

    synchronize(device)


def _contribution(kind: str, count: int, rank: int, faulty: bool, device: torch.device) -> torch.Tensor:
    make = allreduce_contribution if kind == "all_reduce" else allgather_contribution
    tensor = make(count, rank)
    if faulty:
        tensor[0] += 1.0  # harness self-test: this rank contributes one wrong value
    return tensor.to(device)


def _check_allreduce(count: int, rank: int, world_size: int, faulty: bool, device: torch.device) -> int:
    tensor = _contribution("all_reduce", count, rank, faulty, device)
    dist.all_reduce(tensor)
    return count_wrong(tensor, allreduce_expected(count, world_size))


def _check_allgather(count: int, rank: int, world_size: int, faulty: bool, device: torch.device) -> list:
    """Wrong elements per sender, as received by this rank."""
    send = _contribution("all_gather", count, rank, faulty, device)
    chunks = [torch.empty_like(send) for _ in range(world_size)]
    dist.all_gather(chunks, send)
    return [count_wrong(chunk, allgather_contribution(count, src)) for src, chunk in enumerate(chunks)]


def _time_op(op: str, count: int, world_size: int, device: torch.device, warmup: int, iters: int) -> float:
    """Mean seconds of one operation on this rank (buffers of zeros: the values were checked apart)."""
    if op == "all_reduce":
        buffer = torch.zeros(count, dtype=torch.float32, device=device)
        call = lambda: dist.all_reduce(buffer)  # noqa: E731
    else:
        send = torch.zeros(count, dtype=torch.float32, device=device)
        chunks = [torch.empty_like(send) for _ in range(world_size)]
        call = lambda: dist.all_gather(chunks, send)  # noqa: E731
    for _ in range(warmup):
        call()
    dist.all_reduce(torch.zeros(1, device=device))  # a barrier on every backend (nccl's needs device ids)
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        call()
    _sync(device)
    return (time.perf_counter() - start) / iters


def run_rank(rank: int, world_size: int, device: torch.device, sizes=None, faulty: bool = False) -> dict:
    """This rank's measurements: wrong counts and timings per size. Collective: every rank calls it."""
    on_cpu = device.type == "cpu"
    sizes = tuple(sizes or (SIZES_CPU if on_cpu else SIZES_DEVICE))
    warmup, iters = ITERS["cpu" if on_cpu else "device"]
    part = {"rank": rank, "device": str(device), "values": {}, "sizes": []}
    part["values"]["all_reduce_wrong"] = _check_allreduce(VALUE_COUNT, rank, world_size, faulty, device)
    part["values"]["all_gather_wrong_by_sender"] = _check_allgather(VALUE_COUNT, rank, world_size, faulty, device)
    for size in sizes:
        row = {"size_bytes": size}
        for op in ("all_reduce", "all_gather"):
            count = max(1, size // 4) if op == "all_reduce" else max(1, size // (4 * world_size))
            if op == "all_reduce":
                wrong = _check_allreduce(count, rank, world_size, faulty, device)
            else:
                wrong = sum(_check_allgather(count, rank, world_size, faulty, device))
            row[op] = {"count": count, "wrong": wrong,
                       "seconds": _time_op(op, count, world_size, device, warmup, iters)}
        part["sizes"].append(row)
    part["warmup"], part["iters"] = warmup, iters
    return part


# ------------------------------------------------------------------------------- the verdict (pure)
def analyse(parts: list, world_size: int, backend: str | None = None) -> dict:
    """Join every rank's ``run_rank`` result: values ok, suspect ranks, the bandwidth table."""
    reasons, suspects = [], {}
    reduce_wrong = {p["rank"]: p["values"]["all_reduce_wrong"] for p in parts}
    bad_receivers = sorted(r for r, wrong in reduce_wrong.items() if wrong)
    # sender s is wrong as seen by receiver r
    seen = {s: sorted(p["rank"] for p in parts if p["values"]["all_gather_wrong_by_sender"][s])
            for s in range(world_size)}
    for sender, receivers in seen.items():
        if receivers and len(receivers) * 2 > len(parts):
            suspects[sender] = (f"rank {sender} contributed wrong values: the all-gather chunk it sent was wrong "
                                f"on rank(s) {_ranks(receivers)}")
    if bad_receivers and not suspects and len(bad_receivers) * 2 <= len(parts):
        for r in bad_receivers:
            suspects[r] = (f"rank {r} received a wrong all-reduce result ({reduce_wrong[r]} elements) "
                           "where others did not")
    if bad_receivers:
        reasons.append(f"all-reduce: wrong sum on rank(s) {_ranks(bad_receivers)} "
                       f"({max(reduce_wrong.values())} of {VALUE_COUNT} elements at most)")
    lone = sorted(s for s, receivers in seen.items() if receivers and s not in suspects)
    if lone:
        reasons.append(f"all-gather: chunk(s) of rank(s) {_ranks(lone)} received wrongly by a minority of ranks")
    reasons += list(suspects.values())
    table = []
    for i, row in enumerate(parts[0]["sizes"] if parts else []):
        size = row["size_bytes"]
        for op in ("all_reduce", "all_gather"):
            seconds = max(p["sizes"][i][op]["seconds"] for p in parts)
            wrong = sum(p["sizes"][i][op]["wrong"] for p in parts)
            algbw, busbw = bandwidth(op, size, seconds, world_size)
            table.append({"op": op, "size_bytes": size, "count": row[op]["count"], "type": "float32",
                          "time_us": seconds * 1e6, "algbw_gbps": algbw, "busbw_gbps": busbw, "wrong": wrong})
            if wrong:
                reasons.append(f"{op} of {size} B: {wrong} wrong element(s) summed over the ranks")
    values_ok = not reasons
    return {"schema": SCHEMA, "verdict": "PASS" if values_ok else "FAIL", "values_ok": values_ok,
            "world_size": world_size, "backend": backend, "value_count": VALUE_COUNT,
            "suspect_ranks": sorted(suspects), "reasons": reasons, "bandwidth": table,
            "per_rank": {str(p["rank"]): p["values"] for p in parts},
            "timing_note": "time: mean of the timed calls on the slowest rank; busbw = algbw * 2(n-1)/n "
                           "(all_reduce) or (n-1)/n (all_gather); size: one rank's all-reduce buffer, the "
                           "whole gathered output for all_gather (as nccl-tests)"}


def _ranks(ranks) -> str:
    return ", ".join(str(r) for r in ranks)


def run_check(ctx, sizes=None) -> dict:
    """The collective check over the group of ``ctx`` (an ``ascend.distributed.DistContext``).

    Every rank calls it and every rank gets the same analysis back. Without a process group (one
    process) there is nothing to check: the result says so and passes.
    """
    if not ctx.initialized or ctx.world_size < 2:
        return {"schema": SCHEMA, "verdict": "SKIPPED", "values_ok": True, "world_size": ctx.world_size,
                "backend": ctx.backend, "suspect_ranks": [], "reasons": [], "bandwidth": [],
                "note": "one process: no collective to check"}
    from ascend.distributed import all_gather_objects

    faulty = ctx.rank in selftest_ranks()
    if faulty:
        logger.warning("self-test %s: rank %d contributes wrong values to the collective check", SELFTEST_ENV,
                       ctx.rank)
    start = time.perf_counter()
    part = run_rank(ctx.rank, ctx.world_size, ctx.device, sizes=sizes, faulty=faulty)
    parts = all_gather_objects(ctx, part)
    result = analyse(parts, ctx.world_size, ctx.backend)
    result["seconds"] = time.perf_counter() - start
    return result
