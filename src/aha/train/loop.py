"""The training skeleton GRPO and SFT share: optimiser and schedule by name, accelerate set-up, accumulation
windows with ``no_sync``, the non-finite guard, step bookkeeping, logging, callbacks, checkpoints and resume.

The callbacks (``aha.train.callbacks``: ``transformers.TrainerCallback`` objects and aha's plain ``fn(state, row)``)
decide, through their ``TrainerControl``, when a step logs, evaluates, saves and when the run stops, as in
transformers' ``Trainer``; at the end of a run the summary row (``train_runtime``, ``train_loss``, ...) closes
``state.log_history``.

A trainer builds a :class:`TrainingLoop` and drives it::

    loop = TrainingLoop(model, args, phase="sft", total_steps=n, ..., owners={"batches": batches})
    loop.resume(spec)                        # every owner's state back from the newest checkpoint
    with loop.running():                     # the progress bar
        while not loop.done:
            window = [partial(micro_step, mb) for mb in batches.window()]   # one accumulation window
            grad_norm = loop.optimizer_step(window)                          # forward/backward each, one step
            loop.end_step(grad_norm, info="loss 0.123")                      # count, log, call back, save

Every logged row goes to ``OUTPUT_DIR/metrics.jsonl`` and to the experiment trackers ``report_to`` names
(:mod:`aha.train.tracking`, opened by :meth:`TrainingLoop.running` and closed when it ends); ``on_save`` hooks run
after each periodic checkpoint (the Hub push of GRPO's ``hub_strategy``).

A checkpoint is the sum of the owners' ``state_dict()``: the loop's own (optimiser, scheduler, the metrics of the
logging window), :class:`TrainerState`, the metrics file's length, the process's RNGs, and each registered owner
(the trainer's batch source: data order, sampling generator, the batch in flight). An owner with a
``local_state_dict()`` also keeps a part per process (under several processes, each process's rows of the batch in
flight); it gets back its own with ``load_local_state_dict(states, rank)``.

Mixed precision (``precision``: "bf16" / "fp16", see :mod:`aha.train.precision`): each micro-batch's forward runs
under autocast, its backward outside it; the parameters and the optimiser state stay fp32. fp16 goes through
accelerate's gradient scaler (the optimiser prepared by accelerate): a step whose scaled gradients overflow is
skipped by the scaler, not an error, and counted in ``fp16/nonfinite``; the scaler's state is checkpointed.

Interrupts (:mod:`aha.train.interrupts`): under :func:`~aha.train.interrupts.graceful_signals` (the command line)
the steps of :meth:`TrainingLoop.running` are a stoppable stretch. A SIGINT/SIGTERM lets the optimiser step in
flight finish (a GRPO step includes the generation it starts with); at the step boundary the loop saves
``checkpoint-<step>`` (unless that step was just saved) and raises :class:`~aha.train.interrupts.Interrupted`.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import torch
import transformers
from transformers import get_scheduler

from aha.console import console, progress
from aha.train import checkpoint, interrupts
from aha.train.callbacks import Callbacks
from aha.train.distributed import all_true, average_gradients, full_state_dict, gather_objects
from aha.train.metrics import MetricsLogger
from aha.train.precision import autocast
from aha.train.tracking import Trackers

COUNTERS = ("/errors", "/nonfinite")  # metrics summed over the logging window (the others are averaged)
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop")
# parameter names weight decay skips (transformers' rule: biases and norms)
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]

# one micro-batch of an accumulation window, run lazily by the loop: (loss to backward, metrics to log); the
# metric "loss" (when given) is what the log shows for it, else loss.item(); "flos" (when given) is the micro-batch's
# training FLOPs, added to state.total_flos rather than logged
MicroStep = Callable[[], tuple[torch.Tensor, dict[str, float]]]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainerState(transformers.TrainerState):
    """transformers' ``TrainerState`` (what ``trainer.state`` is in TRL and what callbacks and reward functions get:
    ``global_step``, ``epoch``, ``max_steps``, ``log_history``, ``total_flos``, ...), plus the part a checkpoint
    keeps."""

    epoch: float = 0.0  # transformers' default is 0 too, but typed as an optional

    def state_dict(self) -> dict[str, Any]:
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "log_history": self.log_history,
            "total_flos": self.total_flos,
            "num_input_tokens_seen": self.num_input_tokens_seen,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.global_step, self.epoch = int(state["global_step"]), float(state["epoch"])
        self.log_history = list(state["log_history"])
        self.total_flos = float(state.get("total_flos", 0.0))  # checkpoints before these fields: 0
        self.num_input_tokens_seen = int(state.get("num_input_tokens_seen", 0))


class TrainOutput(transformers.trainer_utils.TrainOutput):
    """What ``train()`` returns: transformers' ``TrainOutput`` (``global_step``, ``training_loss``, ``metrics``: the
    summary row's). aha's ``train()`` used to return the :class:`TrainerState`; its fields (``log_history``,
    ``epoch``, ...) still read through, from ``state``."""

    def __new__(cls, global_step: int, training_loss: float, metrics: dict[str, float], state: Any = None):
        out = super().__new__(cls, global_step, training_loss, metrics)
        out.state = state
        return out

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if name == "state" or state is None:
            raise AttributeError(name)
        return getattr(state, name)


def make_optimizer(args: Any, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser ``args.optim`` names (transformers' ``OptimizerNames``: ``adamw_torch``, ``adamw_torch_fused``,
    ``adafactor``, ``sgd``, ``adagrad``, ``rmsprop``, the bitsandbytes ones, ...), built by transformers from
    ``learning_rate``, ``adam_beta1``/``adam_beta2``/``adam_epsilon`` and ``optim_args``, over the trainable
    parameters of `model`; ``weight_decay`` applies to every weight but biases and norms, as in transformers."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import get_parameter_names
    from transformers.training_args import OptimizerNames

    name = args.optim
    if name not in {o.value for o in OptimizerNames}:
        raise ValueError(f"optim {name!r} is not one of transformers' OptimizerNames (e.g. {', '.join(OPTIMIZERS)})")
    spec = SimpleNamespace(
        optim=OptimizerNames(name),
        optim_args=getattr(args, "optim_args", None),
        optim_target_modules=getattr(args, "optim_target_modules", None),
        learning_rate=args.learning_rate,
        adam_beta1=getattr(args, "adam_beta1", 0.9),
        adam_beta2=getattr(args, "adam_beta2", 0.999),
        adam_epsilon=getattr(args, "adam_epsilon", 1e-8),
        weight_decay=args.weight_decay,
    )
    try:
        cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(spec, model)
    except ImportError as err:
        raise ValueError(f"optim={name!r}: {err}") from None
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], NO_DECAY))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    return cls([g for g in groups if g["params"]], **kwargs)


def warmup_steps(args: Any, total_steps: int) -> int:
    """Warm-up steps: ``warmup_steps`` (>= 1: steps, in (0, 1): that fraction of the run, rounded up, as
    transformers does), else aha's ``warmup_ratio`` of the run."""
    w = float(args.warmup_steps)
    if w >= 1:
        return int(w)
    if w > 0:
        return math.ceil(w * total_steps)
    return int(getattr(args, "warmup_ratio", 0.0) * total_steps)


