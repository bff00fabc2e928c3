"""Zero-shot classification (the original ``tools/test_zero_shot_hf.py``).

Classifier: for every class, the text features (L2-normalised) of all templates filled with the class
name are averaged and L2-normalised again; the columns of ``W`` (D, K) are these class embeddings.
Image: ``Resize((S, S))`` bilinear, the CLIP image feature (L2-normalised); logits ``100 * f @ W``;
top-1 / top-5 accuracy in percent over all images.

Speed: the text tower is causal and pooled at the end-of-text token (``argmax`` of the ids, EOT being
the largest id), so no position after the longest EOT of a batch can change the pooled feature. With
``truncate=True`` the tower runs only up to that position; ``truncate=False`` is the original-exact path.
"""

from __future__ import annotations

import logging
from itertools import islice
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .classnames import IMAGENET_CLASSNAMES
from .context import Progress, Run, gather_by_index
from .data import ImageFolderDataset, ShardSampler, make_loader

logger = logging.getLogger(__name__)


def text_features(model, tokens: torch.Tensor, truncate: bool = True) -> torch.Tensor:
    """L2-normalised CLIP text features (B, D) of token ids (B, C); ``truncate``: run the tower on positions
    ``0 .. max EOT`` only (VTPModel.get_clip_text_feature's ``truncate``; the full length where that is not
    exact). ``False`` is the original's full-length path."""
    return model.get_clip_text_feature(tokens, normalize=True, truncate=truncate)


def _batched(items: Sequence, n: int):
    it = iter(items)
    while batch := list(islice(it, n)):
        yield batch


def build_classifier(run: Run, classnames: Sequence[str], templates: Sequence[str], truncate: bool = True,
                     classes_per_batch: int = 10, show_progress: bool = True) -> torch.Tensor:
    """Zero-shot weights (D, K), float32: per class, mean of its normalised template features, renormalised."""
    from vtp.model import _tokenizer

    tokenize = _tokenizer(run.model.config.text_context_length)
    progress = Progress(len(classnames), "classifier", enabled=show_progress and run.ctx.is_main, unit="class")
    columns = []
    with torch.inference_mode(), run.autocast():
        for batch in _batched(classnames, classes_per_batch):
            prompts = [t.format(c) for c in batch for t in templates]
            tokens = tokenize(prompts).to(run.device)
            feats = text_features(run.model, tokens, truncate=truncate)  # (k*T, D)
            feats = feats.reshape(len(batch), len(templates), -1).mean(dim=1)
            columns.append(F.normalize(feats, dim=1).T.float())  # (D, k)
            progress.update(len(batch))
    progress.close()
    return torch.cat(columns, dim=1)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> list[list[bool]]:
    """Per sample and per k: is the target among the k highest logits (k clipped to the class count)."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hit = pred.eq(targets.view(-1, 1))
    return [[bool(hit[i, :min(k, kmax)].any()) for k in ks] for i in range(logits.shape[0])]


def resolve_classnames(dataset: ImageFolderDataset, spec: Optional[str]) -> tuple[list[str], str]:
    """(class names, source). ``imagenet`` (default when the dataset has 1000 classes), ``folders``
    (the folder names, ``_`` read as a space) or a text file with one name per line in folder order."""
    from .data import DatasetError

    k = len(dataset.classes)
    if spec is None:
        spec = "imagenet" if k == len(IMAGENET_CLASSNAMES) else "folders"
    if spec == "imagenet":
        names, source = list(IMAGENET_CLASSNAMES), "imagenet (OpenAI/OpenCLIP names)"
    elif spec == "folders":
        names, source = [c.replace("_", " ") for c in dataset.classes], "folders"
    else:
        try:
            with open(spec, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise DatasetError(f"--classnames {spec}: cannot read the file ({exc}); give one name per line, "
                               f"in the sorted order of the class folders") from exc
        source = f"file {spec}"
    if len(names) != k:
        raise DatasetError(f"{len(names)} class names ({source}) for {k} class folders in {dataset.root}; "
                           f"pass --classnames folders or a file with {k} names in folder order")
    return names, source


def evaluate(run: Run, dataset: ImageFolderDataset, classifier: torch.Tensor, batch_size: int = 64,
             workers: Optional[int] = None, limit: Optional[int] = None) -> Optional[dict]:
    """Top-1/top-5 accuracy (percent) over the dataset (first ``limit`` images); the dict on rank 0, else None."""
    ctx = run.ctx
    n = len(dataset) if limit is None else min(limit, len(dataset))
    sampler = ShardSampler(n, ctx.rank, ctx.world_size)
    loader = make_loader(dataset, sampler, batch_size, workers, pin_memory=run.device.type != "cpu")
    classifier = classifier.to(run.device)
    progress = Progress(len(sampler), "zero-shot", enabled=ctx.is_main)
    indices, hits = [], []
    with torch.inference_mode():
        for images, targets, idx in loader:
            images = images.to(run.device, dtype=run.input_dtype(), non_blocking=True)
            with run.autocast():
                feats = run.model.get_clip_image_feature(images, normalize=True)
                logits = 100.0 * feats.float() @ classifier
            hits += topk_correct(logits.float().cpu(), targets)
            indices += idx.tolist()
            progress.update(len(idx))
    seconds = progress.close()
    merged = gather_by_index(ctx, indices, hits, n)
    if merged is None:
        return None
    top1 = 100.0 * sum(h[0] for h in merged) / n
    top5 = 100.0 * sum(h[1] for h in merged) / n
    return {"metrics": {"top1": top1, "top5": top5}, "num_samples": n,
            "timing": {"seconds": seconds, "images_per_s_rank0": len(sampler) / max(seconds, 1e-9)}}
