"""The fast sampler's extra code paths: finished rows dropped from the forward (cache narrowed with
``batch_select_indices``), the EOS lookup table (ids outside the vocabulary), zero new tokens, and outputs
that are ordinary tensors (usable in a later backward pass), checked against transformers' generate."""

import copy

import pytest
import torch
from transformers import DynamicCache

from aha.data.prompts import encode_prompts
from aha.rollout import SamplingParams, sample
from aha.rollout import sampler as sampler_mod
from aha.rollout.fast import decoder as fast_mod

PROMPTS = ["12+34", "7+8=15 4+3", "Hello there, how are you?", "a", "<think>9+9</think>", "What is 47+38?"] * 3
MAX_NEW = 24


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return encode_prompts(tok, PROMPTS)


@pytest.fixture(scope="module")
def stop_ids(tiny, prompts):
    """Stop tokens that the greedy continuations reach at many different steps: most rows end early, at
    different times, so the fast loop drops finished rows several times."""
    model, tok = tiny
    full = sample(model, *prompts, SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0), [10**6], tok.pad_token_id)
    firsts = {}
    for x in set(full.flatten().tolist()):
        hits = [int((row == x).nonzero()[0]) for row in full if (row == x).any()]
        firsts[x] = hits
    best = sorted(firsts, key=lambda x: (-len(set(firsts[x])), x))[:3]
    return best


def test_row_dropping_greedy_equals_hf(tiny, prompts, stop_ids, monkeypatch):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    calls = []
    real = DynamicCache.batch_select_indices

    def spy(self, indices):
        calls.append(len(indices))
        return real(self, indices)

    monkeypatch.setattr(DynamicCache, "batch_select_indices", spy)
    fast = sample(model, *prompts, p, stop_ids, tok.pad_token_id, backend="fast")
    hf = sample(model, *prompts, p, stop_ids, tok.pad_token_id, backend="hf")
    assert calls, "no row was dropped: the test does not exercise the path"
    assert torch.equal(fast, hf)


def test_row_dropping_does_not_change_greedy_output(tiny, prompts, stop_ids, monkeypatch):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=1.3)
    dropped = sample(model, *prompts, p, stop_ids, tok.pad_token_id)
    monkeypatch.setattr(sampler_mod, "DROP_LIVE_FRACTION", 0.0)  # never drop
    kept = sample(model, *prompts, p, stop_ids, tok.pad_token_id)
    assert torch.equal(dropped, kept)
    assert torch.equal(dropped, sample(model, *prompts, p, stop_ids, tok.pad_token_id, backend="hf"))


def test_seeded_sampling_with_row_dropping_is_reproducible_and_pads_after_eos(tiny, prompts):
    model, tok = tiny
    biased = copy.deepcopy(model)
    with torch.no_grad():  # EOS logit 0 at every step: hot sampling ends rows at many different steps
        biased.lm_head.weight[tok.eos_token_id] = 0.0
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=3.0, top_p=0.95)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(biased, *prompts, p, [tok.eos_token_id], tok.pad_token_id, generator=g)

    a, b, c = run(5), run(5), run(6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    ends = set()
    for row in a.tolist():
        if tok.eos_token_id in row:
            k = row.index(tok.eos_token_id)
            ends.add(k)
            assert set(row[k + 1 :]) <= {tok.pad_token_id}
    assert len(ends) >= 3


def test_eos_outside_vocabulary_and_zero_new_tokens(tiny, prompts):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    out = sample(model, *prompts, p, [len(tok) + 5], tok.pad_token_id)
    assert out.shape == (len(PROMPTS), MAX_NEW)
    assert torch.equal(out, sample(model, *prompts, p, [len(tok) + 5], tok.pad_token_id, backend="hf"))
    empty = sample(model, *prompts, SamplingParams(max_new_tokens=0), [tok.eos_token_id], tok.pad_token_id)
    assert empty.shape == (len(PROMPTS), 0)


def test_output_is_a_normal_tensor_usable_in_backward(tiny, prompts):
    model, tok = tiny
    out = sample(model, *prompts, SamplingParams(max_new_tokens=4, temperature=1.0), [tok.eos_token_id], 0)
    assert not out.is_inference()
    emb = torch.nn.Embedding(len(tok), 3)
    emb(out).sum().backward()  # an inference tensor here would raise
    assert emb.weight.grad is not None


def test_distinct_rows():
    ids = torch.tensor([[0, 5, 6], [1, 2, 3], [0, 5, 6], [1, 2, 3], [0, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [0, 1, 1]])
    first, inverse = sampler_mod._distinct_rows(ids, mask)
    assert sorted(first.tolist()) == [0, 1]
    assert torch.equal(ids[first][inverse], ids) and torch.equal(mask[first][inverse], mask)
    # same ids under a different mask are different prompts; all-distinct batches skip the sharing
    other = mask.clone()
    other[2, 0] = 1
    assert len(sampler_mod._distinct_rows(ids, other)[0]) == 3
    assert sampler_mod._distinct_rows(ids[:2], mask[:2]) == (None, None)
    assert sampler_mod._distinct_rows(ids[:1], mask[:1]) == (None, None)


def test_repeated_prompts_share_one_prefill(tiny, monkeypatch):
    model, tok = tiny
    texts = ["12+34", "Hello there, how are you?", "a"]
    ids, mask = encode_prompts(tok, [t for t in texts for _ in range(4)])  # G=4 completions per prompt
    widths = []  # rows of each prompt forward: the HF forward's, or the native prefill's (position-major cache)
    forward, prefill = type(model).forward, fast_mod.FastDecoder.prefill

    def spy(self, *args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0])
        return forward(self, *args, **kwargs)

    def spy_prefill(self, ids, *args):
        widths.append(ids.shape[0])
        return prefill(self, ids, *args)

    p = SamplingParams(max_new_tokens=12, temperature=1.0)
    seeds = list(range(100, 112))
    with monkeypatch.context() as mp:
        mp.setattr(type(model), "forward", spy)
        mp.setattr(fast_mod.FastDecoder, "prefill", spy_prefill)
        out = sampler_mod.sample_fast(model, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=seeds)
    assert widths[0] == 3  # the prefill ran the 3 distinct prompts, not 12 rows
    assert len({tuple(r) for r in out.tolist()}) > 3  # the G rows of a prompt still sample differently
    for i in range(12):  # and each row is what it samples alone, with its seed
        alone = sampler_mod.sample_fast(
            model, ids[i : i + 1], mask[i : i + 1], p, [tok.eos_token_id], tok.pad_token_id, row_seeds=[seeds[i]]
        )
        assert torch.equal(out[i, : alone.size(1)], alone[0])
        assert (out[i, alone.size(1) :] == tok.pad_token_id).all()
