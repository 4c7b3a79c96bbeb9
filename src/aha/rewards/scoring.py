"""Calling reward functions (and reward models) on a generation batch, with errors that name the culprit.

A reward function is a callable ``fn(prompts, completions, completion_ids, **columns) -> list[float]``, plain or
``async def`` (the async ones of a batch run concurrently, on one event loop kept for the process, as TRL runs
them); a reward model is a ``PreTrainedModel`` for sequence classification whose logit 0 on prompt + completion is
the reward (as in TRL). A trainer also passes TRL's keyword arguments (``trainer_state``, ``log_extra``,
``log_metric``: :class:`RewardLogs`) to every function that takes them (by name or through ``**kwargs``)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel

from aha.data.prompts import is_conversational

log = logging.getLogger("aha.rewards")
TRAINER_KWARGS = ("trainer_state", "log_extra", "log_metric")  # what TRL passes besides the dataset columns


class RewardLogs:
    """What reward functions log through TRL's ``log_metric(name, value)`` (a scalar per call, averaged over the
    batch's calls) and ``log_extra(column, values)`` (one value per sample, extra columns of the completions
    table); the trainer collects both after scoring a batch (:meth:`take`)."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[float]] = defaultdict(list)
        self.extra: dict[str, list[Any]] = defaultdict(list)

    def log_metric(self, name: str, value: float) -> None:
        self.metrics[name].append(float(value))

    def log_extra(self, column: str, values: list[Any]) -> None:
        self.extra[column].extend(values)

    def take(self) -> tuple[dict[str, list[float]], dict[str, list[Any]]]:
        """The metrics and extra columns logged since the last call, and an empty log."""
        out = dict(self.metrics), dict(self.extra)
        self.metrics.clear()
        self.extra.clear()
        return out


def reward_name(fn: Callable | PreTrainedModel) -> str:
    if isinstance(fn, PreTrainedModel):  # as TRL: the last part of the model's name or path
        return (getattr(fn.config, "_name_or_path", "") or "").rstrip("/").split("/")[-1] or type(fn).__name__
    return getattr(fn, "__name__", None) or type(fn).__name__


def reward_from_string(spec: str, model_kwargs: dict[str, Any] | None = None) -> Any:
    """A string among the reward functions: a built-in reward's name (``"correctness"``), a custom
    ``module:function`` / ``file.py:function``, or a reward model (a local directory, or a Hub id ``owner/name``,
    loaded with ``AutoModelForSequenceClassification``, ``from_pretrained(**model_kwargs)``). Anything else is a ValueError listing the built-ins; a
    missing local path is a FileNotFoundError, never tried on the Hub."""
    from pathlib import Path

    from aha.models.loading import resolve_model_path
    from aha.rewards import REGISTRY, get, load_custom
    from aha.rewards.custom import is_custom_spec

    if spec in REGISTRY:
        return get(spec)
    if is_custom_spec(spec) and not Path(spec).expanduser().exists():
        return load_custom(spec)
    if "/" not in spec and not Path(spec).expanduser().exists():
        return get(spec)  # not a built-in: "unknown reward 'x' ...; built-in rewards are: ..."
    return AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(spec), num_labels=1, **(model_kwargs or {})
    )


