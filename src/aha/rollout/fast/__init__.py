"""aha's fast CPU sampler for plain Llama-family models, with or without plain LoRA adapters, in fp32 or bf16: a
hand-written decode step over the model's weights (:class:`FastDecoder`, on packed weights with the adapters
merged in, cached per model by :func:`packed_weights`; :func:`fast_decode_reason` says why a model cannot take
it), a preallocated KV cache (:class:`SlabCache`) and native kernels compiled once per machine
(:mod:`aha.rollout.fast.kernels`). The loop that drives it is ``aha.rollout.sampler.sample_fast``."""

from aha.rollout.fast.decode import SlabCache, decode_attention_swap
from aha.rollout.fast.decoder import FastDecoder, fast_decode_reason, packed_weights

__all__ = ["FastDecoder", "SlabCache", "decode_attention_swap", "fast_decode_reason", "packed_weights"]
