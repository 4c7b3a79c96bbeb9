"""The sampler's hand-written decode step (``FastDecoder``) against the HF forward it replaces: same greedy
tokens, per-step logits within 1e-4, same seeded samples, and the fallback for configs it cannot honour."""

import copy

import pytest
import torch

from aha.data.prompts import encode_prompts
from aha.models.tiny import build_tiny
from aha.rollout import SamplingParams
from aha.rollout import sampler as sampler_mod
from aha.rollout.fast import decode as decode_mod
from aha.rollout.fast import decoder as fast_mod
from aha.rollout.fast import kernels

PROMPTS = ["12+34", "7+8=15 4+3", "Hello there, how are you?", "a", "What is 47+38?"]
CONFIGS = {
    "2layer-mha": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    "2layer-gqa": dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    ),
    "1m-mha": dict(),  # the demo's default size: 4 layers, hidden 128
    "1m-gqa": dict(num_key_value_heads=1),
}


def _random_model(seed=3, **kw):
    model, tok = build_tiny(**kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else p.shape[1] ** -0.5))
    return model.eval(), tok


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    model, tok = _random_model(**CONFIGS[request.param])
    ids, mask = encode_prompts(tok, PROMPTS)  # left-padded: the mask matters
    return model, tok, ids, mask


def _both(model, ids, mask, params, eos, pad, **kw):
    """(fast decode, HF forward) samples of the same call."""
    assert fast_mod.fast_decode_reason(model, ids.size(1) + params.max_new_tokens) is None
    fast = sampler_mod.sample_fast(model, ids, mask, params, eos, pad, **kw)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AHA_FAST_DECODE", "0")
        assert fast_mod.fast_decode_reason(model, 10) == "AHA_FAST_DECODE=0"
        plain = sampler_mod.sample_fast(model, ids, mask, params, eos, pad, **kw)
    return fast, plain


def test_fast_decode_is_used(case, monkeypatch):
    model, tok, ids, mask = case
    calls = []
    step = fast_mod.FastDecoder.step
    monkeypatch.setattr(fast_mod.FastDecoder, "step", lambda self, *a: calls.append(1) or step(self, *a))
    sampler_mod.sample_fast(model, ids, mask, SamplingParams(max_new_tokens=6, temperature=0.0), [10**6], 0)
    assert len(calls) == 5  # every decode step (the prefill is not a step)


def test_greedy_equals_hf_forward(case):
    model, tok, ids, mask = case
    fast, plain = _both(model, ids, mask, SamplingParams(max_new_tokens=32, temperature=0.0), [10**6], tok.pad_token_id)
    assert fast.shape == (len(PROMPTS), 32)
    assert len({tuple(r) for r in fast.tolist()}) > 1  # the continuations depend on the prompt
    assert torch.equal(fast, plain)


def test_native_kernel_and_torch_matmuls_agree(case, monkeypatch):
    model, tok, ids, mask = case
    p = SamplingParams(max_new_tokens=24, temperature=0.9)
    native = sampler_mod.sample_fast(
        model, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=[1, 2, 3, 4, 5]
    )
    monkeypatch.setenv("AHA_NATIVE_ATTN", "0")
    monkeypatch.setenv("AHA_PACKED_LINEAR", "0")
    plain = sampler_mod.sample_fast(
        model, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=[1, 2, 3, 4, 5]
    )
    assert torch.equal(native, plain)


def test_greedy_with_penalty_and_stops_equals_hf_forward(case):
    model, tok, ids, mask = case
    full, _ = _both(model, ids, mask, SamplingParams(max_new_tokens=24, temperature=0.0), [10**6], tok.pad_token_id)
    stops = sorted({int(full[i, 3 + 2 * i]) for i in range(len(PROMPTS))})  # rows end at different steps
    p = SamplingParams(max_new_tokens=24, temperature=0.0, repetition_penalty=1.2)
    fast, plain = _both(model, ids, mask, p, stops, tok.pad_token_id)
    assert torch.equal(fast, plain)


