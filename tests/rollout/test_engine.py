"""Completion engines: the seeding contract, and the local engine (aha's sampler) behind the same protocol."""

from __future__ import annotations

import pytest

from aha.rollout.engine import CompletionEngine, LocalEngine, generate_texts, request_seed
from aha.rollout.sampler import SamplingParams


def test_request_seeds_are_distinct_streams() -> None:
    n = 8
    seeds = {request_seed(s, i, n) + j for s in range(3) for i in range(50) for j in range(n)}
    assert len(seeds) == 3 * 50 * n
    assert request_seed(0, 1, n) == request_seed(0, 0, n) + n  # prompt i's n completions follow prompt i-1's


def test_the_local_engine_gives_n_consecutive_completions_per_prompt(small_tiny) -> None:
    model, tok = small_tiny
    engine: CompletionEngine = LocalEngine(model, tok, batch_size=3)
    prompts = [[{"role": "user", "content": "1+2"}], [{"role": "user", "content": "3+4"}]]
    greedy = SamplingParams(max_new_tokens=6, temperature=0.0)
    texts = engine.complete(prompts, 3, greedy, seed=0)
    alone = [generate_texts(model, tok, [p], greedy)[0][0] for p in prompts]
    assert texts == [alone[0]] * 3 + [alone[1]] * 3  # greedy: each prompt's completion, n times, in order
    sampled = SamplingParams(max_new_tokens=6, temperature=1.0)
    assert engine.complete(prompts, 3, sampled, seed=1) == engine.complete(prompts, 3, sampled, seed=1)
    assert engine.complete(prompts, 3, sampled, seed=1) != engine.complete(prompts, 3, sampled, seed=2)
    model.train()
    engine.complete(prompts[:1], 1, greedy, seed=0)
    assert model.training  # the caller's mode is restored
    engine.close()


def test_the_local_engine_refuses_bad_settings(small_tiny) -> None:
    model, tok = small_tiny
    with pytest.raises(ValueError, match="unknown sampling backend 'vllm'; choose from fast, hf"):
        LocalEngine(model, tok, backend="vllm")
    with pytest.raises(ValueError, match="--batch-size must be at least 1"):
        LocalEngine(model, tok, batch_size=0)


def test_stream_completion_hands_out_the_text_as_drawn(small_tiny) -> None:
    """The pieces join to the completion; it is generate_texts' draw for that prompt, seed and batch 1."""
    from aha.rollout.engine import stream_completion

    model, tok = small_tiny
    prompt = [{"role": "user", "content": "12+30"}]
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    for seed in range(3):
        pieces: list[str] = []
        text, n, cut = stream_completion(model, tok, prompt, params, pieces.append, seed=seed)
        texts, lengths, truncated = generate_texts(model, tok, [prompt], params, batch_size=1, seed=seed)
        assert (text, n, cut) == (texts[0], lengths[0], truncated[0])
        assert "".join(pieces) == text and len(pieces) > 1
