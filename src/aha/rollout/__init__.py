"""Generation: aha's KV-cache sampler ("fast") and transformers' generate ("hf") in aha.rollout.sampler; vLLM in
aha.rollout.vllm; OpenAI-compatible servers in aha.rollout.server; the completion engines (texts in, texts out)
that ``aha sample`` generates with in aha.rollout.engine."""

from aha.rollout.sampler import BACKENDS, SamplingParams, process_logits, sample

__all__ = ["BACKENDS", "SamplingParams", "process_logits", "sample"]
