"""Supervised fine-tuning on reasoning traces (R1 phase 1, the cold start), on the training loop GRPO uses.

The loss is the next-token cross-entropy on the completion tokens only (prompt tokens are masked with -100); the
optimiser, schedule, logging (``report_to``'s trackers too), callbacks, checkpoints and exact resume are
:class:`aha.train.loop.TrainingLoop`'s.
Under ``accelerate launch`` / ``torchrun`` each of the W processes takes its share of every global micro-batch of
W × batch rows and the loss is normalised by the completion tokens of all of them, so W processes train exactly as
one process with W times the batch. ``bf16`` / ``fp16`` train in mixed precision as GRPO does (the loop's autocast;
the cross-entropy in fp32).

A completion may be several messages, a tool-calling trace: assistant turns with the ``tool`` messages of their
calls' results between them. It is tokenised exactly as the GRPO tool rollout lays its tokens out: the prompt
rendered with the tools' schemas (:func:`aha.tools.calls.render_tool_prompt`, given ``tools``), each assistant turn
as its content's tokens and EOS (trained), and after a turn its tool messages as the template renders them up to the
next assistant header (:func:`aha.tools.calls.tool_suffix_ids`; masked like the prompt).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F

from aha.data.prompts import completion_text, is_conversational, render_prompt
from aha.settings import check_types, require
from aha.tools.calls import render_tool_prompt, tool_suffix_ids
from aha.tools.toolbox import ToolResult, tool_schema
from aha.train.distributed import make_accelerator, sum_all
from aha.train.loop import TrainerState, TrainingLoop
from aha.train.metrics import MetricsLogger
from aha.train.precision import resolve_precision
from aha.train.tracking import resolve_report_to


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft"  # checkpoints (checkpoint-<step>/) and metrics.jsonl when no logger is given
    learning_rate: float = 1e-3
    per_device_train_batch_size: int = 64
    gradient_accumulation_steps: int = 1
    max_steps: int = 300
    num_train_epochs: float = 1.0  # used only when max_steps <= 0
    warmup_ratio: float = 0.05  # used when warmup_steps == 0
    warmup_steps: int = 0
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    optim: str = "adamw_torch"
    max_grad_norm: float = 1.0
    max_length: int = 256
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = None
    resume_from_checkpoint: str | bool | None = None  # as train(resume_from_checkpoint=...): "auto"/True or a path
    seed: int = 0
    # mixed precision as in GRPOConfig (aha.train.precision), checked against the model's device by the trainer:
    # None = bf16 where a GPU supports it, else fp32; True also on a CPU with bf16 instructions; fp16 CUDA only
    bf16: bool | None = None
    fp16: bool = False
    # experiment tracking as in GRPOConfig (aha.train.tracking): metrics.jsonl always, plus these trackers
    report_to: list[str] | str = field(default_factory=list)  # "all", "none", or tensorboard/trackio/wandb/mlflow
    run_name: str | None = None
    project: str = "huggingface"
    logging_dir: str | None = None  # TensorBoard's event files (default OUTPUT_DIR/runs), wandb's/MLflow's files

    def __post_init__(self) -> None:
        check_types(self)
        self.report_to = resolve_report_to(self.report_to, "SFTConfig")
        if self.bf16 and self.fp16:
            raise ValueError("SFTConfig: bf16=True and fp16=True both set: choose one (bf16 where the hardware has it)")
        for name in ("per_device_train_batch_size", "gradient_accumulation_steps", "logging_steps", "save_steps"):
            require(self, getattr(self, name) >= 1, name, "must be >= 1")
        require(self, self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self, self.max_length >= 2, "max_length", "must be >= 2 (a prompt token and a completion token)")
        require(
            self,
            self.lr_scheduler_type in ("cosine", "constant", "linear", "constant_with_warmup"),
            "lr_scheduler_type",
            "must be cosine, constant, linear or constant_with_warmup",
        )
        require(
            self,
            self.optim in ("adamw_torch", "adamw_torch_fused"),
            "optim",
            "must be adamw_torch or adamw_torch_fused",
        )
        require(
            self,
            self.save_total_limit is None or self.save_total_limit >= 1,
            "save_total_limit",
            "must be >= 1 (or None)",
        )
        require(
            self,
            0 <= self.warmup_ratio < 1 and self.warmup_steps >= 0,
            "warmup_ratio",
            "must be in [0, 1) (and warmup_steps >= 0)",
        )


def tokenize_sft_row(
    tokenizer, row: dict[str, Any], max_length: int, schemas: Sequence[dict[str, Any]] = ()
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one row with `prompt` and `completion` (text or messages); labels are -100 on the
    prompt. The completion ends with the EOS token. A completion of several messages (assistant turns and the tool
    messages between them) is laid out as the GRPO tool rollout lays it out (see the module doc), labels -100 on
    the tool messages; `schemas`: the tools' JSON schemas, rendered into a conversational prompt."""
    if "prompt" not in row or "completion" not in row:
        raise ValueError(f"an SFT row needs 'prompt' and 'completion' columns, got {sorted(row)}")
    prompt = row["prompt"]
    if schemas and not is_conversational(prompt):
        raise ValueError(
            "SFT with tools needs conversational prompts (lists of messages): the chat template renders "
            "the tools into them; got a text prompt"
        )
    text = render_tool_prompt(tokenizer, prompt, schemas) if schemas else render_prompt(tokenizer, prompt)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    completion = row["completion"]
    if isinstance(completion, list) and len(completion) > 1:
        comp_ids, comp_labels = tokenize_turns(tokenizer, completion)
    else:
        comp_ids = tokenizer(completion_text(completion), add_special_tokens=False)["input_ids"]
        comp_ids = comp_labels = comp_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + comp_ids)[:max_length]
    labels = ([-100] * len(prompt_ids) + comp_labels)[:max_length]
    return ids, labels


