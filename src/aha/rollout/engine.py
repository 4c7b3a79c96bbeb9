"""Completion engines: prompts in, completion texts out. ``aha sample`` generates through one, whichever it is:
the model in this process (:class:`LocalEngine`, aha's sampler), an in-process vLLM engine
(:class:`aha.rollout.vllm.VLLMRollout`) or an OpenAI-compatible server (:class:`aha.rollout.server.EndpointEngine`).

The contract (:class:`CompletionEngine`): ``complete(prompts, n, params, seed, start)`` returns ``n`` consecutive
completions per prompt, texts without special tokens; `start` is the index of ``prompts[0]`` in the whole job
when a caller hands it out in chunks (``aha sample``, which resumes at a chunk), so that the draws do not depend
on where a run was interrupted. A prompt is a list of chat messages, rendered with the
engine's `tokenizer` chat template, or a plain string (for a tokenizer without one); an engine whose `tokenizer`
is None leaves the rendering to its server. Seeds: the vLLM engine and the endpoint draw completion j of prompt i
with seed ``request_seed(seed, i, n) + j`` (so a local vLLM engine and a ``vllm serve`` of the same model give
the same samples), where i counts from `start`; the local sampler draws its whole call from one generator seeded
with `seed` (``start`` 0) or ``request_seed(seed, start, n)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from aha.data.prompts import encode_prompts, eos_ids, render_prompt
from aha.rollout.sampler import BACKENDS, SamplingParams, compute_dtype, sample

Prompt = str | list[dict[str, str]]


class CompletionEngine(Protocol):
    """What ``aha sample`` generates with; see the module docstring."""

    tokenizer: Any  # the local tokenizer prompts are rendered with; None: the server renders them

    def complete(
        self, prompts: list[Prompt], n: int, params: SamplingParams, seed: int, start: int = 0
    ) -> list[str]: ...

    def close(self) -> None: ...


def request_seed(seed: int, prompt_index: int, n: int) -> int:
    """The seed of prompt `prompt_index`'s request; its j-th completion draws with ``request_seed(...) + j``, which
    is what vLLM does for a seeded request with ``n`` > 1, so every (prompt, sample) has a stream of its own."""
    return (int(seed) * 1_000_003 + prompt_index * n) % 2**31


def generate_texts(
    model,
    tokenizer,
    prompts: list[Any],
    params: SamplingParams,
    *,
    batch_size: int = 128,
    seed: int = 0,
    backend: str = "fast",
    on_batch: Callable[[int], None] | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[list[str], list[int], list[bool]]:
    """Completions for `prompts` (rendered with the chat template when conversational), in batches of
    `batch_size` drawing from one generator seeded `seed`; `on_batch(size)` after each batch; computing in `dtype`
    (None: the model's; see :func:`aha.rollout.sampler.sample`). Returns (texts, token lengths with the EOS,
    truncated flags)."""
    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    gen = torch.Generator(device=device).manual_seed(seed)
    texts, lengths, truncated = [], [], []
    for s in range(0, len(prompts), batch_size):
        chunk = [render_prompt(tokenizer, p) for p in prompts[s : s + batch_size]]
        ids, mask = encode_prompts(tokenizer, chunk, device=device)
        comp = sample(
            model, ids, mask, params, eos, tokenizer.pad_token_id, generator=gen, backend=backend, dtype=dtype
        )
        for row in comp.tolist():
            text, n, cut = decode_completion(tokenizer, row, eos)
            texts.append(text)
            lengths.append(n)
            truncated.append(cut)
        if on_batch is not None:
            on_batch(len(chunk))
    return texts, lengths, truncated


def decode_completion(tokenizer, row: list[int], eos: list[int]) -> tuple[str, int, bool]:
    """One completion's ids -> (text up to and without its first EOS, token length with the EOS, truncated)."""
    ended = next((i for i, t in enumerate(row) if t in eos), None)
    n = len(row) if ended is None else ended + 1
    return tokenizer.decode(row[:n], skip_special_tokens=True), n, ended is None


def stream_completion(
    model,
    tokenizer,
    prompt: Any,
    params: SamplingParams,
    on_text: Callable[[str], None],
    *,
    seed: int = 0,
    backend: str = "fast",
    dtype: torch.dtype | None = None,
) -> tuple[str, int, bool]:
    """One completion of `prompt`, its text handed to `on_text` piece by piece as the tokens are drawn (what
    ``aha chat`` prints from); the same draw as ``generate_texts([prompt], params, batch_size=1, seed=seed)``.
    A piece is held back while the text so far ends inside a multi-byte character; the pieces are decoded without
    the tokenizer's space clean-up (so each extends the last). Returns what :func:`generate_texts` returns for that
    one prompt (text, token length with the EOS, truncated)."""
    device = next(model.parameters()).device
    eos = eos_ids(tokenizer, model)
    ids, mask = encode_prompts(tokenizer, [render_prompt(tokenizer, prompt)], device=device)
    drawn: list[int] = []
    shown = ""

    def hook(t: int, tokens: torch.Tensor) -> None:
        nonlocal shown
        if drawn and drawn[-1] in eos:
            return  # ended: the rest is padding
        drawn.append(int(tokens[0]))
        text = tokenizer.decode(drawn, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if not text.endswith("\ufffd") and text.startswith(shown) and len(text) > len(shown):
            on_text(text[len(shown) :])
            shown = text

    gen = torch.Generator(device=device).manual_seed(seed)
    comp = sample(
        model,
        ids,
        mask,
        params,
        eos,
        tokenizer.pad_token_id,
        generator=gen,
        backend=backend,
        dtype=dtype,
        on_token=hook,
    )
    row = comp[0].tolist()
    text, n, cut = decode_completion(tokenizer, row, eos)
    spelled = tokenizer.decode(row[:n], skip_special_tokens=True, clean_up_tokenization_spaces=False)
    if spelled.startswith(shown):
        if len(spelled) > len(shown):
            on_text(spelled[len(shown) :])
    else:  # a tokenizer whose prefixes decode differently from the whole (rare): the whole text, on its own line
        on_text("\n" + spelled)
    return text, n, cut


class LocalEngine:
    """The model in this process, sampled by aha's `backend` (``fast``: its KV-cache loop; ``hf``: transformers'
    generate), `batch_size` rows at a time (in eval mode: :func:`aha.rollout.sampler.sample` sees to it), computing
    in `dtype` (None: the model's own; torch.bfloat16 for a float32 model, refused here at once where the hardware
    has no bf16)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        backend: str = "fast",
        batch_size: int = 64,
        dtype: torch.dtype | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"unknown sampling backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
        compute_dtype(model, dtype)  # a dtype it cannot honour fails here, not at the first batch
        self.model = model
        self.tokenizer = tokenizer
        self.backend = backend
        self.batch_size = batch_size
        self.dtype = dtype

    def complete(self, prompts: list[Prompt], n: int, params: SamplingParams, seed: int, start: int = 0) -> list[str]:
        rep = [p for p in prompts for _ in range(n)]
        texts, _, _ = generate_texts(
            self.model,
            self.tokenizer,
            rep,
            params,
            batch_size=self.batch_size,
            seed=seed if start == 0 else request_seed(seed, start, n),
            backend=self.backend,
            dtype=self.dtype,
        )
        return texts

    def close(self) -> None:
        """Nothing to free: the model is the caller's."""
