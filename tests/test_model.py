"""VTPModel: state-dict layout, API semantics, loading formats, synthetic weights and bad input."""

import json
import math

import pytest
import torch

from conftest import tiny_config
from vtp import ConfigError, VTPConfig, VTPModel
from vtp.checkpoint import CheckpointError


def meta_model(config):
    with torch.device("meta"):
        return VTPModel(config)


# --------------------------------------------------------------------------------------- state dict layout
def test_spec_example_key_count_and_parameters():
    """Spec §2.4: 477 keys and 106,857,345 parameters for the illustrative config."""
    c = VTPConfig.from_dict(dict(vision_embed_dim=384, vision_num_heads=6, decoder_embed_dim=384,
                                 decoder_num_heads=6, text_embed_dim=512, text_num_heads=8))
    m = meta_model(c)
    sd = m.state_dict()
    assert len(sd) == 477
    assert "attn_mask" not in sd  # non-persistent (spec trap 8)
    assert sum(p.numel() for p in m.parameters()) == 106_857_345
    assert sum(p.numel() for p in m.trunk.parameters()) == 21_611_520
    assert sum(p.numel() for p in m.pixel_decoder.parameters()) == 21_621_120
    assert sd["text_projection"].shape == (512, 512)
    assert sd["trunk.blocks.0.mlp.w1.weight"].shape == (1024, 384)
    assert sd["pixel_decoder.proj_out.weight"].shape == (768, 384, 1, 1)
    assert sd["trunk.rope_embed.periods"].dtype == torch.bfloat16
    assert list(sd)[:3] == ["positional_embedding", "text_projection", "logit_scale"]


def test_large_preset_is_the_published_config():
    c = VTPConfig.from_preset("VTP-Large-f16d64")
    d = c.to_dict()
    assert len(d) == 44 and d["vision_embed_dim"] == 1024 and d["transformers_version"] == "4.56.0.dev0"
    m = meta_model(c)
    assert len(m.state_dict()) == 789
    assert sum(p.numel() for p in m.parameters()) == 731_570_689
    assert m.state_dict()["trunk.blocks.0.mlp.w1.weight"].shape == (2736, 1024)


def test_presets_are_marked():
    from vtp.config import load_presets

    p = load_presets()
    assert p["VTP-Large-f16d64"]["approximate"] is False
    assert p["VTP-Small-f16d64"]["approximate"] and p["VTP-Base-f16d64"]["approximate"]
    small = VTPConfig.from_preset("VTP-Small-f16d64")
    assert (small.vision_embed_dim, small.vision_depth, small.vision_num_heads) == (384, 12, 6)
    assert (small.decoder_embed_dim, small.text_embed_dim, small.text_depth) == (384, 768, 12)


@pytest.mark.parametrize("overrides,present,absent", [
    (dict(vision_init_values=0), [], ["trunk.blocks.0.ls1.gamma"]),  # 0 is falsy: no LayerScale
    (dict(text_ls_init_value=0.0), ["text_transformer.resblocks.0.ls_1.gamma"], []),  # not None: LayerScale
    (dict(vision_use_qk_norm=True), ["trunk.blocks.1.attn.q_norm.weight"], []),
    (dict(vision_feature_bottleneck=None), [], ["trunk.feature_bottleneck.weight"]),
    (dict(vision_feature_bottleneck=32), [], ["trunk.feature_bottleneck.weight"]),  # b == D: no layer
    (dict(text_proj_bias=True), ["text_projection.weight", "text_projection.bias"], ["text_projection"]),
    (dict(init_logit_bias=1.0), ["logit_bias"], []),
    (dict(train_clip=False), [], ["token_embedding.weight", "visual_proj.weight", "logit_scale"]),
    (dict(train_reconstruction=False), [], ["pixel_decoder.proj_in.weight"]),
    (dict(vision_norm_layer="layernorm"), ["trunk.norm.bias"], []),
])
def test_conditional_keys(overrides, present, absent):
    sd = meta_model(tiny_config(**overrides)).state_dict()
    for k in present:
        assert k in sd
    for k in absent:
        assert k not in sd