def load_reward_models(
    reward_funcs: Sequence[Any],
    processing_classes: Any,
    device: torch.device | str,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Strings become rewards (:func:`reward_from_string`: a built-in, a custom function or a reward model, loaded
    with ``from_pretrained(**model_kwargs)``: the trainer's ``model_init_kwargs`` and ``trust_remote_code``); each
    model gets a tokenizer (the matching entry of `processing_classes`, or its own from ``config._name_or_path``).
    Returns (funcs, tokenizers)."""
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
            fn = reward_from_string(fn, model_kwargs)
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


def is_async(fn: Callable) -> bool:
    """Does calling `fn` return a coroutine (``async def``, a partial of one, an object with ``async __call__``)?"""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def accepted(fn: Callable, names: Sequence[str]) -> list[str]:
    """Which of the keyword arguments `names` `fn` takes: all with ``**kwargs`` (or a signature that cannot be
    read), else those it names."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return list(names)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return list(names)
    named = {p.name for p in params}
    return [n for n in names if n in named]


_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def run_async(coro: Any) -> Any:
    """Run `coro` to its end on the process's reward event loop (a daemon thread, started on first use, so that
    async clients made by a reward function stay bound to one loop across batches, and a caller inside a running
    loop such as a notebook still works)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = asyncio.new_event_loop()
            threading.Thread(target=_LOOP.run_forever, name="aha-rewards-async", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _LOOP).result()


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
    trainer_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """(N, K) float tensor of rewards; None/NaN become NaN ("does not apply"). Reward models are scored
    with the matching entry of `reward_processing_classes`. `trainer_kwargs` (TRL's ``trainer_state``,
    ``log_extra``, ``log_metric``) go to each function that takes them; the async functions run concurrently.
    A sample that no function scores is logged as a warning (TRL's), naming its prompt, completion and columns.

    A reward function that raises is called again sample by sample to find the first failing sample:
    ``on_error="raise"`` stops with an error naming the function, that sample and the exception;
    ``on_error="skip"`` gives the failing samples None. NaN/inf rewards become None too. Both are counted
    in `counts` (``rewards/<name>/errors`` (skip mode only) and ``rewards/<name>/nonfinite``). A reward whose
    values for a whole batch are NaN/inf (with no finite one: None is "does not apply") is a ValueError naming it."""
    n = len(completions)
    out = torch.full((n, len(reward_funcs)), float("nan"))
    counts = {} if counts is None else counts
    extra = trainer_kwargs or {}

    def kwargs_of(fn: Callable) -> dict[str, Any]:
        return {**columns, **{k: extra[k] for k in accepted(fn, list(extra))}}

    funcs = [(k, fn) for k, fn in enumerate(reward_funcs) if not isinstance(fn, PreTrainedModel)]
    waiting = [(k, fn) for k, fn in funcs if is_async(fn)]
    results: dict[int, Any] = {}  # k -> the values, or the exception the batch call raised
    if waiting:  # TRL's: every async function of the batch at once

        async def one(fn: Callable) -> Any:
            return await fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs_of(fn))

        async def gather() -> list[Any]:
            return await asyncio.gather(*(one(fn) for _, fn in waiting), return_exceptions=True)

        results.update(zip([k for k, _ in waiting], run_async(gather())))
    for k, fn in enumerate(reward_funcs):
        name = reward_name(fn)
        if isinstance(fn, PreTrainedModel):
            if not reward_processing_classes or reward_processing_classes[k] is None:
                raise ValueError(f"reward model {name!r} needs a tokenizer (reward_processing_classes)")
            values = torch.tensor(reward_model_scores(fn, reward_processing_classes[k], prompts, completions))
            nonfinite = int((~values.isfinite()).sum())
            refuse_all_nonfinite(f"reward model {name!r}", nonfinite, n - nonfinite, n)
            counts[f"rewards/{name}/nonfinite"] = counts.get(f"rewards/{name}/nonfinite", 0) + nonfinite
            out[:, k] = torch.where(values.isfinite(), values, torch.nan)
            continue
        errors = 0
        kwargs = kwargs_of(fn)
        try:
            if k in results:
                values = results[k]
                if isinstance(values, BaseException):
                    raise values
            else:
                values = fn(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        except Exception as e:
            values, errors = _per_sample(fn, name, e, prompts, completions, completion_ids, kwargs, on_error)
        if values is None or not hasattr(values, "__len__") or len(values) != n:
            got = "None" if values is None else f"{len(values)} values" if hasattr(values, "__len__") else repr(values)
            raise ValueError(f"reward function {name!r} must return a list of {n} rewards, got {got}")
        nonfinite = finite = 0
        for i, v in enumerate(values):
            if v is None:
                continue
            if isinstance(v, torch.Tensor):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"reward function {name!r} returned a non-numeric reward {v!r} for sample {i}")
            if math.isfinite(v):
                out[i, k] = float(v)
                finite += 1
            else:
                nonfinite += 1
        refuse_all_nonfinite(f"reward function {name!r}", nonfinite, finite, n)
        counts[f"rewards/{name}/nonfinite"] = counts.get(f"rewards/{name}/nonfinite", 0) + nonfinite
        if on_error == "skip":
            counts[f"rewards/{name}/errors"] = counts.get(f"rewards/{name}/errors", 0) + errors
    unscored = torch.isnan(out).all(dim=1)
    if unscored.any():  # TRL's warning, for the first such sample
        i = int(unscored.nonzero()[0, 0])
        sample = {c: v[i] for c, v in columns.items()} | {"prompt": prompts[i], "completion": completions[i]}
        log.warning(
            f"All reward functions returned None for the following kwargs:\n{sample}\n"
            "Please ensure that at least one reward function returns a valid reward."
        )
    return out


def refuse_all_nonfinite(what: str, nonfinite: int, finite: int, n: int) -> None:
    """A reward that gives NaN/inf and no finite number for a whole batch is broken, not "does not apply" (that is
    None): one error naming it, rather than a run that trains on nothing."""
    if nonfinite and not finite:
        rest = f" and None for the other {n - nonfinite}" if nonfinite < n else ""
        raise ValueError(
            f"{what} returned NaN or inf for all {nonfinite} samples of a batch{rest}: no finite reward; a reward "
            "returns a number, or None for a sample it does not apply to"
        )


def _per_sample(fn, name, error, prompts, completions, completion_ids, kwargs, on_error) -> tuple[list[Any], int]:
    """`fn` raised `error` on the whole batch: call it on one sample at a time (the dataset columns sliced, TRL's
    trainer keyword arguments as they are). Returns (values, errors), failing samples as None (skip mode), or
    raises naming the first failing sample."""
    values: list[Any] = []
    errors = 0
    columns = {c: v for c, v in kwargs.items() if c not in TRAINER_KWARGS}
    for i in range(len(completions)):
        cols = {c: v[i : i + 1] for c, v in columns.items()} | {c: kwargs[c] for c in kwargs if c in TRAINER_KWARGS}
        try:
            got = fn(
                prompts=prompts[i : i + 1],
                completions=completions[i : i + 1],
                completion_ids=completion_ids[i : i + 1],
                **cols,
            )
            if inspect.isawaitable(got):
                got = run_async(got)
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
