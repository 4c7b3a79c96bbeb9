"""The fast sampler's decode machinery: a KV cache written in place into preallocated slabs, a two-matmul
attention for single-token decode steps (the CPU flash kernel is slow for one query), and a hand-written
decode step for plain Llama-family models (``_FastDecoder``). ``aha.rollout.sampler`` drives them.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from functools import cache

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from aha.rollout import kernels
from aha.rollout.kernels import PackedLinear


class SlabLayer(DynamicLayer):
    """One layer's KV cache in a preallocated buffer: ``update`` writes the new keys and values in place and
    returns views of the filled part, instead of ``torch.cat``-ing the whole cache at every step (a copy of
    everything cached so far, per layer and per token). The buffers are (B, heads, max_len, d), or with
    ``position_major`` the layout of ``aha.rollout.kernels.decode_attention``: keys (max_len, d, B, heads),
    values (max_len, B, heads, d). The views handed to the HF forward are (B, heads, L, d) either way."""

    def __init__(self, max_len: int, position_major: bool = False) -> None:
        super().__init__()
        self.max_len = max_len
        self.position_major = position_major
        self.length = 0
        self.k_buf: torch.Tensor | None = None  # (B, heads, max_len, d) or (max_len, d, B, heads)
        self.v_buf: torch.Tensor | None = None  # (B, heads, max_len, d) or (max_len, B, heads, d)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, dk = key_states.shape
        dv = value_states.size(-1)
        if self.position_major:
            self.k_buf = key_states.new_empty((self.max_len, dk, b, h))
            self.v_buf = value_states.new_empty((self.max_len, b, h, dv))
        else:
            self.k_buf = key_states.new_empty((b, h, self.max_len, dk))
            self.v_buf = value_states.new_empty((b, h, self.max_len, dv))
        self.is_initialized = True

    def span(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positions [start, stop) of the key and value buffers, as (B, heads, n, d) views."""
        if self.position_major:
            return self.k_buf[start:stop].permute(2, 3, 0, 1), self.v_buf[start:stop].permute(1, 2, 0, 3)
        return self.k_buf[:, :, start:stop], self.v_buf[:, :, start:stop]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        s, n = self.length, key_states.size(-2)
        keys, values = self.span(s, s + n)
        keys.copy_(key_states)
        values.copy_(value_states)
        self.length = s + n
        self.keys, self.values = self.span(0, s + n)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_len

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        """Keep (or repeat) the rows ``indices``: new buffers of the same max_len, only the filled positions copied."""
        if self.is_initialized:
            n = self.length
            if self.position_major:
                k_buf = self.k_buf.new_empty((self.max_len, self.k_buf.size(1), len(indices), self.k_buf.size(3)))
                v_buf = self.v_buf.new_empty((self.max_len, len(indices), *self.v_buf.shape[2:]))
                torch.index_select(self.k_buf[:n], 2, indices, out=k_buf[:n])
                torch.index_select(self.v_buf[:n], 1, indices, out=v_buf[:n])
            else:
                k_buf = self.k_buf.new_empty((len(indices), *self.k_buf.shape[1:]))
                v_buf = self.v_buf.new_empty((len(indices), *self.v_buf.shape[1:]))
                k_buf[:, :, :n] = self.k_buf[indices, :, :n]
                v_buf[:, :, :n] = self.v_buf[indices, :, :n]
            self.k_buf, self.v_buf = k_buf, v_buf
            self.keys, self.values = self.span(0, n)


class SlabCache(DynamicCache):
    """A DynamicCache whose layers are SlabLayers of ``max_len`` positions (created lazily, one per layer)."""

    def __init__(self, max_len: int, position_major: bool = False) -> None:
        Cache.__init__(self, layer_class_to_replicate=DynamicLayer)
        self.max_len = max_len
        self.position_major = position_major

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(SlabLayer(self.max_len, self.position_major))
        return self.layers[layer_idx].update(key_states, value_states)


# ------------------------------------------------------------------------------------------- decode attention
DECODE_ATTN = "aha_sdpa_decode"


def _decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA, except for one query token per row (a decode step): there two batched matmuls and a softmax,
    2-3x faster on a CPU than the flash kernel, whose tiling is made for long queries (measured at 1m,
    B=64, 4 heads, 88-152 keys: 0.2-0.7 ms against 1.1-2.0 ms per call). Same numbers up to fp32 rounding."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q_len = query.size(2)
    if q_len != 1 or dropout or kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    groups = query.size(1) // key.size(1)
    if groups > 1:  # grouped-query attention: the query heads of one group share a key/value head
        b, h, _, d = query.shape
        query = query.view(b, key.size(1), groups, d)  # (B, kv heads, groups, d): the groups as query rows
    scale = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(-1, -2))  # (B, kv heads, groups or 1, K)
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask[..., -key.size(-2) :], float("-inf"))
        else:
            scores = scores + attention_mask[..., -key.size(-2) :]
    out = torch.matmul(scores.softmax(-1), value)  # (B, kv heads, groups or 1, d)
    if groups > 1:
        out = out.reshape(b, h, 1, d)
    return out.transpose(1, 2).contiguous(), None  # (B, 1, heads, d), as sdpa_attention_forward