# --------------------------------------------------------------------------------------- config
def test_config_roundtrip_keeps_unknown_and_meta(tmp_path, parity_dir, caplog):
    data = json.loads((parity_dir / "default" / "config.json").read_text())
    data["vision_mlp_ratio"] = 4  # int where a float is expected
    data["torch_dtype"] = data.pop("dtype")
    data["my_custom_key"] = {"a": 1}
    (tmp_path / "config.json").write_text(json.dumps(data))
    with caplog.at_level("WARNING"):
        c = VTPConfig.from_json(tmp_path)
    assert "my_custom_key" in caplog.text
    assert c.vision_mlp_ratio == 4.0 and isinstance(c.vision_mlp_ratio, float)
    assert c.unknown_keys == ["my_custom_key"]
    out = c.to_dict()
    assert out["torch_dtype"] == "float32" and "dtype" not in out and out["my_custom_key"] == {"a": 1}
    assert list(out) == sorted(out)
    assert VTPConfig.from_dict(out) == c


@pytest.mark.parametrize("text,words", [
    ("{not json", ["not valid JSON"]),
    ("[1, 2]", ["expected a JSON object"]),
    ('{"model_type": "clip", "vision_embed_dim": 768}', ["model_type='clip'", "not a VTP config"]),
    ('{"hidden_size": 768}', ["not a VTP config"]),
    ('{"vision_embed_dim": "big"}', ["vision_embed_dim", "integer"]),
    ('{"vision_ffn_layer": "geglu"}', ["vision_ffn_layer", "swiglu"]),
    ('{"vision_embed_dim": 100, "vision_num_heads": 2}', ["divisible"]),
    ('{"text_embed_cls": true}', ["text_embed_cls", "not supported"]),
])
def test_bad_config_json(tmp_path, text, words):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError) as e:
        VTPConfig.from_json(tmp_path / "config.json")
    for w in words:
        assert w in str(e.value)
    assert "config.json" in str(e.value)


