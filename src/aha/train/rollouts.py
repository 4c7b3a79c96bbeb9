"""Where GRPO's batches come from (steps 1-2 of ``aha.train.grpo``): sample G completions per prompt, score them,
turn the rewards into group-relative advantages, and hand the training loop one generation batch at a time.

:class:`RolloutSource` owns everything this takes and everything a checkpoint must restore: the prompt order
(an epoch-wise shuffle from its own RNG), the sampling generator, the rollout engine (aha's sampler, or vLLM
with its weight sync) and DAPO's dynamic sampling. It yields an :class:`InFlight` batch — the tensors of one
generation batch (:class:`Batch`) and where the loop is in it — and has ``state_dict()/load_state_dict()``.

Under several processes each process samples its own rows of the global batch (every row from its own seed, so
a completion does not depend on the split), the rewards are gathered before the advantages (a group may straddle
two processes), and each process keeps its rows' advantages.

**Dynamic sampling** (``dynamic_sampling=True``): a group whose G rewards all tie has zero advantage everywhere, so
it adds nothing to the gradient but still dilutes the token-level loss. Such groups are dropped after scoring and
just enough new prompts are generated and scored to refill the batch, for at most ``max_resample_rounds`` extra
rounds. Advantages are group-local, so concatenating the kept groups of several rounds leaves every advantage
exactly as it was computed.

**Streams** (a dataset with no ``len()``: ``datasets.IterableDataset``, a streaming dataset, a torch
``IterableDataset``): prompts come in the stream's order (shuffle it upstream, e.g. ``.shuffle(buffer_size=...)``),
one pass after another; each pass starts with ``set_epoch(pass)`` where the stream has it (so an upstream shuffle
reshuffles, as TRL's sampler does). The position (pass, rows read) is checkpointed and a resume reads the stream
again up to it. The epoch is known once a pass has ended.

**Evaluation** (:meth:`RolloutSource.eval_batches`, :meth:`RolloutSource.eval_rollout`): the eval set in order,
``num_generations_eval`` completions per prompt, ``per_device_eval_batch_size`` completions per process per batch,
sampled from a generator of its own seeded with ``seed`` (an evaluation leaves the training's draws as they were).

**vLLM** (``use_vllm=True``): the engine (``aha.rollout.vllm.VLLMRollout``) starts at the first rollout and gets
the policy's weights before every rollout that follows an optimiser step; its log-probs of the sampled tokens go
with the batch for the importance-sampling correction (``aha.grpo.importance_sampling_weights``).
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import torch
import torch.nn.functional as F

from aha.data.prompts import encode_prompts, is_conversational, left_pad, render_prompt
from aha.grpo import completion_mask_after_eos, compute_advantages, dapo_num_items, group_rewards, zero_std_groups
from aha.rewards.scoring import RewardLogs, score
from aha.rollout.sampler import SamplingParams, fast_decode_status, sample
from aha.rollout.tool_loop import ToolRollout, run_tool_loop, tool_counts, tool_metrics
from aha.train.distributed import full_weights, gather_objects, gather_ragged, gather_rows, shard, sum_all
from aha.train.environments import ToolUse
from aha.train.loop import TrainerState
from aha.train.metrics import rollout_metrics
from aha.train.precision import COMPUTE_DTYPES


class Batch(TypedDict, total=False):
    """One generation batch's tensors, n = this process's rows (prompts × G)."""

    prompt_ids: torch.Tensor  # (n, P) left-padded
    prompt_mask: torch.Tensor  # (n, P)
    completion_ids: torch.Tensor  # (n, T) right-padded
    completion_mask: torch.Tensor  # (n, T) 1 up to and including EOS (0 for masked truncated completions)
    tool_mask: torch.Tensor  # (n, T) with tools: 1 where the model wrote the token, 0 tool results and glue
    advantages: torch.Tensor  # (n,)
    sampling_logps: torch.Tensor  # (n, T) the engine's log-probs of its samples (vLLM), until add_logps
    old_logps: torch.Tensor  # (n, T) π_old, when the batch is used off-policy (or reweighted)
    ref_logps: torch.Tensor  # (n, T) π_ref, when beta != 0
    sampling_weights: torch.Tensor  # (n, T) π_old / π_engine importance weights (vLLM)


@dataclass
class Rollout:
    """Sampled and scored completions: the batch, its metrics (as TRL names them), the dataset rows (one per
    group) and the rewards, (N, K) over every process's rows."""

    batch: Batch
    info: dict[str, Any]
    rows: list[dict[str, Any]]
    rewards: torch.Tensor


