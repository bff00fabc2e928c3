"""Load-time operator fusion (ascend.fusion, ascend.fused_ops) on CPU, with tiny models.

The NPU code path runs on CPU tensors against the stand-in torch_npu of ``npu_standin.py``, which
implements the reference math, records every call and checks the documented argument contracts.
That checks the wiring only; the real kernels' numerics need an NPU.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings

import pytest
import torch

from ascend import fused_ops
from ascend import fusion
from ascend.fusion import (
    RULE_NAMES, RULES, SCHEMA, apply_fusions, fusion_record_for_preset, load_fusion_result, named_replace,
    parse_fusion_spec, replace_modules, write_fusion_result,
)
from conftest import REPO, tiny_config
from npu_standin import AS_STRIDED_TEXT, ContractError, make_npu_standin, no_torch_npu, npu_standin  # noqa: F401
from verify.metrics import relative_l2_error
from vtp import VTPConfig, VTPModel
from vtp.layers.attention import SelfAttention
from vtp.layers.ffn import SwiGLUFFN
from vtp.layers.norm import RMSNorm

# The default tiny config (RMSNorm + SwiGLU encoder, LayerNorm + SwiGLU decoder, erf-GELU text tower)
# and one that flips every switch the rules look at.
CONFIGS = {
    "default": {},
    "variant": dict(vision_ffn_layer="mlp", vision_norm_layer="layernorm", vision_use_qk_norm=True,
                    decoder_ffn_layer="swiglu64", decoder_norm_layer="rmsnorm", decoder_use_qk_norm=True,
                    text_quick_gelu=True, vision_init_values=1e-5, text_ls_init_value=0.1),
}
IMAGE_SIZE = 64  # 4 x 4 patches of 16


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy host each parallel op can wait
    ~10 ms at the OpenMP barrier; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def models():
    """{name: unpatched synthetic tiny model}; tests patch deep copies."""
    return {name: VTPModel.synthetic(tiny_config(**over), seed=0) for name, over in CONFIGS.items()}


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
    text = torch.randint(1, 49000, (2, 77), generator=g)
    text[:, 6:] = 0
    text[:, 5] = 49407  # end-of-text: the argmax pooling position
    return image, text


@pytest.fixture(scope="module")
def references(models, inputs):
    return {name: run_tasks(model, *inputs) for name, model in models.items()}


@torch.no_grad()
def run_tasks(model: VTPModel, image: torch.Tensor, text: torch.Tensor) -> dict:
    """Every public output: latents, decoded images, CLIP image/text features, logits, SSL cls/patch."""
    latents = model.get_reconstruction_latents(image)
    ssl = model.get_last_layer_feature(image)
    return {
        "latents": latents,
        "decoded": model.get_latents_decoded_images(latents),
        "clip_image": model.get_clip_image_feature(image),
        "clip_text": model.get_clip_text_feature(text),
        "logits": model.get_clip_logits(image, text)[0],
        "ssl_cls": ssl["cls_token"],
        "ssl_patch": ssl["patch_tokens"],
    }


def assert_close_rel(got: dict, want: dict, limit: float, what: str) -> None:
    errors = {k: relative_l2_error(got[k], want[k]) for k in want}
    bad = {k: v for k, v in errors.items() if not v <= limit}
    assert not bad, f"{what}: relative L2 error above {limit:g} for {bad} (all: {errors})"


def patched(model: VTPModel, spec="all", **kwargs):
    clone = copy.deepcopy(model)
    return clone, apply_fusions(clone, spec, **kwargs)


def expected_counts(c: VTPConfig) -> dict:
    """Modules each rule replaces in a VTPModel built from ``c``."""
    counts = dict.fromkeys(RULE_NAMES, 0)

    def vit(norm, ffn, depth, qk_norm):
        counts["rmsnorm" if norm == "rmsnorm" else "layernorm"] += 2 * depth + 1  # norm1, norm2, final norm
        counts["rmsnorm"] += 2 * depth if qk_norm else 0  # q_norm, k_norm are RMSNorm for every norm layer
        counts["gelu" if ffn == "mlp" else "swiglu"] += depth
        counts["attention"] += depth
        counts["rope"] += depth

    vit(c.vision_norm_layer, c.vision_ffn_layer, c.vision_depth, c.vision_use_qk_norm)
    if c.train_reconstruction:
        vit(c.decoder_norm_layer, c.decoder_ffn_layer, c.decoder_depth, c.decoder_use_qk_norm)
        counts["pixel_shuffle"] += 1
    if c.train_clip:
        counts["layernorm"] += 2 * c.text_depth + 1  # ln_1, ln_2, ln_final
        counts["quick_gelu" if c.text_quick_gelu else "gelu"] += c.text_depth
    return counts


def ascend_types(model) -> list:
    return [n for n, m in model.named_modules() if type(m).__module__ == fused_ops.__name__]


# ------------------------------------------------------------------------------------------ CPU parity
@pytest.mark.parametrize("config", CONFIGS)
def test_fusion_none_is_bit_identical(models, inputs, references, config):
    model, report = patched(models[config], "none")
    assert report.enabled == [] and all(report.count(n) == 0 for n in RULE_NAMES)
    assert ascend_types(model) == []
    out = run_tasks(model, *inputs)
    for key, want in references[config].items():
        assert torch.equal(out[key], want), f"{key} changed with fusion 'none'"


@pytest.mark.parametrize("config", CONFIGS)
def test_all_rules_close_and_all_but_gelu_exact(models, inputs, references, config):
    model, report = patched(models[config], "all")
    assert report.enabled == list(RULE_NAMES)
    all_out = run_tasks(model, *inputs)
    assert_close_rel(all_out, references[config], 1e-3, "all rules (tanh GELU)")
    assert any(relative_l2_error(all_out[k], references[config][k]) > 0 for k in ("clip_text", "logits")), \
        "the gelu rule changed nothing: is it applied?"
    model, _ = patched(models[config], "all,-gelu")
    assert_close_rel(run_tasks(model, *inputs), references[config], 1e-6, "all rules except gelu")


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_each_rule_alone(models, inputs, references, config, rule):
    model, report = patched(models[config], [rule])
    want = expected_counts(models[config].config)
    assert report.enabled == [rule]
    assert {n: report.count(n) for n in RULE_NAMES} == {n: (want[n] if n == rule else 0) for n in RULE_NAMES}
    replacement = RULES[rule].replacement
    for name in report.modules(rule):
        assert type(model.get_submodule(name)) is replacement, name
    assert len(set(report.modules(rule))) == want[rule]
    if rule in ("attention", "rope"):  # one shared replacement class, the other switch stays off
        other = "rope_kernel" if rule == "attention" else "attention_kernel"
        assert all(getattr(model.get_submodule(n), other) is None for n in report.modules(rule))
    limit = 1e-3 if rule == "gelu" else 1e-6
    assert_close_rel(run_tasks(model, *inputs), references[config], limit, f"rule {rule} alone")


def test_attention_and_rope_both_on_share_one_module(models):
    model, report = patched(models["default"], ["attention", "rope"])
    assert report.modules("attention") == report.modules("rope")
    attn = model.trunk.blocks[0].attn
    assert type(attn) is fused_ops.AscendSelfAttention
    assert attn.attention_kernel.startswith("fallback:") and attn.rope_kernel.startswith("fallback:")
    assert report.rule("rope").hits[0].original_type == "vtp.layers.attention.SelfAttention"
    assert len(report.patched_modules) == report.count("attention")


def test_glob_patterns_restrict_matches(models):
    model, report = patched(models["default"], {"rules": {"rmsnorm": {"pattern": "trunk.blocks.*.norm1"}}})
    depth = model.config.vision_depth
    assert report.modules("rmsnorm") == [f"trunk.blocks.{i}.norm1" for i in range(depth)]
    assert type(model.trunk.blocks[0].norm2) is RMSNorm and type(model.trunk.norm) is RMSNorm
    _, report = patched(models["default"], {"rules": {"layernorm": {"pattern": ["pixel_decoder.*", "ln_final"]}}})
    c = model.config
    assert report.count("layernorm") == 2 * c.decoder_depth + 1 + 1
    assert all(m.startswith("pixel_decoder.") or m == "ln_final" for m in report.modules("layernorm"))


def test_text_layernorm_keeps_cast_to_input_dtype(models):
    model, _ = patched(models["default"], ["layernorm"])
    ln = model.ln_final
    assert type(ln) is fused_ops.AscendLayerNorm and ln.cast_output
    assert not model.pixel_decoder.norm.cast_output  # plain nn.LayerNorm: no cast
    x = torch.randn(2, 3, ln.normalized_shape[0], dtype=torch.bfloat16)
    assert ln(x).dtype == torch.bfloat16 and torch.equal(ln(x), models["default"].ln_final(x))


# ------------------------------------------------------------------------------------------ state dict, copies
def test_state_dict_identical_and_original_checkpoint_loads(models, inputs):
    original = models["variant"]
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model, _ = patched(original, "all")
    after = model.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert after[key].shape == value.shape and after[key].dtype == value.dtype, key
        assert torch.equal(after[key], value), key
    other = VTPModel.synthetic(tiny_config(**CONFIGS["variant"]), seed=1)  # a different "checkpoint"
    result = model.load_state_dict(other.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    model_no_gelu, _ = patched(original, "all,-gelu")
    model_no_gelu.load_state_dict(other.state_dict(), strict=True)
    assert_close_rel(run_tasks(model_no_gelu, *inputs), run_tasks(other, *inputs), 1e-6, "reloaded checkpoint")


def test_replacements_share_parameters_and_originals_stay_unpatched(models, inputs, references):
    model = copy.deepcopy(models["default"])
    reference = copy.deepcopy(model)  # the CPU reference, taken before patching
    old_block = model.trunk.blocks[0]
    old_attn, old_norm = old_block.attn, old_block.norm1
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    methods = (SelfAttention.attention, SelfAttention.apply_rope, RMSNorm.forward, SwiGLUFFN.forward)
    apply_fusions(model, "all")
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs  # nothing copied
    assert type(old_attn) is SelfAttention and type(old_norm) is RMSNorm  # instances not mutated
    assert old_block.attn is not old_attn  # the block holds the replacement
    assert (SelfAttention.attention, SelfAttention.apply_rope, RMSNorm.forward, SwiGLUFFN.forward) == methods
    assert ascend_types(reference) == [] and ascend_types(model)
    out = run_tasks(reference, *inputs)
    for key, want in references["default"].items():
        assert torch.equal(out[key], want), key


def test_patching_twice_gives_the_same_structure(models):
    model, first = patched(models["variant"], "all")
    second = apply_fusions(model, "all")
    assert {n: second.count(n) for n in RULE_NAMES} == {n: first.count(n) for n in RULE_NAMES}
    assert list(model.state_dict()) == list(models["variant"].state_dict())


def test_replace_modules_follows_the_dinov3_contract():
    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.ReLU()), torch.nn.Tanh())
    for depth_first, want in ((True, ["0.0", "0", "1", ""]), (False, ["", "0", "0.0", "1"])):
        seen = []
        replace_modules(lambda module, name: seen.append(name) or module, net, depth_first=depth_first,
                        include_root=True)
        assert seen == want
    root = replace_modules(lambda module, name: torch.nn.Identity() if name == "1" else module, net)
    assert root is net and isinstance(net[1], torch.nn.Identity)


# ------------------------------------------------------------------------------------------ NPU wiring (stand-in)
FUSED_OPS = {"rmsnorm": "npu_rms_norm", "swiglu": "npu_swiglu", "attention": "npu_fusion_attention",
             "rope": "npu_rotary_mul", "quick_gelu": "npu_fast_gelu"}


@pytest.mark.parametrize("config", CONFIGS)
def test_npu_path_calls_fused_ops_with_the_documented_contract(models, inputs, references, npu_standin, config):
    original = models[config]
    c = original.config
    model, report = patched(original, "all,-gelu", device="npu")
    assert report.target.soc == 223 and report.target.soc_name == "Ascend910B3" and not report.target.simulated
    for rule, op in FUSED_OPS.items():
        if report.count(rule):
            assert list(report.rule(rule).kernels) == [f"torch_npu.{op}"], rule
    out = run_tasks(model, *inputs)
    # the stand-in computes the reference math, so the patched model must reproduce the unfused one
    assert_close_rel(out, references[config], 1e-5, "NPU path with the stand-in")

    rms = npu_standin.calls_to("npu_rms_norm")
    assert rms and all(call.explicit >= {"epsilon"} and call["epsilon"] == 1e-5 for call in rms)
    rms_weights = {m.weight.data_ptr() for m in model.modules() if isinstance(m, RMSNorm)}
    assert {call["gamma"].data_ptr() for call in rms} <= rms_weights

    fa = npu_standin.calls_to("npu_fusion_attention")
    heads = {c.vision_num_heads, c.decoder_num_heads}
    assert fa
    for call in fa:
        q = call["query"]
        assert call["input_layout"] == "BNSD" and call["head_num"] == q.shape[1] and q.shape[1] in heads
        assert "scale" in call.explicit and call["scale"] == q.shape[-1] ** -0.5
        assert call["keep_prob"] == 1.0 and call["atten_mask"] is None
        assert all(call[n].is_contiguous() for n in ("query", "key", "value"))

    rot = npu_standin.calls_to("npu_rotary_mul")
    grid = (IMAGE_SIZE // c.vision_patch_size) ** 2
    sin, cos = model.trunk.rope_embed(H=4, W=4)
    assert rot
    for call in rot:
        x, r1, r2 = call["input"], call["r1"], call["r2"]
        assert call["rotary_mode"] == "half" and "rotary_mode" in call.explicit
        assert x.shape[2] == grid, "RoPE must skip the cls token: only the patch tokens are rotated"
        assert r1.shape == (1, 1, grid, x.shape[-1]) == r2.shape and x.dtype == torch.bfloat16
    trunk_calls = [call for call in rot if call["input"].shape[-1] == c.vision_embed_dim // c.vision_num_heads]
    assert torch.equal(trunk_calls[0]["r1"][0, 0], cos) and torch.equal(trunk_calls[0]["r2"][0, 0], sin)

    swiglu_ffns = [m for m in model.modules() if isinstance(m, SwiGLUFFN)]
    sw = npu_standin.calls_to("npu_swiglu")
    assert len(sw) > 0 and all(call["input"].is_contiguous() and call["dim"] == -1 for call in sw)
    hidden = {2 * m.w1.out_features for m in swiglu_ffns}
    assert {call["input"].shape[-1] for call in sw} <= hidden

    fast = npu_standin.calls_to("npu_fast_gelu")
    assert len(fast) > 0 if c.text_quick_gelu else not fast


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("dtype, limit", [(torch.bfloat16, 2e-2), (torch.float16, 5e-3)])
def test_npu_path_under_autocast(models, inputs, npu_standin, config, dtype, limit):
    """Mixed precision: q/k from qk_norm are fp32 while v is low precision; the raw attention op needs
    one dtype (SDPA gets it from autocast), and the rotary op must run in the bf16 of the tables."""
    model, _ = patched(models[config], "all,-gelu", device="npu")
    with torch.autocast("cpu", dtype=dtype):
        want = run_tasks(models[config], *inputs)
        got = run_tasks(model, *inputs)
    assert_close_rel(got, want, limit, f"NPU path with the stand-in under {dtype} autocast")
    fa = npu_standin.calls_to("npu_fusion_attention")
    assert fa and all(call["query"].dtype == call["value"].dtype == dtype for call in fa)
    assert all(call["input"].dtype == torch.bfloat16 for call in npu_standin.calls_to("npu_rotary_mul"))


def test_swapped_swiglu_halves_would_fail(models, inputs, references, npu_standin, monkeypatch):
    """The stand-in gates the first half: a [w2|w1] concatenation must break the parity checks."""
    model, _ = patched(models["default"], ["swiglu"], device="npu")
    ffn = model.trunk.blocks[0].mlp
    x = 30 * torch.randn(2, 5, ffn.w1.in_features)  # large enough for silu to be far from x/2
    with torch.no_grad():
        want = SwiGLUFFN.forward(ffn, x)
        assert relative_l2_error(ffn(x), want) < 1e-6

    def swapped(self):
        weight, bias = original(self)
        h = self.w1.out_features
        return torch.cat((weight[h:], weight[:h])), torch.cat((bias[h:], bias[:h]))

    original = fused_ops.AscendSwiGLUFFN.fused_w12
    monkeypatch.setattr(fused_ops.AscendSwiGLUFFN, "fused_w12", swapped)
    with torch.no_grad():
        assert relative_l2_error(ffn(x), want) > 0.1
    with pytest.raises(AssertionError, match="relative L2 error above 1e-05"):
        assert_close_rel(run_tasks(model, *inputs), references["default"], 1e-5, "swapped halves")


def test_swiglu_fused_weight_follows_a_reloaded_checkpoint(models, inputs, npu_standin):
    model, _ = patched(models["default"], ["swiglu"], device="npu")
    run_tasks(model, *inputs)  # builds the cached [w1|w2]
    other = VTPModel.synthetic(tiny_config(), seed=1)
    model.load_state_dict(other.state_dict())
    assert_close_rel(run_tasks(model, *inputs), run_tasks(other, *inputs), 1e-5, "after load_state_dict")
    assert "_w12_cache" not in model.state_dict() and all("w12" not in k for k in model.state_dict())


def test_npu_patched_model_without_torch_npu_says_why(models, inputs, no_torch_npu):
    model, report = patched(models["default"], ["rmsnorm"], device="npu", soc="Ascend910B3")
    assert report.target.simulated and report.rule("rmsnorm").kernels == {"torch_npu.npu_rms_norm": 5}
    with pytest.raises(RuntimeError, match="torch_npu is not usable here .*torch_npu is not installed"):
        run_tasks(model, *inputs)


# ------------------------------------------------------------------------------------------ SoC decisions
def test_swiglu_falls_back_on_310p_with_the_reason_recorded(models, inputs, references, make_npu_standin):
    standin = make_npu_standin(soc=202, name="Ascend310P3")
    model, report = patched(models["default"], "all,-gelu", device="npu")
    assert report.target.family == "310P"
    swiglu = report.rule("swiglu").to_dict()
    assert swiglu["kernel"].startswith("fallback: ") and "only Atlas A2" in swiglu["reason"]
    assert "Ascend310P3" in swiglu["reason"]
    attention = report.rule("attention").to_dict()
    assert attention["kernel"] == "fallback: F.scaled_dot_product_attention (math path)"
    assert "before 910B1" in attention["reason"]
    assert report.rule("rope").to_dict()["kernel"].startswith("fallback: ")
    assert report.rule("rmsnorm").to_dict()["kernel"] == "torch_npu.npu_rms_norm"  # (fp32, fp32) is allowed
    assert_close_rel(run_tasks(model, *inputs), references["default"], 1e-5, "310P stand-in")
    assert standin.calls_to("npu_rms_norm") and not standin.calls_to("npu_swiglu")
    assert not standin.calls_to("npu_fusion_attention") and not standin.calls_to("npu_rotary_mul")


@pytest.mark.parametrize("soc, rule, kernel", [
    ("Ascend910B3", "attention", "torch_npu.npu_fusion_attention"),
    ("Ascend910_9391", "attention", "F.scaled_dot_product_attention -> FlashAttention (torch_npu dispatch)"),
    ("Ascend910A", "attention", "fallback: F.scaled_dot_product_attention (math path)"),
    ("Ascend950", "attention", "torch_npu.npu_fusion_attention"),
    ("Ascend910_9391", "swiglu", "fallback: SwiGLUFFN torch math (w3(silu(w1 x) * w2 x))"),
    ("Ascend910B1", "swiglu", "torch_npu.npu_swiglu"),
    ("Ascend910_9391", "rope", "torch_npu.npu_rotary_mul"),
    ("Ascend310B1", "rmsnorm", "fallback: RMSNorm torch math (fp32 normalise, cast back, times weight)"),
    ("Ascend310P3", "quick_gelu", "torch_npu.npu_fast_gelu"),
    ("Ascend910B3", "layernorm", "aclnnLayerNorm (F.layer_norm)"),
    ("Ascend910B3", "gelu", "aclnnGelu (F.gelu, approximate='tanh')"),
])
def test_kernel_decisions_per_soc(soc, rule, kernel):
    with torch.device("meta"):
        model = VTPModel(tiny_config(text_quick_gelu=True, vision_ffn_layer="mlp"))
    report = named_replace(model, [rule], "npu", soc=soc)
    record = report.rule(rule).to_dict()
    assert record["kernel"] == kernel, record["reason"]
    assert record["reason"]


def test_bf16_decisions_follow_the_dtype_tables():
    with torch.device("meta"):
        model = VTPModel(tiny_config(text_quick_gelu=True))
    report = named_replace(model, ["rmsnorm", "quick_gelu"], "npu", soc="Ascend310P3", dtype=torch.bfloat16)
    assert report.rule("rmsnorm").to_dict()["kernel"].startswith("fallback: ")
    assert report.rule("quick_gelu").to_dict()["kernel"].startswith("fallback: ")


def test_cpu_target_falls_back_everywhere(models):
    _, report = patched(models["variant"], "all")
    assert report.target.device == "cpu"
    for rule in report.rules:
        assert all(k.startswith("fallback: ") for k in rule.kernels), rule.rule.name


def test_soc_needs_the_npu_device(models):
    with pytest.raises(ValueError, match="an SoC applies to device 'npu' only"):
        named_replace(copy.deepcopy(models["default"]), "all", "cpu", soc="Ascend910B3")
    with pytest.raises(ValueError, match="unknown SoC 'Ascend999'.*Ascend910B3"):
        fusion.parse_soc("Ascend999")


# ------------------------------------------------------------------------------------------ stand-in contracts
def _rope_args():
    x = torch.randn(1, 2, 4, 8)
    return x, torch.rand(1, 1, 4, 8), torch.rand(1, 1, 4, 8)


@pytest.mark.parametrize("call, message", [
    (lambda s: s.npu_rms_norm(torch.randn(2, 8), torch.ones(8)), "epsilon not passed"),
    (lambda s: s.npu_rms_norm(torch.randn(2, 8), torch.ones(8, dtype=torch.bfloat16), epsilon=1e-5), "dtype pair"),
    (lambda s: s.npu_swiglu(torch.randn(8, 4).t()), "non-contiguous"),
    (lambda s: s.npu_swiglu(torch.randn(3, 5)), "odd"),
    (lambda s: s.npu_fusion_attention(*[torch.randn(1, 2, 4, 8)] * 3, 2, "BNSD"), "scale not passed"),
    (lambda s: s.npu_fusion_attention(*[torch.randn(1, 2, 4, 8)] * 3, 2, "BNHD", scale=0.3), "input_layout"),
    (lambda s: s.npu_fusion_attention(*[torch.randn(1, 2, 4, 8)] * 3, 4, "BNSD", scale=0.3), "head_num 4"),
    (lambda s: s.npu_fusion_attention(*[torch.randn(1, 2, 4, 8)] * 3, 2, "BNSD", scale=0.3,
                                      atten_mask=torch.zeros(4, 4)), "bool or uint8"),
    (lambda s: s.npu_rotary_mul(_rope_args()[0], torch.rand(4, 8), torch.rand(4, 8)), "not a valid broadcast"),
    (lambda s: s.npu_rotary_mul(*_rope_args(), rotary_mode="quarter"), "rotary_mode"),
])
def test_standin_rejects_contract_violations(npu_standin, call, message):
    with pytest.raises(ContractError, match=message):
        call(npu_standin)


def test_standin_attention_mask_polarity(npu_standin):
    q, k, v = (torch.randn(1, 2, 4, 8) for _ in range(3))
    keep_first = torch.tensor([False, True, True, True]).expand(4, 4)  # True = masked out
    out = npu_standin.npu_fusion_attention(q, k, v, 2, "BNSD", scale=8 ** -0.5, atten_mask=keep_first)
    assert len(out) == 7
    torch.testing.assert_close(out[0], v[:, :, :1].expand_as(v))
    full = npu_standin.npu_fusion_attention(q, k, v, 2, "BNSD", scale=8 ** -0.5)[0]
    torch.testing.assert_close(full, torch.nn.functional.scaled_dot_product_attention(q, k, v))


# ------------------------------------------------------------------------------------------ spec parser
def test_parse_fusion_spec_forms(tmp_path):
    names = lambda rules: [r.name for r in rules]  # noqa: E731
    assert names(parse_fusion_spec("all")) == list(RULE_NAMES) == names(parse_fusion_spec(None))
    assert parse_fusion_spec("none") == [] and parse_fusion_spec("") == []
    assert names(parse_fusion_spec("layernorm,gelu")) == ["gelu", "layernorm"]
    assert names(parse_fusion_spec("all,-gelu,-pixel_shuffle")) == [n for n in RULE_NAMES if n not in
                                                                    ("gelu", "pixel_shuffle")]
    assert names(parse_fusion_spec(["rope", "attention"])) == ["attention", "rope"]
    assert names(parse_fusion_spec(fusion.DEFAULT_CONFIG)) == list(RULE_NAMES)
    assert all(r.patterns == ("*",) for r in parse_fusion_spec(str(fusion.DEFAULT_CONFIG)))


@pytest.mark.parametrize("spec", ["gelu,flash", ["gelu", "flash"], {"rules": {"flash": True}}])
def test_unknown_rule_names_are_refused(spec):
    with pytest.raises(ValueError, match=r"unknown fusion rule\(s\) 'flash'; known rules: gelu, layernorm, rmsnorm, "
                                         r"swiglu, attention, rope, quick_gelu, pixel_shuffle"):
        parse_fusion_spec(spec)


def test_yaml_config_with_glob(tmp_path, models):
    path = tmp_path / "fusion.yaml"
    path.write_text("rules:\n  rmsnorm:\n    pattern: 'trunk.blocks.*.norm2'\n  gelu: false\n  swiglu: true\n")
    rules = parse_fusion_spec(str(path))
    assert [r.name for r in rules] == ["rmsnorm", "swiglu"] and rules[0].patterns == ("trunk.blocks.*.norm2",)
    _, report = patched(models["default"], path)
    assert report.modules("rmsnorm") == ["trunk.blocks.0.norm2", "trunk.blocks.1.norm2"]
    assert report.to_dict()["rules"][2]["pattern"] == {"type": "vtp.layers.norm.RMSNorm",
                                                       "glob": ["trunk.blocks.*.norm2"]}
    path.write_text("rules:\n  rmsnorm:\n    glob: 'x'\n")
    with pytest.raises(ValueError, match="rule 'rmsnorm' has unknown key.*glob.*allowed: enabled, pattern"):
        parse_fusion_spec(path)
    with pytest.raises(ValueError, match="not found"):
        parse_fusion_spec(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------ the record
def test_committed_fusion_result_is_reproduced_exactly(tmp_path):
    committed = REPO / "fusion_result.json"
    fresh = write_fusion_result(fusion_record_for_preset("VTP-Small-f16d64", "Ascend910B3"), tmp_path / "f.json")
    assert fresh.read_text() == committed.read_text(), (
        "fusion_result.json is stale: regenerate it with python -m ascend.fusion --preset VTP-Small-f16d64 "
        "--simulate-soc Ascend910B3 --out fusion_result.json")
    data = load_fusion_result(committed)
    assert data["schema"] == SCHEMA == "vtp-fusion-result/1"
    assert data["target"] == {"device": "npu", "soc": 223, "soc_name": "Ascend910B3", "soc_family": "A2",
                              "dtype": "float32", "simulated": True}
    small = VTPConfig.from_preset("VTP-Small-f16d64")
    by_name = {r["name"]: r for r in data["rules"]}
    assert {n: by_name[n]["count"] for n in RULE_NAMES} == expected_counts(small)
    assert all(len(r["modules"]) == r["count"] for r in data["rules"])


def test_record_matches_a_patch_with_the_standin(npu_standin):
    """Patching for the stand-in's SoC (read from torch.npu) decides exactly as the simulated record."""
    with torch.device("meta"):
        model = VTPModel(VTPConfig.from_preset("VTP-Small-f16d64"))
    live = named_replace(model, "all", "npu").to_dict()
    committed = json.loads((REPO / "fusion_result.json").read_text())
    assert live["rules"] == committed["rules"] and live["model"] == committed["model"]
    assert live["environment"] == {"torch": torch.__version__, "torch_npu": npu_standin.version}
    assert live["target"]["simulated"] is False


