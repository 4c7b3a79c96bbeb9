"""One generation batch of GRPO (steps 1-2 of ``aha.train.grpo``): sample G completions per prompt, score them
with the reward functions, and turn the rewards into group-relative advantages.

Under several processes each process samples its own rows of the global batch (every row from its own seed, so
a completion does not depend on the split), the rewards are gathered before the advantages (a group may straddle
two processes), and each process keeps its rows' advantages.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from aha.data.prompts import encode_prompts, is_conversational, render_prompt
from aha.grpo import completion_mask_after_eos, compute_advantages
from aha.rewards.scoring import score
from aha.rollout.sampler import SamplingParams, sample
from aha.train.distributed import full_weights, gather_rows, shard
from aha.train.metrics import rollout_metrics
from aha.train.vllm import vllm_generate

if TYPE_CHECKING:
    from aha.train.grpo import GRPOTrainer


@torch.no_grad()
def generate_and_score(trainer: GRPOTrainer, rows: list[dict[str, Any]], with_logps: bool = True) -> dict[str, Any]:
    """Sample G completions for each row, score them. Returns {"batch": tensors (N = len(rows) × G rows),
    "info": metrics, "rows": rows, "rewards": (N, K)}; old/ref log-probs only `with_logps`."""
    a, tok, g, acc = trainer.args, trainer.tokenizer, trainer.args.num_generations, trainer.accelerator
    # this process's rows of the global batch; each row samples from its own seed, so the completions
    # do not depend on how the batch is split over processes
    base_seed = int(torch.randint(2**62, (1,), generator=trainer._gen, device=trainer._gen.device))
    local = shard(len(rows) * g, acc.process_index, acc.num_processes)
    row_seeds = [base_seed + i for i in range(local.start, local.stop)]

    def mine(key: str) -> list[Any]:  # this process's rows of a column, each row's value G times in a row
        return [r[key] for r in rows for _ in range(g)][local]

    prompts = mine("prompt")  # (n,)
    texts = [render_prompt(tok, p) for p in prompts]
    prompt_ids, prompt_mask = encode_prompts(tok, texts, a.max_prompt_length, trainer.device)  # (n, P)
    params = SamplingParams(
        max_new_tokens=a.max_completion_length,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        min_p=a.min_p or 0.0,
        repetition_penalty=a.repetition_penalty,
    )
    if a.use_vllm:
        completion_ids, sampling_logps = vllm_generate(trainer, prompt_ids, prompt_mask, params, row_seeds)
    else:
        with full_weights(trainer.train_model):
            completion_ids = sample(
                trainer.model,
                prompt_ids,
                prompt_mask,
                params,
                trainer.eos,
                tok.pad_token_id,
                trainer._gen,
                a.rollout_backend,
                row_seeds=row_seeds,
            )  # (n, T)
        sampling_logps = None
    completion_mask = completion_mask_after_eos(completion_ids, trainer.eos)  # (n, T)
    truncated = ~torch.isin(completion_ids, torch.tensor(trainer.eos, device=trainer.device)).any(1)  # (n,)
    if a.mask_truncated_completions:
        completion_mask = completion_mask * (~truncated).unsqueeze(1).int()
    ids_list = [row[: int(m.sum())] for row, m in zip(completion_ids.tolist(), completion_mask)]
    decoded = [tok.decode(ids, skip_special_tokens=True) for ids in ids_list]
    completions: list[Any] = (
        [[{"role": "assistant", "content": c}] for c in decoded] if is_conversational(prompts[0]) else decoded
    )
    columns = {k: mine(k) for k in rows[0] if k not in ("prompt", "completion")}
    counts: dict[str, int] = {}  # rewards/<name>/errors, rewards/<name>/nonfinite
    rewards = score(
        trainer.reward_funcs,
        prompts,
        completions,
        ids_list,
        columns,
        trainer.reward_processing_classes,
        a.reward_errors,
        counts,
    )  # (n, K)
    rewards = gather_rows(acc, rewards.to(trainer.device))  # (N, K): groups may straddle processes
    advantages = compute_advantages(rewards, g, scale_rewards=a.scale_rewards, reward_weights=a.reward_weights)
    advantages = advantages[local]  # (n,)
    batch = {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": completion_ids,
        "completion_mask": completion_mask,
        "advantages": advantages,
    }
    if sampling_logps is not None:
        batch["sampling_logps"] = sampling_logps
    if with_logps:
        trainer.add_logps(batch)
    lengths = gather_rows(acc, completion_mask.sum(1))  # (N,)
    truncated = gather_rows(acc, truncated)  # (N,)
    info = rollout_metrics(a, trainer.reward_funcs, rewards, lengths, truncated, prompts, completions) | counts
    return {"batch": batch, "info": info, "rows": rows, "rewards": rewards}
