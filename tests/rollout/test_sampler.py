"""aha's KV-cache sampler against transformers: same greedy tokens as ``generate``, same filtering as its
logits processors, samples distributed as the processed softmax, reproducible with a seeded generator."""

import copy

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from aha.data.prompts import encode_prompts, eos_ids
from aha.rollout import BACKENDS, SamplingParams, process_logits, sample
from aha.rollout import sampler as sampler_mod

PROMPTS = ["12+34", "7+8=15 4+3", "Hello there, how are you?", "a", "<think>9+9</think>", "What is 47+38?"]
MAX_NEW = 24


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    ids, mask = encode_prompts(tok, PROMPTS)
    assert len(set(mask.sum(1).tolist())) > 3  # left padding of different widths
    assert (mask[:, 0] == 0).any() and (mask[:, -1] == 1).all()
    return ids, mask


@pytest.fixture(scope="module")
def greedy_full(tiny, prompts):
    """Greedy continuations that never stop early (EOS is not reached in MAX_NEW tokens)."""
    model, tok = tiny
    greedy = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    return {
        backend: sample(model, *prompts, greedy, [tok.eos_token_id], tok.pad_token_id, backend=backend)
        for backend in ("fast", "hf")
    }


def stopped(full, stop_ids, pad):
    """What a stop at the first of `stop_ids` does to the full continuations: keep it, pad after, trim."""
    out = full.clone()
    ends = []
    for i, row in enumerate(full):
        hits = torch.isin(row, torch.tensor(stop_ids)).nonzero()
        end = int(hits[0]) if len(hits) else full.size(1) - 1
        out[i, end + 1 :] = pad
        ends.append(end)
    return out[:, : max(ends) + 1], ends


def test_greedy_fast_equals_hf_full_length(tiny, greedy_full):
    _, tok = tiny
    fast, hf = greedy_full["fast"], greedy_full["hf"]
    assert fast.shape == (len(PROMPTS), MAX_NEW)
    assert tok.eos_token_id not in fast.tolist()
    # the continuations depend on the prompt: not one repeated token, and different across rows
    assert all(len(set(row)) > 3 for row in fast.tolist())
    assert len({tuple(row) for row in fast.tolist()}) == len(PROMPTS)
    assert torch.equal(fast, hf)


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_greedy_with_repetition_penalty_fast_equals_hf(tiny, prompts, greedy_full, penalty):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0, repetition_penalty=penalty)
    fast = sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id, backend="fast")
    hf = sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id, backend="hf")
    assert not torch.equal(fast, greedy_full["fast"])  # the penalty changes the continuations
    assert torch.equal(fast, hf)


def test_greedy_rows_do_not_depend_on_the_batch(tiny, prompts, greedy_full):
    model, tok = tiny
    greedy = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    for i in (3, 2):  # the most padded and the longest prompt, alone (no padding)
        ids, mask = encode_prompts(tok, [PROMPTS[i]])
        alone = sample(model, ids, mask, greedy, [tok.eos_token_id], tok.pad_token_id, backend="fast")
        assert torch.equal(alone[0], greedy_full["fast"][i])


def test_greedy_with_eos_fast_equals_hf_and_pads_after_eos(tiny, prompts, greedy_full):
    """Make the model's own EOS likely: its lm_head row becomes a slightly scaled copy of a token that the
    greedy continuations reach at different steps, so rows end at different times (and some never)."""
    model, tok = tiny
    full = greedy_full["fast"]
    best = None
    for x in sorted(set(full.flatten().tolist())):
        firsts = [int((row == x).nonzero()[0]) for row in full if (row == x).any()]
        score = len(set(firsts)) if len(firsts) < len(full) else 0
        if best is None or score > best[0]:
            best = (score, x)
    assert best[0] >= 2
    x = best[1]
    biased = copy.deepcopy(model)
    with torch.no_grad():
        biased.lm_head.weight[tok.eos_token_id] = model.lm_head.weight[x] * 1.01
    eos, pad = eos_ids(tok, biased), tok.pad_token_id
    assert eos == [tok.eos_token_id]
    greedy = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    fast = sample(biased, *prompts, greedy, eos, pad, backend="fast")
    hf = sample(biased, *prompts, greedy, eos, pad, backend="hf")
    assert torch.equal(fast, hf)
    expected, ends = stopped(torch.where(full == x, tok.eos_token_id, full), eos, pad)
    assert len(set(ends)) >= 3 and max(ends) == MAX_NEW - 1  # different lengths, some rows never end
    assert torch.equal(fast, expected)
    for row in fast.tolist():
        if tok.eos_token_id in row:
            k = row.index(tok.eos_token_id)
            assert row[k + 1 :] == [pad] * (len(row) - k - 1)


