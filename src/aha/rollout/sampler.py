"""Batched sampling with a KV cache: aha's own rollout loop (``backend="fast"``) and transformers'
``generate`` (``backend="hf"``), behind one function.

Prompts are left-padded so that every row's next token sits in the last column. The fast loop runs
one forward over the distinct prompts (rows with the same prompt, as GRPO's G completions of one prompt, share
its prefill), then one single-token forward per new token, reusing the cache; rows
that have produced EOS are carried with a pad token and stop counting; once at most half of the computed
rows are still running, the finished ones are dropped from the forward (cache, mask and positions narrowed).
Decode steps of ``sdpa`` models run a two-matmul attention (``_decode_attention``) instead of the CPU flash
kernel, which is slow for one query token; ``AHA_DECODE_ATTN=0`` turns this off.
For plain Llama-family models (``aha.rollout.fast.decoder.FastDecoder``: llama, qwen2, mistral, default RoPE, no
hooks; plain peft LoRA adapters merged into its packed weights) the decode steps skip the HF module machinery
altogether: a hand-written step over the same weights (fused qkv and gate/up, RoPE from a precomputed table,
attention on the preallocated cache, SwiGLU, RMSNorm). On a CPU with a C compiler the cache is stored position-major and the attention, softmax,
RMSNorm (with the residual add), RoPE and SwiGLU run as aha's native kernels, the matmuls on weights pre-packed
for oneDNN (``aha.rollout.fast.kernels``;
off with ``AHA_NATIVE_ATTN=0`` / ``AHA_PACKED_LINEAR=0``); the prompt forward then runs on them too
(``FastDecoder.prefill``: same matmuls and kernels, its last layer for the last column only, and a prompt
opening that every row shares, such as a system prompt, run once), else it is the HF forward that fills the
cache. ``AHA_FAST_DECODE=0`` turns the hand-written step off; anything it cannot honour falls back to the HF
forward, never silently: the reason is logged once per (model class, reason) on the ``aha.rollout`` logger, and
:func:`fast_decode_status` says it for a model (the trainer logs it as ``rollout/fast_decoder``).

**Compute dtype** (``dtype=``): the model's own by default; ``torch.bfloat16`` for a float32 model runs the fast
decoder's matmuls on bf16 packed weights (norms, RoPE, KV cache, attention and logits stay fp32) and the HF
forward under ``torch.autocast``. Refused where the hardware has no bf16 (``aha.devices.bf16_supported``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

from aha.devices import bf16_refusal, bf16_supported
from aha.rollout.fast import kernels
from aha.rollout.fast.decode import SlabCache, cache_kwarg, decode_attention_swap
from aha.rollout.fast.decoder import COMPUTE_DTYPES, FastDecoder, fast_decode_reason, model_dtype

log = logging.getLogger("aha.rollout")

OnToken = Callable[[int, torch.Tensor], None]  # (step t, that step's tokens (B,)): the samplers' per-token hook


class TokenStreamer(BaseStreamer):
    """transformers' streamer protocol onto an :data:`OnToken` hook: ``generate`` puts the prompt first (skipped),
    then each step's tokens."""

    def __init__(self, on_token: OnToken) -> None:
        self.on_token, self.step = on_token, -1

    def put(self, value: torch.Tensor) -> None:
        if self.step >= 0:
            self.on_token(self.step, value.reshape(-1))
        self.step += 1

    def end(self) -> None:
        pass


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    # further transformers generate() options (GRPOConfig's generation_kwargs, cache_implementation): backend "hf" only
    generate_kwargs: dict[str, Any] = field(default_factory=dict)

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
    if p.temperature != 1.0:
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


# Drop finished rows from the forward once at most this fraction of the computed rows is still running
# (and the batch is at least DROP_MIN_ROWS wide): the cache, mask and positions are narrowed in place.
DROP_LIVE_FRACTION = 0.5
DROP_MIN_ROWS = 8
CHECK_EVERY = 4  # count the running rows (a sync) every this many steps


