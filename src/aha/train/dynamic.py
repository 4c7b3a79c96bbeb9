"""DAPO dynamic sampling: keep only groups that carry a learning signal, refill the batch with new prompts.

A group whose G rewards all tie has zero advantage everywhere, so it adds nothing to the gradient but
still dilutes the token-level loss. With ``dynamic_sampling=True`` such groups are dropped after scoring
and just enough new prompts are generated and scored to refill the batch, for at most
``max_resample_rounds`` extra rounds. Advantages are group-local, so concatenating the kept groups of
several rounds leaves every advantage exactly as it was computed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from aha.grpo import dapo_num_items, group_rewards, zero_std_groups
from aha.train.distributed import gather_ragged, shard, sum_all

if TYPE_CHECKING:
    from aha.train.grpo import GRPOTrainer


def select_groups(batch: dict[str, torch.Tensor], keep: torch.Tensor, g: int) -> dict[str, torch.Tensor]:
    """The completions of the kept groups; keep: (P,) bool, every tensor (P*G, ...) -> (kept*G, ...)."""
    idx = keep.to(torch.bool).repeat_interleave(g)  # (P*G,)
    return {k: v[idx.to(v.device)] for k, v in batch.items()}


def concat_batches(batches: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    """Concatenate rollout batches of different widths: prompts left-padded, completions right-padded."""
    out = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]
        if parts[0].dim() == 1:  # advantages (N,)
            out[key] = torch.cat(parts)
            continue
        width = max(p.size(1) for p in parts)
        value = pad_id if key.endswith("_ids") else 0
        left = key.startswith("prompt")
        out[key] = torch.cat(
            [F.pad(p, (width - p.size(1), 0) if left else (0, width - p.size(1)), value=value) for p in parts]
        )
    return out


def kept_rows(acc, batch: dict[str, torch.Tensor], keep: torch.Tensor, g: int, pad_id: int) -> dict[str, torch.Tensor]:
    """The rows of the kept groups, keep: (P,) bool over the round's global groups; ``batch`` holds this process's
    rows of the round (a contiguous share). Several processes: every process gets the kept rows of all of them,
    in global order (widths padded as ``concat_batches`` pads)."""
    if acc.num_processes == 1:
        return select_groups(batch, keep, g)
    local = shard(keep.numel() * g, acc.process_index, acc.num_processes)
    idx = keep.to(torch.bool).repeat_interleave(g)[local]  # this process's rows
    mine = {k: v[idx.to(v.device)] for k, v in batch.items()}
    return {
        k: gather_ragged(acc, v, pad_id if k.endswith("_ids") else 0, left=k.startswith("prompt"))
        for k, v in mine.items()
    }


def even_share(acc, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's share of a batch that every process holds whole: ceil(n / W) rows each, in rank order. When W
    does not divide n, the last shares are topped up with copies of row 0 that carry no loss (completion mask 0,
    advantage 0): exact for the token-level losses (dapo), one empty sequence in the sequence-averaged ones."""
    world = acc.num_processes
    n = batch["prompt_ids"].size(0)
    if world == 1:
        return batch
    per = -(-n // world)
    if n and per * world > n:
        fill = per * world - n
        extra = {k: v[:1].repeat(fill, *([1] * (v.dim() - 1))) for k, v in batch.items()}
        extra["completion_mask"].zero_()
        extra["advantages"].zero_()
        batch = {k: torch.cat([v, extra[k]]) for k, v in batch.items()}
    part = slice(acc.process_index * per, (acc.process_index + 1) * per)
    return {k: v[part] for k, v in batch.items()}


def sample_batch(trainer: GRPOTrainer) -> dict[str, Any]:
    """One generation batch, ready for the update (with old/ref log-probs when the objective needs them).

    Without dynamic sampling: ``prompts_per_generation`` new prompts, all kept. With it: tied groups
    are dropped and resampled; the returned rollout may hold fewer groups (even none) when
    ``max_resample_rounds`` runs out. The rollout metrics describe the first round (the policy's own
    reward distribution), plus ``dynamic_sampling/{rounds,dropped_groups,kept_groups}``.

    Several processes: the kept groups of every round are gathered on every process, so all of them hold the
    same kept batch (in the order one process would have it), and each trains on an even share of it
    (``even_share``); a refill round asks for a number of prompts whose G completions split evenly over the
    processes, and groups past the target are left out.
    """
    a, g, acc = trainer.args, trainer.args.num_generations, trainer.accelerator
    target, pad_id = a.prompts_per_generation, trainer.tokenizer.pad_token_id
    first = trainer.generate_and_score(trainer._next_rows(target), with_logps=False)
    if not a.dynamic_sampling:
        trainer.add_logps(first["batch"])
        return first
    step = acc.num_processes // math.gcd(g, acc.num_processes)  # prompts per round: a multiple of this
    rollout, batches, rows, rewards, extra = first, [], [], [], []
    dropped = rounds = 0
    while True:
        total, _ = group_rewards(rollout["rewards"], a.reward_weights)  # (N,)
        tied = zero_std_groups(total, g)  # (P,)
        dropped += int(tied.sum())
        keep = ~tied
        surplus = len(rows) + int(keep.sum()) - target  # a round rounded up to `step` prompts may overfill
        if surplus > 0:
            keep[keep.nonzero().squeeze(1)[-surplus:]] = False
        batches.append(kept_rows(acc, rollout["batch"], keep, g, pad_id))
        rewards.append(rollout["rewards"][keep.repeat_interleave(g)])
        rows += [r for r, k in zip(rollout["rows"], keep.tolist()) if k]
        need = target - len(rows)
        if need <= 0 or rounds >= a.max_resample_rounds:
            break
        rounds += 1
        rollout = trainer.generate_and_score(trainer._next_rows(-(-need // step) * step), with_logps=False)
        extra.append(rollout["info"])
    batch = even_share(acc, concat_batches(batches, pad_id))
    if rows:
        trainer.add_logps(batch)
    info = dict(first["info"])
    for r in extra:  # reward errors / non-finite rewards of the resampling rounds count too
        for k, v in r.items():
            if k.endswith(("/errors", "/nonfinite")):
                info[k] = info.get(k, 0) + v
    info["dynamic_sampling/rounds"] = rounds
    info["dynamic_sampling/dropped_groups"] = dropped
    info["dynamic_sampling/kept_groups"] = len(rows)
    return {"batch": batch, "info": info, "rows": rows, "rewards": torch.cat(rewards)}


def next_batch(trainer: GRPOTrainer, pending: dict[str, list[float]]) -> dict[str, Any]:
    """The next generation batch as the training loop tracks it (and checkpoints it mid-way): the batch, its
    rollout metrics (also appended to `pending`), the pass `it` over it, the next micro-batch `mb`, the pass's
    permutation `perm`, the optimiser steps to `skip` (dynamic sampling kept no group) and `num_items`."""
    a = trainer.args
    rollout = trainer.sample_batch()
    batch, info = rollout["batch"], rollout["info"]
    for k, v in info.items():
        if not k.startswith("_"):
            pending[k].append(v)
    n = batch["prompt_ids"].size(0)
    n_micro = math.ceil(n / a.per_device_train_batch_size)
    # dynamic sampling kept no group: no update, but the batch uses up its steps
    skip = 0 if n else a.num_iterations * math.ceil(a.steps_per_generation / a.gradient_accumulation_steps)
    # dapo: every token of the generation batch weighs the same (TRL's num_items_in_batch scaling). Over W
    # processes: the tokens of all of them, divided by W because the engine averages the W gradients
    acc = trainer.accelerator
    tokens = sum_all(acc, batch["completion_mask"].sum().item())
    num_items = dapo_num_items(tokens, acc.num_processes, a.gradient_accumulation_steps, n_micro)
    it = 0 if n else a.num_iterations
    return {"batch": batch, "info": info, "it": it, "mb": 0, "perm": None, "skip": skip, "num_items": num_items}