@cache
def _register_decode_attention() -> None:
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    from transformers.modeling_utils import AttentionInterface

    AttentionInterface.register(DECODE_ATTN, _decode_attention)
    AttentionMaskInterface.register(DECODE_ATTN, sdpa_mask)


@contextmanager
def _decode_attention_swap(model):
    """While sampling, models on ``sdpa`` (and no sub-configs) use ``_decode_attention``; restored after.
    Off with AHA_DECODE_ATTN=0."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    sub = getattr(config, "sub_configs", None)
    if impl != "sdpa" or sub or os.environ.get("AHA_DECODE_ATTN", "1") == "0":
        yield
        return
    _register_decode_attention()
    config._attn_implementation = DECODE_ATTN
    try:
        yield
    finally:
        config._attn_implementation = impl


# ------------------------------------------------------------------------------------- hand-written decode step
FAST_DECODE_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def _fast_decode_reason(model, total_len: int) -> str | None:
    """Why ``_FastDecoder`` cannot reproduce this model's decode step (None: it can)."""
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


# the prompt forward runs leading columns that all rows share once, from this many on (fewer: not worth a pass)
MIN_SHARED_COLUMNS = 4


def _bias_cat(mods) -> torch.Tensor | None:
    if all(m.bias is None for m in mods):
        return None
    return torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features) for m in mods])


class _FastDecoder:
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
        ids, mask, positions: (B, P), left-padded. Leading columns that every row holds alike (a chat template's
        or system prompt's opening) run once, for one row, and their keys/values are copied to every row."""
        b, p = ids.shape
        same = ((ids == ids[:1]) & (mask == 1)).all(0)  # (P,) columns identical across the rows
        shared = min(int(same.int().cumprod(0).sum()), p - 1) if b > 1 else 0
        if shared < MIN_SHARED_COLUMNS:
            return self._prefill(ids, mask, positions, cache, 0)
        head = SlabCache(shared, position_major=True)
        self._prefill(ids[:1, :shared], mask[:1], positions[:1, :shared], head, 0)  # keys/values only
        for i, layer in enumerate(head.layers):
            cache.update(layer.keys.expand(b, -1, -1, -1), layer.values.expand(b, -1, -1, -1), i)
        return self._prefill(ids[:, shared:], mask, positions[:, shared:], cache, shared)

    def _prefill(self, ids, mask, positions, cache, start: int) -> torch.Tensor | None:
        """Columns [start, start + n) of the prompt, ids and positions (B, n), on a cache holding [0, start);
        mask: (B, >= start + n). Causal attention over each row's real tokens (SDPA); a padding position attends
        to itself only (finite keys/values that every real query masks out). The last layer runs attention and
        MLP for the last column alone (no other position's output is ever read) and not at all when these are
        not the prompt's last columns (returns None); else returns the last column's (B, V) fp32 logits."""
        lib, h, kv, d = self.lib, self.heads, self.kv_heads, self.head_dim
        (b, n), total = ids.shape, start + ids.size(1)
        x = F.embedding(ids, self.embed).view(b * n, -1)  # (B·n, hidden): the residual stream
        cos, sin = self.cos2[positions].unsqueeze(2), self.sin2[positions].unsqueeze(2)  # (B, n, 1, d)
        cols = torch.arange(total, device=ids.device)
        query_cols = cols[start:, None]  # (n, 1)
        keep = (cols <= query_cols) & mask[:, None, :total].bool() | (cols == query_cols)  # (B, n queries, total keys)
        to_logits = total == mask.size(1)
        hidden = kernels.rms_norm(lib, x, self.layers[0][0], self.layers[0][1])
        for i, (_, _, qkv_proj, o_proj, w2, e2, gate_up, down) in enumerate(self.layers):
            qkv = qkv_proj(hidden).view(b, n, h + 2 * kv, d)
            qk = qkv[:, :, : h + kv]
            qk = (qk * cos).add_(qk.roll(d // 2, -1).mul_(sin))  # RoPE, rotate_half's minus sign in the table
            q = qk[:, :, :h].transpose(1, 2)  # (B, h, n, d)
            keys, values = cache.update(qk[:, :, h:].transpose(1, 2), qkv[:, :, h + kv :].transpose(1, 2), i)
            last = i + 1 == len(self.layers)  # keys, values: (B, kv, total, d) views of the slabs
            if last and not to_logits:
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
        """``step`` on a position-major cache with aha's C kernels (``aha.rollout.kernels``): residual add +
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


@cache
def _cache_kwarg(cls: type) -> str:
    """The forward's name for the KV-cache argument (``cache`` in recent transformers, else the old name)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
