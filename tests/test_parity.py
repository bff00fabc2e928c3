"""Numerical parity: the fixture saved by the original implementation, and every config switch against
the functional reference written from the spec (tests/functional_reference.py)."""

import numpy as np
import pytest
import torch

import functional_reference as ref
from conftest import tiny_config
from vtp import VTPModel

TOL = 1e-5  # relative L2 error: float32 rounding


def rel_l2(a, b) -> float:
    a = torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a).detach().double()
    b = torch.as_tensor(np.asarray(b) if not isinstance(b, torch.Tensor) else b).detach().double()
    assert a.shape == b.shape, f"shape {tuple(a.shape)} != {tuple(b.shape)}"
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def fixture_model(parity_dir):
    return VTPModel.from_pretrained(parity_dir / "default")


@pytest.fixture(scope="module")
def expected(parity_dir):
    return dict(np.load(parity_dir / "default" / "expected.npz"))


def _outputs(model, e):
    img, rect, text = (torch.from_numpy(e[k]) for k in ("image", "image_rect", "text"))
    out = {}
    lat = model.get_reconstruction_latents(img)
    out["recon_latents"], out["recon_images"] = lat, model.get_latents_decoded_images(lat)
    lat = model.get_reconstruction_latents(rect)
    out["recon_latents_rect"], out["recon_images_rect"] = lat, model.get_latents_decoded_images(lat)
    out["clip_image"] = model.get_clip_image_feature(img)
    out["clip_image_raw"] = model.get_clip_image_feature(img, normalize=False)
    out["clip_text"] = model.get_clip_text_feature(text)
    out["clip_text_raw"] = model.get_clip_text_feature(text, normalize=False)
    out["clip_logits"] = model.get_clip_logits(img, text)[0]
    f = model.get_last_layer_feature(img)
    out["ssl_cls"], out["ssl_patch"] = f["cls_token"], f["patch_tokens"]
    for i, (p, c) in enumerate(model.get_intermediate_layers_feature(img, n=2, return_class_token=True)):
        out[f"inter{i}_patch"], out[f"inter{i}_cls"] = p, c
    out["inter_reshape0"] = model.get_intermediate_layers_feature(img, n=[0], reshape=True)[0]
    return out


@torch.no_grad()
def test_fixture_parity_every_method(fixture_model, expected):
    out = _outputs(fixture_model, expected)
    names = [k for k in expected if k not in ("image", "image_rect", "text")]
    assert sorted(out) == sorted(names), "the test must cover every expected output"
    errors = {k: rel_l2(out[k], expected[k]) for k in names}
    bad = {k: v for k, v in errors.items() if v > TOL}
    assert not bad, f"relative L2 error above {TOL}: {bad}"


@torch.no_grad()
def test_fixture_forward_dicts(fixture_model, expected):
    img, text = torch.from_numpy(expected["image"]), torch.from_numpy(expected["text"])
    clip = fixture_model(img, text, forward_type="clip")
    assert rel_l2(clip["image_features"], expected["clip_image"]) <= TOL
    assert rel_l2(clip["text_features"], expected["clip_text"]) <= TOL
    assert torch.allclose(clip["logit_scale"], fixture_model.logit_scale.exp())
    rec = fixture_model(img, forward_type="rec")
    assert rel_l2(rec["reconstructed_image"], expected["recon_images"]) <= TOL
    assert rec["target_image"] is img
    feat = fixture_model(img, forward_type="feature")  # bottlenecked, unlike get_last_layer_feature()
    assert feat["patch_tokens"].shape[-1] == fixture_model.config.bottleneck_dim
    assert rel_l2(feat["patch_tokens"].transpose(1, 2).reshape(expected["recon_latents"].shape),
                  expected["recon_latents"]) <= TOL


@torch.no_grad()
def test_reference_matches_fixture(fixture_model, expected):
    """The functional reference reproduces the original's outputs: it is a valid oracle for the switches."""
    sd, c = fixture_model.state_dict(), fixture_model.config
    img, text = torch.from_numpy(expected["image"]), torch.from_numpy(expected["text"])
    assert rel_l2(ref.latents(sd, c, img), expected["recon_latents"]) <= TOL
    assert rel_l2(ref.decode(sd, c, torch.from_numpy(expected["recon_latents"])), expected["recon_images"]) <= TOL
    assert rel_l2(ref.clip_text(sd, c, text), expected["clip_text"]) <= TOL
    assert rel_l2(ref.clip_logits(sd, c, img, text), expected["clip_logits"]) <= TOL