def test_all_rows_stop_early_with_several_eos_ids(tiny, prompts, greedy_full):
    model, tok = tiny
    full = greedy_full["fast"]
    stop_ids = sorted({int(full[i, i + 2]) for i in range(len(PROMPTS))} - {tok.pad_token_id})
    greedy = SamplingParams(max_new_tokens=MAX_NEW, temperature=0.0)
    fast = sample(model, *prompts, greedy, stop_ids, tok.pad_token_id, backend="fast")
    hf = sample(model, *prompts, greedy, stop_ids, tok.pad_token_id, backend="hf")
    expected, ends = stopped(full, stop_ids, tok.pad_token_id)
    assert fast.size(1) < MAX_NEW and len(set(ends)) >= 2
    assert torch.equal(fast, expected)
    assert torch.equal(hf, expected)


# --------------------------------------------------------------------------------- logits processing


def hf_processors(p: SamplingParams) -> LogitsProcessorList:
    """The processors ``generate`` builds for these parameters, in its order."""
    procs = LogitsProcessorList()
    if p.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=p.repetition_penalty))
    if p.greedy:
        return procs
    if p.temperature != 1.0:
        procs.append(TemperatureLogitsWarper(p.temperature))
    if p.top_k:
        procs.append(TopKLogitsWarper(top_k=p.top_k))
    if p.top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p=p.top_p))
    if p.min_p > 0.0:
        procs.append(MinPLogitsWarper(min_p=p.min_p))
    return procs


def seen_to_ids(seen: torch.Tensor) -> torch.Tensor:
    """(B, V) bool -> (B, L) ids of the seen tokens (rows padded by repeating their first id)."""
    rows = [row.nonzero().flatten() for row in seen]
    width = max(len(r) for r in rows)
    return torch.stack([torch.cat([r, r[:1].expand(width - len(r))]) for r in rows])


def kept(logits: torch.Tensor) -> torch.Tensor:
    """Entries not filtered out (filtered ones are -inf or the dtype's lowest value)."""
    return logits > torch.finfo(logits.dtype).min


def kept_softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~kept(logits), float("-inf")).softmax(-1)


