"""An independent, functional re-statement of the VTP forward pass, written from the spec's formulas
(spec §3-§6, Appendix A) on a plain state dict: explicit per-head loops, hand-written softmax and norms,
the RoPE pairing "dim m with m + head_dim/2". The model in `vtp/` is checked against it for every switch
the parity fixture does not cover; the fixture itself checks this reference too (test_reference_matches_fixture).
"""

import math

import torch

BF16 = torch.bfloat16


def bf(x):
    return x.to(BF16)


def rope_tables(H, W, head_dim, periods):
    """(sin, cos) [H·W, head_dim] in bf16, rounding after every elementary op (spec §3.3)."""
    K = head_dim // 4
    ch = bf(bf(torch.arange(H, dtype=torch.float32) + 0.5) / H)
    cw = bf(bf(torch.arange(W, dtype=torch.float32) + 0.5) / W)
    rows = ch.repeat_interleave(W)  # token t = i·W + j -> (ch_i, cw_j)
    cols = cw.repeat(H)
    two_pi = torch.tensor(2 * math.pi, dtype=torch.float32)
    out = []
    for c in (rows, cols):
        c = bf(bf(2 * c.float()).float() - 1)
        theta = bf(bf(two_pi * c.float()[:, None]).float() / periods.float()[None, :K])
        out.append(theta)
    theta = torch.cat(out, dim=1)  # [row K, col K]
    theta = torch.cat([theta, theta], dim=1)  # tiled twice
    return bf(torch.sin(theta.float())), bf(torch.cos(theta.float()))


def rope_rotate(x, sin, cos):
    """x' _m = x_m cos − x_{m+h} sin ; x'_{m+h} = x_{m+h} cos + x_m sin, each product and sum rounded to bf16."""
    h = x.shape[-1] // 2
    a, b = x[..., :h], x[..., h:]
    first = bf(bf(a * cos[..., :h]) + bf(-b * sin[..., :h]))
    second = bf(bf(b * cos[..., h:]) + bf(a * sin[..., h:]))
    return torch.cat([first, second], dim=-1)


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf / torch.sqrt((xf * xf).mean(-1, keepdim=True) + eps)).to(x.dtype) * w


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def norm(sd, p, kind, x):
    if kind == "rmsnorm":
        return rms(x, sd[p + ".weight"])
    return layer_norm(x, sd[p + ".weight"], sd[p + ".bias"], 1e-6 if kind == "layernorm" else 1e-5)


def linear(sd, p, x, bias=True):
    y = x @ sd[p + ".weight"].T
    return y + sd[p + ".bias"] if bias and (p + ".bias") in sd else y


def softmax_attention(q, k, v, mask=None):
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s + mask
    s = s - s.max(-1, keepdim=True).values
    e = torch.exp(s)
    return (e / e.sum(-1, keepdim=True)) @ v


def vit_block(sd, p, x, heads, norm_kind, ffn_kind, sin, cos, has_ls, qk_norm):
    B, N, X = x.shape
    hd = X // heads
    h = norm(sd, p + ".norm1", norm_kind, x)
    qkv = linear(sd, p + ".attn.qkv", h)
    outs = []
    for n in range(heads):  # head n owns rows n·hd ... of each of q, k, v
        q = qkv[..., n * hd:(n + 1) * hd]
        k = qkv[..., X + n * hd:X + (n + 1) * hd]
        v = qkv[..., 2 * X + n * hd:2 * X + (n + 1) * hd]
        if qk_norm:
            q = rms(q, sd[p + ".attn.q_norm.weight"])
            k = rms(k, sd[p + ".attn.k_norm.weight"])
        prefix = N - sin.shape[0]
        q16, k16 = bf(q), bf(k)
        q = torch.cat([q16[:, :prefix], rope_rotate(q16[:, prefix:], sin, cos)], 1).float()
        k = torch.cat([k16[:, :prefix], rope_rotate(k16[:, prefix:], sin, cos)], 1).float()
        outs.append(softmax_attention(q, k, v))
    a = linear(sd, p + ".attn.proj", torch.cat(outs, -1))
    if has_ls:
        a = a * sd[p + ".ls1.gamma"]
    x = x + a
    h = norm(sd, p + ".norm2", norm_kind, x)
    if ffn_kind == "mlp":
        f = linear(sd, p + ".mlp.fc2", torch.nn.functional.gelu(linear(sd, p + ".mlp.fc1", h)))
    else:
        g = linear(sd, p + ".mlp.w1", h)
        f = linear(sd, p + ".mlp.w3", g * torch.sigmoid(g) * linear(sd, p + ".mlp.w2", h))
    if has_ls:
        f = f * sd[p + ".ls2.gamma"]
    return x + f