SWITCHES = {
    "default": {},
    "mlp_ffn": dict(vision_ffn_layer="mlp", decoder_ffn_layer="mlp"),
    "swiglu32": dict(vision_ffn_layer="swiglu32", decoder_ffn_layer="swiglu64"),
    "layernorm_encoder": dict(vision_norm_layer="layernorm", decoder_norm_layer="rmsnorm"),
    "layernormbf16": dict(vision_norm_layer="layernormbf16", decoder_norm_layer="layernormbf16"),
    "layerscale": dict(vision_init_values=1e-5, decoder_init_values=0.1),
    "qk_norm": dict(vision_use_qk_norm=True, decoder_use_qk_norm=True),
    "clip_uses_bottleneck": dict(vision_bottleneck_ae_only=False),
    "no_bottleneck": dict(vision_feature_bottleneck=None),
    "pooled_clip": dict(vision_clip_feat="pooled"),
    "quick_gelu": dict(text_quick_gelu=True),
    "logit_bias": dict(init_logit_bias=-10.0, nonscalar_logit_scale=True),
    "text_layerscale_zero": dict(text_ls_init_value=0.0),
    "text_proj_bias": dict(text_proj_bias=True),
    "text_no_proj_first_pool": dict(text_proj_type="none", text_pool_type="first"),
    "text_no_mask_last_pool": dict(text_no_causal_mask=True, text_pool_type="last"),
}


def _ids(n=3, C=77):
    g = torch.Generator().manual_seed(1)
    ids = torch.zeros(n, C, dtype=torch.int64)
    for i in range(n):
        L = 3 + 5 * i
        ids[i, 0] = 49406
        ids[i, 1:L] = torch.randint(1, 49000, (L - 1,), generator=g)
        ids[i, L] = 49407
    return ids


@pytest.mark.parametrize("name", list(SWITCHES))
@torch.no_grad()
def test_switch_matches_reference(name):
    c = tiny_config(**SWITCHES[name])
    model = VTPModel.synthetic(c, seed=3)
    sd = model.state_dict()
    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 48, 64, generator=g)  # non-square, not 256
    ids = _ids()
    lat = model.get_reconstruction_latents(img)
    assert lat.shape == (2, c.bottleneck_dim, 3, 4)
    assert rel_l2(lat, ref.latents(sd, c, img)) <= TOL
    assert rel_l2(model.get_latents_decoded_images(lat), ref.decode(sd, c, lat)) <= TOL
    assert rel_l2(model.get_clip_image_feature(img, normalize=False), ref.clip_image(sd, c, img, False)) <= TOL
    assert rel_l2(model.get_clip_text_feature(ids, normalize=False), ref.clip_text(sd, c, ids, False)) <= TOL
    assert rel_l2(model.get_clip_logits(img, ids)[0], ref.clip_logits(sd, c, img, ids)) <= TOL
    f = model.get_last_layer_feature(img)
    (p, cls), = ref.intermediate(sd, c, img, 1)
    assert rel_l2(f["patch_tokens"], p) <= TOL and rel_l2(f["cls_token"], cls) <= TOL


@pytest.mark.parametrize("n", [1, 2, [0], [0, 1], [1, 0]])
@torch.no_grad()
def test_intermediate_layers_by_count_and_index(tiny_model, n):
    c = tiny_model.config
    img = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    got = tiny_model.get_intermediate_layers_feature(img, n=n, return_class_token=True)
    want = ref.intermediate(tiny_model.state_dict(), c, img, n)
    assert len(got) == len(want)
    for (gp, gc), (wp, wc) in zip(got, want):
        assert rel_l2(gp, wp) <= TOL and rel_l2(gc, wc) <= TOL
    shaped = tiny_model.get_intermediate_layers_feature(img, n=n, reshape=True)
    assert shaped[0].shape == (1, c.vision_embed_dim, 2, 3) and shaped[0].is_contiguous()
    assert torch.equal(shaped[0].flatten(2).transpose(1, 2), got[0][0])
    raw = tiny_model.get_intermediate_layers_feature(img, n=n, norm=False)
    want_raw = ref.intermediate(tiny_model.state_dict(), c, img, n, norm_=False)
    assert rel_l2(raw[0], want_raw[0][0]) <= TOL


@torch.no_grad()
def test_rope_tables_match_spec_values():
    """Periods for head dim 64 (spec §3.3) and the 14-row grid coordinates of a 224-px input."""
    from vtp.layers.rope import RopePositionEmbedding, rope_periods

    expected = [1.0, 1.3359375, 1.78125, 2.375, 3.15625, 4.21875, 5.625, 7.5, 10.0, 13.3125, 17.75, 23.75,
                31.625, 42.25, 56.25, 75.0]
    assert rope_periods(64).dtype == torch.bfloat16
    assert rope_periods(64).tolist() == expected
    rope = RopePositionEmbedding(64 * 6, 6)
    sin, cos = rope(H=14, W=14)
    assert sin.dtype == torch.bfloat16 and sin.shape == (196, 64)
    rs, rc = ref.rope_tables(14, 14, 64, rope.periods)
    assert torch.equal(sin, rs) and torch.equal(cos, rc)