def tokenize_turns(tokenizer, messages: list[Any]) -> tuple[list[int], list[int]]:
    """(ids, labels) of a multi-turn completion: each assistant message's content tokens + EOS (labelled), each run
    of tool messages after one as :func:`aha.tools.calls.tool_suffix_ids` (the template's glue, the results and
    the next assistant header; -100). It starts and ends with an assistant message, and tool messages separate
    the assistant ones."""
    ids: list[int] = []
    labels: list[int] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        role = m.get("role") if isinstance(m, dict) else None
        if role == "assistant":
            if i > 0 and messages[i - 1].get("role") == "assistant":
                raise ValueError(
                    f"completion message {i}: two assistant messages in a row; a multi-turn completion has tool "
                    "messages between its assistant turns (or join the two into one message)"
                )
            turn = tokenizer(str(m.get("content") or ""), add_special_tokens=False)["input_ids"]
            turn = turn + [tokenizer.eos_token_id]
            ids += turn
            labels += turn
            i += 1
        elif role == "tool":
            if i == 0:
                raise ValueError(
                    "completion message 0 is a tool message: a completion starts with the assistant's turn"
                )
            j = i
            while j < len(messages) and isinstance(messages[j], dict) and messages[j].get("role") == "tool":
                j += 1
            if j == len(messages):
                raise ValueError(
                    f"completion message {len(messages) - 1} is a tool message: a completion ends with the "
                    "assistant's turn (nothing to learn after the tool results)"
                )
            results = [
                ToolResult(str(t.get("name") or ""), str(t.get("content") or ""), error=False) for t in messages[i:j]
            ]
            glue = tool_suffix_ids(tokenizer, results)
            ids += glue
            labels += [-100] * len(glue)
            i = j
        else:
            raise ValueError(
                f"completion message {i}: a multi-turn completion holds assistant and tool messages, got "
                f"{role if role is not None else m!r}"
            )
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


class SFTBatches:
    """The order SFT reads its examples in: epoch-wise shuffles from its own RNG, one global micro-batch of
    W × batch rows at a time, this process's share of it. Checkpointed with the run."""

    def __init__(self, examples: list[tuple[list[int], list[int]]], micro: int, seed: int, accelerator: Any) -> None:
        self.examples, self.micro, self.acc = examples, micro, accelerator
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.seen = 0  # examples drawn, over all processes (the epoch)

    def next_micro_batch(self, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
        world, rank = self.acc.num_processes, self.acc.process_index
        if len(self.order) < self.micro * world:
            perm = list(range(len(self.examples)))
            self.rng.shuffle(perm)
            self.order.extend(perm)
        idx, self.order = self.order[: self.micro * world], self.order[self.micro * world :]  # the global micro-batch
        self.seen += len(idx)
        idx = idx[rank * self.micro : (rank + 1) * self.micro]  # this process's share
        return {k: v.to(device) for k, v in collate([self.examples[i] for i in idx], pad_id).items()}

    @property
    def epoch(self) -> float:
        return self.seen / len(self.examples)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate(), "order": list(self.order), "seen": self.seen}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from aha.train.checkpoint import as_tuples

        self.rng.setstate(as_tuples(state["rng"]))
        self.order, self.seen = list(state["order"]), int(state["seen"])


def tool_schemas(tools: Sequence[Callable]) -> list[dict[str, Any]]:
    """The JSON schemas of `tools`, as the GRPO rollouts describe them (:func:`aha.tools.toolbox.tool_schema`)."""
    out = []
    for fn in tools:
        if not callable(fn):
            raise ValueError(f"SFTTrainer(tools=...): each tool must be a function, got {fn!r}")
        try:
            out.append(tool_schema(fn))
        except ValueError as e:
            name = getattr(fn, "__name__", repr(fn))
            raise ValueError(f"SFTTrainer(tools=...): tool {name!r} has no JSON schema ({e})") from None
    return out