CASES = {
    "temperature": SamplingParams(temperature=0.7),
    "hot": SamplingParams(temperature=1.6),
    "top_k": SamplingParams(top_k=10),
    "top_k_1": SamplingParams(top_k=1),
    "top_k_over_vocab": SamplingParams(top_k=1000),
    "top_p": SamplingParams(top_p=0.9),
    "top_p_small": SamplingParams(top_p=0.3),
    "min_p": SamplingParams(min_p=0.1),
    "repetition": SamplingParams(repetition_penalty=1.3),
    "all": SamplingParams(temperature=0.8, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2),
    "all_cold": SamplingParams(temperature=0.3, top_k=20, top_p=0.95, min_p=0.02, repetition_penalty=0.8),
    "greedy_repetition": SamplingParams(temperature=0.0, repetition_penalty=1.5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_process_logits_matches_transformers(name):
    p = CASES[name]
    g = torch.Generator().manual_seed(0)
    b, v = 16, 200
    logits = torch.randn(b, v, generator=g) * 3
    seen = torch.rand(b, v, generator=g) < 0.1
    seen[:, 0] = True
    input_ids = seen_to_ids(seen)
    ours = process_logits(logits.clone(), seen, p)
    theirs = hf_processors(p)(input_ids, logits.clone())
    assert torch.equal(kept(ours), torch.isfinite(theirs))
    k = kept(ours)
    torch.testing.assert_close(ours[k], theirs[k])
    torch.testing.assert_close(kept_softmax(ours), theirs.softmax(-1))
    n_kept = k.sum(-1)
    if name in ("top_k", "top_k_1", "top_p", "top_p_small", "min_p", "all", "all_cold"):
        assert (n_kept < v).all() and (n_kept >= 1).all()  # the case really filters
    if name == "top_k_1":
        assert (n_kept == 1).all()
        assert torch.equal(ours.argmax(-1), logits.argmax(-1))
    if name in ("temperature", "hot", "repetition", "greedy_repetition", "top_k_over_vocab"):
        assert (n_kept == v).all()
    if p.repetition_penalty != 1.0:
        assert not torch.equal(ours, process_logits(logits.clone(), None, p))  # the penalty was applied


def test_process_logits_leaves_unseen_tokens_alone():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = process_logits(logits, seen, SamplingParams(temperature=0.0, repetition_penalty=2.0))
    torch.testing.assert_close(out, torch.tensor([[1.0, -4.0, 1.0, 0.5]]))


# --------------------------------------------------------------------------------- sampling


def test_samples_follow_the_processed_distribution(tiny):
    """20000 one-token rollouts of one prompt through sample(backend='fast') against the exact probabilities
    of transformers' processors applied to the model's logits."""
    model, tok = tiny
    n = 20_000
    p = SamplingParams(max_new_tokens=1, temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.3)
    ids, mask = encode_prompts(tok, ["47+38=?"])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, -1, :].float()
    exact = hf_processors(p)(ids, logits.clone()).softmax(-1)[0]
    raw = logits.softmax(-1)[0]
    support = exact > 0
    assert 5 <= int(support.sum()) < len(exact)
    assert 0.5 * (exact - raw).abs().sum() > 0.1  # the processing matters: the raw softmax would fail below

    g = torch.Generator().manual_seed(1234)
    out = sample(model, ids.expand(n, -1), mask.expand(n, -1), p, [tok.eos_token_id], tok.pad_token_id, generator=g)
    assert out.shape == (n, 1)
    counts = torch.bincount(out[:, 0], minlength=len(exact)).double()
    assert counts[~support].sum() == 0  # nothing outside the kept set
    expected = exact.double() * n
    chi2 = float(((counts[support] - expected[support]) ** 2 / expected[support]).sum())
    df = int(support.sum()) - 1
    assert chi2 < df + 5 * (2 * df) ** 0.5, (chi2, df)
    tv = 0.5 * float((counts / n - exact.double()).abs().sum())
    assert tv < 0.03, tv


def test_seeded_generator_reproduces_samples(tiny, prompts):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=8, temperature=1.0, top_p=0.95)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id, generator=g, backend="fast")

    a, b, c = run(7), run(7), run(8)
    assert a.shape == (len(PROMPTS), 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    torch.manual_seed(0)  # the global RNG does not interfere with a seeded generator
    assert torch.equal(run(7), a)


def test_sampled_rows_pad_after_eos(tiny):
    model, tok = tiny
    biased = copy.deepcopy(model)
    with torch.no_grad():  # EOS logit 0 at every step: hot sampling ends rows at different steps
        biased.lm_head.weight[tok.eos_token_id] = 0.0
    g = torch.Generator().manual_seed(3)
    p = SamplingParams(max_new_tokens=24, temperature=3.0)
    ids, mask = encode_prompts(tok, PROMPTS * 3)
    out = sample(biased, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, generator=g)
    ends = set()
    for row in out.tolist():
        if tok.eos_token_id in row:
            k = row.index(tok.eos_token_id)
            ends.add(k)
            assert set(row[k + 1 :]) <= {tok.pad_token_id}
    assert len(ends) >= 3


def test_sample_restores_training_mode_and_rejects_unknown_backend(tiny, prompts):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=2, temperature=0.0)
    model.train()
    try:
        sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id)
        assert model.training
    finally:
        model.eval()
    sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id)
    assert not model.training
    assert set(BACKENDS) == {"fast", "hf"}
    with pytest.raises(ValueError, match="vllm"):
        sample(model, *prompts, p, [tok.eos_token_id], tok.pad_token_id, backend="vllm")


# --------------------------------------------------------------------------------- per-row seeds


