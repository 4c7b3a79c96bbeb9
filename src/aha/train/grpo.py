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
SFT); this file only moves tensors between the model, the batches and the loss.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from aha.data.prompts import eos_ids
from aha.grpo import importance_sampling_weights, policy_loss, top_entropy_mask
from aha.models.loading import peft_model, save_model
from aha.rewards.scoring import load_reward_models
from aha.train.config import GRPOConfig
from aha.train.distributed import full_state_dict, make_accelerator
from aha.train.forward import has_fast_path, token_logps
from aha.train.loop import TrainerState, TrainingLoop
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
from aha.train.rollouts import Batch, RolloutSource


class GRPOTrainer:
    """TRL-compatible GRPO trainer: ``GRPOTrainer(model, reward_funcs, args, train_dataset).train()``."""

    def __init__(
        self,
        model: str | torch.nn.Module,
        reward_funcs: Callable | str | torch.nn.Module | Sequence[Callable | str | torch.nn.Module],
        args: GRPOConfig | None = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        reward_processing_classes: Any = None,
        callbacks: Sequence[Callable[[TrainerState, dict[str, Any]], None]] = (),
    ) -> None:
        self.args = args or GRPOConfig()
        a = self.args
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("GRPOTrainer: train_dataset is empty")
        if "prompt" not in train_dataset[0]:
            raise ValueError(f"GRPOTrainer: train_dataset needs a 'prompt' column, found {sorted(train_dataset[0])}")
        # one process, or one of several under `accelerate launch` / `torchrun` (see aha.train.distributed)
        self.precision = a.mixed_precision  # "bf16" / "fp16": autocast for every policy forward (aha.train.precision)
        set_run_flags(a)
        self.accelerator = make_accelerator(a.use_cpu, mixed_precision=self.precision, **process_group_options(a))
        self.device = self.accelerator.device
        if isinstance(model, str):
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
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("GRPOTrainer: give at least one reward function")
        # strings -> reward models; each reward model gets its tokenizer (None for plain functions)
        self.reward_funcs, self.reward_processing_classes = load_reward_models(
            funcs, reward_processing_classes, self.device, init_kwargs(a)
        )
        if a.reward_weights is not None and len(a.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"GRPOConfig.reward_weights has {len(a.reward_weights)} entries for {len(self.reward_funcs)} reward functions"
            )
        self.train_dataset = train_dataset
        self.ref_model = self._make_reference() if a.beta != 0.0 else None
        if a.torch_compile:  # after the reference copy: π_ref runs eagerly
            compile_policy(self.model, a)
        self.eos = eos_ids(self.tokenizer, self.model)
        self.callbacks = list(callbacks)
        self.head = {"head_fp32": True} if a.cast_lm_head_to_fp32 else {}  # token_logps' lm_head precision
        self.state = TrainerState()
        self.logger: MetricsLogger | None = None  # set in train(): OUTPUT_DIR/metrics.jsonl
        self.loop: TrainingLoop | None = None  # the optimiser, schedule and checkpoints of the running train()
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
        )

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
            return a.max_steps
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
            batch["sampling_weights"] = importance_sampling_weights(
                batch["old_logps"],
                batch.pop("sampling_logps"),
                batch["completion_mask"],
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
    def compute_loss(self, mb: Batch, num_items: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The GRPO loss of one micro-batch (divided for accumulation) and its metrics ("loss": as logged)."""
        a = self.args
        logps, entropy = token_logps(
            self.loss_model,
            mb["prompt_ids"],
            mb["prompt_mask"],
            mb["completion_ids"],
            mb["completion_mask"],
            a.temperature,
            with_entropy=True,
            **self.head,
        )  # (B, T), (B, T)
        mask = top_entropy_mask(entropy, mb["completion_mask"], a.top_entropy_quantile)  # (B, T)
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
        )
        metrics["loss"] = loss.item()
        if a.loss_type != "dapo":
            loss = loss / a.gradient_accumulation_steps
        m = mb["completion_mask"].bool()
        metrics["entropy"] = entropy[m].mean().item() if m.any() else 0.0
        return loss, metrics

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainerState:
        """Train to ``total_steps()``, saving ``checkpoint-<step>`` every ``save_steps``. `resume_from_checkpoint`
        (default ``args.resume_from_checkpoint``): "auto"/True (the newest complete checkpoint) or a path."""
        a = self.args
        torch.manual_seed(a.seed)
        self.batches.reseed()
        loop = self.loop = self._training_loop()
        loop.resume(a.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint)
        mbs, gas = a.per_device_train_batch_size, a.gradient_accumulation_steps
        self.model.train()
        with loop.running():
            while not loop.done:  # one generation batch: sampled, scored, then μ passes over it
                flight = self.batches.current or self._next_batch(loop)
                while flight.skip and not loop.done:  # dynamic sampling kept no group: no update, steps used up
                    flight.skip -= 1
                    loop.end_step(None, self._info(flight), self.batches.epoch)
                while flight.it < a.num_iterations and not loop.done:  # one optimiser step per window
                    self.batches.start_pass(flight)
                    window = flight.window(mbs, gas)
                    grad_norm = loop.optimizer_step([partial(self.compute_loss, mb, flight.num_items) for mb in window])
                    flight.advance(len(window), mbs)
                    loop.end_step(grad_norm, self._info(flight), self.batches.epoch)
                if a.log_completions:
                    for p, c, r in flight.info.get("_samples", []):
                        loop.print(f"[dim]{p!r}[/dim] -> {c!r} [bold]{r:.2f}[/bold]")
                self.batches.current = None
        return self.state

    def _training_loop(self) -> TrainingLoop:
        loop = TrainingLoop.of(self, phase="grpo", owners={"batches": self.batches}, description="GRPO")
        self.train_model = self.batches.sharded_model = loop.train_model
        # DDP averages gradients only through its own forward, which would rule out token_logps' fast path; so
        # the loss runs on the plain model and the window's gradients are averaged by hand before the step
        ddp = isinstance(loop.train_model, torch.nn.parallel.DistributedDataParallel)
        self.loss_model = self.model if ddp and has_fast_path(self.model) else loop.train_model
        loop.loss_model_bypasses_ddp = self.loss_model is not loop.train_model
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

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """Model (or adapter), tokenizer and generation config (``aha.models.loading.save_model``), on the first
        process only; the others wait for it."""
        weights = full_state_dict(self.accelerator, self.train_model)  # FSDP: gathered on every process
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        save_model(self.model, self.tokenizer, output_dir or self.args.output_dir, state_dict=weights)
        self.accelerator.wait_for_everyone()