def encoder(sd, c, image):
    """All block outputs (list of [B, 1+N, D]) and the grid (Hp, Wp)."""
    P = c.vision_patch_size
    B, _, H, W = image.shape
    Hp, Wp = H // P, W // P
    w = sd["trunk.patch_embed.proj.weight"]
    patches = image[:, :, :Hp * P, :Wp * P].reshape(B, 3, Hp, P, Wp, P).permute(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(B, Hp * Wp, 3 * P * P) @ w.reshape(w.shape[0], -1).T + sd["trunk.patch_embed.proj.bias"]
    cls = (sd["trunk.cls_token"] + 0 * sd["trunk.mask_token"]).expand(B, -1, -1)
    x = torch.cat([cls, tokens], 1)
    sin, cos = rope_tables(Hp, Wp, c.vision_embed_dim // c.vision_num_heads, sd["trunk.rope_embed.periods"])
    outs = []
    for i in range(c.vision_depth):
        x = vit_block(sd, f"trunk.blocks.{i}", x, c.vision_num_heads, c.vision_norm_layer, c.vision_ffn_layer,
                      sin, cos, bool(c.vision_init_values), c.vision_use_qk_norm)
        outs.append(x)
    return outs, (Hp, Wp)


def final_norm(sd, c, x):
    return norm(sd, "trunk.norm", c.vision_norm_layer, x)


def bottleneck(sd, x):
    w = sd.get("trunk.feature_bottleneck.weight")
    return x if w is None else x @ w.T


def latents(sd, c, image):
    outs, (Hp, Wp) = encoder(sd, c, image)
    z = bottleneck(sd, final_norm(sd, c, outs[-1])[:, 1:])  # [B, N, b]
    return z.permute(0, 2, 1).reshape(z.shape[0], z.shape[2], Hp, Wp)


def decode(sd, c, z):
    B, b, H, W = z.shape
    x = z.permute(0, 2, 3, 1).reshape(B, H * W, b) @ sd["pixel_decoder.proj_in.weight"][:, :, 0, 0].T \
        + sd["pixel_decoder.proj_in.bias"]
    sin, cos = rope_tables(H, W, c.decoder_embed_dim // c.decoder_num_heads, sd["pixel_decoder.rope_embed.periods"])
    for i in range(c.decoder_depth):
        x = vit_block(sd, f"pixel_decoder.blocks.{i}", x, c.decoder_num_heads, c.decoder_norm_layer,
                      c.decoder_ffn_layer, sin, cos, bool(c.decoder_init_values), c.decoder_use_qk_norm)
    x = norm(sd, "pixel_decoder.norm", c.decoder_norm_layer, x)
    y = x @ sd["pixel_decoder.proj_out.weight"][:, :, 0, 0].T + sd["pixel_decoder.proj_out.bias"]  # [B, HW, 768]
    # PixelShuffle(16): out[b, c, 16y+i, 16x+j] = in[b, c·256 + i·16 + j, y, x]
    y = y.reshape(B, H, W, 3, 16, 16).permute(0, 3, 1, 4, 2, 5)
    return y.reshape(B, 3, 16 * H, 16 * W)


def clip_image(sd, c, image, normalize=True):
    outs, _ = encoder(sd, c, image)
    x = final_norm(sd, c, outs[-1])
    if not c.vision_bottleneck_ae_only:
        x = bottleneck(sd, x)
    feat = x[:, 0] if c.vision_clip_feat == "cls" else x[:, 1:].mean(1)
    feat = feat @ sd["visual_proj.weight"].T
    return feat / feat.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize else feat


def clip_text(sd, c, ids, normalize=True):
    W = c.text_embed_dim
    heads = c.text_num_heads
    hd = W // heads
    C = c.text_context_length
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"]
    mask = None if c.text_no_causal_mask else torch.triu(torch.full((C, C), float("-inf")), 1)
    for i in range(c.text_depth):
        p = f"text_transformer.resblocks.{i}"
        h = layer_norm(x, sd[p + ".ln_1.weight"], sd[p + ".ln_1.bias"], 1e-5)
        qkv = h @ sd[p + ".attn.in_proj_weight"].T + sd[p + ".attn.in_proj_bias"]
        outs = [softmax_attention(qkv[..., n * hd:(n + 1) * hd], qkv[..., W + n * hd:W + (n + 1) * hd],
                                  qkv[..., 2 * W + n * hd:2 * W + (n + 1) * hd], mask) for n in range(heads)]
        a = torch.cat(outs, -1) @ sd[p + ".attn.out_proj.weight"].T + sd[p + ".attn.out_proj.bias"]
        if c.text_ls_init_value is not None:
            a = a * sd[p + ".ls_1.gamma"]
        x = x + a
        h = layer_norm(x, sd[p + ".ln_2.weight"], sd[p + ".ln_2.bias"], 1e-5)
        h = h @ sd[p + ".mlp.c_fc.weight"].T + sd[p + ".mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h) if c.text_quick_gelu else torch.nn.functional.gelu(h)
        f = h @ sd[p + ".mlp.c_proj.weight"].T + sd[p + ".mlp.c_proj.bias"]
        if c.text_ls_init_value is not None:
            f = f * sd[p + ".ls_2.gamma"]
        x = x + f
    x = layer_norm(x, sd["ln_final.weight"], sd["ln_final.bias"], 1e-5)
    pool = c.text_pool_type
    if pool == "argmax":
        x = x[torch.arange(x.shape[0]), ids.argmax(-1)]
    elif pool == "first":
        x = x[:, 0]
    elif pool == "last":
        x = x[:, -1]
    if c.text_proj_type != "none":
        x = x @ sd["text_projection.weight"].T + sd["text_projection.bias"] if c.text_proj_bias \
            else x @ sd["text_projection"]
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12) if normalize else x


def clip_logits(sd, c, image, ids):
    logits = torch.exp(sd["logit_scale"]) * clip_image(sd, c, image) @ clip_text(sd, c, ids).T
    if "logit_bias" in sd:
        logits = logits + sd["logit_bias"]
    return logits


def intermediate(sd, c, image, n, norm_=True):
    """[(patches, cls)] for the last n blocks (int) or the given block indices, ascending."""
    outs, _ = encoder(sd, c, image)
    idx = range(c.vision_depth - n, c.vision_depth) if isinstance(n, int) else sorted(n)
    res = []
    for i in idx:
        x = final_norm(sd, c, outs[i]) if norm_ else outs[i]
        res.append((x[:, 1:], x[:, 0]))
    return res
