"""Linear probing on frozen features (the original ``tools/test_linear_probing_hf.py``, DINOv2 recipe).

Features: the outputs of the last ``max(n_blocks)`` blocks with their class tokens
(``get_intermediate_layers_feature(x, n, return_class_token=True)``, under the run's precision); the
input of a classifier using ``n`` blocks is ``cat(cls of the last n blocks, mean of the last block's
patch tokens)`` in float32. One linear head (weights N(0, 0.01), bias 0) per ``(n, lr)`` of the grid, lr
scaled by ``batch * world / 256``; SGD momentum 0.9, no weight decay, cosine schedule to 0 over
``epochs * epoch_length`` steps, cross-entropy summed over the heads. Training images:
RandomResizedCrop(224, bicubic) + flip; evaluation: Resize(256, bicubic) + CenterCrop(224). Every head is
evaluated on ``root/val`` after every epoch. As the original's ``linear_probing_results.json``: ``top1`` is
the best head's top-1 over all epochs (strictly greater than the best so far, starting from 0),
``best_classifier`` that head, ``all_accuracies`` every head's top-1 of the *last* epoch; the best
epoch's table is kept too (``best_epoch_accuracies``). Under torchrun the heads' gradients are averaged
over the ranks (as DDP does) and every rank sees its own shard of each shuffled pass.
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, Optional, Sequence

import torch
import torch.nn as nn

from .context import Progress, Run, gather_by_index
from .data import ImageFolderDataset, ShardSampler, make_loader

logger = logging.getLogger(__name__)

DEFAULT_LEARNING_RATES = (1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1)
DEFAULT_N_BLOCKS = (1, 4)


def linear_input(blocks: Sequence[tuple[torch.Tensor, torch.Tensor]], n: int) -> torch.Tensor:
    """(B, n*D + D): class tokens of the last ``n`` blocks, then the mean patch token of the last block."""
    last = blocks[-n:]
    cls = torch.cat([c for _, c in last], dim=-1)
    return torch.cat([cls, last[-1][0].mean(dim=1)], dim=-1).float()


def head_name(n: int, lr: float) -> str:
    return f"classifier_{n}_blocks_avgpool_True_lr_{lr:.5f}".replace(".", "_")


class Heads(nn.Module):
    """One linear classifier per (n blocks, scaled lr)."""

    def __init__(self, dims: dict[int, int], grid: list[tuple[int, float]], num_classes: int):
        super().__init__()
        self.grid = grid
        self.heads = nn.ModuleDict()
        for n, lr in grid:
            layer = nn.Linear(dims[n], num_classes)
            layer.weight.data.normal_(0.0, 0.01)
            layer.bias.data.zero_()
            self.heads[head_name(n, lr)] = layer

    def forward(self, blocks) -> dict[str, torch.Tensor]:
        inputs = {n: linear_input(blocks, n) for n in {n for n, _ in self.grid}}
        return {head_name(n, lr): self.heads[head_name(n, lr)](inputs[n]) for n, lr in self.grid}


def _stream(n: int, rank: int, world: int, seed: int) -> Iterator[int]:
    """Endless shuffled passes; each rank takes every ``world``-th index of the same permutation, cut to
    ``n // world`` so that all ranks take the same number of steps."""
    per_rank = n // world
    p = 0
    while True:
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + p)).tolist()
        yield from perm[rank::world][:per_rank]
        p += 1


def _features(run: Run, images: torch.Tensor, n_max: int):
    with torch.inference_mode(), run.autocast():
        blocks = run.model.get_intermediate_layers_feature(images, n=n_max, return_class_token=True)
    return [(p.float().clone(), c.float().clone()) for p, c in blocks]


