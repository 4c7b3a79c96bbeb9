"""The GRPO training loop (R1 phase 2): sample groups, score them, update the policy.

One *generation batch* = ``generation_batch_size`` completions = (generation_batch_size / G)
prompts × G. For each generation batch:

1. sample G completions per prompt from the current policy (which is π_old for this batch);
2. score them with the reward functions (or reward models), group-relative advantages
   (``aha.grpo.compute_advantages``), both in ``aha.train.generation``; with ``dynamic_sampling``
   drop the groups whose rewards all tie and refill the batch with new prompts (``aha.train.dynamic``);
3. μ = ``num_iterations`` passes over the batch in micro-batches of ``per_device_train_batch_size``
   completions, one optimiser step every ``gradient_accumulation_steps`` micro-batches, loss from
   ``aha.grpo.policy_loss``.

The maths lives in ``aha.grpo.core``; this file only moves tensors between the model, the sampler,
the rewards and the loss.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

from aha.console import progress
from aha.data.prompts import eos_ids
from aha.grpo import importance_sampling_weights, policy_loss, top_entropy_mask
from aha.rewards.scoring import load_reward_models
from aha.train import checkpoint, dynamic, generation
from aha.train.config import GRPOConfig
from aha.train.distributed import all_true, average_gradients, full_state_dict, gather_objects, make_accelerator
from aha.train.forward import has_fast_path, token_logps
from aha.train.metrics import MetricsLogger

COUNTERS = ("/errors", "/nonfinite")  # metrics summed over the logging window (the others are averaged)


@dataclass
class TrainerState:
    global_step: int = 0
    epoch: float = 0.0
    log_history: list[dict[str, Any]] = field(default_factory=list)


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
        self.accelerator = make_accelerator(a.use_cpu)
        self.device = self.accelerator.device
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model)
        if processing_class is None:
            processing_class = AutoTokenizer.from_pretrained(model.config._name_or_path)
        self.tokenizer = processing_class
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.model = model.to(self.device)  # the plain model: sampling, saving; `train_model` is the one wrapped
        self.train_model = self.model  # for data-parallel training (DDP / FSDP), set in train()
        self.loss_model = self.model  # what compute_loss calls: train_model, or under DDP the plain model
        if a.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("GRPOTrainer: give at least one reward function")
        # strings -> reward models; each reward model gets its tokenizer (None for plain functions)
        self.reward_funcs, self.reward_processing_classes = load_reward_models(
            funcs, reward_processing_classes, self.device
        )
        if a.reward_weights is not None and len(a.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"GRPOConfig.reward_weights has {len(a.reward_weights)} entries for {len(self.reward_funcs)} reward functions"
            )
        self.train_dataset = train_dataset
        self.ref_model = self._make_reference() if a.beta != 0.0 else None
        self.vllm = None  # use_vllm: the engine, started at the first rollout (aha.rollout.vllm)
        self._vllm_step = -1  # the global step whose weights the engine holds
        self.eos = eos_ids(self.tokenizer, self.model)
        self.callbacks = list(callbacks)
        self.state = TrainerState()
        self.logger: MetricsLogger | None = None  # set in train(): OUTPUT_DIR/metrics.jsonl
        self._rng = random.Random(a.seed)
        self._order: list[int] = []
        self._epoch_rows = 0
        self._gen = torch.Generator(device=self.device).manual_seed(a.seed)

    # ---------------------------------------------------------------------------------- set-up
    def _make_reference(self):
        if hasattr(self.model, "disable_adapter"):  # PEFT: the base with the adapter off is π_ref
            return None
        ref = copy.deepcopy(self.model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _next_rows(self, n: int) -> list[dict[str, Any]]:
        rows = []
        while len(rows) < n:
            if not self._order:
                self._order = list(range(len(self.train_dataset)))
                self._rng.shuffle(self._order)
            rows.append(self.train_dataset[self._order.pop()])
            self._epoch_rows += 1
        return rows

    def total_steps(self) -> int:
        a = self.args
        steps_per_gen = a.num_iterations * a.steps_per_generation // a.gradient_accumulation_steps
        if a.max_steps > 0:
            return a.max_steps
        gens = math.ceil(a.num_train_epochs * len(self.train_dataset) / a.prompts_per_generation)
        return max(1, gens * max(1, steps_per_gen))

    # ---------------------------------------------------------------------------------- rollout
    def sample_batch(self) -> dict[str, Any]:
        """The next generation batch, ready for the update (dynamic sampling: informative groups only)."""
        return dynamic.sample_batch(self)

    def generate_and_score(self, rows: list[dict[str, Any]], with_logps: bool = True) -> dict[str, Any]:
        """Sample G completions for each row, score them. Returns {"batch": tensors (N = len(rows) × G rows),
        "info": metrics, "rows": rows, "rewards": (N, K)}; old/ref log-probs only `with_logps`."""
        return generation.generate_and_score(self, rows, with_logps)

    @torch.no_grad()
    def add_logps(self, batch: dict[str, torch.Tensor]) -> None:
        """π_old log-probs (when the batch is used off-policy) and π_ref's (when beta != 0), (N, T), in place."""
        a = self.args
        correct = a.use_vllm and a.vllm_importance_sampling_correction
        if a.num_iterations > 1 or a.steps_per_generation > a.gradient_accumulation_steps or correct:
            batch["old_logps"] = self._logps_no_grad(batch, reference=False)
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
            batch["ref_logps"] = self._logps_no_grad(batch, reference=True)

    def _logps_no_grad(self, batch: dict[str, torch.Tensor], reference: bool) -> torch.Tensor:
        outs = []
        mb = self.args.per_device_train_batch_size
        for s in range(0, batch["prompt_ids"].size(0), mb):
            part = [batch[k][s : s + mb] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
            if reference and self.ref_model is None:  # PEFT: adapter off
                with self.model.disable_adapter():
                    outs.append(token_logps(self.model, *part, self.args.temperature)[0])
            else:
                outs.append(token_logps(self.ref_model if reference else self.model, *part, self.args.temperature)[0])
        return torch.cat(outs)

    # ---------------------------------------------------------------------------------- update
    def compute_loss(self, mb: dict[str, torch.Tensor], num_items: float) -> tuple[torch.Tensor, dict[str, float]]:
        a = self.args
        logps, entropy = token_logps(
            self.loss_model,
            mb["prompt_ids"],
            mb["prompt_mask"],
            mb["completion_ids"],
            mb["completion_mask"],
            a.temperature,
            with_entropy=True,
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
        if a.loss_type != "dapo":
            loss = loss / a.gradient_accumulation_steps
        m = mb["completion_mask"].bool()
        metrics["entropy"] = entropy[m].mean().item() if m.any() else 0.0
        return loss, metrics

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainerState:
        """Train to ``total_steps()``, saving ``checkpoint-<step>`` every ``save_steps``. `resume_from_checkpoint`
        (default ``args.resume_from_checkpoint``): "auto"/True (the newest complete checkpoint) or a path."""
        a, acc = self.args, self.accelerator
        torch.manual_seed(a.seed)
        self._gen = torch.Generator(device=self.device).manual_seed(a.seed)
        out = Path(a.output_dir)
        if acc.is_main_process:  # only the first process writes (metrics, checkpoints, the model)
            out.mkdir(parents=True, exist_ok=True)
            if self.logger is None:
                self.logger = MetricsLogger(out / "metrics.jsonl")
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(
            params, lr=a.learning_rate, betas=(a.adam_beta1, a.adam_beta2), weight_decay=a.weight_decay
        )
        if acc.num_processes > 1:  # DDP (or FSDP from the accelerate config): gradients averaged in backward
            self.train_model, opt = acc.prepare(self.model, opt)
            params = [p for p in self.train_model.parameters() if p.requires_grad]
        # DDP averages gradients only through its own forward, which would rule out token_logps' fast path; so
        # the loss runs on the plain model and the window's gradients are averaged by hand before the step
        ddp = isinstance(self.train_model, torch.nn.parallel.DistributedDataParallel)
        self.loss_model = self.model if ddp and has_fast_path(self.model) else self.train_model
        total = self.total_steps()
        warmup = a.warmup_steps or int(a.warmup_ratio * total)
        sched = get_scheduler(a.lr_scheduler_type, opt, warmup, total)
        spec = a.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint
        resume = checkpoint.resolve_checkpoint(out, spec)
        if resume and acc.distributed_type == "FSDP":
            raise ValueError("resume_from_checkpoint: not supported under FSDP yet (the optimiser state is sharded)")
        if acc.is_main_process:
            checkpoint.remove_stale(out)
        loop = {"inflight": None, "pending": {}}
        if resume:
            loop = checkpoint.load_checkpoint(self, opt, sched, resume)
            loop["inflight"] = checkpoint.inflight_of(loop, acc.process_index, acc.num_processes, resume)
        self.model.train()
        pending: dict[str, list[float]] = defaultdict(list, loop["pending"])
        fl: dict[str, Any] | None = loop["inflight"]  # the generation batch in flight and where we are in it
        mbs, gas = a.per_device_train_batch_size, a.gradient_accumulation_steps
        step_start = time.perf_counter()
        with progress() as bar:
            task = bar.add_task("GRPO", total=total, info="", completed=self.state.global_step)

            def end_step(grad_norm: float | None) -> None:  # bookkeeping after an optimiser step (or a skip)
                nonlocal step_start
                self.state.global_step += 1
                self.state.epoch = self._epoch_rows / len(self.train_dataset)
                if grad_norm is not None:
                    pending["grad_norm"].append(grad_norm)
                now = time.perf_counter()
                pending["step_time"].append(now - step_start)
                step_start = now
                bar.update(task, advance=1, info=f"reward {fl['info']['reward']:.3f}")
                if self.state.global_step % a.logging_steps == 0 or self.state.global_step == total:
                    self._log(pending, sched.get_last_lr()[0])
                    pending.clear()
                if self.state.global_step % a.save_steps == 0:
                    done = fl["skip"] == 0 and fl["it"] >= a.num_iterations  # the batch is used up
                    weights = full_state_dict(acc, self.train_model)  # FSDP: gathered on every process
                    # several processes: each holds its own rows of the batch in flight; all of them are saved
                    by_process = gather_objects(acc, fl) if not done and acc.num_processes > 1 else None
                    if acc.is_main_process:
                        loop_state = {"inflight": None if done else fl, "pending": dict(pending)}
                        if by_process is not None:
                            loop_state["inflight_by_process"] = by_process
                        checkpoint.save_checkpoint(self, opt, sched, loop_state, state_dict=weights)
                    acc.wait_for_everyone()

            while self.state.global_step < total:
                if fl is None:
                    fl = dynamic.next_batch(self, pending)
                while fl["skip"] and self.state.global_step < total:  # dynamic sampling kept no group
                    fl["skip"] -= 1
                    end_step(None)
                batch = fl["batch"]
                n = batch["prompt_ids"].size(0)
                n_micro = math.ceil(n / mbs)
                while fl["it"] < a.num_iterations and self.state.global_step < total:
                    if fl["perm"] is None:  # the pass's micro-batch order, from the (checkpointed) prompt-order RNG
                        fl["perm"] = torch.randperm(
                            n, generator=torch.Generator().manual_seed(self._rng.randrange(2**31))
                        )
                    i, marks, losses = fl["mb"], {k: len(v) for k, v in pending.items()}, []
                    while True:  # one accumulation window; a short (dynamic-sampling) batch still ends with a step
                        idx = fl["perm"][i * mbs : (i + 1) * mbs]
                        mb = {k: v[idx.to(v.device)] for k, v in batch.items()}
                        loss, lm = self.compute_loss(mb, fl["num_items"])
                        losses.append(loss.item() * (1 if a.loss_type == "dapo" else gas))
                        if not all_true(acc, math.isfinite(losses[-1])):  # every process stops together
                            losses[-1] = float("nan")
                            break
                        last = (i + 1) % gas == 0 or i + 1 == n_micro  # gradients are averaged on the last
                        sync = contextlib.nullcontext() if last else acc.no_sync(self.train_model)
                        with sync:
                            loss.backward()
                        pending["loss"].append(losses[-1])
                        for k, v in lm.items():
                            pending[k].append(v)
                        i += 1
                        if i % gas == 0 or i == n_micro:
                            break
                    if self.loss_model is not self.train_model:
                        average_gradients(params, acc.num_processes)
                    grad_norm = float(acc.clip_grad_norm_(params, a.max_grad_norm))
                    if not all(map(math.isfinite, losses + [grad_norm])):  # save the last good state, then stop
                        checkpoint.fail_nonfinite(self, opt, sched, fl, pending, marks, losses)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    fl["mb"] = i
                    if i == n_micro:
                        fl.update(it=fl["it"] + 1, mb=0, perm=None)
                    end_step(grad_norm)
                if a.log_completions and "_samples" in fl["info"]:
                    for p, c, r in fl["info"]["_samples"]:
                        bar.console.print(f"[dim]{p!r}[/dim] -> {c!r} [bold]{r:.2f}[/bold]")
                fl = None
        return self.state

    def _log(self, pending: dict[str, list[float]], lr: float) -> None:
        row: dict[str, Any] = {"phase": "grpo", "step": self.state.global_step, "epoch": round(self.state.epoch, 4)}
        for k, vs in pending.items():
            vs = [v for v in vs if v == v]  # drop NaN
            row[k] = sum(vs) if k.endswith(COUNTERS) else sum(vs) / len(vs) if vs else float("nan")
        row["learning_rate"] = lr
        self.state.log_history.append(row)
        if self.logger is not None:
            self.logger.log(row)
        for cb in self.callbacks:
            cb(self.state, row)

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """Model (or adapter), tokenizer and generation config, with ``save_pretrained`` (on the first process
        only; the others wait for it)."""
        weights = full_state_dict(self.accelerator, self.train_model)  # FSDP: gathered on every process
        if not self.accelerator.is_main_process:
            self.accelerator.wait_for_everyone()
            return
        out = Path(output_dir or self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out, state_dict=weights)
        self.tokenizer.save_pretrained(out)
        gen = getattr(self.model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(out)
        self.accelerator.wait_for_everyone()
