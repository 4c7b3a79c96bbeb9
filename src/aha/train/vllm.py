"""GRPO with vLLM as the rollout engine (``use_vllm=True``): start it, keep its weights equal to the
policy's, and correct for the small difference between the engine's sampling distribution and the
trainer's (TRL's ``vllm_importance_sampling_*``). The engine itself is ``aha.rollout.vllm.VLLMRollout``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from aha.train.distributed import full_weights

if TYPE_CHECKING:
    from aha.train.grpo import GRPOTrainer


def vllm_generate(
    trainer: GRPOTrainer, prompt_ids, prompt_mask, params, row_seeds
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample with vLLM (weights synced after every optimiser step). Returns completion ids (n, T) and the
    engine's log-probs of the sampled tokens (n, T), both right-padded."""
    from aha.rollout.vllm import VLLMRollout

    a = trainer.args
    if trainer.vllm is None:
        url = a.vllm_server_base_url or f"http://{a.vllm_server_host}:{a.vllm_server_port}"
        trainer.vllm = VLLMRollout(
            trainer.model,
            trainer.tokenizer,
            mode=a.vllm_mode,
            server_base_url=url if a.vllm_mode == "server" else None,
            max_model_len=max_model_len(trainer),
            seed=a.seed,
            gpu_memory_utilization=a.vllm_gpu_memory_utilization,
            server_timeout=a.vllm_server_timeout,
        )
        trainer._vllm_step = trainer.state.global_step if a.vllm_mode == "colocate" else -1
    if trainer._vllm_step != trainer.state.global_step:
        with full_weights(trainer.train_model):
            trainer.vllm.sync_weights(trainer.model)
        trainer._vllm_step = trainer.state.global_step
    prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]  # left padding removed
    ids, logps = trainer.vllm.generate(prompts, params, row_seeds)
    width = max(1, max(len(x) for x in ids))
    completion_ids = torch.full((len(ids), width), trainer.tokenizer.pad_token_id, dtype=torch.long)  # (n, T)
    sampling_logps = torch.zeros(len(ids), width)  # (n, T)
    for i, (row, lp) in enumerate(zip(ids, logps)):
        completion_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        sampling_logps[i, : len(lp)] = torch.tensor(lp)
    return completion_ids.to(trainer.device), sampling_logps.to(trainer.device)


def max_model_len(trainer: GRPOTrainer) -> int | None:
    """The colocate engine's context length: ``vllm_max_model_length``, else ``max_prompt_length`` (prompts are
    left-truncated to it) + ``max_completion_length``, at most the model's ``max_position_embeddings``; None (the
    model's own limit) when prompts are not truncated. Never the first batch's width: later prompts may be longer."""
    a = trainer.args
    if a.vllm_max_model_length is not None:
        return a.vllm_max_model_length
    if a.max_prompt_length is None:
        return None
    n = a.max_prompt_length + a.max_completion_length
    limit = getattr(getattr(trainer.model, "config", None), "max_position_embeddings", None)
    return min(n, limit) if isinstance(limit, int) else n
