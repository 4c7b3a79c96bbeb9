"""The fast sampler's decode machinery: a KV cache written in place into preallocated slabs, and a two-matmul
attention for single-token decode steps (the CPU flash kernel is slow for one query). The hand-written forward
of plain Llama-family models is in ``aha.rollout.fast.decoder``; ``aha.rollout.sampler`` drives them.
"""

from __future__ import annotations

import inspect
import os
from contextlib import contextmanager
from functools import cache

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer


class SlabLayer(DynamicLayer):
    """One layer's KV cache in a preallocated buffer: ``update`` writes the new keys and values in place and
    returns views of the filled part, instead of ``torch.cat``-ing the whole cache at every step (a copy of
    everything cached so far, per layer and per token). The buffers are (B, heads, max_len, d), or with
    ``position_major`` the layout of ``aha.rollout.fast.kernels.decode_attention``: keys (max_len, d, B, heads),
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
def decode_attention_swap(model):
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
def cache_kwarg(cls: type) -> str:
    """The forward's name for the KV-cache argument (``cache`` in recent transformers, else the old name)."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
