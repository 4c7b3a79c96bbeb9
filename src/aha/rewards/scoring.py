"""Calling reward functions (and reward models) on a generation batch, with errors that name the culprit.

A reward function is a callable ``fn(prompts, completions, completion_ids, **columns) -> list[float]``; a
reward model is a ``PreTrainedModel`` for sequence classification whose logit 0 on prompt + completion
is the reward (as in TRL)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from aha.data.prompts import is_conversational


def reward_name(fn: Callable | PreTrainedModel) -> str:
    if isinstance(fn, PreTrainedModel):  # as TRL: the last part of the model's name or path
        return (getattr(fn.config, "_name_or_path", "") or "").rstrip("/").split("/")[-1] or type(fn).__name__
    return getattr(fn, "__name__", None) or type(fn).__name__


def load_reward_models(
    reward_funcs: Sequence[Any],
    processing_classes: Any,
    device: torch.device | str,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Strings become ``AutoModelForSequenceClassification`` models (``from_pretrained(**model_kwargs)``: the
    trainer's ``model_init_kwargs`` and ``trust_remote_code``); each model gets a tokenizer (the matching entry of
    `processing_classes`, or its own from ``config._name_or_path``). Returns (funcs, tokenizers)."""
    model_kwargs = dict(model_kwargs or {})
    remote = {"trust_remote_code": model_kwargs["trust_remote_code"]} if "trust_remote_code" in model_kwargs else {}
    n = len(reward_funcs)
    if processing_classes is None:
        classes = [None] * n
    elif isinstance(processing_classes, (list, tuple)):
        classes = list(processing_classes)
    else:
        classes = [processing_classes]
    if len(classes) != n:
        raise ValueError(f"reward_processing_classes has {len(classes)} entries for {n} reward functions")
    funcs: list[Any] = []
    for k, fn in enumerate(reward_funcs):
        if isinstance(fn, str):
            fn = AutoModelForSequenceClassification.from_pretrained(fn, num_labels=1, **model_kwargs)
        if isinstance(fn, PreTrainedModel):
            fn = fn.to(device).eval().requires_grad_(False)
            if classes[k] is None:
                classes[k] = AutoTokenizer.from_pretrained(fn.config._name_or_path, **remote)
            if classes[k].pad_token_id is None:
                classes[k].pad_token = classes[k].eos_token
            if fn.config.pad_token_id is None:
                fn.config.pad_token_id = classes[k].pad_token_id
        elif not callable(fn):
            raise ValueError(f"reward_funcs[{k}] must be a callable, a PreTrainedModel or a model path, got {fn!r}")
        funcs.append(fn)
    return funcs, classes


def reward_model_texts(tokenizer, prompts: list[Any], completions: list[Any]) -> list[str]:
    """Prompt + completion as one text: the chat template for conversations (when the tokenizer has one)."""
    texts = []
    for p, c in zip(prompts, completions):
        if is_conversational(p) and getattr(tokenizer, "chat_template", None):
            texts.append(tokenizer.apply_chat_template(p + c, tokenize=False))
        else:
            texts.append(_plain(p) + _plain(c))
    return texts


def _plain(x: Any) -> str:
    return "\n".join(m["content"] for m in x) if is_conversational(x) else str(x)


@torch.no_grad()
def reward_model_scores(
    model: PreTrainedModel, tokenizer, prompts: list[Any], completions: list[Any], batch_size: int = 32
) -> list[float]:
    """Logit 0 of `model` on each prompt + completion (N,), right-padded batches, eval mode, no grad."""
    texts = reward_model_texts(tokenizer, prompts, completions)
    device = next(model.parameters()).device
    out: list[float] = []
    for s in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[s : s + batch_size], return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False
        ).to(device)
        out += model(**enc).logits[:, 0].float().tolist()  # (B,)
    return out


