"""The sampler's decode attention (``_decode_attention``, two matmuls for one query token instead of the
CPU flash kernel): same logits as SDPA, with grouped-query heads too, and the model's config restored."""

import pytest
import torch

from aha.data.prompts import encode_prompts
from aha.models.tiny import build_tiny
from aha.rollout import SamplingParams
from aha.rollout import sampler as sampler_mod
from aha.rollout.fast import decode as decode_mod

PROMPTS = ["12+34", "7+8=15 4+3", "Hello there, how are you?", "a"]


def _random_model(**kw):
    model, tok = build_tiny(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, **kw)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else p.shape[1] ** -0.5))
    return model.eval(), tok


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_decode_attention_matches_sdpa(kv_heads, monkeypatch):
    monkeypatch.setenv("AHA_FAST_DECODE", "0")  # the HF forward with the swapped attention, not FastDecoder
    model, tok = _random_model(num_key_value_heads=kv_heads)
    ids, mask = encode_prompts(tok, PROMPTS)  # left-padded: the mask matters
    params = SamplingParams(max_new_tokens=20, temperature=0.0)
    assert model.config._attn_implementation == "sdpa"
    fast = sampler_mod.sample_fast(model, ids, mask, params, [10**6], tok.pad_token_id)
    assert model.config._attn_implementation == "sdpa"  # restored
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AHA_DECODE_ATTN", "0")
        plain = sampler_mod.sample_fast(model, ids, mask, params, [10**6], tok.pad_token_id)
    assert torch.equal(fast, plain)

    # one decode step's logits, both attentions, on the same cache
    with torch.no_grad():
        full = torch.cat([ids, fast[:, :5]], 1)
        fmask = torch.cat([mask, torch.ones_like(fast[:, :5])], 1)
        pos = (fmask.cumsum(-1) - 1).clamp(min=0)
        ref = model(input_ids=full, attention_mask=fmask, position_ids=pos).logits[:, -1]
        cache = decode_mod.SlabCache(full.size(1))
        n = full.size(1) - 1
        model(input_ids=full[:, :n], attention_mask=fmask[:, :n], position_ids=pos[:, :n], use_cache=True, cache=cache)
        with decode_mod.decode_attention_swap(model):
            assert model.config._attn_implementation == decode_mod.DECODE_ATTN
            got = model(
                input_ids=full[:, n:], attention_mask=fmask, position_ids=pos[:, n:], use_cache=True, cache=cache
            ).logits[:, -1]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
