"""The policy's forward pass over (prompt, completion) pairs: per-token log-probs and entropies.

This is where GRPO spends its training compute (one forward + backward per micro-batch), so it is kept
in one place: the loss, the π_old and the π_ref passes all go through ``token_logps``.

For the decoder-only families whose logits are just ``lm_head(hidden)`` (Llama, Qwen2/3, Mistral, ...),
``token_logps`` does less work than one padded ``model(...)`` call and gives the same numbers:

* **length buckets**: the rows are sorted by completion length and run in chunks of about
  ``TOKENS_PER_CHUNK`` tokens, each cut to its own longest completion, so no compute goes to the padding
  after short completions (about a third of a GRPO batch when lengths vary);
* **one prompt per group**: the G completions of a group share their prompt. The prompt is run once per
  distinct prompt with ``use_cache``, its (gradient-carrying) keys and values are gathered for the rows that
  use it, and the completions run on top of them; the backward sums the G rows' gradients into the prompt.
  With gradient checkpointing on, both passes checkpoint each layer themselves with caches that a replay
  does not change (the prompt pass's stores its keys/values rather than appending, the completion pass's
  only reads the prompt's), so the backward's recompute sees the same prompt;
* **chunked lm_head**: the vocabulary projection, log-softmax and entropy are computed ``LOGITS_BUDGET``
  elements at a time in a custom autograd function that keeps only the hidden states and one log-sum-exp
  per token; the backward recomputes each chunk's logits. Full-vocabulary logits never exist for more
  than one chunk of rows (with a 150k vocabulary they were the memory peak of training).

Other models (and wrapped ones: DDP, FSDP) take the plain path: one ``model(...)`` call and chunked
log-softmax.

**Mixed precision** (the trainer runs the loss forward under ``torch.autocast``, ``aha.train.precision``): the
matmuls, lm_head included, run in bf16/fp16; the logits are upcast to fp32 before the temperature and the
log-softmax, so log-probs, entropies and the loss are fp32 on both paths. The chunked lm_head's backward recomputes
its logits in the precision of its forward, so the softmax it differentiates is the one the forward normalised. (Under DDP the GRPO trainer passes the unwrapped model when ``has_fast_path`` holds and averages
the gradients itself: ``aha.train.distributed.average_gradients``.)
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.modeling_layers import GradientCheckpointingLayer

from aha.grpo.core import entropy_from_logits, selective_log_softmax
from aha.rollout.fast.decode import cache_kwarg

# model_type of families whose CausalLM computes logits = lm_head(final hidden state), nothing else
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "smollm3", "phi3", "olmo2"})
# (rows × width) of one decoder call over completions; on a CPU small chunks win (measured at 19m: 512-2048
# tokens all ~2.2× faster than one padded call; 8192 only 1.4×), on a GPU bigger ones keep the kernels busy
TOKENS_PER_CHUNK = {"cpu": 1024, "default": 16384}
LOGITS_BUDGET = 1 << 22  # elements of one chunk of full-vocabulary logits (16 MB in fp32)
MIN_SHARE = 2  # share a prompt's forward only when at least this many rows use it on average
_CHECKPOINT = partial(checkpoint, use_reentrant=False)


def token_logps(
    model,
    prompt_ids,
    prompt_mask,
    completion_ids,
    completion_mask,
    temperature: float,
    with_entropy: bool = False,
    entropy_grad: bool = False,
    head_fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens (B, T) (logits divided by the sampling temperature, as in
    TRL), and optionally the per-position entropy (B, T) (with a gradient only if `entropy_grad`: an entropy
    bonus in the loss). Positions after a row's last completion_mask 1 are not computed: they are 0 in both
    outputs. `head_fp32` (``cast_lm_head_to_fp32``): the lm_head's matmul in fp32 even under autocast (fast-path
    models only)."""
    parts = _plain_parts(model)
    if parts is None:
        if head_fp32:
            raise ValueError("token_logps: head_fp32 needs a model on the fast path (logits = lm_head(hidden))")
        return _token_logps_plain(
            model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy, entropy_grad
        )
    decoder, head = parts
    return _token_logps_chunked(
        decoder,
        head,
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        temperature,
        with_entropy,
        entropy_grad,
        head_fp32,
    )


