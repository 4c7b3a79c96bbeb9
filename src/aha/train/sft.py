"""Supervised fine-tuning on reasoning traces (R1 phase 1, the cold start).

The loss is the next-token cross-entropy on the completion tokens only (prompt tokens are masked
with -100), AdamW with warm-up and a cosine or constant schedule. Under ``accelerate launch`` /
``torchrun`` each of the W processes takes its share of every global micro-batch of W × batch rows and
the loss is normalised by the completion tokens of all of them, so W processes train exactly as one
process with W times the batch.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import get_scheduler

from aha.console import progress
from aha.data.prompts import completion_text, render_prompt
from aha.train.distributed import make_accelerator, sum_all
from aha.train.metrics import MetricsLogger


@dataclass
class SFTConfig:
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_steps: int = 300
    num_train_epochs: float = 1.0  # used only when max_steps <= 0
    warmup_ratio: float = 0.05
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: int = 256
    logging_steps: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_device_train_batch_size < 1:
            raise ValueError(f"per_device_train_batch_size must be >= 1, got {self.per_device_train_batch_size}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.lr_scheduler_type not in ("cosine", "constant", "linear", "constant_with_warmup"):
            raise ValueError(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of cosine, constant, linear")


def tokenize_sft_row(tokenizer, row: dict[str, Any], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one row with `prompt` and `completion` (text or messages);
    labels are -100 on the prompt. The completion ends with the EOS token."""
    if "prompt" not in row or "completion" not in row:
        raise ValueError(f"an SFT row needs 'prompt' and 'completion' columns, got {sorted(row)}")
    prompt_ids = tokenizer(render_prompt(tokenizer, row["prompt"]), add_special_tokens=False)["input_ids"]
    comp_ids = tokenizer(completion_text(row["completion"]), add_special_tokens=False)["input_ids"]
    comp_ids = comp_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + comp_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + comp_ids)[:max_length]
    return ids, labels


def collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_sft(
    model,
    tokenizer,
    rows: list[dict[str, Any]],
    config: SFTConfig,
    logger: MetricsLogger | None = None,
    description: str = "SFT",
) -> dict[str, float]:
    """Train `model` in place on `rows`. Returns {'loss': last logged loss, 'steps', 'seconds'}."""
    if not rows:
        raise ValueError("SFT: the dataset is empty")
    device = next(model.parameters()).device
    acc = make_accelerator(use_cpu=device.type == "cpu")
    world, rank = acc.num_processes, acc.process_index
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    examples = [tokenize_sft_row(tokenizer, r, config.max_length) for r in rows]
    micro, gas = config.per_device_train_batch_size, config.gradient_accumulation_steps
    steps_per_epoch = max(1, len(examples) // (micro * gas * world))
    total = config.max_steps if config.max_steps > 0 else math.ceil(config.num_train_epochs * steps_per_epoch)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    train_model = model
    if world > 1:  # DDP (or FSDP from the accelerate config): gradients averaged in backward
        train_model, opt = acc.prepare(model, opt)
        params = [p for p in train_model.parameters() if p.requires_grad]
    sched = get_scheduler(config.lr_scheduler_type, opt, int(config.warmup_ratio * total), total)
    order: list[int] = []
    model.train()
    start, last = time.perf_counter(), {"loss": float("nan")}
    with progress() as bar:
        task = bar.add_task(description, total=total, info="")
        for step in range(1, total + 1):
            loss_sum, t0 = 0.0, time.perf_counter()
            for m in range(gas):
                if len(order) < micro * world:
                    perm = list(range(len(examples)))
                    rng.shuffle(perm)
                    order.extend(perm)
                idx, order = order[: micro * world], order[micro * world :]  # the global micro-batch
                idx = idx[rank * micro : (rank + 1) * micro]  # this process's share
                batch = {
                    k: v.to(device) for k, v in collate([examples[i] for i in idx], tokenizer.pad_token_id).items()
                }
                sync = contextlib.nullcontext() if m == gas - 1 else acc.no_sync(train_model)
                with sync:
                    loss = _token_loss(train_model, batch, acc) / gas
                    loss.backward()
                loss_sum += loss.item()
            loss_sum = sum_all(acc, loss_sum) / world  # the mean over every process's tokens
            grad_norm = acc.clip_grad_norm_(params, config.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            last = {"loss": loss_sum, "grad_norm": float(grad_norm), "learning_rate": sched.get_last_lr()[0]}
            if logger is not None and acc.is_main_process and (step % config.logging_steps == 0 or step == total):
                logger.log({"phase": "sft", "step": step, **last, "step_time": time.perf_counter() - t0})
            bar.update(task, advance=1, info=f"loss {loss_sum:.3f}")
    return {"loss": last["loss"], "steps": total, "seconds": time.perf_counter() - start}


def _token_loss(model, batch: dict[str, torch.Tensor], acc) -> torch.Tensor:
    """Cross-entropy summed over this process's completion tokens, divided by the completion tokens of all
    processes and multiplied by W (the engine averages the W gradients): the global per-token mean."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, L-1, V)
    labels = batch["labels"][:, 1:]  # (B, L-1)
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), reduction="sum")
    tokens = sum_all(acc, float((labels != -100).sum()))
    return total * acc.num_processes / max(1.0, tokens)