def test_sampling_with_row_seeds_equals_hf_forward(case):
    model, tok, ids, mask = case
    p = SamplingParams(max_new_tokens=24, temperature=0.9, top_p=0.95, top_k=40)
    seeds = [11, 12, 13, 14, 15]
    fast, plain = _both(model, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=seeds)
    assert torch.equal(fast, plain)
    # a row's completion does not depend on its batch-mates, on the fast path too
    sub_ids, sub_mask = encode_prompts(tok, [PROMPTS[2], PROMPTS[0]])
    sub = sampler_mod.sample_fast(model, sub_ids, sub_mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=[13, 11])
    for j, i in enumerate((2, 0)):
        n = min(sub.size(1), fast.size(1))
        assert torch.equal(sub[j, :n], fast[i, :n])


@pytest.mark.parametrize("position_major", [False, True])
def test_step_logits_match_hf_forward(case, position_major):
    if position_major and kernels.load() is None:
        pytest.skip("no C compiler for the native attention kernel")
    model, tok, ids, mask = case
    n_new = 6
    p = SamplingParams(max_new_tokens=n_new, temperature=0.0)
    toks = sampler_mod.sample_fast(model, ids, mask, p, [10**6], tok.pad_token_id)
    full = torch.cat([ids, toks], 1)
    fmask = torch.cat([mask, torch.ones_like(toks)], 1)
    pos = (fmask.cumsum(-1) - 1).clamp(min=0)
    bias = torch.zeros(fmask.shape).masked_fill_(fmask == 0, float("-inf"))[:, None, None, :]
    p_len = ids.size(1)
    with torch.inference_mode():
        cache = decode_mod.SlabCache(full.size(1), position_major=position_major)
        model(input_ids=ids, attention_mask=mask, position_ids=pos[:, :p_len], use_cache=True, cache=cache)
        assert cache.layers[0].position_major == position_major
        decoder = fast_mod.FastDecoder(model, full.size(1))
        for t in range(n_new):
            n = p_len + t
            got = decoder.step(full[:, n], pos[:, n], bias, cache)
            ref = model(input_ids=full[:, : n + 1], attention_mask=fmask[:, : n + 1], position_ids=pos[:, : n + 1])
            torch.testing.assert_close(got, ref.logits[:, -1], rtol=1e-4, atol=1e-4)
        assert cache.get_seq_length() == full.size(1)


# the prefill runs the first 8 tokens ("What is ") once: same lengths, or left-padded to different ones
OPENINGS = {
    "shared opening": ["What is 12+34?", "What is 5+678?", "What is 90+12?"],
    "ragged opening": ["What is 12+34?", "What is 5+6?", "What is 100+200?", "What is 7+80?"],
}


@pytest.mark.parametrize("prompts", ["mixed", *OPENINGS])
def test_native_prefill_matches_hf_forward(case, prompts, monkeypatch):
    if kernels.load() is None:
        pytest.skip("no C compiler for the native kernels")
    model, tok, ids, mask = case
    if prompts in OPENINGS:
        ids, mask = encode_prompts(tok, OPENINGS[prompts])
    calls = []
    inner = fast_mod.FastDecoder._prefill
    monkeypatch.setattr(
        fast_mod.FastDecoder, "_prefill", lambda self, *a, **kw: calls.append(a[0].shape) or inner(self, *a, **kw)
    )
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        ref_cache = decode_mod.SlabCache(ids.size(1) + 4, position_major=True)
        kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        ref = model(**kw, cache=ref_cache).logits[:, -1]
        cache = decode_mod.SlabCache(ids.size(1) + 4, position_major=True)
        got = fast_mod.FastDecoder(model, ids.size(1) + 4).prefill(ids, mask, pos, cache)
    b, p = ids.shape
    assert calls == ([(1, 8), (b, p - 8)] if prompts in OPENINGS else [(b, p)])
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == ids.size(1) and len(cache.layers) == len(ref_cache.layers)
    real = mask.bool()  # padding positions hold finite keys/values that no real query reads
    for mine, theirs in zip(cache.layers, ref_cache.layers):
        for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)):  # (B, kv, P, d)
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prompts", sorted(OPENINGS))
def test_shared_opening_samples_equal_hf_forward(case, prompts):
    model, tok, _, _ = case
    ids, mask = encode_prompts(tok, OPENINGS[prompts])
    p = SamplingParams(max_new_tokens=16, temperature=0.9)
    seeds = list(range(1, ids.size(0) + 1))
    fast, plain = _both(model, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=seeds)
    assert torch.equal(fast, plain)


