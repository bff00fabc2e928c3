"""Finding and verifying the metric networks' weight files (they cannot be downloaded from here).

Each file is looked for in: an explicit path (``--inception``, ``--vgg``, ``--lpips``), then
``$VTP_METRIC_WEIGHTS/<name>``, then the usual cache location of the tool that publishes it
(``$TORCH_HOME/hub/checkpoints`` = ``~/.cache/torch/hub/checkpoints`` for the torchvision and pytorch-fid
files, the ``lpips`` package's ``weights/v0.1`` folder for the LPIPS heads). A missing file raises
:class:`MetricWeightsMissing` whose message says where to put it and where to get it.

Verification: torch-hub files carry the first 8 hex digits of their sha256 in their name
(``-6726825d.pth``) and are checked against them; the LPIPS heads against the md5 that the original
tool checks. The full sha256 of every file read is returned for the results file.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class MetricWeightsMissing(FileNotFoundError):
    """A metric network's weight file is missing or does not match its known digest."""


@dataclass(frozen=True)
class WeightFile:
    name: str
    url: str
    sha256_prefix: Optional[str] = None
    md5: Optional[str] = None
    what: str = ""


INCEPTION = WeightFile(
    "pt_inception-2015-12-05-6726825d.pth",
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
    sha256_prefix="6726825d", what="FID Inception-v3 (pytorch-fid)")
VGG16 = WeightFile("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
                   sha256_prefix="397923af", what="VGG16 ImageNet weights (torchvision)")
LPIPS_VGG = WeightFile("vgg.pth", "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
                       what="LPIPS v0.1 linear heads for VGG (lpips package / LightningDiT)")
# The LPIPS head file the original tool downloads (LightningDiT / taming-transformers) and checks by md5.
LPIPS_MD5 = "d507d7349b931f0638a25a48a722f98a"


def _hash(path: Path) -> tuple[str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def _candidates(spec: WeightFile) -> list[Path]:
    out = []
    if os.environ.get("VTP_METRIC_WEIGHTS"):
        out.append(Path(os.environ["VTP_METRIC_WEIGHTS"]) / spec.name)
    torch_home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    out.append(torch_home / "hub" / "checkpoints" / spec.name)
    if spec is LPIPS_VGG:
        try:
            import importlib.util

            found = importlib.util.find_spec("lpips")
            if found and found.origin:
                out.append(Path(found.origin).parent / "weights" / "v0.1" / "vgg.pth")
        except (ImportError, ValueError):
            pass
        out.append(torch_home / "hub" / "checkpoints" / "lpips_vgg.pth")
    return out


def locate(spec: WeightFile, explicit: "str | os.PathLike | None" = None) -> dict:
    """{"path", "sha256", "verified"} of the weight file, verified; MetricWeightsMissing otherwise."""
    paths = [Path(explicit)] if explicit else _candidates(spec)
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        where = "\n  ".join(str(p) for p in paths)
        raise MetricWeightsMissing(
            f"{spec.what} weights not found; looked in:\n  {where}\nThis machine cannot download them: fetch "
            f"{spec.url} elsewhere and copy it to one of these paths (or set VTP_METRIC_WEIGHTS to its folder, "
            f"or pass the file's path explicitly)")
    sha, md5 = _hash(path)
    verified = None
    if spec.sha256_prefix:
        verified = sha.startswith(spec.sha256_prefix)
    elif spec is LPIPS_VGG:
        verified = md5 == LPIPS_MD5 or None  # the lpips package's own copy has no published digest
    if verified is False:
        raise MetricWeightsMissing(f"{path}: sha256 {sha[:16]}... does not start with {spec.sha256_prefix} "
                                   f"(the digest in the file name); the file is corrupt or not {spec.name}")
    return {"path": str(path), "sha256": sha, "verified": bool(verified)}
