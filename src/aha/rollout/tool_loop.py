"""Multi-turn rollouts with tools: the model writes, calls a tool, reads the result, and writes on.

One loop for every caller (GRPO's rollouts, ``aha eval``, ``aha chat``), over any sampler: it is given a
``generate(prompts, rows, max_new_tokens, turn)`` function that samples one turn for each of a list of token
prompts and returns each row's tokens up to and including its EOS (and, from vLLM, their log-probs).

Turn 0 samples every row from its prompt. A row whose turn ended with EOS and holds tool calls (in the chat
template's format, :mod:`aha.tools.calls`) has its calls run by its own :class:`~aha.tools.Toolbox` (each
rollout may have its own tools: an environment per rollout), the results appended as ``tool`` messages in the
template's own tokens (:func:`aha.tools.calls.tool_suffix_ids`), and is sampled again from the whole conversation
so far — rows that call tools continue while the others are done, batched, for at most ``max_iterations``
rounds of tool calls. A malformed call, a tool that raises or times out: an error message the model reads, never a
crash. A row that has no room left in ``max_completion_length`` for the results stops where it is (as TRL).

Every row's completion is its tokens after the prompt: model turns, tool glue and results. ``tool_mask`` marks
which of them the model wrote (1) and which it did not (0: the template's glue and the tool results), so the loss,
the KL and the entropy see only the model's own tokens, while the forward still reads the whole conversation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from aha.tools.calls import ParsedTurn, parse_turn, tool_messages, tool_suffix_ids
from aha.tools.toolbox import ToolResult

# prompts (token lists), their row indices, max new tokens, turn number -> each row's turn (ending at its EOS) and
# the sampler's log-probs of those tokens (None when the sampler gives none)
Generate = Callable[[list[list[int]], list[int], int, int], tuple[list[list[int]], list[list[float]] | None]]


@dataclass
class ToolRollout:
    """The rollouts of a batch of prompts, row by row."""

    completion_ids: list[list[int]]  # model turns, template glue and tool results, after the prompt
    tool_mask: list[list[int]]  # 1: a token the model wrote; 0: glue and tool results
    sampling_logps: list[list[float]] | None  # the sampler's log-probs (0 for tokens it did not sample)
    completions: list[list[dict[str, Any]]]  # the turns as chat messages (assistant, tool, assistant, ...)
    calls: list[int]  # tool calls made (malformed ones included)
    failures: list[int]  # calls that came back as errors
    turns: list[int]  # assistant turns
    ended: list[bool]  # the last turn ended with EOS (False: cut at max_completion_length)


def run_tool_loop(
    generate: Generate,
    prompt_ids: Sequence[Sequence[int]],
    toolboxes: Sequence[Any],
    tokenizer,
    fmt: str,
    eos: Sequence[int],
    max_completion_length: int,
    max_iterations: int | None = None,
    chat_template_kwargs: dict[str, Any] | None = None,
) -> ToolRollout:
    """Sample every prompt to the end of its conversation (see the module docstring). `toolboxes`: one per row
    (``Toolbox``: ``call_many(calls) -> results``); `fmt`: the tool-call format; `max_iterations`: rounds of tool
    calls (None: until no row calls a tool or the length is spent)."""
    n = len(prompt_ids)
    if len(toolboxes) != n:
        raise ValueError(f"run_tool_loop: {len(toolboxes)} toolboxes for {n} prompts")
    eos_set = set(eos)
    comp: list[list[int]] = [[] for _ in range(n)]
    mask: list[list[int]] = [[] for _ in range(n)]
    logps: list[list[float]] | None = None
    messages: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    calls, failures, turns = [0] * n, [0] * n, [0] * n
    ended = [False] * n
    pending: dict[int, ParsedTurn] = {}

    def take(rows: list[int], outs: list[list[int]], lps: list[list[float]] | None) -> None:
        nonlocal logps
        if lps is not None and logps is None:
            logps = [[0.0] * len(c) for c in comp]
        for j, (i, out) in enumerate(zip(rows, outs)):
            out = list(out)[: max_completion_length - len(comp[i])]
            comp[i] += out
            mask[i] += [1] * len(out)
            if logps is not None:
                lp = list(lps[j])[: len(out)] if lps is not None else [0.0] * len(out)
                logps[i] += lp + [0.0] * (len(out) - len(lp))
            turns[i] += 1
            ended[i] = bool(out) and out[-1] in eos_set
            text = tokenizer.decode(out, skip_special_tokens=True)
            parsed = parse_turn(text, fmt)
            messages[i].append(parsed.message())
            if ended[i] and (parsed.calls or parsed.errors):
                pending[i] = parsed

    outs, lps = generate([list(p) for p in prompt_ids], list(range(n)), max_completion_length, 0)
    take(list(range(n)), outs, lps)
    rounds = 0
    while pending and (max_iterations is None or rounds < max_iterations):
        rows, prompts = [], []
        for i, parsed in sorted(pending.items()):
            results = list(toolboxes[i].call_many(parsed.calls)) if parsed.calls else []
            results += [ToolResult("unknown", f"Error: {e}", True) for e in parsed.errors]
            calls[i] += len(parsed.calls) + len(parsed.errors)
            failures[i] += sum(r.error for r in results)
            suffix = tool_suffix_ids(tokenizer, results, chat_template_kwargs)
            if len(comp[i]) + len(suffix) >= max_completion_length:  # no room for the results and a reply
                continue
            comp[i] += suffix
            mask[i] += [0] * len(suffix)
            if logps is not None:
                logps[i] += [0.0] * len(suffix)
            messages[i] += tool_messages(results)
            rows.append(i)
            prompts.append(list(prompt_ids[i]) + comp[i])
        pending.clear()
        if not rows:
            break
        budget = max(max_completion_length - len(comp[i]) for i in rows)
        rounds += 1
        outs, lps = generate(prompts, rows, budget, rounds)
        take(rows, outs, lps)
    return ToolRollout(comp, mask, logps, messages, calls, failures, turns, ended)


def tool_counts(rollout: ToolRollout) -> list[list[int]]:
    """Per row: [calls, failures, turns, completion tokens, model tokens] (what :func:`tool_metrics` sums; gather
    these over processes first)."""
    return [
        [c, f, t, len(m), sum(m)]
        for c, f, t, m in zip(rollout.calls, rollout.failures, rollout.turns, rollout.tool_mask)
    ]


def tool_metrics(counts: Sequence[Sequence[int]]) -> dict[str, float]:
    """A batch's tool use from :func:`tool_counts` rows: TRL's ``tools/call_frequency`` (calls per completion) and
    ``tools/failure_frequency`` (failed calls per call), and aha's ``tools/turns`` (assistant turns per
    completion), ``tools/used`` (share of completions that called a tool) and ``tools/masked_share`` (share of
    completion tokens the model did not write)."""
    n = max(1, len(counts))
    calls = sum(r[0] for r in counts)
    tokens = sum(r[3] for r in counts)
    return {
        "tools/call_frequency": calls / n,
        "tools/failure_frequency": sum(r[1] for r in counts) / calls if calls else 0.0,
        "tools/turns": sum(r[2] for r in counts) / n,
        "tools/used": sum(r[0] > 0 for r in counts) / n,
        "tools/masked_share": (tokens - sum(r[4] for r in counts)) / tokens if tokens else 0.0,
    }


def complete_with_tools(
    model,
    tokenizer,
    prompts: Sequence[list[dict[str, Any]]],
    params: Any,
    toolbox: Any,
    *,
    batch_size: int = 128,
    seed: int = 0,
    max_iterations: int | None = None,
    backend: str = "fast",
    on_batch: Callable[[int], None] | None = None,
    dtype: Any = None,
) -> ToolRollout:
    """Multi-turn completions of chat `prompts` with `toolbox`'s tools on a local model (``aha eval``), in batches
    of `batch_size` prompts, every turn drawn from one generator seeded `seed` (so the result is a function of the
    model, the prompts and the settings); ``params.max_new_tokens`` bounds each whole conversation after its prompt.
    The rows of every batch are concatenated into one :class:`ToolRollout`."""
    import torch

    from aha.data.prompts import encode_prompts, eos_ids, left_pad
    from aha.grpo import completion_mask_after_eos
    from aha.rollout.sampler import sample
    from aha.tools.calls import detect_format, render_tool_prompt

    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    fmt = detect_format(tokenizer)
    gen = torch.Generator(device=device).manual_seed(seed)

    def generate(rows_prompts: list[list[int]], rows: list[int], max_new: int, turn: int):
        pad = tokenizer.pad_token_id
        ids, mask = left_pad(rows_prompts, pad, device)
        p = dataclasses.replace(params, max_new_tokens=max_new)
        out = sample(model, ids, mask, p, eos, pad, generator=gen, backend=backend, dtype=dtype)
        keep = completion_mask_after_eos(out, eos).sum(1).tolist()  # each row up to and including its EOS
        return [row[:k] for row, k in zip(out.tolist(), keep)], None

    parts: list[ToolRollout] = []
    for s in range(0, len(prompts), batch_size):
        chunk = [render_tool_prompt(tokenizer, p, toolbox.schemas) for p in prompts[s : s + batch_size]]
        ids, mask = encode_prompts(tokenizer, chunk, device="cpu")
        lists = [row[m.bool()].tolist() for row, m in zip(ids, mask)]
        parts.append(
            run_tool_loop(
                generate, lists, [toolbox] * len(lists), tokenizer, fmt, eos, params.max_new_tokens, max_iterations
            )
        )
        if on_batch is not None:
            on_batch(len(chunk))
    return concat_rollouts(parts)


def concat_rollouts(parts: Sequence[ToolRollout]) -> ToolRollout:
    """The rows of several rollouts, in order (log-probs only if every part has them)."""
    rows = {f.name: [x for p in parts for x in getattr(p, f.name) or []] for f in dataclasses.fields(ToolRollout)}
    if any(p.sampling_logps is None for p in parts):
        rows["sampling_logps"] = None
    return ToolRollout(**rows)
