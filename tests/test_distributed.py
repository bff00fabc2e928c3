"""ascend.distributed: single-process identity and a real 2-process gloo group under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ascend.distributed import (DistContext, all_gather_objects, barrier, broadcast_object, gather_objects,
                                init_distributed, shutdown)

ROOT = Path(__file__).resolve().parents[1]


def _torchrun_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def torchrun(args: list, nproc: int = 2, timeout: float = 120.0, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``python -m torch.distributed.run --nproc_per_node nproc args`` on CPU, with a timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_port", "0", "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, env=_torchrun_env(), capture_output=True, text=True, timeout=timeout)


def test_single_process_context_is_identity(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed("cpu")
    assert ctx == DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"),
                              backend=None, initialized=False)
    assert ctx.is_main
    assert gather_objects(ctx, {"a": 1}) == [{"a": 1}]
    assert all_gather_objects(ctx, 3) == [3]
    assert broadcast_object(ctx, "x") == "x"
    barrier(ctx)
    shutdown(ctx)
    shutdown(ctx)


def test_world_size_one_is_single_process(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_distributed("cpu").initialized is False


def test_missing_rank_says_to_use_torchrun(monkeypatch):
    from ascend.device import DeviceError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(DeviceError, match="RANK is not set.*torchrun"):
        init_distributed("cpu")


SCRIPT = textwrap.dedent("""
    import json, sys
    from ascend.distributed import *
    ctx = init_distributed("cpu", timeout_s=60)
    out = {"rank": ctx.rank, "world": ctx.world_size, "local": ctx.local_rank, "backend": ctx.backend,
           "device": str(ctx.device), "init": ctx.initialized}
    out["gather"] = gather_objects(ctx, {"r": ctx.rank, "sq": ctx.rank ** 2})
    out["all"] = all_gather_objects(ctx, ctx.rank * 10)
    out["bcast"] = broadcast_object(ctx, "from-%d" % ctx.rank, src=1)
    barrier(ctx)
    shutdown(ctx)
    shutdown(ctx)
    with open(sys.argv[1] + "/rank%d.json" % out["rank"], "w") as f:
        json.dump(out, f)
""")


def test_two_process_gloo_collectives(tmp_path):
    script = tmp_path / "dist_script.py"
    script.write_text(SCRIPT)
    proc = torchrun([script, tmp_path])
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert (r0["world"], r0["backend"], r0["device"], r0["init"]) == (2, "gloo", "cpu", True)
    assert (r0["rank"], r1["rank"], r1["local"]) == (0, 1, 1)
    assert r0["gather"] == [{"r": 0, "sq": 0}, {"r": 1, "sq": 1}]
    assert r1["gather"] is None
    assert r0["all"] == r1["all"] == [0, 10]
    assert r0["bcast"] == r1["bcast"] == "from-1"
