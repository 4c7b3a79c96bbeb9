"""vLLM rollouts: an in-process engine ("colocate") or a running ``vllm serve`` ("server"), with weight sync.

``vllm`` is imported lazily: aha imports (and everything but this engine runs) without it. Install it with
``pip install 'aha[vllm]'`` (vLLM's CPU build) or, on a CUDA machine, ``pip install vllm``.

Colocate
    A ``vllm.LLM`` in this process (``distributed_executor_backend="uni"`` with
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the worker and its model live in this process, so no subprocess is
    spawned and weights are pushed as tensors, without serialisation). ``sync_weights`` calls the workers'
    ``reload_weights(weights_iterator=...)`` (vLLM's in-place reload: checkpoint names, layer-wise processing) and
    then resets the prefix cache, whose KV blocks were computed with the old weights.

Server
    An OpenAI-compatible ``vllm serve`` at ``server_base_url``, through :class:`aha.rollout.server.OpenAIClient`
    (kept-alive connections, timeouts, retries; every failure one ``EndpointError``); each row is one
    ``/v1/completions`` request with the prompt as token ids, ``return_token_ids`` and ``logprobs=0`` (up to
    :data:`SERVER_CONCURRENCY` in flight, so the server batches them). vLLM 0.32 has no endpoint that receives tensors over HTTP without a GPU transfer backend (its
    ``/update_weights`` RL API needs an NCCL/IPC weight-transfer engine), so ``sync_weights`` writes the weights as
    safetensors to ``weights_dir`` (a directory the server can read: same machine or shared storage) and asks the
    server to reload them through the dev-mode RPC endpoint, ``POST /collective_rpc`` with ``reload_weights``
    (``weights_path``), then ``POST /reset_prefix_cache``. Those endpoints exist only when the server was started
    with ``VLLM_SERVER_DEV_MODE=1``; start it with ``--logprobs-mode processed_logprobs`` too (see below).

Log-probs
    ``generate`` returns vLLM's *processed* log-probs of the sampled tokens (colocate engines are built with
    ``logprobs_mode="processed_logprobs"``, as TRL does): log-softmax of the logits after the repetition penalty
    and temperature scaling (and the top-k/top-p/min-p masks, renormalised), i.e. the distribution the token was
    drawn from. With top_p=1, top_k=0, min_p=0 and no repetition penalty that is ``log_softmax(logits /
    temperature)``, exactly what the GRPO trainer computes; greedy rows (temperature 0) get ``log_softmax(logits)``.
    A server returns what its ``--logprobs-mode`` says (vLLM's default is the raw, unscaled log-probs).

Completions
    :meth:`VLLMRollout.complete` makes it a :class:`aha.rollout.engine.CompletionEngine` (``aha sample --backend
    vllm``): prompts rendered and tokenised as in-process sampling does, completion j of prompt i seeded with
    ``request_seed(seed, i, n) + j`` as the endpoint engine seeds a ``vllm serve`` request, so both give the same
    samples.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from aha.data.prompts import render_prompt
from aha.models.loading import save_model
from aha.rollout.engine import Prompt, request_seed
from aha.rollout.sampler import SamplingParams
from aha.rollout.server import EndpointError, OpenAIClient

MODES = ("colocate", "server")
SERVER_CONCURRENCY = 32  # server mode: requests in flight


def named_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's weights under the base model's (checkpoint) names. A PEFT model gives its base weights with the
    active adapters' deltas added (``W + scale·B·A``, computed, not merged in place: the trainer's tensors are not
    touched, so no merge/unmerge round-off creeps into them); LoRA tensors are skipped, ``base_layer`` and
    ``modules_to_save`` unwrapped."""
    deltas: dict[str, torch.Tensor] = {}
    if _is_peft(model):
        model = model.get_base_model()
        with torch.no_grad():
            for mname, module in model.named_modules():
                if not (hasattr(module, "get_delta_weight") and hasattr(module, "base_layer")):
                    continue
                if getattr(module, "merged", False) or getattr(module, "disable_adapters", False):
                    continue  # merged: the base weight already holds the delta; disabled: the base alone
                adapters = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
                adapters += [a for a in module.active_adapters if a in getattr(module, "lora_embedding_A", {})]
                if adapters:
                    deltas[f"{mname}.base_layer.weight"] = sum(module.get_delta_weight(a) for a in adapters)
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if "lora_" in name or ".original_module." in name:
            continue
        if name in deltas:
            tensor = tensor + deltas[name].to(tensor.dtype)
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name.replace(".base_layer.", "."))
        out[name] = tensor.detach()
    return list(out.items())


def _is_peft(model: torch.nn.Module) -> bool:
    return hasattr(model, "merge_adapter") and hasattr(model, "unmerge_adapter") and hasattr(model, "peft_config")


