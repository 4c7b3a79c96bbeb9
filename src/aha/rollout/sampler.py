"""Batched sampling with a KV cache: aha's own rollout loop (``backend="fast"``) and transformers'
``generate`` (``backend="hf"``), behind one function.

Prompts are left-padded so that every row's next token sits in the last column. The fast loop runs
one forward over the prompts, then one single-token forward per new token, reusing the cache; rows
that have produced EOS are carried with a pad token and stop counting; once at most half of the computed
rows are still running, the finished ones are dropped from the forward (cache, mask and positions narrowed).
Decode steps of ``sdpa`` models run a two-matmul attention (``_decode_attention``) instead of the CPU flash
kernel, which is slow for one query token; ``AHA_DECODE_ATTN=0`` turns this off.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None, p: SamplingParams) -> torch.Tensor:
    """Apply repetition penalty, temperature, top-k, top-p and min-p, as transformers' processors do.

    logits: (B, V) float; seen: (B, V) bool of tokens already in each row (for the penalty).
    Returns (B, V) logits with filtered entries at -inf.
    """
    if p.repetition_penalty != 1.0 and seen is not None:
        penalised = torch.where(logits < 0, logits * p.repetition_penalty, logits / p.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if p.greedy:
        return logits
    logits = logits / p.temperature
    neg = float("-inf")  # as transformers' filter_value
    if p.top_k and p.top_k < logits.size(-1):
        kth = torch.topk(logits, p.top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, neg)
    if p.top_p < 1.0:
        sorted_logits, idx = torch.sort(logits, descending=False, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum <= (1 - p.top_p)
        drop_sorted[:, -1] = False  # keep at least one token
        logits = logits.masked_fill(drop_sorted.scatter(1, idx, drop_sorted), neg)
    if p.min_p > 0.0:
        probs = logits.softmax(-1)
        threshold = p.min_p * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, neg)
    return logits


def _pick(logits: torch.Tensor, p: SamplingParams, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row: argmax when greedy, else inverse-CDF sampling with the row's uniform u (B,),
    which is exactly a draw from softmax(logits) (zero-probability tokens can never be picked)."""
    if p.greedy or u is None:
        return logits.argmax(-1)
    cdf = logits.float().softmax(-1).cumsum(-1)  # (B, V)
    tok = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).squeeze(1)
    return tok.clamp(max=logits.size(-1) - 1)


def uniforms(b: int, n: int, device, generator: torch.Generator | None, row_seeds=None) -> torch.Tensor:
    """The (B, n) uniforms that drive sampling. With ``row_seeds`` each row draws from its own seeded
    stream, so a row's completion does not depend on which other rows share its batch (or process)."""
    if row_seeds is None:
        return torch.rand((b, n), generator=generator, device=device)
    if len(row_seeds) != b:
        raise ValueError(f"row_seeds has {len(row_seeds)} seeds for {b} prompts")
    gens = [torch.Generator(device=device).manual_seed(int(s)) for s in row_seeds]
    return torch.stack([torch.rand(n, generator=g, device=device) for g in gens])