def compute_dtype(model, dtype: torch.dtype | None = None) -> torch.dtype:
    """The dtype ``sample(model, ..., dtype=dtype)`` computes in: the model's weights' dtype when ``dtype`` is None,
    else ``dtype`` (torch.float32 or torch.bfloat16). Raises ValueError for a dtype it cannot honour: another
    dtype, float32 compute of lower-precision weights, bf16 where the device has no bf16 instructions."""
    own = model_dtype(model)
    if dtype is None:
        return own
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"sampling dtype {dtype}: use torch.float32 or torch.bfloat16 (or None: the model's)")
    if own != dtype and own != torch.float32:
        raise ValueError(f"sampling dtype {dtype} for a model whose weights are {own}: load the model in float32")
    device = next(model.parameters()).device
    if dtype == torch.bfloat16 and not bf16_supported(device):
        raise ValueError(f"sampling dtype torch.bfloat16: {bf16_refusal(device)}")
    return dtype


def _hf_autocast(model, dtype: torch.dtype):
    """What the HF forward runs under: ``torch.autocast`` to ``dtype`` when it is lower than the weights'."""
    if dtype == model_dtype(model):
        return nullcontext()
    return torch.autocast(next(model.parameters()).device.type, dtype=dtype)


def fast_decode_status(model, total_len: int, dtype: torch.dtype | None = None) -> str | None:
    """Why ``sample(model, ..., backend="fast", dtype=dtype)`` would run ``model`` on the HF forward instead of aha's
    fast decoder for sequences of ``total_len`` tokens (None: on the fast decoder), judged in eval mode as
    ``sample`` runs it (its training mode is restored). For completions longer than one token (one token is the
    prompt forward alone)."""
    was_training = model.training
    model.eval()
    try:
        return fast_decode_reason(model, total_len, compute_dtype(model, dtype))
    finally:
        model.train(was_training)


_FALLBACKS_LOGGED: set[tuple[str, str]] = set()


def _log_fallback(model, reason: str) -> None:
    """Say once per (model class, reason) that the fast decoder stepped aside, and why."""
    key = (type(model).__name__, reason)
    if key not in _FALLBACKS_LOGGED:
        _FALLBACKS_LOGGED.add(key)
        log.warning("aha's fast decoder is off for %s (%s): sampling runs the slower HF forward", *key)


def sample_fast(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    params: SamplingParams,
    eos_token_ids: list[int],
    pad_token_id: int,
    generator: torch.Generator | None = None,
    row_seeds: list[int] | None = None,
    dtype: torch.dtype | None = None,
    on_token: OnToken | None = None,
) -> torch.Tensor:
    """prompt_ids/prompt_mask: (B, P) left-padded. Returns completion ids (B, T<=max_new_tokens),
    pad after each row's first EOS (the EOS itself is kept). Randomness: ``row_seeds`` (one per row,
    layout-independent) or else ``generator``. ``dtype``: the compute dtype (``compute_dtype``).
    ``on_token(t, tokens)``: called as each step's tokens are drawn, ``tokens`` (B,) being column ``t`` of the
    result (pad for rows that have ended) — what a chat streams from; it costs one device sync per step."""
    if params.generate_kwargs:
        raise ValueError(
            f"sample_fast: {sorted(params.generate_kwargs)} are transformers generate() options: use backend='hf'"
        )
    dtype = compute_dtype(model, dtype)
    with torch.inference_mode():
        u = None
        if not params.greedy and params.max_new_tokens > 0:
            u = uniforms(prompt_ids.size(0), params.max_new_tokens, prompt_ids.device, generator, row_seeds)
        with decode_attention_swap(model):
            out, steps = _sample_fast(
                model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, u, dtype, on_token
            )
    return out[:, :steps].clone()  # a normal tensor: inference tensors cannot be saved for backward later