# ------------------------------------------------------------------------------------------- plain path
def _token_logps_plain(
    model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature, with_entropy, entropy_grad=False
):
    ids = torch.cat([prompt_ids, completion_ids], dim=1)  # (B, P+T)
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, P+T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    t = completion_ids.size(1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=t + 1).logits
    logits = logits[:, :-1, :].float() / temperature  # (B, T, V) fp32: position i predicts completion token i
    chunk = max(64, LOGITS_BUDGET // logits.size(-1))
    logps = selective_log_softmax(logits, completion_ids, chunk=chunk)
    ent = entropy_from_logits(logits if entropy_grad else logits.detach(), chunk=chunk) if with_entropy else None
    return logps, ent


def decoder_and_head(model) -> tuple[torch.nn.Module, torch.nn.Linear]:
    """The (decoder, lm_head) ``token_logps``' fast path calls for `model` (a ValueError when it has none)."""
    parts = _plain_parts(model)
    if parts is None:
        raise ValueError(f"{type(model).__name__}: not on token_logps' fast path (see has_fast_path)")
    return parts


def has_fast_path(model) -> bool:
    """Whether ``token_logps`` takes the fast path for this model (buckets, shared prompts, chunked head)."""
    return _plain_parts(model) is not None


def _plain_parts(model) -> tuple[torch.nn.Module, torch.nn.Linear] | None:
    """(decoder, lm_head) when logits are exactly lm_head(decoder(...).last_hidden_state), else None."""
    if "forward" in vars(model) or model._forward_hooks or model._forward_pre_hooks:
        return None  # someone wraps or patches this model's forward: it must be called
    base = model
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):  # PEFT: LoRA-style adapters only
        cfg = getattr(model, "active_peft_config", None)
        if cfg is None or getattr(cfg, "is_prompt_learning", True):
            return None
        base = model.get_base_model()
    config = getattr(base, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES or not type(base).__name__.endswith("ForCausalLM"):
        return None
    head = base.get_output_embeddings()
    decoder = getattr(base, "model", None)
    if type(head) is not torch.nn.Linear or decoder is None or not hasattr(decoder, "layers"):
        return None
    return decoder, head


# ------------------------------------------------------------------------------------------- fast path
def _checkpointed_layers(decoder: torch.nn.Module) -> list[torch.nn.Module] | None:
    """The decoder layers with gradient checkpointing on ([] when it is off), or None when some other module
    checkpoints (then a cache could not be threaded through it)."""
    layers = []
    for m in decoder.modules():
        if getattr(m, "gradient_checkpointing", False) and m is not decoder:
            if not isinstance(m, GradientCheckpointingLayer):
                return None
            layers.append(m)
    return layers


def _can_share_prompt(decoder: torch.nn.Module) -> bool:
    c = decoder.config
    if _checkpointed_layers(decoder) is None:
        return False  # a checkpointed module that would run without the cache
    if decoder.training and getattr(c, "attention_dropout", 0.0):
        return False  # the G rows would share one dropout mask over the prompt
    return all(t == "full_attention" for t in (getattr(c, "layer_types", None) or ["full_attention"]))


@contextmanager
def _set_attrs(modules: list[torch.nn.Module], **attrs):
    """Set instance attributes of `modules` for the duration of the block, then put back what was there."""
    old = [{k: vars(m)[k] for k in attrs if k in vars(m)} for m in modules]
    try:
        for m in modules:
            for k, v in attrs.items():
                setattr(m, k, v)
        yield
    finally:
        for m, o in zip(modules, old):
            for k in attrs:
                if k in o:
                    setattr(m, k, o[k])
                elif k in vars(m):
                    delattr(m, k)


class _WriteOnceLayer(DynamicLayer):
    """A cache layer for the prompt pass: ``update`` stores the keys/values instead of appending them, so a layer
    replayed by gradient checkpointing (in the backward, its own keys/values are recomputed) leaves it as it was."""

    def update(self, key_states, value_states, *args, **kwargs):
        self.keys, self.values, self.is_initialized = key_states, value_states, True
        return key_states, value_states


class _PromptLayer(DynamicLayer):
    """One layer's prompt keys/values (U, heads, P, d) for the rows `src` (n,). ``update`` returns them gathered
    and followed by the new keys/values, and stores nothing: a layer replayed by gradient checkpointing sees the
    same prompt, and the gathered (n-row) copies are not kept beyond the layer (only the U-row ones are)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, src: torch.Tensor):
        super().__init__()
        self.keys, self.values, self.src = keys, values, src
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states, value_states, *args, **kwargs):
        return (
            torch.cat([self.keys[self.src], key_states], dim=-2),
            torch.cat([self.values[self.src], value_states], dim=-2),
        )


def _buckets(lengths: list[int], budget: int) -> list[list[int]]:
    """Rows (longest first) grouped so that rows × longest length <= budget; rows of length 0 are left out."""
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    out: list[list[int]] = []
    for i in order:
        if out and (len(out[-1]) + 1) * lengths[out[-1][0]] <= budget:
            out[-1].append(i)
        else:
            out.append([i])
    return out


def _token_logps_chunked(
    decoder,
    head,
    prompt_ids,
    prompt_mask,
    completion_ids,
    completion_mask,
    temperature,
    with_entropy,
    entropy_grad=False,
    head_fp32=False,
):
    b, p_len = prompt_ids.shape
    t = completion_ids.size(1)
    device = prompt_ids.device
    cache_kw = cache_kwarg(type(decoder))
    mask = torch.cat([prompt_mask, completion_mask], dim=1)  # (B, P+T)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P+T)
    cols = torch.arange(1, t + 1, device=device)
    lengths = (completion_mask.ne(0) * cols).amax(1).tolist() if t else [0] * b  # (B,) last 1 of each row
    buckets = _buckets(lengths, TOKENS_PER_CHUNK.get(device.type, TOKENS_PER_CHUNK["default"]))

    # distinct prompts: row i uses prompt `inverse[i]`
    uniq, inverse = torch.unique(
        torch.cat([prompt_ids, prompt_mask.to(prompt_ids.dtype)], 1), dim=0, return_inverse=True
    )
    share = p_len > 0 and uniq.size(0) * MIN_SHARE <= b and _can_share_prompt(decoder)
    ckpt = _checkpointed_layers(decoder) if share else []
    # with gradient checkpointing on, the decoder forces use_cache=False; the cache is passed explicitly anyway
    use_cache = not ckpt
    prompt_h = prompt_kv = None
    if share and buckets:
        u_ids, u_mask = uniq[:, :p_len], uniq[:, p_len:].to(prompt_mask.dtype)  # (U, P)
        u_pos = (u_mask.cumsum(-1) - 1).clamp(min=0)
        # filled in place by the forward
        cache = Cache(layers=[_WriteOnceLayer() for _ in decoder.layers]) if ckpt else DynamicCache()
        with _set_attrs(ckpt, _can_checkpoint_with_cache=True, _gradient_checkpointing_func=_CHECKPOINT):
            out = decoder(
                input_ids=u_ids, attention_mask=u_mask, position_ids=u_pos, use_cache=use_cache, **{cache_kw: cache}
            )
        prompt_h = out.last_hidden_state[:, -1, :]  # (U, H): predicts completion token 0
        prompt_kv = [(layer.keys, layer.values) for layer in cache.layers]  # (U, heads, P, d) each

    pieces_lp, pieces_ent, rows_done = [], [], []
    for rows in buckets:
        w = lengths[rows[0]]  # the bucket's longest completion
        idx = torch.tensor(rows, device=device)
        if share:
            src = inverse[idx]
            h = prompt_h[src].unsqueeze(1)  # (n, 1, H)
            if w > 1:
                kv = Cache(layers=[_PromptLayer(k, v, src) for k, v in prompt_kv])
                # the layers' own checkpointing, with the cache kept and a non-reentrant checkpoint, which also
                # carries the gradients of tensors reached outside its inputs (the prompt keys/values)
                with _set_attrs(ckpt, _can_checkpoint_with_cache=True, _gradient_checkpointing_func=_CHECKPOINT):
                    hc = decoder(
                        input_ids=completion_ids[idx, : w - 1],
                        attention_mask=mask[idx, : p_len + w - 1],
                        position_ids=positions[idx, p_len : p_len + w - 1],
                        use_cache=use_cache,
                        **{cache_kw: kv},
                    ).last_hidden_state  # (n, w-1, H)
                h = torch.cat([h, hc], dim=1)  # (n, w, H)
        else:
            h = decoder(
                input_ids=torch.cat([prompt_ids[idx], completion_ids[idx, : w - 1]], 1),
                attention_mask=mask[idx, : p_len + w - 1],
                position_ids=positions[idx, : p_len + w - 1],
                use_cache=False,
            ).last_hidden_state[:, p_len - 1 :]  # (n, w, H)
        n = len(rows)
        targets = completion_ids[idx, :w].reshape(-1)
        lp, ent = lm_head_logps(
            h.reshape(n * w, -1), head, targets, temperature, entropy_grad=entropy_grad, fp32=head_fp32
        )
        pieces_lp.append(F.pad(lp.view(n, w), (0, t - w)))  # (n, T)
        if with_entropy:
            pieces_ent.append(F.pad(ent.view(n, w), (0, t - w)))
        rows_done += rows

    # back to the input's row order; rows without completion tokens are all zeros
    missing = [i for i in range(b) if lengths[i] == 0]
    if missing:
        pieces_lp.append(completion_ids.new_zeros((len(missing), t), dtype=torch.float32))
        if with_entropy:
            pieces_ent.append(completion_ids.new_zeros((len(missing), t), dtype=torch.float32))
    where = torch.empty(b, dtype=torch.long, device=device)
    where[torch.tensor(rows_done + missing, device=device, dtype=torch.long)] = torch.arange(b, device=device)
    beyond = cols.unsqueeze(0) > torch.tensor(lengths, device=device).unsqueeze(1)  # (B, T) after the last 1
    logps = torch.cat(pieces_lp)[where].masked_fill(beyond, 0.0)  # (B, T)
    ent = torch.cat(pieces_ent)[where].masked_fill(beyond, 0.0) if with_entropy else None  # (B, T)
    return logps, ent


# ------------------------------------------------------------------------------------------- lm_head
def lm_head_logps(
    hidden: torch.Tensor,
    head: torch.nn.Linear,
    targets: torch.Tensor,
    temperature: float,
    budget: int = LOGITS_BUDGET,
    entropy_grad: bool = False,
    fp32: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log_softmax(head(hidden) / temperature)[target] (N,) with gradients, and the entropy (N,) (with gradients
    only if `entropy_grad`).

    hidden: (N, H), targets: (N,). At most ``budget`` logits exist at a time, in the forward and in the
    backward (which recomputes them). `fp32`: the matmuls in fp32 whatever autocast or the weights' dtype say."""
    rows = max(1, budget // head.weight.size(0))
    return _LMHeadLogps.apply(hidden, head.weight, head.bias, targets, float(temperature), rows, entropy_grad, fp32)


class _LMHeadLogps(torch.autograd.Function):
    """Under autocast (``amp``: its dtype, taken in the forward) the head's matmuls run in that dtype, the weight
    cast once per call rather than once per chunk; logits, log-sum-exp and the softmax gradient stay fp32, and the
    weight's gradient is accumulated in fp32. The backward casts as its forward did (autocast is off there)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, rows, entropy_grad, fp32=False):
        n = hidden.size(0)
        dev = hidden.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None  # None: full precision
        if fp32:  # cast_lm_head_to_fp32: the head in fp32 under autocast, and for low-precision weights
            amp = torch.float32
        w, b = _cast(weight, amp), _cast(bias, amp)
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        lse = torch.empty(n, dtype=torch.float32, device=hidden.device)  # (N,)
        for s in range(0, n, rows):
            with torch.autocast(dev, enabled=False) if fp32 else nullcontext():
                logits = F.linear(_cast(hidden[s : s + rows], amp), w, b).float() / temperature  # (r, V)
            z = torch.logsumexp(logits, dim=-1)  # (r,)
            lse[s : s + rows] = z
            logp[s : s + rows] = logits.gather(1, targets[s : s + rows, None]).squeeze(1) - z
            logp_all = logits - z[:, None]  # (r, V)
            ent[s : s + rows] = -(logp_all.exp() * logp_all).sum(-1)  # -Σ p log p
        ctx.save_for_backward(hidden, weight, bias, targets, lse, ent)
        ctx.temperature, ctx.rows, ctx.amp = temperature, rows, amp
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no work for it
        if not entropy_grad:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, g_logp, g_ent):
        hidden, weight, bias, targets, lse, ent = ctx.saved_tensors
        temperature, rows, amp = ctx.temperature, ctx.rows, ctx.amp
        w, b = _cast(weight, amp), _cast(bias, amp)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        g_b = torch.zeros_like(bias, dtype=torch.float32) if (need_b and bias is not None) else None
        for s in range(0, hidden.size(0), rows):
            h = _cast(hidden[s : s + rows], amp)  # (r, H)
            logits = F.linear(h, w, b).float() / temperature  # (r, V)
            logp_all = logits - lse[s : s + rows, None]  # (r, V)
            p = torch.exp(logp_all)
            # d logp / d logits = onehot(target) - softmax; chain through the division by the temperature
            if g_logp is not None:
                g = g_logp[s : s + rows].float()  # (r,)
                grad = (p * -g[:, None]).scatter_add_(1, targets[s : s + rows, None], g[:, None])
            else:
                grad = torch.zeros_like(p)
            if g_ent is not None:  # d H / d logits = -p (log p + H)
                ge, h_ent = g_ent[s : s + rows].float(), ent[s : s + rows]
                grad -= p.mul_(logp_all.add_(h_ent[:, None])).mul_(ge[:, None])
            grad = grad.div_(temperature).to(w.dtype)  # (r, V)
            if g_h is not None:
                g_h[s : s + rows] = grad @ w
            if g_w is not None and amp is not None:  # a low-precision matmul, accumulated in fp32
                g_w += grad.t() @ h
            elif g_w is not None:
                g_w.addmm_(grad.t().float(), h.float())
            if g_b is not None:
                g_b += grad.sum(0).float()
        return (
            g_h,
            None if g_w is None else g_w.to(weight.dtype),
            None if g_b is None else g_b.to(bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    """`t` in `dtype` (autocast's), unchanged when `dtype` is None (no autocast) or `t` is None."""
    return t if t is None or dtype is None else t.to(dtype)
