"""Turning dataset rows into model inputs: chat templates, left-padded prompt batches."""

from __future__ import annotations

from typing import Any

import torch


def is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m for m in prompt)


def render_prompt(tokenizer, prompt: Any, chat_template_kwargs: dict[str, Any] | None = None) -> str:
    """A prompt as the text the model sees: chat template for messages (`chat_template_kwargs` go to it, e.g.
    ``{"enable_thinking": False}``), the string itself otherwise."""
    if is_conversational(prompt):
        return tokenizer.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **(chat_template_kwargs or {})
        )
    if isinstance(prompt, str):
        return prompt
    raise TypeError(f"a prompt must be a string or a list of chat messages, got {type(prompt).__name__}")


def encode_prompts(
    tokenizer, texts: list[str], max_prompt_length: int | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompt ids and mask, (B, P). Prompts longer than `max_prompt_length` keep their
    last tokens (left truncation, as TRL does)."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    if max_prompt_length is not None:
        ids = [x[-max_prompt_length:] for x in ids]
    return left_pad(ids, tokenizer.pad_token_id, device)


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as left-padded ids and mask, (B, P) (P the longest row, at least 1)."""
    width = max(1, max((len(r) for r in rows), default=1))
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, x in enumerate(rows):
        if x:
            input_ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
    return input_ids.to(device), mask.to(device)


def eos_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's EOS plus the generation config's."""
    out = []
    if tokenizer.eos_token_id is not None:
        out.append(tokenizer.eos_token_id)
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    for e in [extra] if isinstance(extra, int) else (extra or []):
        if e not in out:
            out.append(e)
    if not out:
        raise ValueError("the tokenizer has no eos_token: set one so that completions can end")
    return out


def completion_text(completion: Any) -> str:
    """A completion as text, whether standard (str) or conversational ([{"role", "content"}])."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    raise TypeError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