class SFTTrainer:
    """SFT of `model` in place on `train_dataset` (rows with ``prompt`` and ``completion``, text or messages):
    ``SFTTrainer(model, args, train_dataset, processing_class).train()``. `logger`: where the metrics rows go
    (default ``OUTPUT_DIR/metrics.jsonl``); callbacks get ``(state, row)`` for every logged row. `tools`: the
    functions the model may call; their schemas are rendered into every prompt as the GRPO tool rollout renders
    them (multi-turn completions are laid out alike with or without them, see the module doc)."""

    def __init__(
        self,
        model: torch.nn.Module,
        args: SFTConfig | None = None,
        train_dataset: Any = None,
        processing_class: Any = None,
        callbacks: Sequence[Callable[[TrainerState, dict[str, Any]], None]] = (),
        logger: MetricsLogger | None = None,
        description: str = "SFT",
        tools: Sequence[Callable] | None = None,
    ) -> None:
        self.args = args or SFTConfig()
        if not train_dataset:
            raise ValueError("SFT: the dataset is empty")
        self.model, self.tokenizer, self.train_dataset = model, processing_class, train_dataset
        self.device = next(model.parameters()).device
        # "bf16" / "fp16": the loss forward under autocast, fp32 weights (aha.train.precision)
        self.precision = resolve_precision(self.args.bf16, self.args.fp16, self.device, "SFTConfig")
        self.accelerator = make_accelerator(use_cpu=self.device.type == "cpu", mixed_precision=self.precision)
        self.callbacks, self.logger, self.description = list(callbacks), logger, description
        self.state = TrainerState()
        self.tools = list(tools or [])
        schemas = tool_schemas(self.tools)
        self.examples = []
        for i, row in enumerate(train_dataset):
            try:
                self.examples.append(tokenize_sft_row(processing_class, row, self.args.max_length, schemas))
            except ValueError as e:
                raise ValueError(f"SFT row {i}: {e}") from None
        self.batches = SFTBatches(
            self.examples, self.args.per_device_train_batch_size, self.args.seed, self.accelerator
        )

    def total_steps(self) -> int:
        a, world = self.args, self.accelerator.num_processes
        steps_per_epoch = max(
            1, len(self.examples) // (a.per_device_train_batch_size * a.gradient_accumulation_steps * world)
        )
        return a.max_steps if a.max_steps > 0 else math.ceil(a.num_train_epochs * steps_per_epoch)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainerState:
        """Train to ``total_steps()``, saving ``checkpoint-<step>`` every ``save_steps``; `resume_from_checkpoint`
        (default ``args.resume_from_checkpoint``): "auto"/True (the newest complete checkpoint) or a path."""
        a = self.args
        torch.manual_seed(a.seed)
        loop = TrainingLoop.of(self, phase="sft", owners={"batches": self.batches}, description=self.description)
        loop.resume(a.resume_from_checkpoint if resume_from_checkpoint is None else resume_from_checkpoint)
        pad = self.tokenizer.pad_token_id
        self.model.train()
        with loop.running():
            while not loop.done:
                window = [self.batches.next_micro_batch(pad, self.device) for _ in range(a.gradient_accumulation_steps)]
                grad_norm = loop.optimizer_step([partial(self.compute_loss, mb, loop.train_model) for mb in window])
                loop.end_step(grad_norm, f"loss {loop.pending['loss'][-1]:.3f}", self.batches.epoch)
        return self.state

    def compute_loss(
        self, batch: dict[str, torch.Tensor], model: torch.nn.Module
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of the window's loss, and (as "loss") the window's per-token loss it implies on
        every process: the loss to log for the step is the window's sum of these."""
        acc, gas = self.accelerator, self.args.gradient_accumulation_steps
        loss = _token_loss(model, batch, acc) / gas
        shown = sum_all(acc, loss.item()) / acc.num_processes * gas  # the mean over every process's tokens
        return loss, {"loss": shown}


def _token_loss(model, batch: dict[str, torch.Tensor], acc) -> torch.Tensor:
    """Cross-entropy summed over this process's completion tokens, divided by the completion tokens of all
    processes and multiplied by W (the engine averages the W gradients): the global per-token mean."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]  # (B, L-1, V)
    labels = batch["labels"][:, 1:]  # (B, L-1)
    total = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), labels.reshape(-1), reduction="sum")
    tokens = sum_all(acc, float((labels != -100).sum()))
    return total * acc.num_processes / max(1.0, tokens)