# --------------------------------------------------------------------------------------- loading
def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        VTPModel.from_pretrained(tmp_path / "nope")
    with pytest.raises(ConfigError, match="config file not found"):
        VTPModel.from_pretrained(tmp_path)
    tiny_config().save(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found.*model.safetensors"):
        VTPModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
@torch.no_grad()
def test_save_and_load_formats(tmp_path, make_tiny, fmt):
    model = make_tiny(seed=5)
    if fmt == "bin":
        model.config.save(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path, max_shard_bytes=2_000_000 if fmt == "sharded" else None)
    if fmt == "sharded":
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
        assert not (tmp_path / "model.safetensors").exists()
    loaded = VTPModel.from_pretrained(tmp_path)
    if fmt == "bin":  # torch.save of a bare state dict carries no mark
        assert loaded.weights_source == str(tmp_path) and not loaded.is_synthetic
    else:  # save_pretrained marks synthetic weights as such (vtp_synthetic in the safetensors metadata)
        assert loaded.weights_source == f"synthetic:custom:seed=5 from {tmp_path}" and loaded.is_synthetic
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    img = torch.randn(1, 3, 32, 32)
    assert torch.equal(model.get_reconstruction_latents(img), loaded.get_reconstruction_latents(img))
    assert torch.equal(loaded.attn_mask, model.attn_mask)


def test_saved_file_has_official_layout(tmp_path, make_tiny):
    from safetensors import safe_open

    make_tiny().save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("trunk.rope_embed.periods").dtype == torch.bfloat16
        assert f.get_tensor("trunk.cls_token").dtype == torch.float32
    assert "attn_mask" not in keys and "text_projection" in keys
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["architectures"] == ["VTPModel"] and cfg["model_type"] == "vtp"


def test_periods_stored_as_fp32_are_cast_to_bf16(tmp_path, make_tiny):
    from safetensors.torch import load_file, save_file

    model = make_tiny()
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    sd["trunk.rope_embed.periods"] = sd["trunk.rope_embed.periods"].float()
    save_file(sd, tmp_path / "model.safetensors")
    loaded = VTPModel.from_pretrained(tmp_path)
    assert loaded.trunk.rope_embed.periods.dtype == torch.bfloat16


def test_mismatched_checkpoint_lists_every_problem(tmp_path, make_tiny):
    from safetensors.torch import load_file, save_file

    make_tiny().save_pretrained(tmp_path)
    sd = load_file(tmp_path / "model.safetensors")
    del sd["trunk.norm.weight"]
    sd["proj"] = torch.zeros(2)  # a legacy training-class key
    sd["visual_proj.weight"] = torch.zeros(32, 8)
    save_file(sd, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        VTPModel.from_pretrained(tmp_path)
    msg = str(e.value)
    for words in ("missing keys (1)", "trunk.norm.weight", "unexpected keys (1)", "proj",
                  "visual_proj.weight: file [32, 8] vs config [32, 32]", "model.safetensors", "config.json"):
        assert words in msg


def test_wrong_config_for_weights(tmp_path, make_tiny):
    make_tiny().save_pretrained(tmp_path)
    tiny_config(vision_embed_dim=64, vision_num_heads=4).save(tmp_path)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        VTPModel.from_pretrained(tmp_path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_safetensors(tmp_path, make_tiny, damage):
    make_tiny().save_pretrained(tmp_path)
    f = tmp_path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\x01not a safetensors file" * 10,
                   "empty": b""}[damage])
    with pytest.raises(CheckpointError) as e:
        VTPModel.from_pretrained(tmp_path)
    assert "model.safetensors" in str(e.value) and "truncated or corrupt" in str(e.value)


def test_corrupt_bin(tmp_path, make_tiny):
    make_tiny().config.save(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: cannot read"):
        VTPModel.from_pretrained(tmp_path)


def test_loading_runs_no_initialisation(tmp_path, make_tiny, monkeypatch):
    make_tiny().save_pretrained(tmp_path)

    def boom(*a, **k):
        raise AssertionError("random initialisation ran during from_pretrained")

    def guard(original):
        def init(tensor, *a, **k):  # torch's modules initialise themselves; on meta tensors that costs nothing
            if not tensor.is_meta:
                raise AssertionError(f"{original.__name__} ran on a real tensor during from_pretrained")
            return original(tensor, *a, **k)
        return init

    monkeypatch.setattr(VTPModel, "init_weights", boom)
    for name in ("trunc_normal_", "kaiming_uniform_", "uniform_", "normal_", "xavier_uniform_"):
        monkeypatch.setattr(torch.nn.init, name, guard(getattr(torch.nn.init, name)))
    VTPModel.from_pretrained(tmp_path)


# --------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_and_marked(caplog):
    with caplog.at_level("WARNING"):
        a = VTPModel.synthetic(tiny_config(), seed=1)
    assert "SYNTHETIC" in caplog.text
    b = VTPModel.synthetic(tiny_config(), seed=1)
    c = VTPModel.synthetic(tiny_config(), seed=2)
    assert a.is_synthetic and a.weights_source == "synthetic:custom:seed=1"
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["trunk.blocks.0.attn.qkv.weight"], sc["trunk.blocks.0.attn.qkv.weight"])
    assert all(torch.isfinite(v.float()).all() for v in sa.values() if v.is_floating_point())
    assert torch.equal(a.trunk.rope_embed.periods, torch.tensor(
        [1.0, 3.15625, 10.0, 31.625], dtype=torch.bfloat16))  # head dim 16: bf16(10^(k/2))
    assert a.logit_scale.item() == pytest.approx(math.log(1 / 0.07))


def test_synthetic_preset_by_name():
    m = VTPModel.synthetic("VTP-Small-f16d64", seed=0)
    assert m.weights_source == "synthetic:VTP-Small-f16d64:seed=0"
    assert m.config.vision_embed_dim == 384


# --------------------------------------------------------------------------------------- API and bad input
@torch.no_grad()
def test_bottleneck_flags_per_method(tiny_model):
    img = torch.randn(2, 3, 32, 32)
    D, b = tiny_model.config.vision_embed_dim, tiny_model.config.bottleneck_dim
    assert tiny_model.get_last_layer_feature(img)["patch_tokens"].shape == (2, 4, D)
    assert tiny_model.get_last_layer_feature(img, use_bottleneck=True)["cls_token"].shape == (2, b)
    assert tiny_model(img, forward_type="feature")["patch_tokens"].shape == (2, 4, b)
    assert tiny_model.get_intermediate_layers_feature(img)[0].shape == (2, 4, D)
    logits, logits_t = tiny_model.get_clip_logits(img, ["a dog", "a cat", "a diagram"])
    assert logits.shape == (2, 3) and torch.equal(logits_t, logits.T)
    feats = tiny_model.get_clip_image_feature(img)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2))


