"""Zero-shot classification (the original ``tools/test_zero_shot_hf.py``).

Classifier: for every class, the text features (L2-normalised) of all templates filled with the class
name are averaged and L2-normalised again; the columns of ``W`` (D, K) are these class embeddings.
Image: ``Resize((S, S))`` bilinear, the CLIP image feature (L2-normalised); logits ``100 * f @ W``;
top-1 / top-5 accuracy in percent over all images (top-5 is not applicable, reported as None, with fewer
than 5 classes: every image would count as a hit).

Class names (:func:`resolve_classnames`, recorded in the result): folders named by ImageNet WordNet ids
get the ImageNet names of those ids, whatever subset is present (all 1000: exactly the original's
classifier); other folders their own names. ``imagenet`` is the original's 1000-way classifier on any
wnid subset (labels mapped by wnid), so its predictions are the original tool's, image by image.

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

from .classnames import IMAGENET_CLASSNAMES, IMAGENET_WNIDS
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


def resolve_classnames(dataset: ImageFolderDataset, spec: Optional[str]) -> tuple[list[str], str, Optional[list[int]]]:
    """(class names, source, columns): the classifier's class names, where they come from, and for each
    folder label its classifier column (None: the label itself).

    ``spec``: None (default: ``wnids`` when every class folder is an ImageNet wnid, else ``folders``);
    ``wnids`` (the ImageNet names of the wnid folders present, in folder order); ``imagenet`` (the 1000
    names, the original's classifier; labels mapped by wnid, or by folder order for 1000 other folders);
    ``folders`` (the folder names, ``_`` read as a space); or a text file, one name per line in folder order.
    """
    from .data import DatasetError

    k = len(dataset.classes)
    wnid_index = {w: i for i, w in enumerate(IMAGENET_WNIDS)}
    not_wnids = [c for c in dataset.classes if c not in wnid_index]
    columns = None
    if spec is None:
        spec = "folders" if not_wnids else "wnids"
    if spec == "wnids":
        if not_wnids:
            raise DatasetError(f"--classnames wnids: folder(s) {', '.join(not_wnids[:5])} of {dataset.root} are not "
                               f"ImageNet wnids (n01440764 ...); pass --classnames folders or a file")
        names = [IMAGENET_CLASSNAMES[wnid_index[c]] for c in dataset.classes]
        source = f"imagenet-wnids: the ImageNet names of the {k} wnid folder(s)"
    elif spec == "imagenet":
        names = list(IMAGENET_CLASSNAMES)
        if not not_wnids:
            columns = [wnid_index[c] for c in dataset.classes]
            source = f"imagenet: the 1000 ImageNet names (the original's classifier), {k} wnid folder(s) mapped by wnid"
        elif k == len(IMAGENET_CLASSNAMES):
            source = "imagenet: the 1000 ImageNet names (the original's classifier), labels in folder order"
        else:
            raise DatasetError(f"1000 class names (imagenet) for {k} class folders in {dataset.root} that are not "
                               f"ImageNet wnids; pass --classnames folders or a file with {k} names in folder order")
    elif spec == "folders":
        names, source = [c.replace("_", " ") for c in dataset.classes], "folders: the folder names"
    else:
        try:
            with open(spec, encoding="utf-8") as f:
                names = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise DatasetError(f"--classnames {spec}: cannot read the file ({exc}); give one name per line, "
                               f"in the sorted order of the class folders") from exc
        source = f"file {spec}"
    if columns is None and len(names) != k:
        raise DatasetError(f"{len(names)} class names ({source}) for {k} class folders in {dataset.root}; "
                           f"pass --classnames folders or a file with {k} names in folder order")
    return names, source, columns


def evaluate(run: Run, dataset: ImageFolderDataset, classifier: torch.Tensor, batch_size: int = 128,
             workers: Optional[int] = None, limit: Optional[int] = None,
             columns: Optional[list[int]] = None) -> Optional[dict]:
    """Top-1/top-5 accuracy (percent) over the dataset (first ``limit`` images); the dict on rank 0, else None.

    ``columns``: the classifier column of each folder label (from :func:`resolve_classnames`). The dict also
    holds ``predictions``, every image's top-1 column in dataset order (for parity checks, not in the result).
    """
    ctx = run.ctx
    n = len(dataset) if limit is None else min(limit, len(dataset))
    sampler = ShardSampler(n, ctx.rank, ctx.world_size)
    loader = make_loader(dataset, sampler, batch_size, workers, pin_memory=run.device.type != "cpu")
    classifier = classifier.to(run.device)
    progress = Progress(len(sampler), "zero-shot", enabled=ctx.is_main)
    to_column = None if columns is None else torch.tensor(columns)
    indices, rows = [], []
    with torch.inference_mode():
        for images, targets, idx in loader:
            images = images.to(run.device, dtype=run.input_dtype(), non_blocking=True)
            with run.autocast():
                feats = run.model.get_clip_image_feature(images, normalize=True)
                logits = 100.0 * feats.float() @ classifier
            logits = logits.float().cpu()
            targets = targets if to_column is None else to_column[targets]
            hits = topk_correct(logits, targets)
            rows += [(h, int(p)) for h, p in zip(hits, logits.argmax(dim=1))]
            indices += idx.tolist()
            progress.update(len(idx))
    seconds = progress.close()
    merged = gather_by_index(ctx, indices, rows, n)
    if merged is None:
        return None
    top1 = 100.0 * sum(h[0] for h, _ in merged) / n
    top5 = 100.0 * sum(h[1] for h, _ in merged) / n if classifier.shape[1] >= 5 else None
    return {"metrics": {"top1": top1, "top5": top5}, "num_samples": n, "predictions": [p for _, p in merged],
            "timing": {"seconds": seconds, "images_per_s_rank0": len(sampler) / max(seconds, 1e-9)}}
