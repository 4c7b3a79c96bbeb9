"""Sampling in bf16 (``dtype=torch.bfloat16``): the fast decoder's matmuls on bf16 packed weights with everything
else fp32, close to its fp32 logits; a bf16 model on the fast decoder; the HF forward under autocast; refused on
a CPU without bf16 instructions; the dtype threaded through the engine."""

import copy

import pytest
import torch

import aha.devices
from aha.data.prompts import encode_prompts
from aha.rollout import SamplingParams, sample
from aha.rollout import engine as engine_mod
from aha.rollout import sampler as sampler_mod
from aha.rollout.fast import decoder as fast_mod
from aha.rollout.fast import kernels
from aha.rollout.fast.decode import SlabCache

from .test_fast_lora import NEVER, PROMPTS, _hf_forward, _lora

BF16 = torch.bfloat16
pytestmark = pytest.mark.skipif(
    not aha.devices.bf16_supported("cpu") or kernels.load() is None,
    reason="needs a CPU with bf16 instructions and aha's native kernels",
)


@pytest.fixture(scope="module")
def prompts(tiny):
    return encode_prompts(tiny[1], PROMPTS)


def _fast_logits(model, ids, mask, toks, dtype):
    """(B, T, V) fp32 logits of the fast decoder in compute `dtype`: at the prompt's end, then after each of
    ``toks[:, :-1]`` (teacher-forced, so that two dtypes are compared at the same positions)."""
    b, p = ids.shape
    n = toks.size(1)
    full = torch.cat([mask, torch.ones_like(toks)], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)
    bias = torch.zeros(full.shape).masked_fill_(full == 0, float("-inf"))[:, None, None, :]
    with torch.inference_mode():
        cache = SlabCache(p + n, position_major=True)
        decoder = fast_mod.FastDecoder(model, p + n, rows=b, dtype=dtype)
        out = [decoder.prefill(ids, mask, pos[:, :p], cache)]
        for t in range(n - 1):
            out.append(decoder.step(toks[:, t], pos[:, p + t], bias, cache))
        assert cache.layers[0].k_buf.dtype == torch.float32  # the KV cache stays fp32
    return torch.stack(out, 1)


def _hf_logits(model, ids, mask, toks):
    """(B, T, V) the HF forward's logits at the same positions as ``_fast_logits``."""
    full_ids = torch.cat([ids, toks], 1)
    full = torch.cat([mask, torch.ones_like(toks)], 1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=full_ids, attention_mask=full, position_ids=pos).logits.float()
    return logits[:, ids.size(1) - 1 : -1]


def _close_in_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """bf16 logits against reference ones: different (bf16 was used), a mean error under 3% of the logits' spread
    (measured: 0.4-1.3%), none over 15% of the largest logit (measured: up to 8%, a LoRA with large deltas), and
    the same argmax at >= 90% of the positions."""
    err = (got - want).abs()
    assert err.max() > 1e-4
    assert err.mean() < 0.03 * want.std(), (float(err.mean()), float(want.std()))
    assert err.max() < 0.15 * want.abs().max(), (float(err.max()), float(want.abs().max()))
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean()
    assert agree >= 0.9, float(agree)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_fast_logits_are_close_to_fp32(tiny, prompts, lora):
    model = _lora(tiny[0]) if lora else tiny[0]
    assert fast_mod.fast_decode_reason(model, 64, BF16) is None
    toks = sampler_mod.sample_fast(model, *prompts, SamplingParams(max_new_tokens=16, temperature=0.0), NEVER, 0)
    fp32 = _fast_logits(model, *prompts, toks, torch.float32)
    _close_in_bf16(_fast_logits(model, *prompts, toks, BF16), fp32)
    torch.testing.assert_close(fp32, _hf_logits(model, *prompts, toks), rtol=1e-4, atol=1e-4)
    packed = fast_mod.FastDecoder(model, 8, dtype=BF16)
    assert packed.layers[0][2].dtype == BF16 and packed.head.dtype == BF16
    assert packed.layers[0][0].dtype == torch.float32  # the norms stay fp32


