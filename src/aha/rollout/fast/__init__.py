"""aha's fast CPU sampler for plain Llama-family models: a hand-written decode step over the model's own weights
(:class:`FastDecoder`, with :func:`fast_decode_reason` saying why a model cannot take it), a preallocated KV cache
(:class:`SlabCache`) and native kernels compiled once per machine (:mod:`aha.rollout.fast.kernels`). The loop that
drives it is ``aha.rollout.sampler.sample_fast``."""

from aha.rollout.fast.decode import SlabCache, decode_attention_swap
from aha.rollout.fast.decoder import FastDecoder, fast_decode_reason

__all__ = ["FastDecoder", "SlabCache", "decode_attention_swap", "fast_decode_reason"]
