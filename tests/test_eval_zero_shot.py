"""Zero-shot: the CLI's top-1/top-5 and classifier equal an independent computation of the original formula;
truncating the text tower at the last EOT token changes nothing but speed."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_helpers import WNID_COLORS, make_image_folder
from PIL import Image

from vtp_tools.eval import zero_shot
from vtp_tools.eval.cli import main
from vtp_tools.eval.context import open_run
from vtp_tools.eval.data import ImageFolderDataset

TEMPLATES = ["a photo of a {}.", "itap of the {}.", "a blurry photo of my {}."]


def _reference(model, root, classes, size):
    """The original tool's formula, written out: per class mean of normalised template features, renormalised;
    images Resize((S, S)) bilinear, ImageNet-normalised; logits 100 f @ W."""
    with torch.no_grad():
        cols = []
        for c in classes:
            f = model.get_clip_text_feature([t.format(c) for t in TEMPLATES], normalize=True)
            cols.append(F.normalize(f.mean(0), dim=0))
        W = torch.stack(cols, dim=1)
        top1 = top5 = 0
        files = sorted(p for p in root.rglob("*.png"))
        for path in files:
            img = Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR)
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
            x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
            logits = 100 * model.get_clip_image_feature(x[None], normalize=True) @ W
            label = classes.index(path.parent.name.replace("_", " "))
            rank = (logits[0] > logits[0, label]).sum().item()
            top1 += rank < 1
            top5 += rank < 5
    return W, 100 * top1 / len(files), 100 * top5 / len(files)


def test_cli_equals_independent_formula(tmp_path, tiny_checkpoint, tiny_model):
    root = make_image_folder(tmp_path / "ds", per_class=3)
    tpl = tmp_path / "templates.txt"
    tpl.write_text("\n".join(TEMPLATES))
    out = tmp_path / "zs.json"
    code = main(["zero-shot", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--fusion", "none", "--workers", "0", "--image-size", "32", "--templates", str(tpl),
                 "--batch-size", "4", "--out", str(out), "-q"])
    assert code == 0
    result = json.loads(out.read_text())
    classes = ["blue whale", "green frog", "red fox"]
    _, top1, top5 = _reference(tiny_model, root, classes, 32)
    assert result["metrics"]["top1"] == pytest.approx(top1)
    # 3 classes: top-5 would count every image (the reference's 100 %); it is reported as not applicable
    assert top5 == 100.0 and result["metrics"]["top5"] is None
    assert "not applicable: 3 classes" in result["options"]["top5"]
    assert result["num_samples"] == 9 and result["dataset"]["num_images"] == 9
    assert result["options"]["classnames"].startswith("folders") and result["options"]["text_truncated_at_eot"]


def test_wnid_folders_get_imagenet_names_whatever_subset(tmp_path, tiny_checkpoint):
    root = make_image_folder(tmp_path / "ds", per_class=1, colors=WNID_COLORS)
    ds = ImageFolderDataset(root)
    names, source, columns = zero_shot.resolve_classnames(ds, None)
    assert names == ["tench", "goldfish", "red fox"] and source.startswith("imagenet-wnids") and columns is None
    names, source, columns = zero_shot.resolve_classnames(ds, "imagenet")  # the original's 1000-way classifier
    assert len(names) == 1000 and columns == [0, 1, 277] and names[277] == "red fox"
    assert zero_shot.resolve_classnames(ds, "folders")[0] == ["n01440764", "n01443537", "n02119022"]
    out = tmp_path / "zs.json"
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {}.")
    assert main(["zero-shot", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--workers", "0", "--image-size", "32", "--templates", str(tpl), "--out", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["options"]["classnames"].startswith("imagenet-wnids") and result["options"]["num_classes"] == 3


def test_default_fusion_is_exact_and_recorded(tmp_path, tiny_checkpoint, tiny_model):
    """The default (auto) leaves the text tower's exact GELU alone: features bit-identical to the unpatched
    model on the CPU; 'all' swaps in tanh GELU and changes them. The result names the rules."""
    from vtp.model import _tokenizer

    tokens = _tokenizer(tiny_model.config.text_context_length)(["a photo of a red fox.", "itap of the tench."])
    with torch.no_grad():
        plain = tiny_model.get_clip_text_feature(tokens)
        feats = {}
        for spec in ("auto", "all"):
            run = open_run("cpu", "fp32", spec, model=copy.deepcopy(tiny_model), identity={"kind": "test"})
            feats[spec] = run.model.get_clip_text_feature(tokens)
    assert torch.equal(feats["auto"], plain)
    assert not torch.equal(feats["all"], plain)
    root = make_image_folder(tmp_path / "ds", per_class=1)
    out = tmp_path / "zs.json"
    tpl = tmp_path / "templates.txt"
    tpl.write_text("a photo of a {}.")
    assert main(["zero-shot", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--workers", "0", "--image-size", "32", "--templates", str(tpl), "--out", str(out), "-q"]) == 0
    result = json.loads(out.read_text())
    assert result["fusion"] == "auto" and result["precision"] == "fp32"  # the original zero-shot tool's default
    assert "gelu" not in result["fusion_rules"]["enabled"] and result["fusion_rules"]["approximations"] == []
    assert "layernorm" in result["fusion_rules"]["enabled"]


def test_classifier_matches_reference_and_truncation_is_exact(tmp_path, tiny_model):
    run = open_run("cpu", "fp32", "none", model=tiny_model, identity={"kind": "test"})
    classes = ["blue whale", "green frog", "red fox"]
    fast = zero_shot.build_classifier(run, classes, TEMPLATES, truncate=True, show_progress=False)
    exact = zero_shot.build_classifier(run, classes, TEMPLATES, truncate=False, show_progress=False)
    W, _, _ = _reference(tiny_model, make_image_folder(tmp_path / "ds", per_class=1), classes, 32)
    torch.testing.assert_close(exact, W, rtol=0, atol=1e-6)
    torch.testing.assert_close(fast, exact, rtol=0, atol=1e-5)


def test_truncated_text_features_per_prompt():
    from vtp.model import _tokenizer

    from conftest import tiny_config
    from vtp import VTPModel

    model = VTPModel.synthetic(tiny_config(), seed=1).eval()
    tokens = _tokenizer(model.config.text_context_length)(["a", "a much longer prompt with many more words in it"])
    with torch.no_grad():
        full = model.get_clip_text_feature(tokens)
        cut = zero_shot.text_features(model, tokens, truncate=True)
    assert (torch.linalg.vector_norm(cut - full) / torch.linalg.vector_norm(full)).item() < 1e-5


def test_topk_correct():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.3]])
    assert zero_shot.topk_correct(logits, torch.tensor([1, 2]), ks=(1, 2)) == [[True, True], [False, True]]


def test_imagenet_names_need_1000_classes(tmp_path, tiny_checkpoint, capsys):
    root = make_image_folder(tmp_path / "ds", per_class=1)
    code = main(["zero-shot", "--data", str(root), "--weights", str(tiny_checkpoint), "--device", "cpu",
                 "--classnames", "imagenet", "--workers", "0", "--out", str(tmp_path / "r.json"), "-q"])
    assert code == 2 and "1000 class names" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


def test_ctrl_c_is_one_line(tmp_path, monkeypatch, capsys):
    from vtp_tools.eval import cli

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run", interrupted)
    assert cli.main(["zero-shot", "--data", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err.strip().startswith("interrupted: no result was written") and "Traceback" not in err