def empty_device_cache(device: torch.device) -> None:
    """Hand the accelerator's cached, unused memory back (``torch_empty_cache_steps``); nothing to do on a CPU."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


class TrainingLoop:
    """One run's optimiser, schedule, step count, logging and checkpoints (see the module docstring).

    `args` holds the optimisation fields both configs share (``learning_rate``, ``lr_scheduler_type``,
    ``warmup_steps``, ``warmup_ratio``, ``weight_decay``, ``adam_beta1``/``adam_beta2``, ``optim``,
    ``max_grad_norm``, ``gradient_accumulation_steps``, ``logging_steps``, ``save_steps``, ``save_total_limit``,
    ``output_dir``). `loss_model_bypasses_ddp`: the trainer's loss forward runs on the unwrapped model (GRPO's fast
    path), so the window's gradients are averaged by hand before the step. `precision`: accelerate's
    ``mixed_precision`` of the run ("no", "bf16", "fp16"), which `accelerator` must have been made with.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        args: Any,
        *,
        phase: str,
        total_steps: int,
        accelerator: Any,
        state: TrainerState,
        tokenizer: Any,
        logger: MetricsLogger | None,
        callbacks: Callbacks | Sequence[Any] = (),
        owners: dict[str, Stateful] | None = None,
        description: str | None = None,
        precision: str = "no",
        trackers: Trackers | None = None,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        # accelerate keeps one precision per process (the last Accelerator made sets it); the loop's autocast is its
        # own, but fp16's unscaling and DDP's prepared forward read accelerate's, which must still be this run's
        if accelerator.mixed_precision != precision and (precision == "fp16" or accelerator.num_processes > 1):
            raise ValueError(
                f"{description or phase}: the run trains in mixed precision {precision!r} but accelerate's process-wide"
                f" state now says {accelerator.mixed_precision!r} (another trainer or Accelerator was made since this"
                " one): make each trainer just before its train()"
            )
        self.model, self.args, self.phase, self.total = model, args, phase, total_steps
        self.precision = precision
        self.acc, self.state, self.tokenizer, self.logger = accelerator, state, tokenizer, logger
        if not isinstance(callbacks, Callbacks):
            callbacks = Callbacks(callbacks, args, state, model, tokenizer)
        self.callbacks, self.owners, self.evaluate = callbacks, dict(owners or {}), evaluate
        self.trackers = trackers  # report_to's trackers (first process only), opened by running()
        self.on_save: list[Callable[[Path], None]] = []  # called with each periodic checkpoint's path (first process)
        self.description = description or phase.upper()
        self.output_dir = Path(args.output_dir)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(args, model)
        self.train_model = model  # what the loss's backward reaches: the model, or its DDP/FSDP wrapper
        if accelerator.num_processes > 1:  # DDP (or FSDP from the accelerate config): gradients averaged in backward
            self.train_model, self.optimizer = accelerator.prepare(model, self.optimizer)
            params = [p for p in self.train_model.parameters() if p.requires_grad]
        elif accelerator.scaler is not None:  # fp16: the scaler unscales in clip_grad_norm_ and steps the optimiser
            self.optimizer = accelerator.prepare_optimizer(self.optimizer)
        self.scaler = accelerator.scaler  # fp16's gradient scaler (None otherwise)
        self.params = params
        kwargs = getattr(args, "lr_scheduler_kwargs", None) or {}
        try:
            self.scheduler = get_scheduler(
                args.lr_scheduler_type,
                self.optimizer,
                warmup_steps(args, total_steps),
                total_steps,
                scheduler_specific_kwargs=kwargs,
            )
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"lr_scheduler_type={args.lr_scheduler_type!r} with lr_scheduler_kwargs={kwargs}: {err}"
            ) from None
        self.callbacks.bind(
            model=model, processing_class=tokenizer, optimizer=self.optimizer, lr_scheduler=self.scheduler
        )
        if run_name := getattr(args, "run_name", None):
            self.description = run_name
        set_log_level(args, accelerator)
        self.loss_model_bypasses_ddp = False
        self.pending: dict[str, list[float]] = defaultdict(list)  # metrics since the last logged row
        self.resumed_from: Path | None = None
        self.saved_step: int | None = None  # the step of this run's newest checkpoint
        self._bar: Any = None
        self._task: Any = None
        self.summary: dict[str, float] = {}  # the summary row's metrics, once the run is over
        self._step_start = time.perf_counter()
        self._train_start = time.time()
        self._first_step = 0  # the step this train() started from (a resumed run: the checkpoint's)
        self._last_logged = -1  # the step of the last logged row
        self._step_losses: list[float] = []  # each optimiser step's mean micro-batch loss in this train(): train_loss

    @classmethod
    def of(
        cls,
        trainer: Any,
        *,
        phase: str,
        owners: dict[str, Stateful],
        description: str,
        evaluate: Callable[[], dict[str, float]] | None = None,
    ) -> TrainingLoop:
        """The loop of `trainer` (GRPOTrainer, SFTTrainer: ``model``, ``args``, ``accelerator``, ``state``,
        ``tokenizer``, ``callbacks``, ``precision``, ``total_steps()``); the first process writes ``OUTPUT_DIR/metrics.jsonl``
        unless the trainer was given a ``logger``, and reports to the trackers of ``args.report_to``. `evaluate`: what
        an evaluation during training runs (when the callbacks' control asks for one: ``eval_strategy``,
        ``eval_on_start``, a callback), None without an eval set."""
        acc, out = trainer.accelerator, Path(trainer.args.output_dir)
        trackers = None
        if acc.is_main_process:  # only the first process writes (metrics, checkpoints, the model)
            out.mkdir(parents=True, exist_ok=True)
            if trainer.logger is None:
                trainer.logger = MetricsLogger(out / "metrics.jsonl")
            trackers = Trackers.of(trainer.args, _plain(trainer.args))
        return cls(
            trainer.model,
            trainer.args,
            phase=phase,
            total_steps=trainer.total_steps(),
            accelerator=acc,
            state=trainer.state,
            tokenizer=trainer.tokenizer,
            logger=trainer.logger if acc.is_main_process else None,
            callbacks=trainer.callbacks,
            owners=owners,
            description=description,
            precision=trainer.precision,
            trackers=trackers,
            evaluate=evaluate,
        )

    @property
    def done(self) -> bool:
        """The run has reached its last step, or a callback set ``control.should_training_stop``."""
        return self.state.global_step >= self.total or self.callbacks.control.should_training_stop

    # ------------------------------------------------------------------------------------------ the step
    def optimizer_step(self, window: Sequence[MicroStep]) -> float:
        """Forward and backward every micro-batch of one accumulation window (gradients synchronised on the last
        only), then clip and take one optimiser step. A non-finite loss or gradient norm on any process leaves the
        weights as they are, makes sure a checkpoint of the last good state exists, and raises. Returns the
        gradient norm."""
        self.begin_step()
        marks = {k: len(v) for k, v in self.pending.items()}  # where this window's metrics start
        losses: list[float] = []
        for i, micro in enumerate(window):
            with autocast(self.precision, self.acc.device):  # the forward in bf16/fp16 (a no-op in fp32)
                loss, metrics = micro()
            shown = float(metrics.pop("loss", loss.item()))
            self.state.total_flos += float(metrics.pop("flos", 0.0))
            losses.append(shown)
            if not all_true(self.acc, math.isfinite(shown)):  # every process stops together
                losses[-1] = float("nan")
                break
            last = i == len(window) - 1
            with contextlib.nullcontext() if last else self.acc.no_sync(self.train_model):
                (loss if self.scaler is None else self.scaler.scale(loss)).backward()
            self.pending["loss"].append(shown)
            for k, v in metrics.items():
                self.pending[k].append(v)
        if self.loss_model_bypasses_ddp:
            average_gradients(self.params, self.acc.num_processes)
        max_norm = self.args.max_grad_norm
        max_norm = max_norm if max_norm is not None and max_norm > 0 else math.inf  # <= 0: measured, not clipped
        grad_norm = float(self.acc.clip_grad_norm_(self.params, max_norm))  # fp16: unscaled first
        if self.scaler is not None and all(map(math.isfinite, losses)) and not math.isfinite(grad_norm):
            return self._skip_overflow()
        if not all(map(math.isfinite, [*losses, grad_norm])):
            self._fail_nonfinite("loss" if not all(map(math.isfinite, losses)) else "gradient norm", marks)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._step_losses.append(sum(losses) / len(losses))
        return grad_norm

    def _skip_overflow(self) -> float:
        """fp16: the scaled gradients overflowed. The scaler's step skips the update and lowers the scale; the
        learning-rate schedule does not advance (as transformers' Trainer does); the step counts as done."""
        self.optimizer.step()  # accelerate's optimiser: GradScaler.step (skipped: inf found) and update
        self.optimizer.zero_grad(set_to_none=True)
        self.pending["fp16/nonfinite"].append(1.0)
        return float("nan")

    def begin_step(self) -> None:
        """Callbacks' ``on_step_begin`` (it lowers the log/evaluate/save flags); ``optimizer_step`` calls it, a step
        with no update calls it before its ``end_step``."""
        self.callbacks.event("on_step_begin")

    def end_step(self, grad_norm: float | None, info: str = "", epoch: float | None = None) -> None:
        """Bookkeeping after an optimiser step (`grad_norm` None: a step with no update): count it, advance the bar,
        then callbacks' ``on_step_end`` and what the control asks for: by default (:class:`FlowCallback`) log every
        ``logging_steps`` (and at the end), evaluate every ``eval_steps`` (``eval_strategy="steps"``), save every
        ``save_steps``."""
        self.state.global_step += 1
        if epoch is not None:
            self.state.epoch = epoch
        if grad_norm is not None:
            self.pending["grad_norm"].append(grad_norm)
        now = time.perf_counter()
        self.pending["step_time"].append(now - self._step_start)
        self._step_start = now
        if self._bar is not None:
            self._bar.update(self._task, advance=1, info=info)
        self.callbacks.event("on_step_end")
        self.act()
        if getattr(self.args, "logging_strategy", "steps") == "no":
            self.pending.clear()  # nothing is logged: keep no window
        empty_every = getattr(self.args, "torch_empty_cache_steps", None)
        if empty_every and self.state.global_step % empty_every == 0:
            empty_device_cache(self.acc.device)
        self.stop_if_requested()

    def end_epoch(self) -> None:
        """A pass over the training data is over: callbacks' ``on_epoch_end`` and what the control asks for
        (``eval_strategy="epoch"``: an evaluation), then ``on_epoch_begin`` of the next unless the run is done."""
        self.callbacks.event("on_epoch_end")
        self.act()
        if not self.done:
            self.callbacks.event("on_epoch_begin")

    def act(self) -> None:
        """Log, evaluate, save, as the callbacks' control asks (transformers' order); each flag is lowered by the
        event that follows it (``on_log``, ``on_evaluate``, ``on_save``)."""
        control = self.callbacks.control
        if control.should_log:
            if self.pending or self.state.global_step != self._last_logged:
                self.log_window()
            control.should_log = False
        if self.callbacks.control.should_evaluate:
            if self.evaluate is None:
                raise ValueError(
                    f"{self.description}: control.should_evaluate was set (by eval_strategy or a callback) but this "
                    "trainer has no eval_dataset: pass eval_dataset=... or leave the flag alone"
                )
            self.evaluate()
            self.callbacks.control.should_evaluate = False
        if self.callbacks.control.should_save:
            path = self.save()
            for hook in self.on_save if path is not None else ():
                hook(path)
            self.callbacks.event("on_save")
        self._step_start = time.perf_counter()  # an evaluation or a save is not the next step's time

    def log_window(self) -> None:
        """One metrics row: each metric averaged over the logging window (counters summed), NaN and inf dropped
        (unless ``logging_nan_inf_filter`` is off: then they show)."""
        row: dict[str, Any] = {"phase": self.phase, "step": self.state.global_step, "epoch": round(self.state.epoch, 4)}
        keep_all = not getattr(self.args, "logging_nan_inf_filter", True)
        for k, vs in self.pending.items():
            vs = [v for v in vs if keep_all or math.isfinite(v)]
            row[k] = sum(vs) if k.endswith(COUNTERS) else sum(vs) / len(vs) if vs else float("nan")
        row["learning_rate"] = self.scheduler.get_last_lr()[0]
        self.pending.clear()
        self._last_logged = self.state.global_step
        log_row(row, self.state, self.logger, self.callbacks, trackers=self.trackers)

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table (GRPO's completions) to the trackers that show tables, at the current step."""
        if self.trackers is not None:
            self.trackers.log_table(name, columns, rows, self.state.global_step)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """The run, as ``Trainer.train`` frames it: the state's schedule, ``on_train_begin``, an evaluation first
        with ``eval_on_start``, ``on_epoch_begin``; the progress bar over the steps, a stretch that a signal stops at
        a step boundary (see the module docstring), and the trackers' runs (opened at the step it starts from, after
        any resume; closed when it ends, also on an error); at the end (not on an error) the summary row
        (``train_runtime``, ``train_samples_per_second``, ``train_steps_per_second``, ``total_flos`` when counted,
        ``train_loss``) and ``on_train_end``."""
        a, acc = self.args, self.acc
        batch = a.per_device_train_batch_size * a.gradient_accumulation_steps * acc.num_processes
        epochs = getattr(a, "num_train_epochs", 1.0)
        self.callbacks.start(
            a, self.total, a.per_device_train_batch_size, epochs, acc.is_main_process, acc.is_local_main_process
        )
        self._train_start, self._first_step, self._step_losses = time.time(), self.state.global_step, []
        if self.trackers is not None:
            self.trackers.start(self.state.global_step)
        try:
            with interrupts.stoppable():
                self.callbacks.event("on_train_begin")
                if getattr(a, "eval_on_start", False):
                    if self.evaluate is None:
                        raise ValueError(f"{self.description}: eval_on_start=True needs an eval_dataset")
                    self.evaluate()
                self.callbacks.event("on_epoch_begin")
                self._step_start = time.perf_counter()
                with progress(disable=bool(getattr(a, "disable_tqdm", False))) as bar:
                    self._bar = bar
                    self._task = bar.add_task(
                        self.description, total=self.total, info="", completed=self.state.global_step
                    )
                    try:
                        yield
                    finally:
                        self._bar = None
                self.stop_if_requested()  # a signal during the last step's tail (after its end_step)
            self.log_summary(batch)
            self.callbacks.event("on_train_end")
        finally:
            if self.trackers is not None:
                self.trackers.close()

    def stop_if_requested(self) -> None:
        """At a step boundary: when a signal asked the run to stop (on any process), save the state now (unless
        this step's checkpoint was just written) and raise :class:`~aha.train.interrupts.Interrupted`."""
        signum = interrupts.requested()
        if all_true(self.acc, signum is None):
            return
        step = self.state.global_step
        path = self.output_dir / f"checkpoint-{step}"
        if self.saved_step != step:
            self.save()
        signum = signum or signal.SIGTERM  # None here: the signal reached another process (the launcher's SIGTERM)
        raise interrupts.Interrupted(signum, saved=path, after=f"step {step}")

    def log_summary(self, batch: int) -> dict[str, float]:
        """The last row of ``log_history`` (and an ``on_log``), as transformers' ``Trainer`` writes it; returns its
        metrics. `batch`: the samples of one optimiser step (transformers' total train batch size)."""
        runtime = time.time() - self._train_start
        steps = self.state.global_step - self._first_step
        metrics: dict[str, float] = {"train_runtime": round(runtime, 4)}
        if runtime > 0:
            metrics["train_samples_per_second"] = round(steps * batch / runtime, 3)
            metrics["train_steps_per_second"] = round(steps / runtime, 3)
        if self.state.total_flos > 0:
            metrics["total_flos"] = self.state.total_flos
        losses = [v for v in self._step_losses if math.isfinite(v)]
        metrics["train_loss"] = sum(losses) / len(losses) if losses else 0.0
        self.summary = metrics
        row = {"phase": self.phase, "step": self.state.global_step, "epoch": round(self.state.epoch, 4), **metrics}
        # not into metrics.jsonl, whose rows (the steps, the evaluations) a resumed run writes again identically; nor
        # to aha's plain callables, which read a step's metrics from every row they get
        log_row(row, self.state, None, self.callbacks, plain=False)
        return metrics

    def print(self, text: str) -> None:
        (self._bar.console if self._bar is not None else console).print(text)

    # ------------------------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "pending": dict(self.pending),
        }
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.pending = defaultdict(list, state["pending"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])

    def save(self, pending: dict[str, list[float]] | None = None) -> Path | None:
        """Write ``OUTPUT_DIR/checkpoint-<step>`` (every process takes part; the first one writes). `pending`: the
        logging window to store instead of the current one (the non-finite guard drops the failed window's)."""
        acc = self.acc
        weights = full_state_dict(acc, self.train_model)  # FSDP: gathered on every process
        local = {k: o.local_state_dict() for k, o in self.owners.items() if hasattr(o, "local_state_dict")}
        by_process = gather_objects(acc, local) if local else None
        path = None
        if acc.is_main_process:
            loop = self.state_dict()
            if pending is not None:
                loop["pending"] = pending
            only_model = bool(getattr(self.args, "save_only_model", False))
            tensors = {
                "optimizer.pt": {k: loop.pop(k) for k in ("optimizer", "scheduler", "scaler") if k in loop},
                "rng_state.pt": checkpoint.global_rng_state(),
                "loop_state.pt": {
                    "loop": loop,
                    "owners": {k: o.state_dict() for k, o in self.owners.items()},
                    "by_process": by_process,
                },
            }
            if only_model:  # the weights (and tokenizer) only: an export, not a point to resume from
                tensors = {}
            metrics = self.logger.state_dict() if self.logger is not None else {}
            meta = {**self.state.state_dict(), **metrics, "phase": self.phase, "args": _plain(self.args)}
            meta["save_only_model"] = only_model
            path = checkpoint.write_checkpoint(
                self.output_dir,
                self.state.global_step,
                model=self.model,
                tokenizer=self.tokenizer,
                files=tensors,
                meta=meta,
                state_dict=weights,
                save_total_limit=self.args.save_total_limit,
            )
        acc.wait_for_everyone()
        self.saved_step = self.state.global_step
        return path

    def resume(self, spec: str | bool | Path | None) -> Path | None:
        """Restore the weights and every owner's state from the checkpoint `spec` names ("auto"/True: the newest;
        a path; None/False: start fresh) and truncate metrics.jsonl back to it. Returns the checkpoint's path."""
        if self.acc.is_main_process:
            checkpoint.remove_stale(self.output_dir)
        path = checkpoint.resolve_checkpoint(self.output_dir, spec)
        if path is None:
            return None
        if self.acc.distributed_type == "FSDP":
            raise ValueError("resume_from_checkpoint: not supported under FSDP yet (the optimiser state is sharded)")
        files, meta = checkpoint.read_checkpoint(path)
        if meta.get("save_only_model"):
            raise ValueError(
                f"resume_from_checkpoint: {path} was saved with save_only_model=True and holds the weights only (no "
                "optimiser, schedule or data position): start a new run from it as a model, or train with "
                "save_only_model=False to get checkpoints that resume"
            )
        checkpoint.load_weights(self.model, path)
        loop = files["loop_state.pt"]
        self.load_state_dict({**files["optimizer.pt"], **loop["loop"]})
        self.state.load_state_dict(meta)
        if self.logger is not None:
            self.logger.load_state_dict(meta)
        checkpoint.set_global_rng_state(files["rng_state.pt"])
        for name, owner in self.owners.items():
            owner.load_state_dict(loop["owners"][name])
            if hasattr(owner, "load_local_state_dict"):
                states = [p[name] for p in loop["by_process"]] if loop["by_process"] else None
                owner.load_local_state_dict(states, self.acc.process_index, self.acc.num_processes, path)
        console.print(f"[bold]{self.description}[/bold]: resumed from {path} at step {self.state.global_step}")
        self.resumed_from = path
        self.saved_step = self.state.global_step
        return path

    def _fail_nonfinite(self, what: str, marks: dict[str, int]) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        step = self.state.global_step
        path = self.output_dir / f"checkpoint-{step}"
        if not checkpoint.is_complete(path):
            self.save(pending={k: v[: marks[k]] for k, v in self.pending.items() if marks.get(k)})
        raise RuntimeError(
            f"{self.description}: non-finite {what} in optimiser step {step + 1}; the update was not applied and the "
            f"last good state (after step {step}) is saved in {path}. Lower learning_rate or max_grad_norm, or check "
            "the model and data (and rewards) for NaN/inf; resume with resume_from_checkpoint='auto' (or --resume)"
        )


