"""The distributed layer: one process per device under ``torchrun``, or a single process without it.

``torchrun --nproc_per_node N`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` for every process; :func:`init_distributed` reads them, binds each rank to its device
(``npu:{LOCAL_RANK}`` / ``cuda:{LOCAL_RANK}``; ``ASCEND_RT_VISIBLE_DEVICES`` / ``CUDA_VISIBLE_DEVICES``
have already renumbered the visible devices) and opens the process group with the backend that fits
the device: ``hccl`` on NPU, ``nccl`` on CUDA, ``gloo`` on CPU.

Without ``torchrun`` (``WORLD_SIZE`` unset or ``"1"``) the context is a single process and every
collective below is the identity, so callers never branch on "am I distributed?"::

    ctx = init_distributed("auto")
    part = work(shard(items, ctx.rank, ctx.world_size))
    parts = gather_objects(ctx, part)          # list on rank 0, None elsewhere
    if ctx.is_main:
        write(merge(parts))
    shutdown(ctx)

The object collectives pickle Python objects (results, small tensors); they are for gathering
results once, not for moving activations.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .device import DeviceError, _parse, resolve_device

logger = logging.getLogger(__name__)

BACKENDS = {"npu": "hccl", "cuda": "nccl", "cpu": "gloo"}


@dataclass
class DistContext:
    """Where this process sits: its rank among ``world_size`` processes and its device.

    ``initialized`` is True when a process group is open (torchrun with ``WORLD_SIZE > 1``);
    ``backend`` is then ``"hccl"``, ``"nccl"`` or ``"gloo"``, else None.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    initialized: bool

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that writes results and logs summaries."""
        return self.rank == 0


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise DeviceError(f"environment variable {name} is not set: start the program with torchrun "
                              f"(python -m torch.distributed.run --nproc_per_node N ...) or unset WORLD_SIZE")
        return default
    try:
        return int(value)
    except ValueError:
        raise DeviceError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def _bind_device(requested: str, local_rank: int) -> torch.device:
    """The device of this rank: the requested kind, indexed by ``local_rank``."""
    kind, index = _parse(requested)
    if kind == "auto":
        kind = resolve_device("auto").type
    if kind == "cpu":
        return torch.device("cpu")
    if index is not None and index != local_rank:
        logger.warning("device: %s requested but under torchrun each rank uses %s:%d (LOCAL_RANK); "
                       "choose devices with %s", requested, kind, local_rank,
                       "ASCEND_RT_VISIBLE_DEVICES" if kind == "npu" else "CUDA_VISIBLE_DEVICES")
    device = resolve_device(f"{kind}:{local_rank}")
    getattr(torch, kind).set_device(device)
    return device


def init_distributed(device: str = "auto", timeout_s: float = 120.0) -> DistContext:
    """Open the process group from the torchrun environment, or return a single-process context.

    ``device`` is ``"auto"``, ``"npu"``, ``"cuda"`` or ``"cpu"`` (an index is replaced by
    ``LOCAL_RANK`` under torchrun). ``timeout_s`` bounds every collective, so a rank that died
    makes the others fail after that many seconds instead of hanging. Raises
    :class:`ascend.device.DeviceError` when the device is missing or the environment is malformed.
    A process group that is already open is reused (and not closed by :func:`shutdown` twice).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1:
        return DistContext(rank=0, world_size=1, local_rank=0, device=resolve_device(device),
                           backend=None, initialized=False)
    rank = _env_int("RANK")
    local_rank = _env_int("LOCAL_RANK", 0)
    bound = _bind_device(device, local_rank)
    backend = BACKENDS[bound.type]
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    else:
        backend = dist.get_backend()
    ctx = DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                      device=bound, backend=backend, initialized=True)
    if ctx.rank != rank or ctx.world_size != world_size:
        raise DeviceError(f"process group (rank {ctx.rank} of {ctx.world_size}) does not match the torchrun "
                          f"environment (RANK={rank}, WORLD_SIZE={world_size})")
    logger.info("distributed: rank %d/%d, local rank %d, device %s, backend %s",
                ctx.rank, ctx.world_size, local_rank, bound, backend)
    return ctx


def gather_objects(ctx: DistContext, obj: Any) -> list | None:
    """Every rank's ``obj`` in rank order on rank 0 (``[obj]`` without a group); None on other ranks."""
    if not ctx.initialized:
        return [obj]
    if ctx.backend == "hccl":  # HCCL has no gather; all-gather and keep rank 0's copy
        objects = all_gather_objects(ctx, obj)
        return objects if ctx.is_main else None
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather_objects(ctx: DistContext, obj: Any) -> list:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` without a group)."""
    if not ctx.initialized:
        return [obj]
    out: list = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(ctx: DistContext, obj: Any = None, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (other ranks' ``obj`` is ignored); ``obj`` itself without a group."""
    if not ctx.initialized:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank arrives here; nothing without a group."""
    if not ctx.initialized:
        return
    if ctx.backend == "nccl":
        dist.barrier(device_ids=[ctx.device.index if ctx.device.index is not None else ctx.local_rank])
    else:
        dist.barrier()


def shutdown(ctx: DistContext) -> None:
    """Close the process group. Safe to call twice and without a group."""
    if ctx.initialized and dist.is_initialized():
        dist.destroy_process_group()
    ctx.initialized = False
