"""VLLMRollout(mode="colocate"): greedy equals aha's fast sampler, log-probs equal the model's, weight sync."""

from __future__ import annotations

import pytest
import torch
from vllm_helpers import MAX_MODEL_LEN, build_model, hf_greedy, hf_logprobs, prompts, train_a_little

from aha.rollout import SamplingParams
from aha.rollout.vllm import VLLMRollout

NEW = 24


@pytest.fixture(scope="module")
def engine():
    model, tok = build_model()
    model.eval()
    rollout = VLLMRollout(model, tok, mode="colocate", max_model_len=MAX_MODEL_LEN, seed=0)  # dtype: the model's
    yield rollout, model, tok
    rollout.close()


def test_greedy_equals_the_hf_model_and_log_probs_match(engine) -> None:
    rollout, model, tok = engine
    ps = prompts(tok)
    ids, lps = rollout.generate(ps, SamplingParams(max_new_tokens=NEW, temperature=0.0))
    assert ids == hf_greedy(model, tok, ps, NEW)
    assert len({tuple(x) for x in ids}) > 1  # the prompts lead to different completions
    for p, c, lp in zip(ps, ids, lps):
        assert len(lp) == len(c)
        assert lp == pytest.approx(hf_logprobs(model, p, c), abs=1e-3)


def test_sampled_log_probs_are_temperature_scaled_and_row_seeds_are_per_row(engine) -> None:
    rollout, model, tok = engine
    ps = prompts(tok, 4, seed=3)
    params = SamplingParams(max_new_tokens=NEW, temperature=0.7)
    ids, lps = rollout.generate(ps, params, row_seeds=[11, 12, 13, 14])
    for p, c, lp in zip(ps, ids, lps):
        assert lp == pytest.approx(hf_logprobs(model, p, c, temperature=0.7), abs=1e-3)
        assert lp != pytest.approx(hf_logprobs(model, p, c, temperature=1.0), abs=1e-3)
    alone, _ = rollout.generate(ps[2:3], params, row_seeds=[13])
    assert alone[0] == ids[2]  # a row's draw does not depend on its batch-mates
    other, _ = rollout.generate(ps, params, row_seeds=[21, 22, 23, 24])
    assert other != ids


def test_sync_weights_follows_training(engine) -> None:
    rollout, model, tok = engine
    ps = prompts(tok)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    before, _ = rollout.generate(ps, greedy)
    train_a_little(model, tok)
    after_hf = hf_greedy(model, tok, ps, NEW)
    assert after_hf != before  # training changed the model's greedy completions
    stale, _ = rollout.generate(ps, greedy)
    assert stale == before  # ... but not the engine's, until the weights are pushed
    rollout.sync_weights(model)
    ids, lps = rollout.generate(ps, greedy)
    assert ids == after_hf
    for p, c, lp in zip(ps, ids, lps):
        assert lp == pytest.approx(hf_logprobs(model, p, c), abs=1e-3)


def test_sync_weights_of_a_lora_model_pushes_the_merged_weights(engine) -> None:
    from peft import LoraConfig, get_peft_model

    rollout, model, tok = engine
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=gen)
    ps = prompts(tok, 6, seed=7)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    want = hf_greedy(peft_model, tok, ps, NEW)
    base_before = {n: p.detach().clone() for n, p in peft_model.get_base_model().named_parameters()}
    rollout.sync_weights(peft_model)
    ids, _ = rollout.generate(ps, greedy)
    assert ids == want
    for n, p in peft_model.get_base_model().named_parameters():  # unmerged again: training goes on as before
        assert torch.equal(p, base_before[n]), n
    with peft_model.disable_adapter():
        assert hf_greedy(peft_model, tok, ps, NEW) != want


def test_bad_inputs(engine) -> None:
    rollout, _, tok = engine
    with pytest.raises(ValueError, match="row_seeds"):
        rollout.generate(prompts(tok, 2), SamplingParams(), row_seeds=[1])
    with pytest.raises(ValueError, match="non-empty"):
        rollout.generate([[]], SamplingParams())
    with pytest.raises(ValueError, match="mode"):
        VLLMRollout("x", tok, mode="remote")
    with pytest.raises(ValueError, match="server_base_url"):
        VLLMRollout("x", tok, mode="server")