def test_record_is_written_atomically(tmp_path, models, monkeypatch):
    path = tmp_path / "fusion_result.json"
    _, report = patched(models["default"], "all", record_path=path)
    assert load_fusion_result(path) == report.to_dict()
    import vtp.io_utils

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(vtp.io_utils.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_fusion_result(report, path)
    assert load_fusion_result(path) == report.to_dict()  # the old record is intact
    assert [p.name for p in tmp_path.iterdir()] == ["fusion_result.json"]  # no temporary file left


def test_cli_check_exit_codes(tmp_path, capsys):
    args = ["--preset", "VTP-Small-f16d64", "--simulate-soc", "Ascend910B3"]
    assert fusion.main(args + ["--check", str(REPO / "fusion_result.json")]) == 0
    changed = json.loads((REPO / "fusion_result.json").read_text())
    changed["rules"][0]["count"] += 1
    (tmp_path / "changed.json").write_text(json.dumps(changed))
    assert fusion.main(args + ["--check", str(tmp_path / "changed.json")]) == 1
    assert "DIFFERS" in capsys.readouterr().out
    assert fusion.main(args + ["--fusion", "gelu,nope"]) == 2
    assert "unknown fusion rule(s) 'nope'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pixel_shuffle warning
def test_pixel_shuffle_filters_only_the_as_strided_warning(models, npu_standin, monkeypatch, caplog):
    npu_standin.warn_in_pixel_shuffle(monkeypatch, other="an unrelated warning")
    fused_ops._notes_logged.discard("as_strided")
    model, report = patched(models["default"], ["pixel_shuffle"], device="npu")
    shuffle = model.pixel_decoder.pixel_shuffle
    assert type(shuffle) is fused_ops.AscendPixelShuffle and shuffle.filter_as_strided
    x = torch.randn(1, 3 * 16 * 16, 2, 2)
    filters_before = list(warnings.filters)
    with caplog.at_level(logging.INFO, logger="ascend.fused_ops"):
        for _ in range(2):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                y = shuffle(x)
            assert [str(w.message) for w in caught] == ["an unrelated warning"]
    assert torch.equal(y, torch.pixel_shuffle(x, 16))  # torch.pixel_shuffle itself is not wrapped
    assert warnings.filters == filters_before  # nothing hidden outside the call
    notes = [r for r in caplog.records if "as_strided" in r.getMessage()]
    assert len(notes) == 1, "the note is logged once"
    with pytest.warns(UserWarning) as shown:
        models["default"].pixel_decoder.pixel_shuffle(x)  # an unpatched module still shows it
    assert [str(w.message) for w in shown] == [AS_STRIDED_TEXT, "an unrelated warning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="an unrelated warning"):
            shuffle(x)  # the caller's filters still apply to the other warnings


def test_pixel_shuffle_on_cpu_does_not_filter(models, npu_standin, monkeypatch):
    npu_standin.warn_in_pixel_shuffle(monkeypatch)
    model, _ = patched(models["default"], ["pixel_shuffle"])
    assert not model.pixel_decoder.pixel_shuffle.filter_as_strided
    with pytest.warns(UserWarning, match=AS_STRIDED_TEXT[:30]):
        model.pixel_decoder.pixel_shuffle(torch.randn(1, 768, 2, 2))