@pytest.mark.parametrize("image,exc,words", [
    (torch.randn(3, 32, 32), ValueError, "4 dims"),
    (torch.randn(1, 4, 32, 32), ValueError, "3 channels"),
    (torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8), TypeError, "floating"),
    (torch.randn(1, 3, 30, 32), ValueError, "not divisible by the patch size 16"),
    (torch.randn(0, 3, 32, 32), ValueError, "empty batch"),
    ([[0.0]], TypeError, "torch.Tensor"),
])
def test_bad_images(tiny_model, image, exc, words):
    for call in (tiny_model.get_reconstruction_latents, tiny_model.get_clip_image_feature,
                 tiny_model.get_last_layer_feature, tiny_model.get_intermediate_layers_feature):
        with pytest.raises(exc, match=words):
            call(image)


@pytest.mark.parametrize("text,exc,words", [
    ([], ValueError, "empty prompt list"),
    (torch.zeros(0, 77, dtype=torch.int64), ValueError, "empty prompt list"),
    (torch.zeros(2, 76, dtype=torch.int64), ValueError, r"shape \(B, 77\)"),
    (torch.zeros(2, 77), TypeError, "int64"),
    (torch.full((1, 77), 49408), ValueError, "must lie in"),
    (42, TypeError, "token ids"),
])
def test_bad_text(tiny_model, text, exc, words):
    with pytest.raises(exc, match=words):
        tiny_model.get_clip_text_feature(text)


@torch.no_grad()
def test_long_text_is_truncated_like_the_original(tiny_model):
    long = "a photo of " + "a very " * 100 + "dog"
    f = tiny_model.get_clip_text_feature([long, "a dog"])
    assert f.shape == (2, tiny_model.config.text_embed_dim) and torch.isfinite(f).all()


def test_bad_latents_and_forward_type(tiny_model):
    with pytest.raises(ValueError, match="channels, the decoder expects 8"):
        tiny_model.get_latents_decoded_images(torch.randn(1, 4, 2, 2))
    with pytest.raises(ValueError, match="latents must be a tensor"):
        tiny_model.get_latents_decoded_images(torch.randn(4, 2, 2))
    with pytest.raises(ValueError, match="forward_type='bogus'"):
        tiny_model(torch.randn(1, 3, 16, 16), forward_type="bogus")
    with pytest.raises(ValueError, match="negative indices"):
        tiny_model.get_intermediate_layers_feature(torch.randn(1, 3, 16, 16), n=[-1])