def _lora_like(model):
    class LoraLinear(torch.nn.Linear):
        pass

    m = copy.deepcopy(model)
    old = m.model.layers[0].self_attn.q_proj
    new = LoraLinear(old.in_features, old.out_features, bias=False)
    new.load_state_dict(old.state_dict())
    m.model.layers[0].self_attn.q_proj = new
    return m


def _bias_model(model):
    m = copy.deepcopy(model)
    old = m.model.layers[0].mlp.up_proj
    m.model.layers[0].mlp.up_proj = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        m.model.layers[0].mlp.up_proj.weight.copy_(old.weight)
        m.model.layers[0].mlp.up_proj.bias.normal_()
    return m


def _hooked(model):
    m = copy.deepcopy(model)
    m.model.layers[1].mlp.register_forward_hook(lambda mod, args, out: out * 0.5)
    return m


UNSUPPORTED = {
    "rope scaling": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    "activation": dict(hidden_act="gelu"),
}


@pytest.mark.parametrize("quirk", sorted(UNSUPPORTED))
def test_fallback_for_unsupported_configs(quirk):
    from transformers import LlamaForCausalLM

    base, tok = _random_model(**CONFIGS["2layer-gqa"])
    config = copy.deepcopy(base.config)
    for k, v in UNSUPPORTED[quirk].items():
        setattr(config, k, v)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert fast_mod.fast_decode_reason(model, 64) is not None
    ids, mask = encode_prompts(tok, PROMPTS)
    p = SamplingParams(max_new_tokens=8, temperature=0.0)
    out = sampler_mod.sample_fast(model, ids, mask, p, [10**6], tok.pad_token_id)
    ref = sampler_mod.sample_hf(model, ids, mask, p, [10**6], tok.pad_token_id)
    assert torch.equal(out, ref)  # the HF forward, so generate's answer


@pytest.mark.parametrize("make", [_lora_like, _hooked, lambda m: copy.deepcopy(m).to(torch.float64)])
def test_fallback_for_modified_models(make):
    base, tok = _random_model(**CONFIGS["2layer-mha"])
    model = make(base)
    assert fast_mod.fast_decode_reason(base, 64) is None
    assert fast_mod.fast_decode_reason(model, 64) is not None
    ids, mask = encode_prompts(tok, PROMPTS)
    p = SamplingParams(max_new_tokens=8, temperature=0.0)
    out = sampler_mod.sample_fast(model, ids, mask, p, [10**6], tok.pad_token_id)
    assert torch.equal(out, sampler_mod.sample_hf(model, ids, mask, p, [10**6], tok.pad_token_id))


def test_biases_are_honoured():
    """Projection biases (qwen2 has them on q/k/v) go into the fused matmuls."""
    base, tok = _random_model(**CONFIGS["2layer-gqa"])
    model = _bias_model(base)
    with torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj"):
            lin = getattr(model.model.layers[1].self_attn, name)
            lin.bias = torch.nn.Parameter(torch.randn(lin.out_features))
    ids, mask = encode_prompts(tok, PROMPTS)
    fast, plain = _both(model, ids, mask, SamplingParams(max_new_tokens=16, temperature=0.0), [10**6], 0)
    assert torch.equal(fast, plain)