def set_log_level(args: Any, accelerator: Any) -> None:
    """transformers' logging verbosity for this process: ``log_level`` on the main process (of each node with
    ``log_on_each_node``, else of the run), ``log_level_replica`` on the others; "passive" leaves it as it is."""
    from transformers.utils import logging as hf_logging

    main = accelerator.is_local_main_process if getattr(args, "log_on_each_node", True) else accelerator.is_main_process
    level = getattr(args, "log_level" if main else "log_level_replica", "passive")
    if level != "passive":
        hf_logging.set_verbosity(hf_logging.log_levels[level])


def log_row(
    row: dict[str, Any],
    state: TrainerState,
    logger: MetricsLogger | None,
    callbacks: Callbacks,
    plain: bool = True,
    trackers: Trackers | None = None,
) -> None:
    """One logged row (training window, evaluation, summary): into ``state.log_history``, the metrics file (when
    this process writes it), the trackers of ``report_to`` and the callbacks (``on_log``; the plain ones unless not
    `plain`)."""
    state.log_history.append(row)
    if logger is not None:
        logger.log(row)
    if trackers is not None:
        trackers.log(row, state.global_step)
    callbacks.log(row, plain=plain)


def _plain(args: Any) -> dict[str, Any]:
    to_dict = getattr(args, "to_dict", None)
    if to_dict is not None:
        return to_dict()
    import dataclasses

    return dataclasses.asdict(args)
