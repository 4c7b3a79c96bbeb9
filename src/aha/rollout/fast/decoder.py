"""A hand-written forward for plain Llama-family models (llama, qwen2, mistral; default RoPE, no hooks), with or
without plain LoRA adapters (peft): the sampler's prompt forward and decode steps over the model's weights, without
the HF module machinery. ``fast_decode_reason`` says when a model qualifies; ``aha.rollout.sampler`` drives
``FastDecoder``.

**Weights.** Each projection's weight is packed once for oneDNN (``PackedLinear``), fused where the step fuses
(q/k/v, gate/up). Under LoRA the packed weight is the merged ``W + Σ scaling[a] · B_a @ A_a`` over the layer's
active adapters (peft's ``get_delta_weight``; new tensors, the model's own weights untouched, a base bias kept);
in eval mode (``sample`` sees to it) LoRA dropout is the identity, so this is the adapter's forward up to
rounding. The packed weights are cached per model (``packed_weights``) and rebuilt only when a tensor they come
from changed (identity, version counter, storage, and an exact integer sum of its bits: fused optimisers and
``.data`` writes leave the version counter alone) or a LoRA setting did (active adapters, scaling,
enable/merge), so many batches of one evaluation pack once and GRPO re-packs once per optimiser step.

**Compute dtype.** float32, or bfloat16: then the matmul weights are packed in bf16 and each matmul's input is
cast to bf16 for it alone; RMSNorm, RoPE, the KV cache, attention, the native kernels and the logits stay fp32.
A model whose own weights are bf16 runs this way too. bf16 needs the native kernels (the fp32 KV cache is the
decoder's own only on that path).
"""

from __future__ import annotations

import os
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aha.rollout.fast import kernels
from aha.rollout.fast.decode import DECODE_ATTN, SlabCache
from aha.rollout.fast.kernels import PackedLinear

