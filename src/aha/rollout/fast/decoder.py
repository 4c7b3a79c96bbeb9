"""A hand-written forward for plain Llama-family models (llama, qwen2, mistral in fp32, default RoPE, no adapters
or hooks): the sampler's prompt forward and decode steps over the model's own weights, without the HF module
machinery. ``fast_decode_reason`` says when a model qualifies; ``aha.rollout.sampler`` drives ``FastDecoder``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from aha.rollout.fast import kernels
from aha.rollout.fast.decode import DECODE_ATTN, SlabCache
from aha.rollout.fast.kernels import PackedLinear

FAST_DECODE_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def fast_decode_reason(model, total_len: int) -> str | None:
    """Why ``FastDecoder`` cannot reproduce this model's decode step (None: it can)."""
    if os.environ.get("AHA_FAST_DECODE", "1") == "0":
        return "AHA_FAST_DECODE=0"
    config = getattr(model, "config", None)
    mtype = getattr(config, "model_type", None)
    if mtype not in FAST_DECODE_TYPES or type(model).__name__ != FAST_DECODE_TYPES[mtype]:
        return f"not a plain llama/qwen2/mistral causal LM ({type(model).__name__})"
    if getattr(config, "sub_configs", None) or getattr(model, "peft_config", None) is not None:
        return "sub-configs or PEFT adapters"
    if model.training and getattr(config, "attention_dropout", 0.0):
        return "attention dropout in training mode"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", DECODE_ATTN):
        return f"attention {config._attn_implementation!r}"
    # transformers 5 keeps rope_theta and the scaling in rope_parameters (rope_scaling is an alias of it)
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
        return "rope scaling"
    if getattr(config, "hidden_act", None) != "silu" or (getattr(config, "pretraining_tp", 1) or 1) != 1:
        return "activation or tensor-parallel quirk"
    if any(t != "full_attention" for t in (getattr(config, "layer_types", None) or [])):
        return "sliding-window layers"
    window = getattr(config, "sliding_window", None)
    if window is not None and (mtype != "qwen2" or getattr(config, "use_sliding_window", False)) and window < total_len:
        return "sliding window shorter than the sequence"
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None):
        return "logit softcapping"
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not _plain_linear(getattr(model, "lm_head", None)):
        return "unexpected module layout"
    if getattr(getattr(inner, "rotary_emb", None), "rope_type", None) != "default":
        return "rope scaling"
    if any(p.dtype != torch.float32 for p in model.parameters()):
        return "not fp32"
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return "forward hooks"
    for layer in inner.layers:
        a, mlp = layer.self_attn, layer.mlp
        if not type(layer).__name__.endswith("DecoderLayer"):
            return "unexpected decoder layer"
        if set(dict(layer.named_children())) != {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}:
            return "unexpected decoder layer children"
        if set(dict(a.named_children())) != {"q_proj", "k_proj", "v_proj", "o_proj"}:
            return "unexpected attention children (q/k norm, adapters?)"
        if set(dict(mlp.named_children())) - {"act_fn"} != {"gate_proj", "up_proj", "down_proj"}:
            return "unexpected mlp children"
        projections = (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if not all(_plain_linear(m) for m in projections):
            return "projections are not plain nn.Linear (LoRA?)"
        if getattr(a, "sliding_window", None) is not None:
            return "sliding-window layer"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not type(norm).__name__.endswith("RMSNorm") or not hasattr(norm, "variance_epsilon"):
                return "unexpected norm"
    if not type(inner.norm).__name__.endswith("RMSNorm") or type(inner.embed_tokens) is not torch.nn.Embedding:
        return "unexpected norm or embedding"
    return None


# the prompt forward runs an opening that every prompt shares once, from this many tokens on (fewer: not worth it)
MIN_SHARED_COLUMNS = 4


def _shared_opening(ids: torch.Tensor, mask: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(k, s): how many first real tokens every row has in common (at most the shortest row's length - 1; 0 for one
    row or a mask that is not left padding), and each row's first real column s (B,)."""
    b, p = ids.shape
    lengths = mask.sum(1)  # (B,)
    first_real = p - lengths
    cols = torch.arange(p, device=ids.device)
    if b < 2 or not torch.equal(mask.bool(), cols[None, :] >= first_real[:, None]):
        return 0, first_real
    m = int(lengths.min())
    toks = ids.gather(1, first_real[:, None] + cols[None, :m])  # (B, m) each row's first m real tokens
    same = (toks == toks[:1]).all(0)  # (m,)
    return min(int(same.int().cumprod(0).sum()), m - 1), first_real


def _bias_cat(mods) -> torch.Tensor | None:
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])