def train_and_evaluate(run: Run, train: ImageFolderDataset, val: ImageFolderDataset, batch_size: int = 128,
                       epochs: int = 10, epoch_length: int = 1250, n_blocks: Sequence[int] = DEFAULT_N_BLOCKS,
                       learning_rates: Sequence[float] = DEFAULT_LEARNING_RATES, seed: int = 0,
                       workers: Optional[int] = None, limit: Optional[int] = None) -> Optional[dict]:
    """Train the grid of heads, evaluate them on ``val``; the result dict on rank 0, else None."""
    import torch.distributed as dist

    ctx, device = run.ctx, run.device
    torch.manual_seed(seed)
    n_max = max(n_blocks)
    if len(train) < ctx.world_size:
        raise ValueError(f"{len(train)} training images for {ctx.world_size} processes")
    sample = _features(run, train[0][0].unsqueeze(0).to(device), n_max)
    dims = {n: linear_input(sample, n).shape[1] for n in n_blocks}
    scale = batch_size * ctx.world_size / 256.0
    grid = [(n, lr * scale) for n in n_blocks for lr in learning_rates]
    heads = Heads(dims, grid, len(train.classes)).to(device)
    if ctx.initialized:  # identical initial heads on every rank
        for p in heads.parameters():
            dist.broadcast(p.data, src=0)
    optimizer = torch.optim.SGD([{"params": heads.heads[head_name(n, lr)].parameters(), "lr": lr}
                                 for n, lr in grid], momentum=0.9, weight_decay=0)
    max_iter = epochs * epoch_length
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max_iter, eta_min=0)
    criterion = nn.CrossEntropyLoss()

    stream = _stream(len(train), ctx.rank, ctx.world_size, seed)
    order = (next(stream) for _ in range(max_iter * batch_size))
    loader = make_loader(train, list(order), batch_size, workers, pin_memory=device.type != "cpu")
    n = len(val) if limit is None else min(limit, len(val))
    sampler = ShardSampler(n, ctx.rank, ctx.world_size)
    val_loader = make_loader(val, sampler, batch_size * 2, workers, pin_memory=device.type != "cpu")
    names = [head_name(nb, lr) for nb, lr in grid]

    def evaluate() -> Optional[dict]:
        """Top-1 of every head on val (rank 0; None elsewhere), as the original does after each epoch."""
        heads.eval()
        indices, rows = [], []
        with torch.no_grad():
            for images, labels, idx in val_loader:
                outputs = heads(_features(run, images.to(device, non_blocking=True), n_max))
                hits = torch.stack([outputs[k].argmax(dim=1).cpu() == labels for k in names], dim=1)  # (B, heads)
                rows += hits.tolist()
                indices += idx.tolist()
        heads.train()
        merged = gather_by_index(ctx, indices, rows, n)
        return None if merged is None else {k: 100.0 * sum(r[j] for r in merged) / n for j, k in enumerate(names)}

    progress = Progress(max_iter, "linear-probe train", enabled=ctx.is_main, unit="step")
    heads.train()
    loss_value = float("nan")
    # the original's bookkeeping: best (top-1, head) over the epochs, strictly above the best so far from 0
    best, last, per_epoch, eval_seconds = (0.0, "", None, {}), None, [], 0.0
    for step, (images, labels, _) in enumerate(loader):
        blocks = _features(run, images.to(device, non_blocking=True), n_max)
        outputs = heads(blocks)
        labels = labels.to(device)
        loss = sum(criterion(v, labels) for v in outputs.values())
        optimizer.zero_grad()
        loss.backward()
        if ctx.initialized:
            for p in heads.parameters():
                dist.all_reduce(p.grad)
                p.grad /= ctx.world_size
        optimizer.step()
        scheduler.step()
        loss_value = float(loss.detach())
        progress.update(1)
        if step % max(1, epoch_length) == epoch_length - 1 or step == max_iter - 1:
            epoch = step // max(1, epoch_length)
            t0 = time.perf_counter()
            accuracies = evaluate()
            eval_seconds += time.perf_counter() - t0
            if accuracies is not None:
                key = max(accuracies, key=accuracies.get)
                per_epoch.append({"epoch": epoch, "loss": loss_value, "best_classifier": key,
                                  "top1": accuracies[key]})
                logger.info("epoch %d: loss (sum over %d heads) %.4f, best head %s top-1 %.2f", epoch, len(grid),
                            loss_value, key, accuracies[key])
                if accuracies[key] > best[0]:
                    best = (accuracies[key], key, epoch, accuracies)
                last = accuracies
    train_seconds = progress.close() - eval_seconds
    if last is None:
        return None
    top1, key, epoch, best_accuracies = best
    return {"metrics": {"top1": top1}, "num_samples": n,
            "extra": {"best_classifier": key, "best_epoch": epoch, "all_accuracies": last,
                      "all_accuracies_epoch": per_epoch[-1]["epoch"], "best_epoch_accuracies": best_accuracies,
                      "per_epoch": per_epoch, "final_train_loss": loss_value},
            "timing": {"train_seconds": train_seconds, "seconds": eval_seconds,
                       "images_per_s_rank0": len(sampler) * max(1, len(per_epoch)) / max(eval_seconds, 1e-9)}}