def test_bf16_greedy_tokens_mostly_equal_fp32(tiny, prompts):
    model = _lora(tiny[0])
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    fp32 = sample(model, *prompts, p, NEVER, 0)
    bf16 = sample(model, *prompts, p, NEVER, 0, dtype=BF16)
    # a near-tie may go the other way in bf16, and the rest of that row with it
    assert int((bf16[:, 0] == fp32[:, 0]).sum()) >= 4
    assert (bf16 == fp32).float().mean() >= 0.6
    assert torch.equal(bf16, sample(model, *prompts, p, NEVER, 0, dtype=BF16))  # deterministic


def test_a_bf16_model_takes_the_fast_decoder(tiny, prompts):
    model = copy.deepcopy(tiny[0]).to(BF16)
    assert fast_mod.fast_decode_reason(model, 64) is None
    assert sampler_mod.compute_dtype(model) == BF16
    p = SamplingParams(max_new_tokens=16, temperature=0.0)
    fast = sampler_mod.sample_fast(model, *prompts, p, NEVER, 0)
    # against the model's own bf16 forward (bf16 norms too): close, not equal
    _close_in_bf16(_fast_logits(model, *prompts, fast, None), _hf_logits(model, *prompts, fast))
    plain = _hf_forward(model, *prompts, p, NEVER, 0)
    assert torch.equal(fast[:, :3], plain[:, :3])
    assert (fast == plain).float().mean() >= 0.6


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_the_hf_forward_runs_under_autocast_in_bf16(tiny, prompts, backend, monkeypatch):
    model = copy.deepcopy(tiny[0])
    seen = []
    model.lm_head.register_forward_hook(lambda m, a, out: seen.append((out.dtype, torch.is_autocast_enabled("cpu"))))
    assert sampler_mod.fast_decode_status(model, 64, BF16) is not None  # so the fast path steps aside
    p = SamplingParams(max_new_tokens=4, temperature=0.0)
    sample(model, *prompts, p, NEVER, 0, backend=backend, dtype=BF16)
    assert seen and set(seen) == {(BF16, True)}
    seen.clear()
    sample(model, *prompts, p, NEVER, 0, backend=backend)  # the default: the model's dtype, no autocast
    assert set(seen) == {(torch.float32, False)}


def test_bf16_is_refused_on_a_cpu_without_bf16(tiny, prompts, monkeypatch):
    monkeypatch.setattr(aha.devices, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    monkeypatch.setattr(aha.devices.platform, "system", lambda: "Linux")
    model, tok = tiny
    p = SamplingParams(max_new_tokens=4, temperature=0.0)
    for backend in ("fast", "hf"):
        with pytest.raises(ValueError, match="no bf16 instructions"):
            sample(model, *prompts, p, NEVER, 0, backend=backend, dtype=BF16)
    with pytest.raises(ValueError, match="no bf16 instructions"):
        engine_mod.LocalEngine(model, tok, dtype=BF16)
    assert sample(model, *prompts, p, NEVER, 0).shape == (len(PROMPTS), 4)  # fp32 still runs


def test_dtypes_that_cannot_be_honoured_are_refused(tiny):
    model = tiny[0]
    with pytest.raises(ValueError, match="torch.float32 or torch.bfloat16"):
        sampler_mod.compute_dtype(model, torch.float16)
    with pytest.raises(ValueError, match="load the model in float32"):
        sampler_mod.compute_dtype(copy.deepcopy(model).to(BF16), torch.float32)
    assert sampler_mod.compute_dtype(model) == torch.float32
    assert sampler_mod.compute_dtype(model, BF16) == BF16


def test_the_engine_threads_the_dtype_through(tiny, monkeypatch):
    model, tok = tiny
    dtypes = []
    real = engine_mod.sample
    monkeypatch.setattr(engine_mod, "sample", lambda *a, **kw: dtypes.append(kw["dtype"]) or real(*a, **kw))
    p = SamplingParams(max_new_tokens=4, temperature=0.0)
    bf16 = engine_mod.LocalEngine(model, tok, batch_size=2, dtype=BF16).complete(["12+34", "a", "b"], 1, p, seed=0)
    assert dtypes == [BF16, BF16]
    dtypes.clear()
    texts, _, _ = engine_mod.generate_texts(model, tok, ["12+34", "a", "b"], p, batch_size=2)
    assert dtypes == [None, None] and len(texts) == len(bf16) == 3