FAST_DECODE_TYPES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "mistral": "MistralForCausalLM"}
COMPUTE_DTYPES = (torch.float32, torch.bfloat16)
PROJECTIONS = (("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
               ("mlp", "gate_proj"), ("mlp", "up_proj"), ("mlp", "down_proj"))  # fmt: skip


def _plain_linear(m) -> bool:
    return type(m) is torch.nn.Linear and not m._forward_hooks and not m._forward_pre_hooks


def _peft():
    """peft's PeftModel and LoRA Linear classes, or None when peft was never imported (then no model holds them)."""
    if "peft" not in sys.modules:
        return None
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear

    return PeftModel, LoraLinear


def base_model(model):
    """The causal LM under a peft ``PeftModel`` (``get_base_model()``), else ``model`` itself."""
    peft = _peft()
    return model.get_base_model() if peft is not None and isinstance(model, peft[0]) else model


def model_dtype(model) -> torch.dtype:
    """The dtype of the model's weights (its first floating-point parameter's, as transformers' ``model.dtype``)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@dataclass
class Projection:
    """Where one projection's effective weight comes from: the base ``nn.Linear`` plus, for a LoRA layer, its
    active adapters' deltas (``(lora layer, adapter name)``; empty when disabled or already merged)."""

    base: torch.nn.Linear
    adapters: list[tuple[torch.nn.Module, str]]

    def weight(self) -> torch.Tensor:
        """W + Σ scaling · B @ A (a new tensor when adapters are active), in the base weight's dtype or fp32."""
        if not self.adapters:
            return self.base.weight
        w = self.base.weight.float()
        for layer, name in self.adapters:
            w = w + layer.get_delta_weight(name).float()  # (out, in): scaling[name] · B @ A
        return w

    def tensors(self) -> list[torch.Tensor]:
        out = [self.base.weight] + ([self.base.bias] if self.base.bias is not None else [])
        for layer, name in self.adapters:
            out += [layer.lora_A[name].weight, layer.lora_B[name].weight]
        return out

    def settings(self) -> tuple:
        return tuple((name, float(layer.scaling[name])) for layer, name in self.adapters)


def _projection(m) -> Projection | str:
    """How a decoder projection ``m`` maps to a merged weight: a plain ``nn.Linear``, or peft's LoRA ``Linear`` on
    one with plain LoRA adapters. A string: why it cannot."""
    if _plain_linear(m):
        return Projection(m, [])
    peft = _peft()
    if peft is None or type(m) is not peft[1]:
        return f"projection {type(m).__name__} is neither nn.Linear nor peft's LoRA Linear"
    if m._forward_hooks or m._forward_pre_hooks:
        return "forward hooks"
    base = m.get_base_layer()
    if not _plain_linear(base):
        return f"LoRA on a {type(base).__name__}, not a plain nn.Linear"
    if m.disable_adapters:
        return "LoRA adapters disabled while merged" if m.merged else Projection(base, [])
    if m.merged:  # the forward is the base layer's alone, whose weight holds the merged adapters
        return Projection(base, [])
    adapters = []
    for name in m.active_adapters:
        if name not in m.lora_A:  # as the forward: an active adapter this layer lacks adds nothing here
            continue
        if getattr(m, "use_dora", {}).get(name) or name in getattr(m, "lora_variant", {}):
            return f"LoRA variant (DoRA or another) in adapter {name!r}"
        if getattr(m, "lora_bias", {}).get(name):
            return f"lora_bias in adapter {name!r}"
        a, b = m.lora_A[name], m.lora_B[name]
        if not (_plain_linear(a) and _plain_linear(b)) or a.bias is not None or b.bias is not None:
            return f"adapter {name!r}: lora_A/lora_B are not bias-free nn.Linear"
        drop = m.lora_dropout[name]
        if drop.training and isinstance(drop, torch.nn.Dropout) and drop.p > 0:
            return "LoRA dropout in training mode"
        adapters.append((m, name))
    return Projection(base, adapters)


def fast_decode_reason(model, total_len: int, dtype: torch.dtype | None = None) -> str | None:
    """Why ``FastDecoder`` cannot reproduce this model's decode step in compute ``dtype`` (None: the model's own)
    for sequences of ``total_len`` tokens; None: it can. ``model``: a causal LM, or a peft ``PeftModel`` with LoRA
    adapters on one."""
    if os.environ.get("AHA_FAST_DECODE", "1") == "0":
        return "AHA_FAST_DECODE=0"
    peft = _peft()
    if peft is not None and isinstance(model, peft[0]):
        for name in model.active_adapters:
            kind = getattr(model.peft_config[name], "peft_type", None)
            if getattr(kind, "value", kind) != "LORA":
                return f"PEFT adapter {name!r} is {getattr(kind, 'value', kind)}, not LoRA"
    base = base_model(model)
    config = getattr(base, "config", None)
    mtype = getattr(config, "model_type", None)
    if mtype not in FAST_DECODE_TYPES or type(base).__name__ != FAST_DECODE_TYPES[mtype]:
        return f"not a plain llama/qwen2/mistral causal LM ({type(base).__name__})"
    if getattr(config, "sub_configs", None):
        return "sub-configs"
    if base.training and getattr(config, "attention_dropout", 0.0):
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
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not _plain_linear(getattr(base, "lm_head", None)):
        return "unexpected module layout"
    if getattr(getattr(inner, "rotary_emb", None), "rope_type", None) != "default":
        return "rope scaling"
    dtype = dtype or model_dtype(model)
    if dtype not in COMPUTE_DTYPES:
        return f"compute dtype {dtype} (the fast decoder runs float32 or bfloat16)"
    odd = {p.dtype for p in model.parameters()} - set(COMPUTE_DTYPES)
    if odd:
        return f"parameters in {', '.join(sorted(map(str, odd)))}"
    if dtype == torch.bfloat16 and (inner.embed_tokens.weight.device.type != "cpu" or kernels.load() is None):
        return "bfloat16 without aha's native CPU kernels"
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
            return "unexpected attention children (q/k norm?)"
        if set(dict(mlp.named_children())) - {"act_fn"} != {"gate_proj", "up_proj", "down_proj"}:
            return "unexpected mlp children"
        for parent, name in PROJECTIONS:
            proj = _projection(getattr(getattr(layer, parent), name))
            if isinstance(proj, str):
                return proj
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


def _fused(projs: list[Projection], dtype: torch.dtype, rows: int | None) -> PackedLinear:
    """One ``PackedLinear`` of the projections' effective weights stacked on the output axis, in ``dtype``."""
    weight = torch.cat([p.weight() for p in projs]).to(dtype)
    if all(p.base.bias is None for p in projs):
        return PackedLinear(weight, None, rows)
    bias = torch.cat([p.base.bias if p.base.bias is not None else weight.new_zeros(p.base.out_features) for p in projs])
    return PackedLinear(weight, bias.to(dtype), rows)


def _fingerprint(t: torch.Tensor) -> tuple[int, int, int, int]:
    """Changes whenever ``t``'s values do: its identity, version counter and storage, and the sum of its bits as
    integers (exact; fused optimisers and writes through ``.data`` do not bump the version counter)."""
    bits = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    version = 0 if t.is_inference() else t._version
    return id(t), version, t.data_ptr(), int(t.detach().view(bits).sum())


@dataclass
class PackedWeights:
    """What ``FastDecoder`` computes with: the embedding, per layer (norm weight, eps, qkv, o, norm weight, eps,
    gate_up, down), the final norm and the head, the matmuls packed in ``dtype``, the norm weights fp32."""

    embed: torch.Tensor  # (V, hidden), the model's own (a lookup, no matmul)
    layers: list[tuple]
    inter: int
    norm_w: torch.Tensor
    norm_eps: float
    head: PackedLinear
    dtype: torch.dtype


def _pack(base, rows: int | None, dtype: torch.dtype) -> PackedWeights:
    inner = base.model

    def norm(m) -> tuple[torch.Tensor, float]:
        return m.weight.float(), m.variance_epsilon  # fp32 for the native kernels (the model's own tensor if fp32)

    layers = []
    for layer in inner.layers:
        q, k, v, o, gate, up, down = (_projection(getattr(getattr(layer, a), n)) for a, n in PROJECTIONS)
        layers.append((*norm(layer.input_layernorm), _fused([q, k, v], dtype, rows), _fused([o], dtype, rows),
                       *norm(layer.post_attention_layernorm), _fused([gate, up], dtype, rows),
                       _fused([down], dtype, rows)))  # fmt: skip
    head = _fused([Projection(base.lm_head, [])], dtype, rows)
    inter = inner.layers[0].mlp.gate_proj.out_features
    return PackedWeights(inner.embed_tokens.weight, layers, inter, *norm(inner.norm), head, dtype)


def _weights_key(model, dtype: torch.dtype) -> tuple[tuple, list[torch.Tensor]]:
    """(key, tensors): what the packed weights of ``model`` in ``dtype`` depend on. Equal keys, same weights, as long
    as ``tensors`` are kept alive (their ids cannot be reused)."""
    base = base_model(model)
    inner = base.model
    tensors = [inner.embed_tokens.weight, inner.norm.weight, base.lm_head.weight]
    if base.lm_head.bias is not None:
        tensors.append(base.lm_head.bias)
    settings = []
    for layer in inner.layers:
        tensors += [layer.input_layernorm.weight, layer.post_attention_layernorm.weight]
        for a, n in PROJECTIONS:
            proj = _projection(getattr(getattr(layer, a), n))
            tensors += proj.tensors()
            settings.append(proj.settings())
    return (dtype, tuple(settings), tuple(_fingerprint(t) for t in tensors)), tensors


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (key, tensors, PackedWeights)


def packed_weights(model, rows: int | None = None, dtype: torch.dtype | None = None) -> PackedWeights:
    """The packed (and LoRA-merged) weights of a model ``fast_decode_reason`` accepts, in compute ``dtype`` (None:
    the model's), from the cache while nothing they depend on changed; ``rows``: the batch the packing is tuned
    for when it is (re)built (any batch works)."""
    dtype = dtype or model_dtype(model)
    with torch.no_grad():
        key, tensors = _weights_key(model, dtype)
        hit = _CACHE.get(model)
        if hit is not None and hit[0] == key:
            return hit[2]
        _CACHE.pop(model, None)  # free the stale copy before packing the new one
        weights = _pack(base_model(model), rows, dtype)
        _CACHE[model] = (key, tensors, weights)
    return weights


class FastDecoder:
    """One decode step (one new token per row) of a plain Llama-family model, written out with torch ops on
    its weights instead of its modules: per layer RMSNorm, one fused qkv matmul, RoPE from a
    table precomputed for every position, the new key/value written into the ``SlabCache`` buffers in place,
    two-matmul attention (grouped-query heads folded into the query rows), o_proj, RMSNorm, fused gate/up
    matmul, SwiGLU, down_proj. Same operations as the HF modules, so the same numbers up to fp32 rounding
    of the fused matmuls (and of the LoRA merge). ``model`` may be a peft ``PeftModel`` with plain LoRA adapters;
    ``dtype``: the compute dtype of the matmuls (float32 or bfloat16; None: the model's), see the module doc."""

    def __init__(self, model, max_len: int, rows: int | None = None, dtype: torch.dtype | None = None) -> None:
        base = base_model(model)
        config, inner = base.config, base.model
        w = packed_weights(model, rows, dtype)
        self.dtype = w.dtype
        self.embed, self.layers, self.inter, self.head = w.embed, w.layers, w.inter, w.head
        self.norm_w, self.norm_eps = w.norm_w, w.norm_eps
        self.heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.groups = self.heads // self.kv_heads
        attn0 = inner.layers[0].self_attn
        self.head_dim = attn0.head_dim
        self.scale = attn0.scaling
        rot = inner.rotary_emb  # as its forward, for positions 0..max_len-1 at once
        freqs = torch.arange(max_len, device=self.embed.device)[:, None].float() * rot.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rot.attention_scaling).unsqueeze(1)  # (max_len, 1, d)
        sin = emb.sin() * rot.attention_scaling
        sin[:, : sin.size(-1) // 2].neg_()  # rotate_half(x)·sin == roll(x, d/2)·[-sin₁, sin₂]
        self.sin = sin.unsqueeze(1)
        self.cos2, self.sin2 = self.cos[:, 0], self.sin[:, 0]  # (max_len, d) for the native kernels
        self.lib = kernels.load()  # used when the cache is position-major (the sampler makes it so only if loaded)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """The fp32 residual stream's start: (..., hidden), a new tensor."""
        return F.embedding(ids, self.embed).float()

    @staticmethod
    def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def step(self, tok: torch.Tensor, pos: torch.Tensor, bias: torch.Tensor, cache: SlabCache) -> torch.Tensor:
        """tok, pos: (b,) new tokens and their positions; bias: (b, 1, 1, >=L+1) additive mask (0 / -inf) over
        the cache columns. Appends to ``cache`` and returns (b, V) fp32 logits."""
        length = cache.layers[0].length
        x = self._embed(tok)  # (b, hidden)
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
        x = self._embed(ids).view(b * n, -1)  # (B·n, hidden): the residual stream
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