@dataclass
class InFlight:
    """The generation batch being trained on and where the loop is in it: μ passes (`it` done), each over the
    micro-batches of `perm` (the pass's order; `mb` the next one); `skip` optimiser steps with no update (dynamic
    sampling kept no group); `num_items` the dapo normaliser (``aha.grpo.dapo_num_items``)."""

    batch: Batch
    info: dict[str, Any]
    num_items: float
    it: int = 0
    mb: int = 0
    perm: torch.Tensor | None = None
    skip: int = 0
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = int(self.batch["prompt_ids"].size(0))

    def window(self, micro_batch: int, accumulation: int) -> list[Batch]:
        """The micro-batches of the next accumulation window: up to the next multiple of `accumulation`, or the
        end of the pass (a short dynamic-sampling batch still ends with a step)."""
        n_micro = math.ceil(self.rows / micro_batch)
        stop = min(n_micro, (self.mb // accumulation + 1) * accumulation)
        assert self.perm is not None
        out = []
        for i in range(self.mb, stop):
            idx = self.perm[i * micro_batch : (i + 1) * micro_batch]
            out.append({k: v[idx.to(v.device)] for k, v in self.batch.items()})  # type: ignore[misc]
        return out

    def advance(self, micro_batches: int, micro_batch: int) -> None:
        self.mb += micro_batches
        if self.mb >= math.ceil(self.rows / micro_batch):  # the pass is over
            self.it, self.mb, self.perm = self.it + 1, 0, None

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("batch", "info", "num_items", "it", "mb", "perm", "skip")}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> InFlight:
        return cls(**state)


class RolloutSource:
    """The trainer's generation batches (see the module docstring). `add_logps(batch)` fills π_old/π_ref log-probs
    (the trainer's models); `state` is the trainer's step count (the vLLM weight sync follows it)."""

    def __init__(
        self,
        args: Any,
        dataset: Any,
        tokenizer: Any,
        model: torch.nn.Module,
        reward_funcs: list[Any],
        reward_processing_classes: list[Any],
        accelerator: Any,
        eos: list[int],
        state: TrainerState,
        add_logps: Callable[[Batch], None],
        tool_use: ToolUse | None = None,
    ) -> None:
        self.args, self.dataset, self.tokenizer, self.model = args, dataset, tokenizer, model
        self.tool_use = tool_use if tool_use is not None and tool_use.active else None
        self.reward_funcs, self.reward_processing_classes = reward_funcs, reward_processing_classes
        self.acc, self.eos, self.state, self.add_logps = accelerator, eos, state, add_logps
        self.device = accelerator.device
        self.sharded_model: torch.nn.Module = model  # FSDP: the wrapped model, unsharded for generation
        # prompt order and each pass's micro-batch order (data_seed, as transformers' samplers take it)
        self.rng = random.Random(args.seed if getattr(args, "data_seed", None) is None else args.data_seed)
        self.shuffle = bool(getattr(args, "shuffle_dataset", True)) and (
            getattr(args, "train_sampling_strategy", "random") == "random"
        )
        self.generator = torch.Generator(device=self.device).manual_seed(args.seed)  # sampling
        self.order: list[int] = []
        self.epoch_rows = 0
        self.current: InFlight | None = None
        self.vllm: Any = None  # use_vllm: the engine, started at the first rollout
        # the dtype aha's sampler computes in: the training's compute dtype (bf16 when training in bf16), the one
        # place rollouts take it from: passed to aha.rollout.sampler.sample (bf16 packed weights on the fast decoder)
        self.sample_dtype: torch.dtype = COMPUTE_DTYPES[args.mixed_precision]
        self.synced_step = -1  # the global step whose weights the engine holds
        self.reward_logs = RewardLogs()  # what reward functions log (TRL's log_metric / log_extra)
        # a stream (no len()): the pass it is in, the rows read in it, a full pass's rows (once one ended)
        self.stream = not hasattr(dataset, "__len__")
        self.stream_pass = self.stream_pos = self.pass_rows = 0
        self._rows: Any = None  # the open stream's iterator
        self._ahead: Any = None  # its next row, read ahead to see a pass end with its last row

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "order": list(self.order),
            "epoch_rows": self.epoch_rows,
            "rng": self.rng.getstate(),
            "generator": self.generator.get_state(),
            "stream": [self.stream_pass, self.stream_pos, self.pass_rows],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from aha.train.checkpoint import as_tuples

        self.order, self.epoch_rows = list(state["order"]), int(state["epoch_rows"])
        self.rng.setstate(as_tuples(state["rng"]))
        self.generator.set_state(state["generator"])
        self.stream_pass, self.stream_pos, self.pass_rows = (int(x) for x in state.get("stream", (0, 0, 0)))
        self._rows = self._ahead = None  # a stream is read again up to the position

    def local_state_dict(self) -> dict[str, Any]:
        """This process's part: its rows of the batch in flight (None at the end of a batch)."""
        done = self.current is None or (self.current.skip == 0 and self.current.it >= self.args.num_iterations)
        return {"inflight": None if done else self.current.state_dict()}  # type: ignore[union-attr]

    def load_local_state_dict(self, states: list[dict[str, Any]] | None, rank: int, world: int, path: Path) -> None:
        """A checkpoint written by W processes in the middle of a generation batch holds each process's own rows,
        and resumes on W processes only; one written at the end of a batch resumes on any number."""
        if not states or all(s["inflight"] is None for s in states):
            self.current = None
            return
        if len(states) != world:
            raise ValueError(
                f"resume_from_checkpoint: {path} was saved by {len(states)} process(es) in the middle of a generation"
                f" batch, whose rows are split between them; resume it with {len(states)} process(es), not {world}"
                " (or resume from a checkpoint saved at the end of a batch)"
            )
        self.current = InFlight.from_state_dict(states[rank]["inflight"])

    def reseed(self) -> None:
        """A fresh sampling generator (``train()`` starts from ``seed``, as a new run does)."""
        self.generator = torch.Generator(device=self.device).manual_seed(self.args.seed)

    @property
    def epoch(self) -> float:
        """Passes over the training prompts so far (a stream: whole passes until the first one has ended)."""
        if self.stream:
            return self.stream_pass + (self.stream_pos / self.pass_rows if self.pass_rows else 0.0)
        return self.epoch_rows / len(self.dataset)

    # ------------------------------------------------------------------------------------------ prompts
    def next_rows(self, n: int, drop_last: bool = False) -> list[dict[str, Any]]:
        """The next `n` rows in the epoch order (shuffled per epoch unless shuffle_dataset is off or
        train_sampling_strategy is "sequential"); `drop_last`: an epoch's rest shorter than `n` is skipped (a
        stream is read in its own order, pass after pass)."""
        if self.stream:
            return self._stream_rows(n)
        if drop_last and 0 < len(self.order) < min(n, len(self.dataset)):
            self.epoch_rows += len(self.order)
            self.order = []
        rows = []
        while len(rows) < n:
            if not self.order:
                self.order = list(range(len(self.dataset)))
                if self.shuffle:
                    self.rng.shuffle(self.order)
                else:
                    self.order.reverse()  # rows are taken from the end: dataset order
            rows.append(self.dataset[self.order.pop()])
            self.epoch_rows += 1
        return rows

    def _stream_rows(self, n: int) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while len(rows) < n:
            if self._rows is None:  # a pass starts (or a resumed one goes on)
                if hasattr(self.dataset, "set_epoch"):
                    self.dataset.set_epoch(self.stream_pass)
                self._rows = iter(self.dataset)
                for _ in range(self.stream_pos):
                    next(self._rows)
                self._ahead = next(self._rows, None)
                if self._ahead is None:
                    raise ValueError("GRPOTrainer: train_dataset (a stream) gave no rows")
            rows.append(self._ahead)
            self.stream_pos += 1
            self._ahead = next(self._rows, None)
            if self._ahead is None:  # that was the pass's last row
                self.pass_rows, self.stream_pass, self.stream_pos, self._rows = (
                    self.stream_pos,
                    self.stream_pass + 1,
                    0,
                    None,
                )
        return rows

    # ------------------------------------------------------------------------------------------ one batch
    def next_batch(self) -> InFlight:
        """The next generation batch as the loop tracks it (and checkpoints it mid-way): its metrics are in
        ``info``; with dynamic sampling keeping no group, it has no rows and `skip` steps to use up."""
        a = self.args
        rollout = self.sample_batch()
        n = rollout.batch["prompt_ids"].size(0)
        n_micro = math.ceil(n / a.per_device_train_batch_size)
        tokens = sum_all(self.acc, loss_mask(rollout.batch).sum().item())
        num_items = dapo_num_items(tokens, self.acc.num_processes, a.gradient_accumulation_steps, n_micro)
        skip = 0 if n else a.num_iterations * math.ceil(a.steps_per_generation / a.gradient_accumulation_steps)
        self.current = InFlight(rollout.batch, rollout.info, num_items, it=0 if n else a.num_iterations, skip=skip)
        return self.current

    def start_pass(self, flight: InFlight) -> None:
        """The pass's micro-batch order, drawn from the (checkpointed) prompt-order RNG."""
        if flight.perm is None:
            flight.perm = torch.randperm(
                flight.rows, generator=torch.Generator().manual_seed(self.rng.randrange(2**31))
            )

    def sample_batch(self) -> Rollout:
        """One generation batch, ready for the update (with old/ref log-probs when the objective needs them).

        Without dynamic sampling: ``prompts_per_generation`` new prompts, all kept. With it: tied groups are dropped
        and resampled; the rollout may hold fewer groups (even none) when ``max_resample_rounds`` runs out. The
        metrics describe the first round (the policy's own reward distribution), plus
        ``dynamic_sampling/{rounds,dropped_groups,kept_groups}``.

        Several processes: the kept groups of every round are gathered on every process, so all of them hold the
        same kept batch (in the order one process would have it), and each trains on an even share of it
        (:func:`even_share`); a refill round asks for a number of prompts whose G completions split evenly over the
        processes, and groups past the target are left out.
        """
        a, g, acc = self.args, self.args.num_generations, self.acc
        target, pad_id = a.prompts_per_generation, self.tokenizer.pad_token_id
        first = self.generate_and_score(
            self.next_rows(target, drop_last=getattr(a, "dataloader_drop_last", False)), with_logps=False
        )
        if not a.dynamic_sampling:
            self.add_logps(first.batch)
            return first
        step = acc.num_processes // math.gcd(g, acc.num_processes)  # prompts per round: a multiple of this
        rollout, batches, rows, rewards, extra = first, [], [], [], []
        dropped = rounds = 0
        while True:
            total, _ = group_rewards(rollout.rewards, a.reward_weights)  # (N,)
            tied = zero_std_groups(total, g)  # (P,)
            dropped += int(tied.sum())
            keep = ~tied
            surplus = len(rows) + int(keep.sum()) - target  # a round rounded up to `step` prompts may overfill
            if surplus > 0:
                keep[keep.nonzero().squeeze(1)[-surplus:]] = False
            batches.append(kept_rows(acc, rollout.batch, keep, g, pad_id))
            rewards.append(rollout.rewards[keep.repeat_interleave(g)])
            rows += [r for r, k in zip(rollout.rows, keep.tolist()) if k]
            need = target - len(rows)
            if need <= 0 or rounds >= a.max_resample_rounds:
                break
            rounds += 1
            rollout = self.generate_and_score(self.next_rows(-(-need // step) * step), with_logps=False)
            extra.append(rollout.info)
        batch = even_share(acc, concat_batches(batches, pad_id))
        if rows:
            self.add_logps(batch)
        info = dict(first.info)
        for r in extra:  # reward errors / non-finite rewards of the resampling rounds count too
            for k, v in r.items():
                if k.endswith(("/errors", "/nonfinite")):
                    info[k] = info.get(k, 0) + v
        info["dynamic_sampling/rounds"] = rounds
        info["dynamic_sampling/dropped_groups"] = dropped
        info["dynamic_sampling/kept_groups"] = len(rows)
        return Rollout(batch, info, rows, torch.cat(rewards))

    @torch.no_grad()
    def generate_and_score(
        self,
        rows: list[dict[str, Any]],
        with_logps: bool = True,
        num_generations: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollout:
        """Sample G completions for each row and score them; N = len(rows) × G rows over all processes, this
        process's share in the batch. Old/ref log-probs only `with_logps`. `num_generations` (default the
        config's; 1 gives zero advantages) and `generator` (default the training's) serve the evaluation."""
        a, tok, acc = self.args, self.tokenizer, self.acc
        g = num_generations or a.num_generations
        generator = generator or self.generator
        # this process's rows of the global batch; each row samples from its own seed, so the completions
        # do not depend on how the batch is split over processes
        base_seed = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        local = shard(len(rows) * g, acc.process_index, acc.num_processes)
        row_seeds = [base_seed + i for i in range(local.start, local.stop)]

        def mine(key: str) -> list[Any]:  # this process's rows of a column, each row's value G times in a row
            return [r[key] for r in rows for _ in range(g)][local]

        params = sampling_params(a)
        tool_mask = tools = envs = None
        if self.tool_use is not None:
            local_rows = [r for r in rows for _ in range(g)][local]
            prompts, boxes, envs = self.tool_use.prepare(local_rows)
            texts = [self.tool_use.render(p, b, a.chat_template_kwargs) for p, b in zip(prompts, boxes)]
        else:
            prompts = mine("prompt")  # (n,)
            texts = [render_prompt(tok, p, a.chat_template_kwargs) for p in prompts]
        prompt_ids, prompt_mask = encode_prompts(tok, texts, a.max_prompt_length, self.device)  # (n, P)
        prompt_ids = pad_width(prompt_ids, a.pad_to_multiple_of, tok.pad_token_id, left=True)
        prompt_mask = pad_width(prompt_mask, a.pad_to_multiple_of, 0, left=True)
        sampling_logps = None
        on_fast_decoder = None  # aha's sampler: did its fast decoder run (1.0), or the HF forward (0.0)?
        if not a.use_vllm:
            if a.rollout_backend == "fast":
                total_len = prompt_ids.size(1) + params.max_new_tokens
                on_fast_decoder = float(fast_decode_status(self.model, total_len, self.sample_dtype) is None)
            else:
                on_fast_decoder = 0.0
        if self.tool_use is not None:
            tools = self.tool_rollout(prompt_ids, prompt_mask, boxes, params, generator, row_seeds)
            completion_ids, completion_mask, tool_mask, sampling_logps = tool_tensors(tools, tok.pad_token_id)
            completion_ids, completion_mask, tool_mask = (
                x.to(self.device) for x in (completion_ids, completion_mask, tool_mask)
            )
            truncated = torch.tensor([not e for e in tools.ended], device=self.device)  # (n,)
        elif a.use_vllm:
            completion_ids, sampling_logps = self.vllm_generate(prompt_ids, prompt_mask, params, row_seeds)
        else:
            completion_ids = self.sample_local(prompt_ids, prompt_mask, params, generator, row_seeds)  # (n, T)
        if tools is None:
            completion_mask = completion_mask_after_eos(completion_ids, self.eos)  # (n, T)
            truncated = ~torch.isin(completion_ids, torch.tensor(self.eos, device=self.device)).any(1)  # (n,)
        # pad_to_multiple_of: after the mask, so that padding a truncated completion never reads as its EOS
        completion_ids = pad_width(completion_ids, a.pad_to_multiple_of, tok.pad_token_id, left=False)
        completion_mask = pad_width(completion_mask, a.pad_to_multiple_of, 0, left=False)
        if tool_mask is not None:
            tool_mask = pad_width(tool_mask, a.pad_to_multiple_of, 0, left=False)
        if sampling_logps is not None:
            sampling_logps = pad_width(sampling_logps, a.pad_to_multiple_of, 0, left=False)
        if a.mask_truncated_completions:
            completion_mask = completion_mask * (~truncated).unsqueeze(1).int()
        ids_list = [row[: int(m.sum())] for row, m in zip(completion_ids.tolist(), completion_mask)]
        completions: list[Any]
        if tools is not None:
            completions = tools.completions  # the turns as messages: assistant (tool_calls), tool, assistant, ...
        else:
            decoded = [tok.decode(ids, skip_special_tokens=True) for ids in ids_list]
            completions = (
                [[{"role": "assistant", "content": c}] for c in decoded] if is_conversational(prompts[0]) else decoded
            )
        columns = {k: mine(k) for k in rows[0] if k not in ("prompt", "completion")}
        counts: dict[str, int] = {}  # rewards/<name>/errors, rewards/<name>/nonfinite
        logs = self.reward_logs
        logs.take()  # what an earlier, failed scoring left
        rewards = score(
            self.reward_funcs,
            prompts,
            completions,
            ids_list,
            columns,
            self.reward_processing_classes,
            a.reward_errors,
            counts,
            {"trainer_state": self.state, "log_extra": logs.log_extra, "log_metric": logs.log_metric}
            | ({"environments": envs} if envs is not None else {}),
        )  # (n, K)
        rewards = gather_rows(acc, rewards.to(self.device))  # (N, K): groups may straddle processes
        if g == 1:  # one completion per prompt (an evaluation's num_generations_eval=1): its own baseline, as TRL
            advantages = torch.zeros(rewards.size(0), device=rewards.device)
        else:
            advantages = compute_advantages(
                rewards,
                g,
                scale_rewards=a.scale_rewards,
                reward_weights=a.reward_weights,
                multi_objective_aggregation=a.multi_objective_aggregation,
            )
        batch: Batch = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages[local],  # (n,)
        }
        if tool_mask is not None:
            batch["tool_mask"] = tool_mask
        if sampling_logps is not None:
            batch["sampling_logps"] = sampling_logps
        if with_logps:
            self.add_logps(batch)
        lengths = gather_rows(acc, loss_mask(batch).sum(1))  # (N,) the tokens the model wrote
        truncated = gather_rows(acc, truncated)  # (N,)
        metrics, extra = logs.take()
        info = rollout_metrics(a, self.reward_funcs, rewards, lengths, truncated, prompts, completions, g, extra)
        info |= counts | self.logged_metrics(metrics)
        if on_fast_decoder is not None:
            info["rollout/fast_decoder"] = on_fast_decoder
        if tools is not None:
            info |= tool_metrics([c for part in gather_objects(acc, tool_counts(tools)) for c in part])  # type: ignore[union-attr]
        return Rollout(batch, info, rows, rewards)

    def sample_local(self, prompt_ids, prompt_mask, params, generator, row_seeds) -> torch.Tensor:
        """Completion ids (n, T) from aha's sampler (or transformers' generate: ``rollout_backend``) on the policy,
        its weights gathered first under FSDP."""
        with full_weights(self.sharded_model):
            return sample(
                self.model,
                prompt_ids,
                prompt_mask,
                params,
                self.eos,
                self.tokenizer.pad_token_id,
                generator,
                self.args.rollout_backend,
                row_seeds=row_seeds,
                dtype=self.sample_dtype,
            )

    def tool_rollout(self, prompt_ids, prompt_mask, boxes, params, generator, row_seeds) -> ToolRollout:
        """The multi-turn rollouts of a batch with tools (``aha.rollout.tool_loop``): each turn sampled by aha's
        sampler or vLLM, each row's turn k from its own seed (its row seed + k · 2³²)."""
        a, tok = self.args, self.tokenizer

        def generate(prompts: list[list[int]], rows: list[int], max_new: int, turn: int):
            seeds = [row_seeds[i] + turn * 2**32 for i in rows]
            p = dataclasses.replace(params, max_new_tokens=max_new)
            if a.use_vllm:
                return self.vllm_engine().generate(prompts, p, seeds)
            ids, mask = left_pad(prompts, tok.pad_token_id, self.device)
            out = self.sample_local(ids, mask, p, generator, seeds)  # (r, T)
            keep = completion_mask_after_eos(out, self.eos).sum(1).tolist()
            return [row[:k] for row, k in zip(out.tolist(), keep)], None

        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]  # left padding removed
        return run_tool_loop(
            generate,
            prompts,
            boxes,
            tok,
            self.tool_use.format,  # type: ignore[union-attr]
            self.eos,
            a.max_completion_length,
            a.max_tool_calling_iterations,
            a.chat_template_kwargs,
        )

    def logged_metrics(self, metrics: dict[str, list[float]]) -> dict[str, float]:
        """The batch's ``log_metric`` values: each name's mean over every process's calls (as TRL)."""
        if self.acc.num_processes == 1:
            return {k: sum(v) / len(v) for k, v in metrics.items() if v}
        parts = gather_objects(self.acc, {k: (sum(v), len(v)) for k, v in metrics.items()})
        total: dict[str, list[float]] = {}
        for part in parts:
            for k, (s, n) in part.items():  # type: ignore[union-attr]
                t = total.setdefault(k, [0.0, 0])
                t[0], t[1] = t[0] + s, t[1] + n
        return {k: s / n for k, (s, n) in sorted(total.items()) if n}

    # ------------------------------------------------------------------------------------------ evaluation
    def eval_batches(self, dataset: Any) -> Any:
        """The eval set's prompts in order, in global batches of ``per_device_eval_batch_size`` × processes /
        ``num_generations_eval`` prompts (the last one may be short); works on streams too."""
        a = self.args
        g = a.num_generations_eval or a.num_generations
        per = a.per_device_eval_batch_size * self.acc.num_processes
        if per % g:
            raise ValueError(
                f"GRPOConfig.per_device_eval_batch_size ({a.per_device_eval_batch_size}) times the processes "
                f"({self.acc.num_processes}) must be divisible by the completions per eval prompt ({g})"
            )
        batch: list[dict[str, Any]] = []
        rows = (dataset[i] for i in range(len(dataset))) if hasattr(dataset, "__len__") else iter(dataset)
        for row in rows:
            batch.append(row)
            if len(batch) == per // g:
                yield batch
                batch = []
        if batch:
            yield batch

    def eval_rollout(self, rows: list[dict[str, Any]], generator: torch.Generator) -> Rollout:
        """One eval batch sampled and scored (π_ref log-probs when beta != 0, for the eval loss's KL)."""
        g = self.args.num_generations_eval or self.args.num_generations
        return self.generate_and_score(rows, with_logps=True, num_generations=g, generator=generator)

    # ------------------------------------------------------------------------------------------ vLLM
    def vllm_generate(self, prompt_ids, prompt_mask, params, row_seeds) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample with vLLM (weights synced after every optimiser step). Returns completion ids (n, T) and the
        engine's log-probs of the sampled tokens (n, T), both right-padded."""
        prompts = [row[m.bool()].tolist() for row, m in zip(prompt_ids, prompt_mask)]  # left padding removed
        ids, logps = self.vllm_engine().generate(prompts, params, row_seeds)
        width = max(1, max(len(x) for x in ids))
        completion_ids = torch.full((len(ids), width), self.tokenizer.pad_token_id, dtype=torch.long)
        sampling_logps = torch.zeros(len(ids), width)  # (n, T)
        for i, (row, lp) in enumerate(zip(ids, logps)):
            completion_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            sampling_logps[i, : len(lp)] = torch.tensor(lp)
        return completion_ids.to(self.device), sampling_logps.to(self.device)

    def vllm_engine(self) -> Any:
        """The vLLM engine (``aha.rollout.vllm.VLLMRollout``), started at the first call, holding the policy's
        weights of the current step."""
        from aha.rollout.vllm import VLLMRollout

        a = self.args
        if self.vllm is None:
            if a.vllm_mode == "server":
                url = a.vllm_server_base_url or f"http://{a.vllm_server_host}:{a.vllm_server_port}"
                mode = {"server_base_url": url, "server_timeout": a.vllm_server_timeout}
            else:
                mode = {"max_model_len": self.max_model_len(), "gpu_memory_utilization": a.vllm_gpu_memory_utilization}
                if a.vllm_model_impl != "vllm":  # vLLM's LLM(model_impl=...); its default picks its own code
                    mode["model_impl"] = a.vllm_model_impl
            self.vllm = VLLMRollout(self.model, self.tokenizer, mode=a.vllm_mode, seed=a.seed, **mode)
            self.synced_step = self.state.global_step if a.vllm_mode == "colocate" else -1
        if self.synced_step != self.state.global_step:
            with full_weights(self.sharded_model):
                self.vllm.sync_weights(self.model)
            self.synced_step = self.state.global_step
        return self.vllm

    def max_model_len(self) -> int | None:
        """The colocate engine's context length: ``vllm_max_model_length``, else ``max_prompt_length`` (prompts are
        left-truncated to it) + ``max_completion_length``, at most the model's ``max_position_embeddings``; None (the
        model's own limit) when prompts are not truncated. Never the first batch's width: later prompts may be
        longer."""
        a = self.args
        if a.vllm_max_model_length is not None:
            return a.vllm_max_model_length
        if a.max_prompt_length is None:
            return None
        n = a.max_prompt_length + a.max_completion_length
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return min(n, limit) if isinstance(limit, int) else n


def sampling_params(args: Any) -> SamplingParams:
    """The rollouts' SamplingParams: the config's sampling fields, ``generation_kwargs`` over them (its other keys,
    and ``cache_implementation``, go to transformers' generate: backend "hf")."""
    names = {f.name for f in dataclasses.fields(SamplingParams)} - {"generate_kwargs"}
    extra = dict(getattr(args, "generation_kwargs", None) or {})
    fields = {k: extra.pop(k) for k in list(extra) if k in names}
    if getattr(args, "cache_implementation", None) is not None:
        extra["cache_implementation"] = args.cache_implementation
    base = {
        "max_new_tokens": args.max_completion_length,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p or 0.0,
        "repetition_penalty": args.repetition_penalty,
    }
    return SamplingParams(**(base | fields), generate_kwargs=extra)


def pad_width(t: torch.Tensor, multiple: int | None, value: float, left: bool) -> torch.Tensor:
    """`t` (n, W) padded with `value` on the left (prompts) or right (completions) to a width that is a multiple of
    `multiple` (``pad_to_multiple_of``; None: as it is)."""
    if not multiple or t.size(1) % multiple == 0:
        return t
    extra = multiple - t.size(1) % multiple
    return F.pad(t, (extra, 0) if left else (0, extra), value=value)


# ---------------------------------------------------------------------------------------------- batch algebra
def loss_mask(batch: Batch) -> torch.Tensor:
    """The tokens the loss, the KL and the entropy see, (n, T): the completion's, less the tool results and
    template glue of a multi-turn rollout (its forward still attends to them: ``completion_mask``)."""
    mask = batch["completion_mask"]
    return mask * batch["tool_mask"] if "tool_mask" in batch else mask


def tool_tensors(
    tools: ToolRollout, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A multi-turn rollout's completions as right-padded tensors, (n, T): ids, completion mask (every token of the
    conversation after the prompt), tool mask (the model's tokens) and the sampler's log-probs (vLLM; else None)."""
    n, width = len(tools.completion_ids), max(1, max((len(c) for c in tools.completion_ids), default=1))
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    tmask = torch.zeros((n, width), dtype=torch.long)
    logps = torch.zeros((n, width)) if tools.sampling_logps is not None else None
    for i, (c, m) in enumerate(zip(tools.completion_ids, tools.tool_mask)):
        ids[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        mask[i, : len(c)] = 1
        tmask[i, : len(m)] = torch.tensor(m, dtype=torch.long)
        if logps is not None:
            logps[i, : len(c)] = torch.tensor(tools.sampling_logps[i], dtype=torch.float)  # type: ignore[index]
    return ids, mask, tmask, logps


def select_groups(batch: Batch, keep: torch.Tensor, g: int) -> Batch:
    """The completions of the kept groups; keep: (P,) bool, every tensor (P*G, ...) -> (kept*G, ...)."""
    idx = keep.to(torch.bool).repeat_interleave(g)  # (P*G,)
    return {k: v[idx.to(v.device)] for k, v in batch.items()}  # type: ignore[return-value]


def concat_batches(batches: list[Batch], pad_id: int) -> Batch:
    """Concatenate rollout batches of different widths: prompts left-padded, completions right-padded."""
    out: dict[str, torch.Tensor] = {}
    for key in batches[0]:
        parts = [b[key] for b in batches]  # type: ignore[literal-required]
        if parts[0].dim() == 1:  # advantages (N,)
            out[key] = torch.cat(parts)
            continue
        width = max(p.size(1) for p in parts)
        value = pad_id if key.endswith("_ids") else 0
        left = key.startswith("prompt")
        out[key] = torch.cat(
            [F.pad(p, (width - p.size(1), 0) if left else (0, width - p.size(1)), value=value) for p in parts]
        )
    return out  # type: ignore[return-value]


def kept_rows(acc: Any, batch: Batch, keep: torch.Tensor, g: int, pad_id: int) -> Batch:
    """The rows of the kept groups, keep: (P,) bool over the round's global groups; ``batch`` holds this process's
    rows of the round (a contiguous share). Several processes: every process gets the kept rows of all of them,
    in global order (widths padded as ``concat_batches`` pads)."""
    if acc.num_processes == 1:
        return select_groups(batch, keep, g)
    local = shard(keep.numel() * g, acc.process_index, acc.num_processes)
    idx = keep.to(torch.bool).repeat_interleave(g)[local]  # this process's rows
    mine = {k: v[idx.to(v.device)] for k, v in batch.items()}
    return {  # type: ignore[return-value]
        k: gather_ragged(acc, v, pad_id if k.endswith("_ids") else 0, left=k.startswith("prompt"))
        for k, v in mine.items()
    }


def even_share(acc: Any, batch: Batch) -> Batch:
    """This process's share of a batch that every process holds whole: ceil(n / W) rows each, in rank order. When W
    does not divide n, the last shares are topped up with copies of row 0 that carry no loss (completion mask 0,
    advantage 0): exact for the token-level losses (dapo), one empty sequence in the sequence-averaged ones."""
    world = acc.num_processes
    n = batch["prompt_ids"].size(0)
    if world == 1:
        return batch
    per = -(-n // world)
    if n and per * world > n:
        fill = per * world - n
        extra = {k: v[:1].repeat(fill, *([1] * (v.dim() - 1))) for k, v in batch.items()}
        extra["completion_mask"].zero_()
        extra["advantages"].zero_()
        batch = {k: torch.cat([v, extra[k]]) for k, v in batch.items()}  # type: ignore[assignment]
    part = slice(acc.process_index * per, (acc.process_index + 1) * per)
    return {k: v[part] for k, v in batch.items()}  # type: ignore[return-value]
