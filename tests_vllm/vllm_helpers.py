"""Helpers of the real-vLLM tests. The tiny model is widened to head_dim 64 (vLLM's CPU attention kernel rejects
head_dim 16) and its weights are perturbed so that greedy completions differ from prompt to prompt (a freshly initialised model repeats one token).
"""

from __future__ import annotations

import torch

SIZES = dict(hidden_size=256, num_attention_heads=4, num_hidden_layers=2, intermediate_size=512)
MAX_MODEL_LEN = 256


def build_model():
    """(model, tokenizer): the tiny Llama, head_dim 64, weights perturbed with a fixed seed."""
    from aha.models.tiny import build_tiny

    model, tok = build_tiny(**SIZES, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model, tok


def prompts(tok, n: int = 8, seed: int = 0) -> list[list[int]]:
    """Token ids of `n` rendered arithmetic chat prompts."""
    from aha.data.prompts import render_prompt
    from aha.tasks import get_task

    rows = get_task("arithmetic").rows("train", n, seed)
    return [tok(render_prompt(tok, r["prompt"]), add_special_tokens=False)["input_ids"] for r in rows]


def hf_greedy(model, tok, prompt_ids: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """aha's fast sampler at temperature 0, cut after EOS (EOS kept)."""
    from aha.data.prompts import eos_ids
    from aha.rollout.sampler import SamplingParams, sample

    eos = eos_ids(tok, model)
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(prompt_ids), width), tok.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompt_ids):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    out = sample(
        model, ids, mask, SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0), eos, tok.pad_token_id
    )
    rows = []
    for row in out.tolist():
        end = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:end])
    return rows


def hf_logprobs(model, prompt: list[int], completion: list[int], temperature: float = 1.0) -> list[float]:
    """log_softmax(logits / temperature) of `completion`'s tokens after `prompt`, as the trainer computes them."""
    with torch.no_grad():
        seq = torch.tensor([prompt + completion])
        logits = model(seq).logits[0, len(prompt) - 1 : -1].float() / temperature
        return logits.log_softmax(-1).gather(1, torch.tensor(completion)[:, None])[:, 0].tolist()


def train_a_little(model, tok, steps: int = 3) -> None:
    """A few Adam steps of SFT on one text: the weights (and greedy completions) change."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor([tok("<think>1+2=3</think><answer>3</answer>", add_special_tokens=False)["input_ids"]])
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
