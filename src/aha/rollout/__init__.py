"""Generation backends: aha's KV-cache sampler ("fast"), transformers' generate ("hf"); vLLM in aha.rollout.vllm."""

from aha.rollout.sampler import BACKENDS, SamplingParams, process_logits, sample

__all__ = ["BACKENDS", "SamplingParams", "process_logits", "sample"]