def _distinct_rows(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """(first, inverse) such that ``prompt_ids[first][inverse] == prompt_ids`` (masks too), ``first`` holding
    one row per distinct prompt; (None, None) when every row is distinct."""
    if prompt_ids.size(0) < 2:
        return None, None
    rows = torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], dim=1)  # (B, 2P)
    uniq, inverse = torch.unique(rows, dim=0, return_inverse=True)
    if uniq.size(0) == rows.size(0):
        return None, None
    first = torch.full((uniq.size(0),), rows.size(0), dtype=torch.long, device=rows.device)
    first.scatter_reduce_(0, inverse, torch.arange(rows.size(0), device=rows.device), reduce="amin")
    return first, inverse


def _sample_fast(model, prompt_ids, prompt_mask, params, eos_token_ids, pad_token_id, u, dtype, on_token):
    b, p_len, device = prompt_ids.size(0), prompt_ids.size(1), prompt_ids.device
    n_new = params.max_new_tokens
    out = torch.full((b, n_new), pad_token_id, dtype=torch.long, device=device)  # (B, T) result
    if n_new == 0:
        return out, 0
    # the whole attention mask at once; step t uses its first P+t+1 columns (no per-step torch.cat)
    mask = torch.cat([prompt_mask.long(), prompt_mask.new_ones((b, n_new), dtype=torch.long)], dim=1)
    positions = (mask[:, :p_len].cumsum(-1) - 1).clamp(min=0)  # (B, P)
    reason = fast_decode_reason(model, p_len + n_new, dtype) if n_new > 1 else "one new token"
    if reason is not None and n_new > 1:
        _log_fallback(model, reason)
    fast = reason is None
    hf_context = _hf_autocast(model, dtype)  # the HF forward's compute dtype (the fast decoder casts its own)
    # position-major cache buffers when the native decode-attention kernel runs the decode steps
    cache = SlabCache(p_len + n_new, position_major=fast and device.type == "cpu" and kernels.load() is not None)
    cache_kw = cache_kwarg(type(model.get_base_model() if hasattr(model, "get_base_model") else model))  # peft
    # each distinct prompt runs through the prefill once (GRPO asks G completions of every prompt); its cached
    # keys/values and last logits are then copied to every row that holds it
    first, inverse = _distinct_rows(prompt_ids, prompt_mask)
    ids, pmask, ppos = (prompt_ids, mask[:, :p_len], positions)
    if first is not None:
        ids, pmask, ppos = ids[first], pmask[first], ppos[first]
    decoder = FastDecoder(model, int(positions.max()) + n_new + 1, rows=b, dtype=dtype) if fast else None
    if decoder is not None and cache.position_major:  # the prompt forward on the native kernels too
        logits = decoder.prefill(ids, pmask, ppos, cache)  # (B or distinct prompts, V)
    else:
        with hf_context:
            fwd = model(
                input_ids=ids,
                attention_mask=pmask,
                position_ids=ppos,
                use_cache=True,
                logits_to_keep=1,
                **{cache_kw: cache},
            )
        logits = fwd.logits[:, -1, :].float()  # (B or distinct prompts, V)
    if first is not None:
        cache.batch_select_indices(inverse)
        logits = logits[inverse]  # (B, V)
    if decoder is not None:
        # additive mask over the cache columns: 0 where attended, -inf on left padding
        bias = torch.zeros(mask.shape, dtype=logits.dtype, device=device).masked_fill_(mask == 0, float("-inf"))
        bias = bias[:, None, None, :]  # (B, 1, 1, P+T)
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
    rows = None  # original row of each computed row; None while no row has been dropped
    done = torch.zeros(b, dtype=torch.bool, device=device)  # (computed rows,)
    pad = torch.full((b,), pad_token_id, dtype=torch.long, device=device)
    ut = None if u is None else u.t().contiguous()  # (T, B): step t's uniforms are a contiguous row
    can_stop = bool(is_eos.any())  # else no row ever finishes: no need to count
    steps = n_new
    for t in range(n_new):
        if ut is None:
            ut_t = None
        else:
            ut_t = ut[t] if rows is None else ut[t, rows]
        tok = _pick(process_logits(logits, seen, params), params, ut_t)  # (b',)
        if can_stop:
            tok = torch.where(done, pad[: tok.size(0)], tok)
        if rows is None:
            out[:, t] = tok
        else:
            out[rows, t] = tok
        if on_token is not None:
            on_token(t, out[:, t].clone())
        if t + 1 == n_new:
            break
        if can_stop:
            done |= is_eos[tok]
            if t % CHECK_EVERY == 0:  # a sync: only every few steps
                live = int((~done).sum())
                if live == 0:
                    steps = t + 1  # (exact end found below)
                    break
                if tok.size(0) >= DROP_MIN_ROWS and live <= DROP_LIVE_FRACTION * tok.size(0):
                    keep = (~done).nonzero().squeeze(1)
                    cache.batch_select_indices(keep)
                    rows = keep if rows is None else rows[keep]
                    tok, mask, next_pos, done = tok[keep], mask[keep], next_pos[keep], done[keep]
                    if decoder is not None:
                        bias = bias[keep]
                    if seen is not None:
                        seen = seen[keep]
        if seen is not None:
            seen[torch.arange(tok.size(0), device=device), tok] = True
        if decoder is not None:
            logits = decoder.step(tok, next_pos.squeeze(1), bias, cache)
        else:
            with hf_context:
                fwd = model(
                    input_ids=tok.unsqueeze(1),
                    attention_mask=mask[:, : p_len + t + 1],
                    position_ids=next_pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{cache_kw: cache},
                )
            logits = fwd.logits[:, -1, :].float()
        next_pos = next_pos + 1
    if can_stop:  # the running rows are counted only every few steps: find the exact end
        hit = is_eos[out[:, :steps]]
        if bool(hit.any(1).all()):  # every row stopped: the result ends at the last row's first EOS
            steps = int(hit.int().argmax(1).max()) + 1
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
    dtype: torch.dtype | None = None,
    on_token: OnToken | None = None,
) -> torch.Tensor:
    """Same contract as sample_fast, through ``model.generate`` (``on_token`` through a generation streamer) (under ``torch.autocast`` when ``dtype`` is lower
    than the weights'). Its randomness is the global torch RNG (seeded from ``row_seeds[0]`` when given): rows are
    not independent of their batch-mates."""
    dtype = compute_dtype(model, dtype)
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
    kwargs.update(params.generate_kwargs)
    if on_token is not None:
        kwargs["streamer"] = TokenStreamer(on_token)
    with _hf_autocast(model, dtype):
        seqs = model.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **kwargs)
    return seqs[:, prompt_ids.size(1) :]


BACKENDS = {"fast": sample_fast, "hf": sample_hf}


def sample(
    model,
    prompt_ids,
    prompt_mask,
    params,
    eos_token_ids,
    pad_token_id,
    generator=None,
    backend="fast",
    row_seeds=None,
    dtype: torch.dtype | None = None,
    on_token: OnToken | None = None,
):
    """Completion ids (B, T) for left-padded prompts (B, P) with ``backend`` (``fast``: aha's loop, ``hf``:
    transformers' generate), in eval mode (the model's mode is restored after), computing in ``dtype`` (None:
    the model's; ``torch.bfloat16``: see the module doc). See ``sample_fast`` for the rest."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown rollout backend {backend!r}; choose from {sorted(BACKENDS)}")
    was_training = model.training
    model.eval()
    try:
        fn = BACKENDS[backend]
        return fn(
            model,
            prompt_ids,
            prompt_mask,
            params,
            eos_token_ids,
            pad_token_id,
            generator,
            row_seeds=row_seeds,
            dtype=dtype,
            on_token=on_token,
        )
    finally:
        model.train(was_training)
