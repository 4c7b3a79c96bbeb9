"""The policy model and the process as a ``GRPOConfig`` asks for them, before training starts.

* :func:`load_policy` (:func:`init_kwargs`, reward models given by name take them too): a model given by name, with ``model_init_kwargs`` (``dtype``/``torch_dtype``,
  ``attn_implementation``, ...) and ``trust_remote_code``; float32 unless ``dtype`` says otherwise (as TRL: aha
  trains fp32 weights under autocast);
* :func:`prepare_policy`: ``disable_dropout``, ``use_liger_kernel`` (transformers' Liger integration, the fused
  cross-entropy left out: GRPO computes its own log-probs), ``gradient_checkpointing`` with its kwargs, and the check
  that ``cast_lm_head_to_fp32`` can act (``aha.train.forward`` computes the head in fp32 then);
* :func:`compile_policy`: ``torch_compile`` (``torch_compile_backend``/``_mode``) on the module the loss forward
  calls: the decoder on ``token_logps``' fast path, else the whole model;
* :func:`set_run_flags`: ``tf32`` and ``full_determinism``;
* :func:`process_group_options`: the ``ddp_*`` fields as accelerate's kwargs handlers (the DDP wrapper's options, the
  process group's backend and timeout).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from aha.models.loading import resolve_model_path
from aha.train.forward import decoder_and_head, has_fast_path


def init_kwargs(args: Any) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments for models given by name (the policy, reward models):
    ``model_init_kwargs`` with a dtype given by name as a torch dtype (float32 when none is given) and
    ``trust_remote_code``."""
    kwargs = dict(args.model_init_kwargs or {})
    if "torch_dtype" in kwargs:  # the old name transformers still reads, under its new one
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    dtype = kwargs.get("dtype", torch.float32)
    kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return kwargs


def load_policy(name: str, args: Any) -> torch.nn.Module:
    """``AutoModelForCausalLM.from_pretrained(name, **init_kwargs(args))`` (a missing local path is one clear error,
    never tried as a Hub id)."""
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name), **init_kwargs(args))


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of `model` off: ``nn.Dropout`` modules and the attention modules' ``attention_dropout``."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(getattr(m, "attention_dropout", None), float):
            m.attention_dropout = 0.0
    config = getattr(model, "config", None)
    if isinstance(getattr(config, "attention_dropout", None), float):
        config.attention_dropout = 0.0


def prepare_policy(model: torch.nn.Module, args: Any) -> None:
    """The model-side fields of `args`, in place (see the module docstring)."""
    if args.disable_dropout:
        disable_dropout(model)
    if args.use_liger_kernel:
        from transformers.integrations.liger import apply_liger_kernel

        apply_liger_kernel(model, {**(args.liger_kernel_config or {}), "fused_linear_cross_entropy": False})
    if args.gradient_checkpointing:
        kwargs = dict(args.gradient_checkpointing_kwargs or {})
        options = {k: kwargs.pop(k) for k in ("every_n_layers", "offload") if k in kwargs}
        # transformers 5.2x renamed it activation checkpointing (the old name warns); older ones have only the old
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs=kwargs or None, **options)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None, **options)
    if args.cast_lm_head_to_fp32 and not has_fast_path(model):
        raise ValueError(
            f"GRPOConfig.cast_lm_head_to_fp32=True needs a model whose logits are lm_head(hidden states) (Llama, Qwen, "
            f"Mistral, ... without an adapter on lm_head); {type(model).__name__} computes them itself: set it to False"
        )


def compile_policy(model: torch.nn.Module, args: Any) -> torch.nn.Module:
    """``torch.compile`` in place of the module the loss forward calls (returned): the decoder on the fast path."""
    options = {k: v for k, v in (("backend", args.torch_compile_backend), ("mode", args.torch_compile_mode)) if v}
    target = decoder_and_head(model)[0] if has_fast_path(model) else model
    target.compile(**options)
    return target


def set_run_flags(args: Any) -> None:
    """``full_determinism`` (transformers' ``enable_full_determinism``: deterministic kernels, seeded) and ``tf32``
    (transformers' ``enable_tf32``; None leaves torch's setting)."""
    if args.full_determinism:
        from transformers.trainer_utils import enable_full_determinism

        enable_full_determinism(args.seed)
    if args.tf32 is not None:
        from transformers.utils.import_utils import enable_tf32

        enable_tf32(args.tf32)


def process_group_options(args: Any) -> dict[str, Any]:
    """accelerate's kwargs handlers for the ``ddp_*`` fields set (none when all are at their defaults)."""
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    ddp = {
        k: v
        for k, v in (
            ("find_unused_parameters", args.ddp_find_unused_parameters),
            ("bucket_cap_mb", args.ddp_bucket_cap_mb),
            ("broadcast_buffers", args.ddp_broadcast_buffers),
            ("static_graph", args.ddp_static_graph),
        )
        if v is not None
    }
    handlers: list[Any] = [DistributedDataParallelKwargs(**ddp)] if ddp else []
    init: dict[str, Any] = {"timeout": timedelta(seconds=args.ddp_timeout)}  # as transformers: always passed
    if args.ddp_backend is not None:
        init["backend"] = args.ddp_backend
    handlers.append(InitProcessGroupKwargs(**init))
    return {"kwargs_handlers": handlers}
