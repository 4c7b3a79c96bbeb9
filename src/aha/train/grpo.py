"""The GRPO training loop (R1 phase 2): sample groups, score them, update the policy.

One *generation batch* = ``generation_batch_size`` completions = (generation_batch_size / G)
prompts × G. For each generation batch:

1. sample G completions per prompt from the current policy (which is π_old for this batch);
2. score them with the reward functions (or reward models), group-relative advantages
   (``aha.grpo.compute_advantages``); with ``dynamic_sampling`` drop the groups whose rewards all tie and refill
   the batch with new prompts. Steps 1-2 are ``aha.train.rollouts.RolloutSource``, which owns the prompt order,
   the sampling generator and the rollout engine;
3. μ = ``num_iterations`` passes over the batch in micro-batches of ``per_device_train_batch_size``
   completions, one optimiser step every ``gradient_accumulation_steps`` micro-batches, loss from
   ``aha.grpo.policy_loss``.

The maths lives in ``aha.grpo.core``, the optimiser, logging and checkpoints in ``aha.train.loop`` (shared with
SFT); this file only moves tensors between the model, the batches and the loss. Metrics go to
``OUTPUT_DIR/metrics.jsonl`` and the trackers of ``report_to`` (``aha.train.tracking``, with a completions table
when ``log_completions``); ``push_to_hub`` pushes the model with a model card (``aha.train.hub``).

As TRL's trainer it also evaluates (``eval_dataset``, ``eval_strategy``/``eval_steps``/``eval_on_start``,
``trainer.evaluate()``: the eval prompts' rewards and loss under TRL's ``eval_`` names), runs
``transformers.TrainerCallback`` objects (``aha.train.callbacks``), takes streams (``IterableDataset``, with
``max_steps``) and synchronises π_ref with the policy (``sync_ref_model``, TR-DPO).

With ``tools=`` / ``environment_factory=`` (``aha.train.environments``) the rollouts are multi-turn: the model's
tool calls are run and their results appended (``aha.rollout.tool_loop``), and the batch's ``tool_mask`` keeps
those tokens out of the loss, the KL and the entropy (``aha.train.rollouts.loss_mask``).
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, TrainerCallback

from aha.console import console
from aha.data.prompts import eos_ids
from aha.grpo import NUM_ITEMS_LOSS_TYPES, entropy_bonus, importance_sampling_weights, policy_loss, top_entropy_mask
from aha.models.loading import peft_model, save_model
from aha.rewards.scoring import load_reward_models, reward_name
from aha.train.callbacks import Callbacks
from aha.train.config import GRPOConfig
from aha.train.distributed import full_state_dict, gather_rows, make_accelerator, sum_all
from aha.train.entropy import EntropyControl
from aha.train.environments import ToolUse
from aha.train.forward import has_fast_path, token_logps
from aha.train.hub import HubPusher, base_model_name, model_card
from aha.train.hub import dataset_name as name_of_dataset
from aha.train.loop import TrainerState, TrainingLoop, TrainOutput, log_row
from aha.train.metrics import MetricsLogger
from aha.train.policy import (
    compile_policy,
    init_kwargs,
    load_policy,
    prepare_policy,
    process_group_options,
    set_run_flags,
)
from aha.train.precision import autocast
from aha.train.rollouts import Batch, RolloutSource, loss_mask


class GRPOTrainer:
    """TRL-compatible GRPO trainer: ``GRPOTrainer(model, reward_funcs, args, train_dataset).train()``.

    `callbacks`: ``transformers.TrainerCallback`` objects (or classes) and aha's plain ``fn(state, row)`` callables
    (every logged row). `eval_dataset`: a dataset (or a dict of them, each logged as ``eval_<name>_...``) for
    ``evaluate()`` and ``eval_strategy``."""

    def __init__(
        self,
        model: str | torch.nn.Module,
        reward_funcs: Callable | str | torch.nn.Module | Sequence[Callable | str | torch.nn.Module] | None = None,
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Sequence[Any] | None = None,
        eval_dataset: Any = None,
        *,
        optimizers: tuple[Any, Any] = (None, None),
        quantization_config: Any = None,
        tools: Sequence[Callable] | None = None,
        rollout_func: Callable | None = None,
        environment_factory: Any = None,
    ) -> None:
        refuse_unsupported_arguments(optimizers, quantization_config, rollout_func)
        self.args = args or GRPOConfig()
        a = self.args
        if train_dataset is None:
            if environment_factory is not None:
                raise ValueError(
                    "GRPOTrainer: train_dataset is required: aha does not take the prompts from the environments' "
                    "reset() (TRL's dataset-less environments); give a dataset of prompts (each row is passed to reset)"
                )
            raise ValueError("GRPOTrainer: train_dataset is empty")
        check_prompts(train_dataset, "train_dataset")
        if not hasattr(train_dataset, "__len__") and a.max_steps <= 0:
            raise ValueError(
                "GRPOTrainer: train_dataset has no length (an IterableDataset or a streaming dataset), so the run's "
                f"length is unknown: set GRPOConfig.max_steps to the number of optimiser steps (got {a.max_steps})"
            )
        if a.eval_strategy != "no" and eval_dataset is None:  # transformers' rule
            raise ValueError(
                f"GRPOConfig.eval_strategy={a.eval_strategy!r} but no eval_dataset was given: pass "
                "GRPOTrainer(eval_dataset=...) or set eval_strategy='no'"
            )
        for name, ds in eval_dataset.items() if isinstance(eval_dataset, dict) else [("", eval_dataset)]:
            if ds is not None:
                check_prompts(ds, f"eval_dataset[{name!r}]" if name else "eval_dataset")
        self.eval_dataset = eval_dataset
        # one process, or one of several under `accelerate launch` / `torchrun` (see aha.train.distributed)
        self.precision = a.mixed_precision  # "bf16" / "fp16": autocast for every policy forward (aha.train.precision)
        set_run_flags(a)
        self.accelerator = make_accelerator(a.use_cpu, mixed_precision=self.precision, **process_group_options(a))
        self.device = self.accelerator.device
        if isinstance(model, str):  # a missing local path is one clear error, never tried as a Hub id
            model = load_policy(model, a)
        elif a.model_init_kwargs is not None:
            raise ValueError(
                "GRPOConfig.model_init_kwargs applies when the model is given by name; this one is already built: "
                "load it with those options yourself, or pass its name"
            )
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(
                model.config._name_or_path, trust_remote_code=a.trust_remote_code
            )
        self.tokenizer = processing_class
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if peft_config is not None:
            model = peft_model(model, peft_config)
        self.model = model.to(self.device)  # the plain model: sampling, saving; `train_model` is the one wrapped
        self.train_model = self.model  # for data-parallel training (DDP / FSDP), set in train()
        self.loss_model = self.model  # what compute_loss calls: train_model, or under DDP the plain model
        prepare_policy(self.model, a)
        # tools and environments (aha.train.environments): one toolbox per rollout, multi-turn rollouts
        self.tool_use = (
            ToolUse(tools, environment_factory, self.tokenizer)
            if tools is not None or environment_factory is not None
            else None
        )
        env_rewards = self.tool_use.reward_funcs if self.tool_use is not None else []
        if reward_funcs is None and not env_rewards:
            raise ValueError(
                "GRPOTrainer: reward_funcs is required (a reward function, a reward name or model, or a list), unless "
                "environment_factory's environment gives the reward (a get_reward() method)"
            )
        funcs = (
            []
            if reward_funcs is None
            else list(reward_funcs)
            if isinstance(reward_funcs, (list, tuple))
            else [reward_funcs]
        )
        if not funcs and not env_rewards:
            raise ValueError("GRPOTrainer: give at least one reward function")
        # strings -> reward models; each reward model gets its tokenizer (None for plain functions)
        self.reward_funcs, self.reward_processing_classes = load_reward_models(
            funcs, reward_processing_classes, self.device, init_kwargs(a)
        )
        if env_rewards:  # each environment class with get_reward: one more reward, weight 1 (as TRL)
            self.reward_funcs += env_rewards
            self.reward_processing_classes += [None] * len(env_rewards)
            if a.reward_weights is not None and len(a.reward_weights) == len(self.reward_funcs) - len(env_rewards):
                self.args = a = copy.copy(a)  # the caller's config is left as it was
                a.reward_weights = [*a.reward_weights, *([1.0] * len(env_rewards))]
        if a.reward_weights is not None and len(a.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"GRPOConfig.reward_weights has {len(a.reward_weights)} entries for {len(self.reward_funcs)} reward functions"
            )
        self.train_dataset = train_dataset
        self.ref_model = self._make_reference() if a.beta != 0.0 else None
        if a.sync_ref_model and self.ref_model is None:  # as TRL: PEFT's π_ref is the base model, not a copy
            raise ValueError(
                "GRPOConfig.sync_ref_model=True with a PEFT model: the reference is the base model with the adapter "
                "off, so there is no reference copy to synchronise; set sync_ref_model=False or train without PEFT"
            )
        if a.torch_compile:  # after the reference copy: π_ref runs eagerly
            compile_policy(self.model, a)
        self.eos = eos_ids(self.tokenizer, self.model)
        self.head = {"head_fp32": True} if a.cast_lm_head_to_fp32 else {}  # token_logps' lm_head precision
        self.state = TrainerState()
        self.entropy = EntropyControl(a)  # the entropy bonus's coefficient (adaptive: moved once per step)
        self.callbacks = Callbacks(callbacks or (), a, self.state, self.model, self.tokenizer)
        self.callback_handler = self.callbacks.handler  # transformers' name: .callbacks lists the TrainerCallbacks
        if a.sync_ref_model:
            self.callbacks.add(RefModelSync(self.model, self.ref_model))
        # non-embedding parameters, for the training FLOPs (6 × tokens × parameters, transformers' estimate)
        count = getattr(self.model, "num_parameters", None)
        self.flop_params = count(exclude_embeddings=True) if count else sum(p.numel() for p in self.model.parameters())
        self.logger: MetricsLogger | None = None  # set in train(): OUTPUT_DIR/metrics.jsonl
        self.loop: TrainingLoop | None = None  # the optimiser, schedule and checkpoints of the running train()
        # push_to_hub: the Hub repository, created now (a bad token or name fails before training); first process
        self.hub_pusher = HubPusher(a) if a.push_to_hub and self.accelerator.is_main_process else None
        self.batches = RolloutSource(
            a,
            train_dataset,
            self.tokenizer,
            self.model,
            self.reward_funcs,
            self.reward_processing_classes,
            self.accelerator,
            self.eos,
            self.state,
            lambda batch: self.add_logps(batch),
            self.tool_use,
        )
        self.callbacks.event("on_init_end")

    # ---------------------------------------------------------------------------------- callbacks
    def add_callback(self, callback: Any) -> None:
        """As ``Trainer.add_callback``: a ``TrainerCallback`` (class or object) or a plain ``fn(state, row)``."""
        self.callbacks.add(callback)

    def pop_callback(self, callback: Any) -> Any:
        """As ``Trainer.pop_callback``: remove the first match (class or object) and return it (None if none)."""
        return self.callbacks.pop(callback)

    def remove_callback(self, callback: Any) -> None:
        """As ``Trainer.remove_callback``: remove the first match (class or object)."""
        self.callbacks.remove(callback)

    # ---------------------------------------------------------------------------------- set-up
    def _make_reference(self):
        if hasattr(self.model, "disable_adapter"):  # PEFT: the base with the adapter off is π_ref
            return None
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def total_steps(self) -> int:
        a = self.args
        steps_per_gen = a.num_iterations * a.steps_per_generation // a.gradient_accumulation_steps
        if a.max_steps > 0:
            return a.max_steps  # a stream (no len()) always has it (checked in __init__)
        gens = math.ceil(a.num_train_epochs * len(self.train_dataset) / a.prompts_per_generation)
        return max(1, gens * max(1, steps_per_gen))

    # ---------------------------------------------------------------------------------- log-probs
    @torch.no_grad()
    def add_logps(self, batch: Batch) -> None:
        """π_old log-probs (when the batch is used off-policy) and π_ref's (when beta != 0), (N, T), in place; in the
        loss forward's precision, so that on-policy π/π_old is 1 up to the kernels' nondeterminism."""
        with autocast(self.precision, self.device):
            self._add_logps(batch)

    def _add_logps(self, batch: Batch) -> None:
        a = self.args
        correct = a.use_vllm and a.vllm_importance_sampling_correction
        if a.num_iterations > 1 or a.steps_per_generation > a.gradient_accumulation_steps or correct:
            batch["old_logps"] = self.logps(batch, reference=False)
        if correct:  # the engine's policy is not exactly π_old (other kernels, precision): reweight
            # the off-policy mask measures the drift from the sampler itself, so it keeps the engine's log-probs
            sampling = (
                batch["sampling_logps"] if a.off_policy_mask_threshold is not None else batch.pop("sampling_logps")
            )
            batch["sampling_weights"] = importance_sampling_weights(
                batch["old_logps"],
                sampling,
                loss_mask(batch),
                a.vllm_importance_sampling_mode,
                a.vllm_importance_sampling_clip_min,
                a.vllm_importance_sampling_clip_max,
            )
        if a.beta != 0.0:
            batch["ref_logps"] = self.logps(batch, reference=True)

    def logps(self, batch: Batch, reference: bool) -> torch.Tensor:
        """The policy's (or with `reference` π_ref's) log-probs of the batch's completions, (N, T), no grad."""
        outs = []
        mb = self.args.per_device_train_batch_size
        for s in range(0, batch["prompt_ids"].size(0), mb):
            part = [batch[k][s : s + mb] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
            if reference and self.ref_model is None:  # PEFT: adapter off
                with self.model.disable_adapter():
                    outs.append(token_logps(self.model, *part, self.args.temperature, **self.head)[0])
            else:
                model = self.ref_model if reference else self.model
                outs.append(token_logps(model, *part, self.args.temperature, **self.head)[0])
        return torch.cat(outs)

    # ---------------------------------------------------------------------------------- update
    def compute_loss(
        self, mb: Batch, num_items: float, accumulation: int | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The GRPO loss of one micro-batch (divided for `accumulation`, default ``gradient_accumulation_steps``;
        1 in evaluation) and its metrics ("loss": as logged; "flos": the training FLOPs)."""
        a = self.args
        forward_mask = mb["completion_mask"]  # (B, T)
        if not forward_mask.any():
            # every completion masked (all truncated, with mask_truncated_completions): the forward still runs on
            # each row's first token, so the loss is a zero with a graph: zero gradients and loss 0, as in TRL
            forward_mask = torch.zeros_like(forward_mask)
            forward_mask[:, 0] = 1
        logps, entropy = token_logps(
            self.loss_model,
            mb["prompt_ids"],
            mb["prompt_mask"],
            mb["completion_ids"],
            forward_mask,
            a.temperature,
            with_entropy=True,
            entropy_grad=self.entropy.enabled,
            **self.head,
        )  # (B, T), (B, T)
        mask = loss_mask(mb)  # (B, T) the model's own tokens (tool results and their glue out)
        # the forking tokens: the policy term only (the KL and the normalisers keep every token, as TRL's)
        ent_mask = (
            top_entropy_mask(entropy.detach(), mask, a.top_entropy_quantile) if a.top_entropy_quantile < 1 else None
        )
        loss, metrics = policy_loss(
            logps,
            mb.get("old_logps"),
            mb.get("ref_logps"),
            mb["advantages"],
            mask,
            loss_type=a.loss_type,
            epsilon=a.epsilon,
            epsilon_high=a.epsilon_high,
            delta=a.delta,
            beta=a.beta,
            importance_sampling_level=a.importance_sampling_level,
            max_completion_length=a.max_completion_length,
            num_items=num_items,
            use_bias_correction_kl=a.use_bias_correction_kl,
            sampling_weights=mb.get("sampling_weights"),
            entropy_mask=ent_mask,
            sapo_temperature_pos=a.sapo_temperature_pos,
            sapo_temperature_neg=a.sapo_temperature_neg,
            vespo_k_pos=a.vespo_k_pos,
            vespo_lambda_pos=a.vespo_lambda_pos,
            vespo_k_neg=a.vespo_k_neg,
            vespo_lambda_neg=a.vespo_lambda_neg,
            off_policy_mask_threshold=a.off_policy_mask_threshold,
            behaviour_logps=mb.get("sampling_logps"),
        )
        if "clip_ratio/low_mean" in metrics:  # TRL's extremes of the per-process clip ratios
            both = torch.tensor([[metrics["clip_ratio/low_mean"], metrics["clip_ratio/high_mean"]]], device=self.device)
            both = gather_rows(self.accelerator, both)  # (W, 2)
            metrics["clip_ratio/low_min"] = both[:, 0].min().item()
            metrics["clip_ratio/high_max"] = both[:, 1].max().item()
        gas = a.gradient_accumulation_steps if accumulation is None else accumulation
        shown = loss.item()  # the micro-batch's loss as logged: before the division for accumulation
        if a.loss_type not in NUM_ITEMS_LOSS_TYPES:  # those are already a share of the window's loss
            loss = loss / gas
        if self.entropy.enabled:  # loss - coef · mean token entropy (over the policy term's tokens), per window
            effective = mask if ent_mask is None else ent_mask
            coef, h = self.entropy.applied(), entropy_bonus(entropy, effective)
            if torch.is_grad_enabled():  # a training step's measurement (not an evaluation's) moves the coefficient
                self.entropy.observe(entropy, effective)
            loss = loss - coef * h / gas
            metrics["policy_loss"] = shown
            shown -= coef * h.item() / (gas if a.loss_type in NUM_ITEMS_LOSS_TYPES else 1)
        metrics["loss"] = shown
        m = mask.bool()
        metrics["entropy"] = entropy[m].mean().item() if m.any() else 0.0
        tokens = mb["prompt_mask"].sum().item() + forward_mask.sum().item()
        metrics["flos"] = 6.0 * tokens * self.flop_params
        return loss, metrics

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        """Train to ``total_steps()`` (or until a callback sets ``control.should_training_stop``), saving
        ``checkpoint-<step>`` every ``save_steps`` and evaluating as ``eval_strategy`` says. `resume_from_checkpoint`
        (default ``args.resume_from_checkpoint``): "auto"/True (the newest complete checkpoint) or a path. Returns a
        ``TrainOutput`` (its ``metrics``: the summary row; ``log_history`` and the state's other fields read
        through)."""
        a = self.args
        torch.manual_seed(a.seed)
        self.batches.reseed()
        loop = self.loop = self._training_loop()
        loop.resume(a.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint)
        mbs, gas = a.per_device_train_batch_size, a.gradient_accumulation_steps
        self.model.train()
        passes, passed_at = int(self.batches.epoch), -1  # passes over the prompts ended; the step of the last end
        with loop.running():
            while not loop.done:  # one generation batch: sampled, scored, then μ passes over it
                flight = self.batches.current or self._next_batch(loop)
                while flight.skip and not loop.done:  # dynamic sampling kept no group: no update, steps used up
                    flight.skip -= 1
                    loop.begin_step()
                    loop.end_step(None, self._info(flight), self.batches.epoch)
                while flight.it < a.num_iterations and not loop.done:  # one optimiser step per window
                    self.batches.start_pass(flight)
                    window = flight.window(mbs, gas)
                    grad_norm = loop.optimizer_step([partial(self.compute_loss, mb, flight.num_items) for mb in window])
                    self.entropy.step(self.accelerator)
                    if self.entropy.enabled:
                        loop.pending["entropy_coef"].append(self.entropy.coef)
                    flight.advance(len(window), mbs)
                    loop.end_step(grad_norm, self._info(flight), self.batches.epoch)
                if a.log_completions:
                    self._print_samples(loop.print, flight.info)
                    if "_completions" in flight.info:  # the trackers that show tables (wandb, trackio, ...)
                        table = flight.info["_completions"]
                        step = self.state.global_step
                        loop.log_table("completions", ["step", *table["columns"]], [[step, *r] for r in table["rows"]])
                self.batches.current = None
                if int(self.batches.epoch) > passes:  # this batch finished a pass over the training prompts
                    passes, passed_at = int(self.batches.epoch), self.state.global_step
                    loop.end_epoch()
            if passed_at != self.state.global_step:  # as transformers: the last (partial) epoch ends too
                loop.end_epoch()
        if a.push_to_hub:
            self.push_to_hub()
        return TrainOutput(self.state.global_step, loop.summary["train_loss"], dict(loop.summary), self.state)

    @staticmethod
    def _print_samples(show: Callable[[str], None], info: dict[str, Any]) -> None:
        for p, c, r, cols in info.get("_samples", []):
            extra = "".join(f" {k}={v!r}" for k, v in cols.items())  # columns logged with TRL's log_extra
            show(f"[dim]{p!r}[/dim] -> {c!r} [bold]{r:.2f}[/bold]{extra}")

    # ---------------------------------------------------------------------------------- evaluation
    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """TRL's evaluation: sample ``num_generations_eval`` completions for every eval prompt, score them and take
        the loss on them (no update). Returns (and logs, then callbacks' ``on_evaluate``) ``<prefix>_loss``,
        ``<prefix>_runtime``, ``<prefix>_samples_per_second``, ``<prefix>_steps_per_second`` and the rollout and
        loss metrics as training logs them (``eval_reward``, ``eval_rewards/<name>/mean``,
        ``eval_completions/mean_length``, ``eval_entropy``, ...: each the mean over the eval batches), plus
        ``epoch``. A dict of datasets is evaluated one by one, as ``<prefix>_<name>_...``."""
        if ignore_keys:
            raise ValueError(
                f"GRPOTrainer.evaluate(ignore_keys={ignore_keys!r}): GRPO's evaluation has no model outputs to leave "
                "out (only its loss and metrics); call it without ignore_keys"
            )
        dataset = self.eval_dataset if eval_dataset is None else eval_dataset
        if dataset is None:
            raise ValueError(
                "GRPOTrainer.evaluate: no eval_dataset; pass GRPOTrainer(eval_dataset=...) or evaluate(eval_dataset=...)"
            )
        if isinstance(dataset, dict):
            out: dict[str, float] = {}
            for name, part in dataset.items():
                out |= self.evaluate(part, metric_key_prefix=f"{metric_key_prefix}_{name}")
            return out
        check_prompts(dataset, "eval_dataset")
        a, acc = self.args, self.accelerator
        start = time.time()
        generator = torch.Generator(device=self.device).manual_seed(a.seed)  # the training's draws stay as they were
        values: dict[str, list[float]] = defaultdict(list)
        prompts = steps = 0
        was_training = self.model.training
        self.model.eval()
        try:
            for rows in self.batches.eval_batches(dataset):
                rollout = self.batches.eval_rollout(rows, generator)
                tokens = sum_all(acc, loss_mask(rollout.batch).sum().item())
                with torch.no_grad(), autocast(self.precision, self.device):  # TRL: one batch, no accumulation
                    _, metrics = self.compute_loss(rollout.batch, tokens / acc.num_processes, accumulation=1)
                metrics.pop("flos")
                for k, v in (rollout.info | metrics).items():
                    if not k.startswith("_"):
                        values[k].append(float(v))
                if a.log_completions:
                    self._print_samples(self.loop.print if self.loop else console.print, rollout.info)
                prompts, steps = prompts + len(rows), steps + 1
        finally:
            self.model.train(was_training)
        runtime = time.time() - start
        result: dict[str, Any] = {f"{metric_key_prefix}_loss": _mean(values.pop("loss"))}
        result[f"{metric_key_prefix}_runtime"] = round(runtime, 4)
        result[f"{metric_key_prefix}_samples_per_second"] = round(prompts / runtime, 3)
        result[f"{metric_key_prefix}_steps_per_second"] = round(steps / runtime, 3)
        result |= {f"{metric_key_prefix}_{k}": _mean(v) for k, v in values.items()}
        self._log({"phase": "grpo", "step": self.state.global_step, "epoch": round(self.state.epoch, 4), **result})
        result["epoch"] = self.state.epoch
        self.callbacks.event("on_evaluate", metrics=result)
        return result

    def _log(self, row: dict[str, Any]) -> None:
        if self.accelerator.is_main_process and self.logger is None:  # before train(): the run's metrics file
            Path(self.args.output_dir).mkdir(parents=True, exist_ok=True)
            self.logger = MetricsLogger(Path(self.args.output_dir) / "metrics.jsonl")
        trackers = self.loop.trackers if self.loop is not None else None  # during train(): report_to's trackers
        main = self.accelerator.is_main_process
        log_row(row, self.state, self.logger if main else None, self.callbacks, trackers=trackers if main else None)

    def _training_loop(self) -> TrainingLoop:
        owners: dict[str, Any] = {"batches": self.batches}
        if self.entropy.adaptive:  # its coefficient and last measurement resume with the run
            owners["entropy"] = self.entropy
        loop = TrainingLoop.of(
            self,
            phase="grpo",
            owners=owners,
            description="GRPO",
            evaluate=self.evaluate if self.eval_dataset is not None else None,
        )
        self.train_model = self.batches.sharded_model = loop.train_model
        # DDP averages gradients only through its own forward, which would rule out token_logps' fast path; so
        # the loss runs on the plain model and the window's gradients are averaged by hand before the step
        ddp = isinstance(loop.train_model, torch.nn.parallel.DistributedDataParallel)
        self.loss_model = self.model if ddp and has_fast_path(self.model) else loop.train_model
        loop.loss_model_bypasses_ddp = self.loss_model is not loop.train_model
        if self.hub_pusher is not None:  # hub_strategy: push at each checkpoint
            pusher = self.hub_pusher
            loop.on_save.append(lambda path: pusher.push_checkpoint(path, self.state.global_step, self.model_card()))
        return loop

    def _next_batch(self, loop: TrainingLoop):
        flight = self.batches.next_batch()
        for k, v in flight.info.items():  # the rollout metrics join the logging window
            if not k.startswith("_"):
                loop.pending[k].append(v)
        return flight

    @staticmethod
    def _info(flight) -> str:
        return f"reward {flight.info['reward']:.3f}"

    def model_card(self, dataset_name: str | None = None) -> str:
        """The README.md of the pushed model: base model, dataset (`dataset_name`, else the dataset's own name),
        rewards with their weights, the GRPO settings and the steps trained."""
        a = self.args
        weights = a.reward_weights or [1.0] * len(self.reward_funcs)
        repo = self.hub_pusher.repo_id if self.hub_pusher is not None else a.hub_model_id or Path(a.output_dir).name
        return model_card(
            repo,
            a,
            base_model=base_model_name(self.model),
            dataset=dataset_name or name_of_dataset(self.train_dataset),
            rewards=[(reward_name(f), w) for f, w in zip(self.reward_funcs, weights)],
            steps=self.state.global_step,
            adapter=hasattr(self.model, "peft_config"),
            last_row=self.state.log_history[-1] if self.state.log_history else None,
        )

    def push_to_hub(self, commit_message: str = "End of training", dataset_name: str | None = None) -> str | None:
        """Save the model to ``output_dir`` and upload it with its model card to ``hub_model_id`` (TRL's
        ``trainer.push_to_hub()``; ``train()`` calls it at the end when ``push_to_hub``). Every process takes part
        in the save; the first one uploads. Returns the repository id (None on the other processes)."""
        out = Path(self.args.output_dir)
        self.save_model(out)
        if not self.accelerator.is_main_process:
            return None
        if self.hub_pusher is None:  # push_to_hub=False in the config: the repository is made now
            self.hub_pusher = HubPusher(self.args)
        self.hub_pusher.push_folder(out, self.model_card(dataset_name), commit_message)
        return self.hub_pusher.repo_id

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """Model (or adapter), tokenizer and generation config (``aha.models.loading.save_model``), on the first
        process only; the others wait for it."""
        weights = full_state_dict(self.accelerator, self.train_model)  # FSDP: gathered on every process
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        save_model(self.model, self.tokenizer, output_dir or self.args.output_dir, state_dict=weights)
        self.accelerator.wait_for_everyone()


def refuse_unsupported_arguments(optimizers, quantization_config, rollout_func) -> None:
    """TRL 1.16's GRPOTrainer arguments aha does not take: one clear error each, saying what to use instead."""
    if tuple(optimizers) != (None, None):
        raise ValueError(
            "GRPOTrainer(optimizers=...): aha builds the optimiser and schedule from the config; choose them with "
            "GRPOConfig.optim / optim_args / learning_rate / adam_* / weight_decay and lr_scheduler_type / "
            "lr_scheduler_kwargs / warmup_steps"
        )
    if quantization_config is not None:
        raise ValueError(
            "GRPOTrainer(quantization_config=...): aha does not load quantised (bitsandbytes) models; load the model "
            "in bf16 (GRPOConfig.model_init_kwargs={'dtype': 'bfloat16'}) and train it with peft_config (LoRA)"
        )
    if rollout_func is not None:
        raise ValueError(
            "GRPOTrainer(rollout_func=...): aha runs the rollouts itself; for multi-turn rollouts with tools pass "
            "tools=[...] or environment_factory=..., for another sampler use use_vllm / rollout_backend"
        )


class RefModelSync(TrainerCallback):
    """TRL's ``sync_ref_model`` (TR-DPO): every ``ref_model_sync_steps`` optimiser steps,
    π_ref ← α·π_θ + (1 - α)·π_ref with α = ``ref_model_mixup_alpha``, parameter by parameter."""

    def __init__(self, model: torch.nn.Module, ref_model: torch.nn.Module) -> None:
        self.model, self.ref_model = model, ref_model

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % args.ref_model_sync_steps == 0:
            alpha = args.ref_model_mixup_alpha
            for ref, p in zip(self.ref_model.parameters(), self.model.parameters(), strict=True):
                ref.mul_(1.0 - alpha).add_(p.detach().to(ref.dtype), alpha=alpha)


def check_prompts(dataset: Any, name: str) -> None:
    """A dataset (with ``len()``, or a stream) whose rows have a 'prompt'; an error naming `name` otherwise."""
    if hasattr(dataset, "__len__"):
        if len(dataset) == 0:
            raise ValueError(f"GRPOTrainer: {name} is empty")
        first = dataset[0]
    else:
        first = next(iter(dataset), None)
        if first is None:
            raise ValueError(f"GRPOTrainer: {name} (a stream) gave no rows")
    if "prompt" not in first:
        raise ValueError(f"GRPOTrainer: {name} needs a 'prompt' column, found {sorted(first)}")


def _mean(values: list[float]) -> float | None:
    """The mean of the finite values (TRL: None when there is none)."""
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None