def score(
    reward_funcs: Sequence[Callable],
    prompts: list[Any],
    completions: list[Any],
    completion_ids: list[list[int]],
    columns: dict[str, list[Any]],
    reward_processing_classes: Sequence[Any] | None = None,
    on_error: str = "raise",
    counts: dict[str, int] | None = None,
) -> torch.Tensor:
    """(N, K) float tensor of rewards; None/NaN become NaN ("does not apply"). Reward models are scored
    with the matching entry of `reward_processing_classes`.

    A reward function that raises is called again sample by sample to find the first failing sample:
    ``on_error="raise"`` stops with an error naming the function, that sample and the exception;
    ``on_error="skip"`` gives the failing samples None. NaN/inf rewards become None too. Both are counted
    in `counts` (``rewards/<name>/errors`` (skip mode only) and ``rewards/<name>/nonfinite``)."""
    n = len(completions)
    out = torch.full((n, len(reward_funcs)), float("nan"))
    counts = {} if counts is None else counts
    for k, fn in enumerate(reward_funcs):
        name = reward_name(fn)
        if isinstance(fn, PreTrainedModel):
            if not reward_processing_classes or reward_processing_classes[k] is None:
                raise ValueError(f"reward model {name!r} needs a tokenizer (reward_processing_classes)")
            values = torch.tensor(reward_model_scores(fn, reward_processing_classes[k], prompts, completions))
            counts[f"rewards/{name}/nonfinite"] = counts.get(f"rewards/{name}/nonfinite", 0) + int(
                (~values.isfinite()).sum()
            )
            out[:, k] = torch.where(values.isfinite(), values, torch.nan)
            continue
        errors = 0
        try:
            values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **columns)
        except Exception as e:
            values, errors = _per_sample(fn, name, e, prompts, completions, completion_ids, columns, on_error)
        if values is None or not hasattr(values, "__len__") or len(values) != n:
            got = "None" if values is None else f"{len(values)} values" if hasattr(values, "__len__") else repr(values)
            raise ValueError(f"reward function {name!r} must return a list of {n} rewards, got {got}")
        nonfinite = 0
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"reward function {name!r} returned a non-numeric reward {v!r} for sample {i}")
            if math.isfinite(v):
                out[i, k] = float(v)
            else:
                nonfinite += 1
        counts[f"rewards/{name}/nonfinite"] = counts.get(f"rewards/{name}/nonfinite", 0) + nonfinite
        if on_error == "skip":
            counts[f"rewards/{name}/errors"] = counts.get(f"rewards/{name}/errors", 0) + errors
    return out


def _per_sample(fn, name, error, prompts, completions, completion_ids, columns, on_error) -> tuple[list[Any], int]:
    """`fn` raised `error` on the whole batch: call it on one sample at a time. Returns (values, errors),
    failing samples as None (skip mode), or raises naming the first failing sample."""
    values: list[Any] = []
    errors = 0
    for i in range(len(completions)):
        cols = {c: v[i : i + 1] for c, v in columns.items()}
        try:
            got = fn(
                prompts=prompts[i : i + 1],
                completions=completions[i : i + 1],
                completion_ids=completion_ids[i : i + 1],
                **cols,
            )
            got = list(got)
            if len(got) != 1:
                raise ValueError(f"returned {len(got)} rewards for 1 sample")
            values.append(got[0])
        except Exception as e:
            if isinstance(e, TypeError) and isinstance(error, TypeError) and i == 0 and str(e) == str(error):
                raise ValueError(
                    f"reward function {name!r} could not be called with prompts, completions, completion_ids and "
                    f"the dataset columns {sorted(columns)}: {e}"
                ) from error
            if on_error != "skip":
                raise ValueError(
                    f"reward function {name!r} raised on sample {i} (completion {str(completions[i])[:200]!r}): "
                    f"{type(e).__name__}: {e}"
                ) from e
            values.append(None)
            errors += 1
    if errors == 0 and on_error != "skip":  # fails only on the whole batch
        raise ValueError(
            f"reward function {name!r} raised on the batch of {len(completions)} samples (no single sample fails "
            f"alone): {type(error).__name__}: {error}"
        ) from error
    return values, errors