def _torch_dtype_name(model: torch.nn.Module) -> str:
    dtype = next(model.parameters()).dtype
    return str(dtype).removeprefix("torch.")


class VLLMRollout:
    """Generate with vLLM and keep its weights equal to the trainer's. See the module docstring."""

    def __init__(
        self,
        model_dir_or_model: str | Path | torch.nn.Module,
        tokenizer: Any,
        *,
        mode: str = "colocate",
        server_base_url: str | None = None,
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float | None = None,
        server_timeout: float | None = None,
        request_timeout: float | None = None,
        weights_dir: str | Path | None = None,
        api_key: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        """Colocate takes `max_model_len`, `gpu_memory_utilization` (default 0.3) and vLLM engine options; server
        takes `server_base_url`, `server_timeout` (default 240 s to answer /health), `request_timeout` (600 s),
        `weights_dir` and `api_key`. An option of the other mode is refused, naming it."""
        if mode not in MODES:
            raise ValueError(f"VLLMRollout mode must be one of {', '.join(MODES)}, got {mode!r}")
        other = (
            {"max_model_len": max_model_len, "gpu_memory_utilization": gpu_memory_utilization}
            if mode == "server"
            else {"server_timeout": server_timeout, "request_timeout": request_timeout, "weights_dir": weights_dir}
            | {"api_key": api_key}
        )
        given = sorted(k for k, v in other.items() if v is not None)
        if given:
            raise ValueError(
                f"VLLMRollout mode={mode!r} does not use {', '.join(given)} (options of mode="
                f"{'colocate' if mode == 'server' else 'server'!r}); leave {'it' if len(given) == 1 else 'them'} unset"
            )
        gpu_memory_utilization = 0.3 if gpu_memory_utilization is None else gpu_memory_utilization
        server_timeout = 240.0 if server_timeout is None else server_timeout
        request_timeout = 600.0 if request_timeout is None else request_timeout
        if tokenizer is None or getattr(tokenizer, "eos_token_id", None) is None:
            raise ValueError("VLLMRollout needs a tokenizer with an eos_token (completions end at it)")
        if max_model_len is not None and max_model_len < 1:
            raise ValueError(f"VLLMRollout max_model_len must be >= 1, got {max_model_len}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"VLLMRollout gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.mode = mode
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.eos_token_ids = self._eos_ids(model_dir_or_model, tokenizer)
        self.llm: Any = None
        self.client: OpenAIClient | None = None
        self._own_dirs: list[str] = []
        self.weights_dir = Path(weights_dir) if weights_dir is not None else None
        if mode == "server":
            if server_base_url is None:
                raise ValueError("VLLMRollout mode='server' needs server_base_url (e.g. http://127.0.0.1:8000)")
            if engine_kwargs:
                raise ValueError(
                    f"VLLMRollout mode='server' takes no engine options ({', '.join(sorted(engine_kwargs))}): "
                    "pass them to `vllm serve`"
                )
            self.client = OpenAIClient(
                server_base_url,
                api_key=api_key,
                read_timeout=request_timeout,
                concurrency=SERVER_CONCURRENCY,
                what="server_base_url",
            )
            try:
                self.client.wait_ready(server_timeout)  # a server may still be loading (TRL's vllm_server_timeout)
                self.served_model = self._served_model(model_dir_or_model)
            except BaseException:
                self.client.close()
                raise
            return
        if server_base_url is not None:
            raise ValueError("VLLMRollout server_base_url is for mode='server'; mode='colocate' runs its own engine")
        self._start_engine(model_dir_or_model, max_model_len, gpu_memory_utilization, engine_kwargs)

    # ------------------------------------------------------------------------------------ set-up
    @staticmethod
    def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
        """The tokenizer's EOS plus the generation config's (the module's, or the directory's)."""
        from aha.data.prompts import eos_ids

        if not isinstance(model, torch.nn.Module) and Path(str(model), "generation_config.json").is_file():
            from transformers import GenerationConfig

            return eos_ids(tokenizer, SimpleNamespace(generation_config=GenerationConfig.from_pretrained(model)))
        return eos_ids(tokenizer, model if isinstance(model, torch.nn.Module) else None)

    def _start_engine(self, source: Any, max_model_len: int | None, gpu_mem: float, kwargs: dict[str, Any]) -> None:
        try:
            import vllm
        except ImportError:
            raise ImportError(
                "VLLMRollout needs vllm: pip install 'aha[vllm]' (vLLM's CPU build) or, on a CUDA machine, "
                "pip install vllm"
            ) from None
        if isinstance(source, torch.nn.Module):
            kwargs.setdefault("dtype", _torch_dtype_name(source))  # the engine computes as the trainer does
            path = tempfile.mkdtemp(prefix="aha-vllm-model-")
            self._own_dirs.append(path)
            save_model(_merged_copy(source) if _is_peft(source) else source, self.tokenizer, path)
        else:
            path = str(source)
            hub_id = path.count("/") == 1 and not path.startswith((".", "/", "~"))
            if not Path(path).is_dir() and not hub_id:
                raise FileNotFoundError(f"VLLMRollout: no model directory {path!r}")
        kwargs.setdefault("logprobs_mode", "processed_logprobs")
        kwargs.setdefault("distributed_executor_backend", "uni")
        previous = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: weights by reference
        try:
            self.llm = vllm.LLM(
                model=path,
                tokenizer=path,
                seed=self.seed,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_mem,
                **kwargs,
            )
        finally:
            if previous is None:
                os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
            else:
                os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = previous
        self.max_model_len = self.llm.llm_engine.model_config.max_model_len

    def _served_model(self, requested: Any) -> str:
        assert self.client is not None
        listing = self.client.get("models")
        data = listing.get("data") if isinstance(listing, dict) else None
        ids = [m.get("id") for m in data or [] if isinstance(m, dict)]
        if isinstance(requested, (str, Path)) and str(requested) in ids:
            return str(requested)
        if len(ids) == 1:
            return ids[0]
        raise ValueError(
            f"VLLMRollout: the server at {self.client.server_url} serves {ids}; pass one of them as the model"
        )

    # ------------------------------------------------------------------------------------ generation
    def generate(
        self, prompt_ids: list[list[int]], params: SamplingParams, row_seeds: list[int] | None = None
    ) -> tuple[list[list[int]], list[list[float]]]:
        """Completion token ids per row (EOS kept, nothing after it) and the engine's log-probs of those tokens
        (vLLM's processed log-probs: after repetition penalty, temperature and top-k/top-p/min-p; see the module
        docstring). ``row_seeds`` (one per row) make each row's draw independent of its batch-mates."""
        if not isinstance(prompt_ids, list) or not all(isinstance(p, list) and p for p in prompt_ids):
            raise ValueError("VLLMRollout.generate: prompt_ids must be a list of non-empty lists of token ids")
        if row_seeds is not None and len(row_seeds) != len(prompt_ids):
            raise ValueError(f"VLLMRollout.generate: {len(row_seeds)} row_seeds for {len(prompt_ids)} prompts")
        if params.max_new_tokens < 1:
            raise ValueError(f"VLLMRollout.generate: max_new_tokens must be >= 1, got {params.max_new_tokens}")
        if not prompt_ids:
            return [], []
        seeds = list(row_seeds) if row_seeds is not None else [None] * len(prompt_ids)
        if self.mode == "server":
            rows = self._generate_server(prompt_ids, params, seeds)
        else:
            rows = self._generate_colocate(prompt_ids, params, seeds)
        return [r[0] for r in rows], [r[1] for r in rows]

    def _cut(self, ids: list[int], logprobs: list[float]) -> tuple[list[int], list[float]]:
        eos = set(self.eos_token_ids)
        end = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        return list(ids[:end]), [float(x) for x in logprobs[:end]]

    def _generate_colocate(self, prompt_ids, params: SamplingParams, seeds) -> list[tuple[list[int], list[float]]]:
        from vllm import SamplingParams as VSP

        if self.llm is None:
            raise RuntimeError("VLLMRollout: the engine is closed")
        common = self._sampling_fields(params)
        sps = [VSP(**common, seed=None if s is None else int(s), detokenize=False) for s in seeds]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompt_ids], sps, use_tqdm=False)
        rows = []
        for out in outs:
            o = out.outputs[0]
            lps = [d[t].logprob for t, d in zip(o.token_ids, o.logprobs or [])]
            if len(lps) != len(o.token_ids):
                raise RuntimeError("VLLMRollout: vLLM returned no log-prob for some sampled tokens")
            rows.append(self._cut(list(o.token_ids), lps))
        return rows

    def _sampling_fields(self, p: SamplingParams) -> dict[str, Any]:
        """aha's SamplingParams as vLLM's (same names in its OpenAI API): greedy when temperature == 0."""
        return {
            "temperature": float(p.temperature),
            "top_p": float(p.top_p) if not p.greedy else 1.0,
            "top_k": int(p.top_k) if not p.greedy else 0,
            "min_p": float(p.min_p) if not p.greedy else 0.0,
            "repetition_penalty": float(p.repetition_penalty),
            "max_tokens": int(p.max_new_tokens),
            "logprobs": 0,  # the sampled token's log-prob only
            "stop_token_ids": list(self.eos_token_ids),
        }

    def _generate_server(self, prompt_ids, params: SamplingParams, seeds) -> list[tuple[list[int], list[float]]]:
        if self.client is None:
            raise RuntimeError("VLLMRollout: the client is closed")
        url = self.client.url("completions")
        common = {"model": self.served_model, **self._sampling_fields(params), "return_token_ids": True}
        bodies = []
        for prompt, seed in zip(prompt_ids, seeds):
            bodies.append({**common, "prompt": prompt} | ({} if seed is None else {"seed": int(seed)}))
        rows = []
        for answer in self.client.post_many("completions", bodies):
            try:
                choice = answer["choices"][0]
                ids = choice["token_ids"]
                lps = choice["logprobs"]["token_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise EndpointError(
                    f"{url}: the answer has no choices[0].token_ids / logprobs.token_logprobs (is it vLLM?)", url=url
                ) from None
            if ids is None or lps is None or len(ids) != len(lps):
                raise EndpointError(f"{url}: token_ids and token_logprobs do not line up", url=url)
            rows.append(self._cut(ids, lps))
        return rows

    def complete_with_lengths(
        self, prompts: list[Prompt], params: SamplingParams, seed: int
    ) -> tuple[list[str], list[int], list[bool]]:
        """One completion per prompt, as :func:`aha.rollout.engine.generate_texts` gives them: (texts, token lengths
        with the EOS, truncated flags: no EOS within ``max_new_tokens``); prompt i draws with
        ``request_seed(seed, i, 1)`` (what ``aha eval --backend vllm`` grades)."""
        tok = self.tokenizer
        ids = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        out, _ = self.generate(ids, params, row_seeds=[request_seed(seed, i, 1) for i in range(len(ids))])
        eos = set(self.eos_token_ids)
        texts = [tok.decode(row, skip_special_tokens=True) for row in out]
        return texts, [len(row) for row in out], [not row or row[-1] not in eos for row in out]

    def complete(self, prompts: list[Prompt], n: int, params: SamplingParams, seed: int, start: int = 0) -> list[str]:
        """`n` completions per prompt, as texts (see "Completions" in the module docstring); `start`: the index of
        ``prompts[0]`` in the whole job (the request seeds count from it)."""
        tok = self.tokenizer
        ids = [tok(render_prompt(tok, p), add_special_tokens=False)["input_ids"] for p in prompts]
        rep = [x for x in ids for _ in range(n)]
        seeds = [request_seed(seed, start + i, n) + j for i in range(len(ids)) for j in range(n)]
        out, _ = self.generate(rep, params, row_seeds=seeds)
        return [tok.decode(row, skip_special_tokens=True) for row in out]

    # ------------------------------------------------------------------------------------ weights
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push `model`'s current weights into the engine (a PEFT model: base + the active adapters' deltas,
        see :func:`named_weights`; the model itself is not modified)."""
        weights = named_weights(model)
        if self.mode == "colocate":
            self._sync_colocate(weights)
        else:
            self._sync_server(weights)

    def _sync_colocate(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        if self.llm is None:
            raise RuntimeError("VLLMRollout: the engine is closed")

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            yield from weights

        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        self.llm.reset_prefix_cache()  # cached KV blocks hold the old weights' keys and values

    def _sync_server(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save_file

        if self.weights_dir is None:
            self.weights_dir = Path(tempfile.mkdtemp(prefix="aha-vllm-weights-"))
            self._own_dirs.append(str(self.weights_dir))
        self.weights_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.weights_dir / ".model.safetensors.tmp"
        save_file({n: t.to("cpu").contiguous().clone() for n, t in weights}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, self.weights_dir / "model.safetensors")
        body = {"method": "reload_weights", "kwargs": {"weights_path": str(self.weights_dir.resolve())}}
        if self.client is None:
            raise RuntimeError("VLLMRollout: the client is closed")
        try:
            self.client.post("/collective_rpc", body)
            self.client.post("/reset_prefix_cache", {})
        except EndpointError as e:
            if e.status == 404:
                raise EndpointError(
                    f"{e}\nVLLMRollout.sync_weights in server mode needs vLLM's dev-mode endpoints "
                    "(/collective_rpc, /reset_prefix_cache): start the server with VLLM_SERVER_DEV_MODE=1",
                    url=e.url,
                    status=e.status,
                ) from None
            raise

    # ------------------------------------------------------------------------------------ end
    def close(self) -> None:
        """Free the engine (colocate) or the client's connections (server) and the temporary directories this
        object made. Idempotent."""
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.llm is not None:
            engine = getattr(self.llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                try:
                    core.shutdown()
                except Exception as e:  # a dead engine: nothing left to free
                    warnings.warn(f"VLLMRollout.close: engine shutdown failed: {e}", stacklevel=2)
            self.llm = None
            gc.collect()
        for d in self._own_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._own_dirs = []

    def __enter__(self) -> VLLMRollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A PEFT model's base with the adapter merged, as a new module (the trainer's model is left as it was)."""
    import copy

    return copy.deepcopy(model).merge_and_unload()
