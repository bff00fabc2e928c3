"""Tool-level parity: vtp_tools' zero-shot, extraction and reconstruction against the original tools' recipe,
image by image, on a folder the user gives (``python -m verify.bench_original --tools``).

The original side (:class:`OriginalSide`) is the original tools' per-image steps written out with the parts
taken from the original checkout: its ``VTPModel``, its tokenizer, the class names and the 80 templates read
from ``tools/test_zero_shot_hf.py`` (by ``ast``, so torchvision need not import) and ``center_crop_arr`` from
``vtp/utils/image_utils.py``. The steps: zero-shot ``Resize((S, S))`` (PIL bilinear), ToTensor, Normalize;
classifier as ``build_zero_shot_classifier`` (10 classes per batch, normalise, mean over templates,
normalise); logits ``100 f @ W``. Extraction: ``center_crop_arr``, the image and its flip, latents.
Reconstruction: ``center_crop_arr``, encode, decode, ``Normalize(-m/s, 1/s)``, clamp, per-image PSNR as
``calculate_psnr`` and SSIM (``vtp.image.ssim``; the original's torchmetrics computes the same formula).
Images are listed in torchvision ImageFolder order (:func:`vtp_tools.eval.data.find_samples`).

Our side runs the package's own functions (``vtp_tools.eval.zero_shot``, the ImageFolder transforms,
``vtp_tools.eval.reconstruction``) with their defaults (fusion ``auto``, EOT-truncated text tower), on the
CPU in fp32. :func:`compare_tools` returns the per-image agreement; :func:`format_report` prints it.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vtp.image import IMAGENET_MEAN, IMAGENET_STD

from .eval.data import find_samples, load_rgb


def _to_normalized(img: Image.Image) -> torch.Tensor:
    """ToTensor + Normalize, written out: uint8 HWC -> float CHW / 255, then (x - mean) / std."""
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
    return (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def read_zero_shot_data(tool_file: Path) -> tuple[list[str], list[str]]:
    """(class names, templates with ``{}``) from the original ``tools/test_zero_shot_hf.py``, read by ``ast``."""
    tree = ast.parse(Path(tool_file).read_text(encoding="utf-8"))
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    names = list(ast.literal_eval(found["IMAGENET_CLASSNAMES"]))
    templates = []
    for lam in found["OPENAI_IMAGENET_TEMPLATES"].elts:  # lambda c: f'a photo of a {c}.'
        parts = [v.value if isinstance(v, ast.Constant) else "{}" for v in lam.body.values]
        templates.append("".join(parts))
    return names, templates


def load_center_crop_arr(repo: Path) -> Callable:
    """``center_crop_arr`` from the original checkout's ``vtp/utils/image_utils.py`` (PIL and numpy only)."""
    path = Path(repo) / "vtp" / "utils" / "image_utils.py"
    spec = importlib.util.spec_from_file_location("vtp_original_image_utils", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.center_crop_arr


@dataclass
class OriginalSide:
    """The original tools' per-image steps on ``model`` (see the module docstring)."""

    model: torch.nn.Module
    tokenizer: Callable
    classnames: Sequence[str]
    templates: Sequence[str]
    center_crop_arr: Callable

    def zero_shot_predictions(self, root: Path, paths: list[str], size: int) -> list[int]:
        with torch.no_grad():
            columns = []
            for b in range(0, len(self.classnames), 10):
                batch = self.classnames[b:b + 10]
                tokens = self.tokenizer([t.format(c) for c in batch for t in self.templates])
                feats = self.model.get_clip_text_feature(tokens, normalize=True)
                feats = F.normalize(feats.reshape(len(batch), len(self.templates), -1).mean(dim=1), dim=1)
                columns.append(feats.T)
            classifier = torch.cat(columns, dim=1)
        with torch.inference_mode():
            x = torch.stack([_to_normalized(load_rgb(root / p).resize((size, size), Image.BILINEAR)) for p in paths])
            logits = 100.0 * self.model.get_clip_image_feature(x, normalize=True) @ classifier
        return logits.argmax(dim=1).tolist()

    def cropped(self, root: Path, paths: list[str], size: int) -> torch.Tensor:
        return torch.stack([_to_normalized(self.center_crop_arr(load_rgb(root / p), size)) for p in paths])

    def latents(self, root: Path, paths: list[str], size: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.cropped(root, paths, size)
        with torch.no_grad():
            return self.model.get_reconstruction_latents(x), self.model.get_reconstruction_latents(x.flip(-1))

    def psnr_ssim(self, root: Path, paths: list[str], size: int) -> list[tuple[float, float]]:
        from vtp.image import ssim

        from .eval.reconstruction import unnormalize

        x = self.cropped(root, paths, size)
        with torch.no_grad():
            rec = self.model.get_latents_decoded_images(self.model.get_reconstruction_latents(x))
        a, b = unnormalize(x).clamp(0, 1), unnormalize(rec).clamp(0, 1)
        rows = []
        for i in range(len(paths)):
            mse = torch.mean((a[i] * 255.0 - b[i] * 255.0) ** 2)
            p = float("inf") if mse == 0 else 20 * torch.log10(torch.tensor(255.0) / torch.sqrt(mse)).item()
            rows.append((p, ssim(a[i:i + 1], b[i:i + 1], data_range=1.0).item()))
        return rows


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.vector_norm((a - b).double()) / torch.linalg.vector_norm(b.double()).clamp_min(1e-30)).item()


def compare_tools(ours_model, original: OriginalSide, root: Path, limit: Optional[int] = None,
                  size: Optional[int] = None) -> dict:
    """Per-image agreement of our tools (CPU, fp32, their default fusion and text path) with ``original``
    on the ImageFolder ``root`` (first ``limit`` images). Returns {"images": [{path, ...}], "summary": {...}}."""
    from .eval import reconstruction, zero_shot
    from .eval.classnames import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES
    from .eval.context import open_run
    from .eval.data import ImageFolderDataset

    size = size or ours_model.config.image_size
    classes, samples = find_samples(root)
    samples = samples[: limit or len(samples)]
    paths = [p for p, _ in samples]
    run = open_run("cpu", "fp32", "auto", model=ours_model, identity={"kind": "parity"})

    ds = ImageFolderDataset(root, "resize", size=size)
    if list(classes) != list(ds.classes):
        raise RuntimeError("class folders changed while reading")
    # our own data: the 1000 names (the original's classifier, --classnames imagenet) and the first templates
    names, templates = list(IMAGENET_CLASSNAMES), list(OPENAI_IMAGENET_TEMPLATES[:len(original.templates)])
    classifier = zero_shot.build_classifier(run, names, templates, show_progress=False)
    ours_pred = zero_shot.evaluate(run, ds, classifier, batch_size=32, workers=0, limit=len(paths))["predictions"]
    orig_pred = original.zero_shot_predictions(Path(root), paths, size)

    crop = ImageFolderDataset(root, "center_crop", size=size)
    x = torch.stack([crop[i][0] for i in range(len(paths))])
    with torch.no_grad():
        ours_lat = run.model.get_reconstruction_latents(x)
        ours_flip = run.model.get_reconstruction_latents(torch.flip(x, dims=[-1]))
    orig_lat, orig_flip = original.latents(Path(root), paths, size)

    rec = reconstruction.evaluate(run, crop, batch_size=32, workers=0, limit=len(paths))["per_image"]
    orig_rec = original.psnr_ssim(Path(root), paths, size)

    images = []
    for i, p in enumerate(paths):
        images.append({"path": p, "pred_ours": ours_pred[i], "pred_original": orig_pred[i],
                       "latents_rel_l2": _rel_l2(ours_lat[i], orig_lat[i]),
                       "latents_flip_rel_l2": _rel_l2(ours_flip[i], orig_flip[i]),
                       "latents_equal": bool(torch.equal(ours_lat[i], orig_lat[i])),
                       "psnr_ours": rec[i][0], "psnr_original": orig_rec[i][0],
                       "ssim_ours": rec[i][1], "ssim_original": orig_rec[i][1]})
    n = len(images)
    summary = {"images": n, "classes": len(names), "templates": len(templates),
               "class_names_equal": names == list(original.classnames),
               "templates_equal": templates == list(original.templates),
               "zero_shot_same_prediction": sum(r["pred_ours"] == r["pred_original"] for r in images),
               "latents_bit_equal": sum(r["latents_equal"] for r in images),
               "latents_max_rel_l2": max(max(r["latents_rel_l2"], r["latents_flip_rel_l2"]) for r in images),
               "psnr_max_abs_diff": max(abs(r["psnr_ours"] - r["psnr_original"]) for r in images),
               "ssim_max_abs_diff": max(abs(r["ssim_ours"] - r["ssim_original"]) for r in images),
               "ours": "CPU fp32, fusion auto (" + (",".join(run.fusion_rules()["enabled"]) or "none")
                       + "), text tower up to the last EOT"}
    return {"images": images, "summary": summary}


def format_report(result: dict, show: int = 20) -> str:
    """A per-image table (the first ``show`` rows, then every disagreement) and the summary lines."""
    s = result["summary"]
    lines = [f"{'image':<40} {'pred ours/orig':>15} {'latent relL2':>13} {'PSNR ours/orig':>17} {'SSIM diff':>10}"]
    for i, r in enumerate(result["images"]):
        if i < show or r["pred_ours"] != r["pred_original"]:
            lines.append(f"{r['path'][-40:]:<40} {r['pred_ours']:>7}/{r['pred_original']:<7} "
                         f"{max(r['latents_rel_l2'], r['latents_flip_rel_l2']):>13.2e} "
                         f"{r['psnr_ours']:>8.4f}/{r['psnr_original']:<8.4f} "
                         f"{abs(r['ssim_ours'] - r['ssim_original']):>10.2e}")
    lines += [f"zero-shot: {s['zero_shot_same_prediction']}/{s['images']} images with the same prediction "
              f"({s['classes']} classes, {s['templates']} templates; class names equal the original's: "
              f"{s['class_names_equal']}, templates: {s['templates_equal']})",
              f"extraction: {s['latents_bit_equal']}/{s['images']} latents bit-equal, max relative L2 "
              f"{s['latents_max_rel_l2']:.2e} (image and flip)",
              f"reconstruction: max |PSNR difference| {s['psnr_max_abs_diff']:.2e} dB, max |SSIM difference| "
              f"{s['ssim_max_abs_diff']:.2e}",
              f"ours: {s['ours']}"]
    return "\n".join(lines)