class SlabLayer(DynamicLayer):
    """One layer's KV cache in a preallocated (B, heads, max_len, d) buffer: ``update`` writes the new keys
    and values in place and returns views of the filled part, instead of ``torch.cat``-ing the whole cache
    at every step (a copy of everything cached so far, per layer and per token)."""

    def __init__(self, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.length = 0
        self.k_buf: torch.Tensor | None = None  # (B, heads, max_len, d)
        self.v_buf: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        b, h, _, _ = key_states.shape
        self.k_buf = key_states.new_empty((b, h, self.max_len, key_states.size(-1)))
        self.v_buf = value_states.new_empty((b, h, self.max_len, value_states.size(-1)))
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        s, n = self.length, key_states.size(-2)
        self.k_buf[:, :, s : s + n].copy_(key_states)
        self.v_buf[:, :, s : s + n].copy_(value_states)
        self.length = s + n
        self.keys, self.values = self.k_buf[:, :, : s + n], self.v_buf[:, :, : s + n]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.max_len

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self.k_buf, self.v_buf = self.k_buf[indices], self.v_buf[indices]
            self.keys, self.values = self.k_buf[:, :, : self.length], self.v_buf[:, :, : self.length]


class SlabCache(DynamicCache):
    """A DynamicCache whose layers are SlabLayers of ``max_len`` positions (created lazily, one per layer)."""

    def __init__(self, max_len: int) -> None:
        Cache.__init__(self, layer_class_to_replicate=DynamicLayer)
        self.max_len = max_len

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        while len(self.layers) <= layer_idx:
            self.layers.append(SlabLayer(self.max_len))
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


@cache
def _cache_kwarg(cls: type) -> str:
    """The forward's name for the KV-cache argument (``cache`` in recent transformers, else the old name)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


# Drop finished rows from the forward once at most this fraction of the computed rows is still running
# (and the batch is at least DROP_MIN_ROWS wide): the cache, mask and positions are narrowed in place.
DROP_LIVE_FRACTION = 0.5
DROP_MIN_ROWS = 8


def sample_fast(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    row_seeds: list[int] | None = None,
) -> torch.Tensor:
    """prompt_ids/prompt_mask: (B, P) left-padded. Returns completion ids (B, T<=max_new_tokens),
    pad after each row's first EOS (the EOS itself is kept). Randomness: ``row_seeds`` (one per row,
    layout-independent) or else ``generator``."""
    with torch.inference_mode():
        u = None
        if not params.greedy and params.max_new_tokens > 0:
            u = uniforms(prompt_ids.size(0), params.max_new_tokens, prompt_ids.device, generator, row_seeds)
        with _decode_attention_swap(model):
            out, steps = _sample_fast(model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, u)
    return out[:, :steps].clone()  # a normal tensor: inference tensors cannot be saved for backward later


def _sample_fast(model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, u):
    b, p_len, device = prompt_ids.size(0), prompt_ids.size(1), prompt_ids.device
    n_new = params.max_new_tokens
    out = torch.full((b, n_new), pad_token_id, dtype=torch.long, device=device)  # (B, T) result
    if n_new == 0:
        return out, 0
    # the whole attention mask at once; step t uses its first P+t+1 columns (no per-step torch.cat)
    mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones((b, n_new), dtype=torch.long)], dim=1)
    positions = (mask[:, :p_len].cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = SlabCache(p_len + n_new)
    cache_kw = _cache_kwarg(type(model))
    logits = (
        model(
            input_ids=prompt_ids,
            attention_mask=mask[:, :p_len],
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{cache_kw: cache},
        )
        .logits[:, -1, :]
        .float()
    )  # (B, V)
    vocab = logits.size(-1)
    is_eos = torch.zeros(vocab, dtype=torch.bool, device=device)  # lookup table instead of isin per step
    for e in eos_token_ids:
        if 0 <= e < vocab:
            is_eos[e] = True
    next_pos = positions[:, -1:] + 1  # (B, 1)
    seen = None
    if params.repetition_penalty != 1.0:
        seen = torch.zeros(b, vocab, dtype=torch.bool, device=device)
        seen.scatter_(1, prompt_ids, prompt_mask.bool())
    rows = torch.arange(b, device=device)  # original row of each computed row
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (computed rows,)
    pad = torch.full((b,), pad_token_id, dtype=torch.long, device=device)
    steps = 0
    for t in range(n_new):
        tok = _pick(process_logits(logits, seen, params), params, None if u is None else u[rows, t])  # (b',)
        tok = torch.where(done, pad[: tok.size(0)], tok)
        out[rows, t] = tok
        steps = t + 1
        done = done | is_eos[tok]
        live = int((~done).sum())
        if live == 0 or t + 1 == n_new:
            break
        if seen is not None:
            seen[torch.arange(tok.size(0), device=device), tok] = True
        if tok.size(0) >= DROP_MIN_ROWS and live <= DROP_LIVE_FRACTION * tok.size(0):
            keep = (~done).nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, tok, mask, next_pos, done = rows[keep], tok[keep], mask[keep], next_pos[keep], done[keep]
            if seen is not None:
                seen = seen[keep]
        logits = (
            model(
                input_ids=tok.unsqueeze(1),
                attention_mask=mask[:, : p_len + t + 1],
                position_ids=next_pos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: cache},
            )
            .logits[:, -1, :]
            .float()
        )
        next_pos = next_pos + 1
    return out, steps


@torch.no_grad()
def sample_hf(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    row_seeds: list[int] | None = None,
) -> torch.Tensor:
    """Same contract as sample_fast, through ``model.generate``. Its randomness is the global torch RNG
    (seeded from ``row_seeds[0]`` when given): rows are not independent of their batch-mates."""
    if row_seeds:
        torch.manual_seed(int(row_seeds[0]))
    kwargs = dict(
        max_new_tokens=params.max_new_tokens,
        do_sample=not params.greedy,
        eos_token_id=eos_token_ids,
        pad_token_id=pad_token_id,
        repetition_penalty=params.repetition_penalty,
    )
    if not params.greedy:
        kwargs.update(
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p or None
        )
    seqs = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
    return seqs[:, prompt_ids.size(1) :]


BACKENDS = {"fast": sample_fast, "hf": sample_hf}


def sample(
    model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, generator=None, backend="fast", row_seeds=None
):
    if backend not in BACKENDS:
        raise ValueError(f"unknown rollout backend {backend!r}; choose from {sorted(BACKENDS)}")
    was_training = model.training
    model.eval()
    try:
        fn = BACKENDS[backend]
        return fn(model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, generator, row_seeds=row_seeds)
    finally:
        model.train(was_training)
