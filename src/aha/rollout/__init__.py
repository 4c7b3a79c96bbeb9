"""Generation backends: aha's KV-cache sampler ("fast") and transformers' generate ("hf")."""

from aha.rollout.sampler import BACKENDS, SamplingParams, process_logits, sample

__all__ = ["BACKENDS", "SamplingParams", "process_logits", "sample"]