def test_row_seeds_make_a_row_independent_of_its_batch(tiny):
    """A row sampled alone (no padding) equals the same row, with the same seed, inside a bigger batch whose
    longer prompts left-pad it, and whose other rows end at EOS and are dropped from the forward."""
    model, tok = tiny
    biased = copy.deepcopy(model)
    with torch.no_grad():  # EOS logit 0: hot sampling ends rows at many different steps (rows get dropped)
        biased.lm_head.weight[tok.eos_token_id] = 0.0
    p = SamplingParams(max_new_tokens=MAX_NEW, temperature=2.0, top_p=0.95, repetition_penalty=1.1)
    texts = PROMPTS * 3
    seeds = [1000 + 17 * i for i in range(len(texts))]
    ids, mask = encode_prompts(tok, texts)
    full = sample(biased, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=seeds)
    ends = {row.index(tok.eos_token_id) for row in full.tolist() if tok.eos_token_id in row}
    assert len(ends) >= 3  # rows really stop at different steps
    for i in (3, 2, 7):  # the most padded prompt, the longest one, and a middle one
        one_ids, one_mask = encode_prompts(tok, [texts[i]])
        assert one_mask.all()  # alone: no padding at all
        alone = sample(biased, one_ids, one_mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=[seeds[i]])
        n = alone.size(1)
        assert torch.equal(alone[0], full[i, :n])
        assert (full[i, n:] == tok.pad_token_id).all()
    shuffled = list(reversed(range(len(texts))))  # another batch order: the same rows
    again = sample(
        biased,
        ids[shuffled],
        mask[shuffled],
        p,
        [tok.eos_token_id],
        tok.pad_token_id,
        row_seeds=[seeds[j] for j in shuffled],
    )
    assert torch.equal(again[:, : full.size(1)].flip(0), full[:, : again.size(1)])
    with pytest.raises(ValueError, match="row_seeds"):
        sample(biased, ids, mask, p, [tok.eos_token_id], tok.pad_token_id, row_seeds=seeds[:2])


# --------------------------------------------------------------------------------- two-sample distribution test


@pytest.mark.parametrize("name", [k for k, p in CASES.items() if not p.greedy])
def test_pick_matches_multinomial_over_transformers_processors(name):
    """aha's process_logits + inverse-CDF _pick against transformers' processors + torch.multinomial: n draws
    each from the same logits, compared with a two-sample chi-square test and the total variation distance.
    Seeds are fixed, so the test is deterministic; the bounds sit far above the statistics' typical values."""
    p = CASES[name]
    n, v = 40_000, 200
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(1, v, generator=g) * 2.5
    seen = torch.rand(1, v, generator=g) < 0.1
    seen[:, 0] = True
    ours_logits = process_logits(logits.expand(n, v).clone(), seen.expand(n, v), p)  # (n, V)
    u = sampler_mod.uniforms(n, 1, "cpu", torch.Generator().manual_seed(1))[:, 0]
    ours = sampler_mod._pick(ours_logits, p, u)  # (n,)
    theirs_probs = hf_processors(p)(seen_to_ids(seen), logits.clone()).softmax(-1)  # (1, V)
    theirs = torch.multinomial(theirs_probs.expand(n, v), 1, generator=torch.Generator().manual_seed(2))[:, 0]
    a = torch.bincount(ours, minlength=v).double()
    b = torch.bincount(theirs, minlength=v).double()
    assert a[theirs_probs[0] == 0].sum() == 0  # nothing outside transformers' kept set
    used = (a + b) > 0
    chi2 = float(((a - b)[used] ** 2 / (a + b)[used]).sum())
    df = int(used.sum()) - 1
    assert chi2 < df + 6 * (2 * max(df, 1)) ** 0.5, (chi2, df)
    tv = 0.5 * float((a - b).abs().sum()) / n
    assert tv < 0.06, tv


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_on_token_sees_each_step_as_it_is_drawn(tiny, prompts, backend):
    """The per-token hook gets (t, column t of the result) in step order, on both backends; the result is the
    same as without the hook (here with an EOS, so rows end at different steps and are padded)."""
    model, tok = tiny
    params = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0)
    eos = [tok.eos_token_id, int(greedy_ids_any(model, tok, prompts))]
    seen = []
    with_hook = sample(
        model,
        *prompts,
        params,
        eos,
        tok.pad_token_id,
        generator=torch.Generator().manual_seed(5),
        backend=backend,
        on_token=lambda t, toks: seen.append((t, toks.tolist())),
    )
    without = sample(
        model, *prompts, params, eos, tok.pad_token_id, generator=torch.Generator().manual_seed(5), backend=backend
    )
    if backend == "fast":
        assert torch.equal(with_hook, without)
    assert [t for t, _ in seen] == list(range(len(seen))) and len(seen) >= with_hook.size(1)
    columns = torch.tensor([toks for _, toks in seen]).t()  # (B, steps seen)
    assert torch.equal(columns[:, : with_hook.size(1)], with_hook)


def greedy_ids_any(model, tok, prompts):
    """A token the model draws often (the most common greedy first token): a stop id that ends rows early."""
    first = sample(model, *prompts, SamplingParams(max_new_tokens=4, temperature=0.0), [], tok.pad_token_id)
    return torch.mode(first.flatten()).values