class FastDecoder:
    """One decode step (one new token per row) of a plain Llama-family model, written out with torch ops on
    the model's own weights instead of its modules: per layer RMSNorm, one fused qkv matmul, RoPE from a
    table precomputed for every position, the new key/value written into the ``SlabCache`` buffers in place,
    two-matmul attention (grouped-query heads folded into the query rows), o_proj, RMSNorm, fused gate/up
    matmul, SwiGLU, down_proj. Same operations as the HF modules, so the same numbers up to fp32 rounding
    of the fused matmuls."""

    def __init__(self, model, max_len: int, rows: int | None = None) -> None:
        config, inner = model.config, model.model
        self.embed = inner.embed_tokens.weight
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        attn0 = inner.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scale = attn0.scaling
        self.layers = []
        for layer in inner.layers:
            a, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight,
                    layer.input_layernorm.variance_epsilon,
                    PackedLinear(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                                 _bias_cat([a.q_proj, a.k_proj, a.v_proj]), rows),
                    PackedLinear(a.o_proj.weight, a.o_proj.bias, rows),
                    layer.post_attention_layernorm.weight,
                    layer.post_attention_layernorm.variance_epsilon,
                    PackedLinear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                                 _bias_cat([mlp.gate_proj, mlp.up_proj]), rows),
                    PackedLinear(mlp.down_proj.weight, mlp.down_proj.bias, rows),
                )
            )  # fmt: skip
        self.inter = inner.layers[0].mlp.gate_proj.out_features
        self.norm_w, self.norm_eps = inner.norm.weight, inner.norm.variance_epsilon
        self.head = PackedLinear(model.lm_head.weight, model.lm_head.bias, rows)
        rot = inner.rotary_emb  # as its forward, for positions 0..max_len-1 at once
        freqs = torch.arange(max_len, device=self.embed.device)[:, None].float() * rot.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rot.attention_scaling).unsqueeze(1)  # (max_len, 1, d)
        sin = emb.sin() * rot.attention_scaling
        sin[:, : sin.size(-1) // 2].neg_()  # rotate_half(x)·sin == roll(x, d/2)·[-sin₁, sin₂]
        self.sin = sin.unsqueeze(1)
        self.cos2, self.sin2 = self.cos[:, 0], self.sin[:, 0]  # (max_len, d) for the native kernels
        self.lib = kernels.load()  # used when the cache is position-major (the sampler makes it so only if loaded)

    @staticmethod
    def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def step(self, tok: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, cache: SlabCache) -> torch.Tensor:
        """tok, pos: (b,) new tokens and their positions; bias: (b, 1, 1, >=L+1) additive mask (0 / -inf) over
        the cache columns. Appends to ``cache`` and returns (b, V) fp32 logits."""
        length = cache.layers[0].length
        x = F.embedding(tok, self.embed)  # (b, hidden)
        if cache.layers[0].position_major:
            return self._native_step(x, pos, bias[:, 0, 0], cache, length)
        b, h, kv, g, d = tok.size(0), self.heads, self.kv_heads, self.groups, self.head_dim
        nqk, half = (h + kv) * d, d // 2
        cos, sin = self.cos[pos], self.sin[pos]  # (b, 1, d)
        bias = bias[..., : length + 1]
        for i, (w1, e1, qkv_proj, o_proj, w2, e2, gate_up, down) in enumerate(self.layers):
            qkv = qkv_proj(self._rms(x, w1, e1))  # (b, (h + 2 kv) d)
            qk = qkv[:, :nqk].view(b, h + kv, d)
            # RoPE on q and k: q·cos + rotate_half(q)·sin, the negation of rotate_half folded into the table
            qk = (qk * cos).add_(qk.roll(half, -1).mul_(sin))
            layer = cache.layers[i]
            q = qk[:, :h] * self.scale  # (b, h, d)
            layer.k_buf[:, :, length].copy_(qk[:, h:])  # (b, kv, max_len, d) buffers: two batched matmuls
            layer.v_buf[:, :, length].copy_(qkv[:, nqk:].view(b, kv, d))
            keys, values = layer.k_buf[:, :, : length + 1], layer.v_buf[:, :, : length + 1]
            scores = torch.matmul(q.view(b, kv, g, d), keys.transpose(-1, -2)).add_(bias)  # (b, kv, g, L)
            att = torch.matmul(scores.softmax(-1), values)  # (b, kv, g, d)
            layer.length = length + 1
            layer.keys, layer.values = keys, values
            x = x + o_proj(att.reshape(b, h * d))
            gu = gate_up(self._rms(x, w2, e2))
            act = F.silu(gu[:, : self.inter], inplace=True).mul_(gu[:, self.inter :])
            x = x + down(act)
        return self.head(self._rms(x, self.norm_w, self.norm_eps)).float()

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: SlabCache) -> torch.Tensor:
        """The prompt forward, as the HF model's with ``logits_to_keep=1``, on the native kernels and pre-packed
        matmuls: fills the empty position-major ``cache`` and returns the last column's (B, V) fp32 logits.
        ids, mask, positions: (B, P), left-padded.

        An opening that every prompt starts with (a system prompt, a chat template's first tokens), k tokens, runs
        once for one row; its keys/values go to each row's cache where that row holds it (row b's real tokens
        start at column s_b, so at columns [s_b, s_b + k); zeros under padding), and then columns [k, P) of every
        row run on top: k columns less work per row (a longer-padded row recomputes the rest of its opening)."""
        b, p = ids.shape
        k, first_real = _shared_opening(ids, mask)
        if k < MIN_SHARED_COLUMNS:
            return self._prefill(ids, mask, positions, cache, 0)
        r = int(first_real.argmin())  # a row that holds the opening at columns [s_r, s_r + k)
        opening = SlabCache(k, position_major=True)
        s_r = int(first_real[r])
        self._prefill(ids[r : r + 1, s_r : s_r + k], mask[r : r + 1, s_r:], positions[r : r + 1, s_r : s_r + k],
                      opening, 0, logits=False)  # fmt: skip
        # column c of row b holds opening token c - s_b, or padding (index k: a zero slot) when c < s_b
        j = torch.arange(k, device=ids.device)[None, :] - first_real[:, None]  # (B, k)
        j = torch.where(j >= 0, j, k)
        for i, layer in enumerate(opening.layers):
            kk, vv = (F.pad(t[0], (0, 0, 0, 1)) for t in (layer.keys, layer.values))  # (kv, k + 1, d)
            cache.update(kk[:, j].transpose(0, 1), vv[:, j].transpose(0, 1), i)  # (B, kv, k, d) into columns [0, k)
        return self._prefill(ids[:, k:], mask, positions[:, k:], cache, k)

    def _prefill(self, ids, mask, positions, cache, start: int, logits: bool = True) -> torch.Tensor | None:
        """Columns [start, start + n) of the prompt, ids and positions (B, n), on a cache holding [0, start);
        mask: (B, >= start + n). Causal attention over each row's real tokens (SDPA); a padding position attends
        to itself only (finite keys/values that every real query masks out). The last layer runs attention and
        MLP for the last column alone (no other position's output is ever read), and not at all without
        ``logits`` (keys/values only; returns None); else returns the last column's (B, V) fp32 logits."""
        lib, h, kv, d = self.lib, self.heads, self.kv_heads, self.head_dim
        (b, n), total = ids.shape, start + ids.size(1)
        x = F.embedding(ids, self.embed).view(b * n, -1)  # (B·n, hidden): the residual stream
        cos, sin = self.cos2[positions].unsqueeze(2), self.sin2[positions].unsqueeze(2)  # (B, n, 1, d)
        cols = torch.arange(total, device=ids.device)
        query_cols = cols[start:, None]  # (n, 1)
        keep = (cols <= query_cols) & mask[:, None, :total].bool() | (cols == query_cols)  # (B, n queries, total keys)
        hidden = kernels.rms_norm(lib, x, self.layers[0][0], self.layers[0][1])
        for i, (_, _, qkv_proj, o_proj, w2, e2, gate_up, down) in enumerate(self.layers):
            qkv = qkv_proj(hidden).view(b, n, h + 2 * kv, d)
            qk = qkv[:, :, : h + kv]
            qk = (qk * cos).add_(qk.roll(d // 2, -1).mul_(sin))  # RoPE, rotate_half's minus sign in the table
            q = qk[:, :, :h].transpose(1, 2)  # (B, h, n, d)
            keys, values = cache.update(qk[:, :, h:].transpose(1, 2), qkv[:, :, h + kv :].transpose(1, 2), i)
            last = i + 1 == len(self.layers)  # keys, values: (B, kv, total, d) views of the slabs
            if last and not logits:
                return None
            if last:  # only the last column's output reaches the logits
                q, keep, x = q[:, :, -1:], keep[:, -1:], x.view(b, n, -1)[:, -1].contiguous()
            att = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=keep[:, None], scale=self.scale, enable_gqa=h != kv
            )  # (B, h, queries, d)
            att = att.transpose(1, 2).reshape(x.size(0), h * d)  # (rows, h·d)
            hidden = kernels.add_rms_norm(lib, x, o_proj(att), w2, e2)  # x += attention
            act = kernels.swiglu(lib, gate_up(hidden))
            w, e = (self.norm_w, self.norm_eps) if last else self.layers[i + 1][:2]
            hidden = kernels.add_rms_norm(lib, x, down(act), w, e)  # x += mlp; the next layer's (or final) norm
        return self.head(hidden).float()

    def _native_step(self, x, pos, bias, cache, length):
        """``step`` on a position-major cache with aha's C kernels (``aha.rollout.fast.kernels``): residual add +
        RMSNorm, RoPE with the key/value writes, attention, SwiGLU; the matmuls pre-packed. bias: (b, >=L+1)."""
        lib, h, kv = self.lib, self.heads, self.kv_heads
        pos = pos.contiguous()
        hidden = kernels.rms_norm(lib, x, self.layers[0][0], self.layers[0][1])  # x: the residual stream, ours
        for i, (_, _, qkv_proj, o_proj, w2, e2, gate_up, down) in enumerate(self.layers):
            layer = cache.layers[i]
            qkv = qkv_proj(hidden)  # (b, (h + 2 kv) d)
            qt = kernels.rope_qkv(
                lib, qkv, self.cos2, self.sin2, pos, layer.k_buf[length], layer.v_buf[length], h, kv, self.scale
            )  # (d, g, b·kv); this token's keys and values written into the cache
            att = kernels.attend(lib, qt, layer.k_buf, layer.v_buf, length + 1, bias, h)  # (b, h, d)
            layer.length = length + 1
            layer.keys, layer.values = layer.span(0, length + 1)
            hidden = kernels.add_rms_norm(lib, x, o_proj(att.view(x.size(0), -1)), w2, e2)  # x += attention
            act = kernels.swiglu(lib, gate_up(hidden))  # (b, inter)
            w, e = self.layers[i + 1][:2] if i + 1 < len(self.layers) else (self.norm_w, self.norm_eps)
            hidden = kernels.add_rms_norm(lib, x, down(act), w, e)  # x += mlp; the next layer's (or final) norm
        return self.head(hidden).float()