def test_missing_parts_raise(make_tiny):
    no_clip = make_tiny(train_clip=False)
    with pytest.raises(RuntimeError, match="train_clip=false"):
        no_clip.get_clip_text_feature(["a dog"])
    no_dec = make_tiny(train_reconstruction=False)
    with pytest.raises(RuntimeError, match="train_reconstruction=false"):
        no_dec.get_latents_decoded_images(torch.randn(1, 8, 1, 1))


@torch.no_grad()
def test_nan_input_passes_through(tiny_model):
    img = torch.randn(1, 3, 32, 32)
    img[0, 0, 0, 0] = float("nan")
    lat = tiny_model.get_reconstruction_latents(img)
    assert torch.isnan(lat).any()  # the harness must see it, the model must not hide or reject it
    z = torch.randn(1, 8, 2, 2)
    z[0, 0, 0, 0] = float("nan")
    assert torch.isnan(tiny_model.get_latents_decoded_images(z)).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@torch.no_grad()
def test_autocast_keeps_rope_in_bf16(tiny_model, dtype):
    """Under fp16 autocast the original's bf16 RoPE raises in torch.stack/cat; ours runs, in bf16."""
    img = torch.randn(1, 3, 32, 32)
    plain = tiny_model.trunk.rope_embed(H=2, W=2)
    with torch.autocast("cpu", dtype=dtype):
        sin, cos = tiny_model.trunk.rope_embed(H=2, W=2)
        lat = tiny_model.get_reconstruction_latents(img)
        rec = tiny_model.get_latents_decoded_images(lat)
        f = tiny_model.get_clip_text_feature(["a dog"])
    assert sin.dtype == torch.bfloat16 and torch.equal(sin, plain[0]) and torch.equal(cos, plain[1])
    ref = tiny_model.get_reconstruction_latents(img)
    assert torch.isfinite(rec).all() and torch.isfinite(f).all()
    assert ((lat.float() - ref).norm() / ref.norm()) < 0.05


# --------------------------------------------------------------------------------------- weights identity, saving
def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temporaries(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("fmt", ["safetensors", "sharded", "bin"])
def test_identity_names_the_files_the_loader_read(tmp_path, make_tiny, fmt):
    import hashlib
    from pathlib import Path

    from vtp import weights

    model = make_tiny(seed=3)
    if fmt == "bin":
        model.config.save(tmp_path)
        torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    else:
        model.save_pretrained(tmp_path, max_shard_bytes=2_000_000 if fmt == "sharded" else None)
    loaded = VTPModel.from_pretrained(tmp_path)
    names = sorted(Path(f).name for f in loaded.checkpoint_files)
    assert (len(names) > 1) == (fmt == "sharded")
    digests = {n: _sha256(tmp_path / n) for n in names}
    combined = hashlib.sha256("".join(f"{digests[n]}  {n}\n" for n in names).encode()).hexdigest()

    identity = weights.weights_identity(tmp_path, files=loaded.checkpoint_files)
    assert identity == {"path": str(tmp_path.resolve()), "files": names,
                        "sha256": digests[names[0]] if len(names) == 1 else combined, "manifest": False}
    assert weights.weights_identity(tmp_path) == identity  # the loader's rule, inferred
    weights.write_manifest(tmp_path)
    reloaded = VTPModel.from_pretrained(tmp_path)
    assert weights.weights_identity(tmp_path, files=reloaded.checkpoint_files) == {**identity, "manifest": True}


def test_unlisted_model_safetensors_is_refused_at_load(tmp_path, make_tiny):
    from vtp import weights

    make_tiny(seed=1).save_pretrained(tmp_path, max_shard_bytes=2_000_000)
    weights.write_manifest(tmp_path)
    VTPModel.from_pretrained(tmp_path)  # the verified shards load
    (tmp_path / "model.safetensors").write_bytes(b"weights the manifest does not list")  # would be read first
    with pytest.raises(CheckpointError) as e:
        VTPModel.from_pretrained(tmp_path)
    assert "model.safetensors: not listed in manifest.json" in str(e.value)
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read as safetensors"):
        VTPModel.from_pretrained(tmp_path, verify="none")  # unverified, it is the file the loader reads


@pytest.mark.parametrize("first, second", [(None, 2_000_000), (2_000_000, None), (2_000_000, 200_000)],
                         ids=["single-then-sharded", "sharded-then-single", "fewer-then-more-shards"])
@torch.no_grad()
def test_save_replaces_the_weights_of_an_earlier_save(tmp_path, make_tiny, first, second):
    from vtp.checkpoint import find_weights

    make_tiny(seed=1).save_pretrained(tmp_path, max_shard_bytes=first)
    (tmp_path / "pytorch_model.bin").write_bytes(b"left alone")
    newer = make_tiny(seed=2)
    newer.save_pretrained(tmp_path, max_shard_bytes=second)

    kind, files = find_weights(tmp_path)
    expected = {f.name for f in files} | ({"model.safetensors.index.json"} if kind == "sharded" else set())
    assert {p.name for p in tmp_path.iterdir() if p.name.startswith("model")} == expected
    assert (tmp_path / "pytorch_model.bin").read_bytes() == b"left alone"
    a, b = newer.state_dict(), VTPModel.from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_concurrent_saves_use_their_own_temporary_files(tmp_path, make_tiny, monkeypatch):
    import threading
    from pathlib import Path

    import safetensors.torch

    real_save_file = safetensors.torch.save_file
    both_written = [threading.Barrier(2, timeout=20)]
    temporaries = []

    def save_file(tensors, filename, metadata=None):
        real_save_file(tensors, filename, metadata=metadata)
        temporaries.append(Path(filename).name)
        for barrier in both_written:
            barrier.wait()  # both temporary files exist at the same time

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    models = [make_tiny(seed=1), make_tiny(seed=2)]
    errors = []

    def save(model):
        try:
            model.save_pretrained(tmp_path)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=save, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(set(temporaries)) == 2 and all(n.startswith(".model.safetensors.") for n in temporaries)
    assert _temporaries(tmp_path) == []
    loaded = VTPModel.from_pretrained(tmp_path).state_dict()
    assert any(all(torch.equal(m.state_dict()[k], loaded[k]) for k in loaded) for m in models)

    both_written.clear()
    models[0].save_pretrained(tmp_path)  # a later save: yet another name, nothing left behind
    assert len(set(temporaries)) == 3 and _temporaries(tmp_path) == []


@pytest.mark.parametrize("mask", [0o077, 0o002])
def test_saved_files_follow_the_umask(tmp_path, make_tiny, mask):
    import os

    saved = os.umask(mask)
    try:
        make_tiny().save_pretrained(tmp_path, max_shard_bytes=2_000_000)
    finally:
        os.umask(saved)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert len(modes) > 3 and set(modes.values()) == {0o666 & ~mask}, modes


def test_text_truncation_is_exact_where_allowed_and_ignored_elsewhere(make_tiny):
    import torch

    from vtp.tokenizers import get_tokenizer

    tokens = get_tokenizer()(["a dog", "a photo of a small brown dog on a bench"])
    causal = make_tiny()
    full = causal.get_clip_text_feature(tokens)
    assert causal.can_truncate_text
    assert torch.allclose(causal.get_clip_text_feature(tokens, truncate=True), full, atol=1e-5)
    first = make_tiny(text_pool_type="first")  # pooled at position 0: truncation must not apply
    assert not first.can_truncate_text
    assert torch.equal(first.get_clip_text_feature(tokens, truncate=True), first.get_clip_text_feature(tokens))


def test_import_vtp_does_not_import_matplotlib():
    """matplotlib is a core dependency for the report's plots only: the model stays light to import."""
    import subprocess
    import sys

    code = "import sys, vtp, vtp.image, vtp.tokenizers; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
