"""A trainer's callbacks, run as transformers' ``Trainer`` runs them: ``transformers.TrainerCallback`` objects get
every event (``on_init_end``, ``on_train_begin``, ``on_epoch_begin``, ``on_step_begin``, ``on_step_end``,
``on_epoch_end``, ``on_log``, ``on_evaluate``, ``on_save``, ``on_train_end``) with the trainer's config as ``args``,
its :class:`aha.train.loop.TrainerState` (a ``transformers.TrainerState``) and one ``transformers.TrainerControl``,
through transformers' own ``CallbackHandler``; aha's plain callables ``fn(state, row)`` get every logged row.

The flow — when to log, evaluate, save and stop — is :class:`FlowCallback`, first in the handler as transformers'
``DefaultFlowCallback`` (which it subclasses) is in a ``Trainer``: it raises the ``TrainerControl`` flags, a later
callback may raise or lower them, and the training loop acts on them after ``on_step_end`` / ``on_epoch_end``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from transformers import DefaultFlowCallback, TrainerCallback, TrainerControl
from transformers.trainer_callback import CallbackHandler

PlainCallback = Callable[[Any, dict[str, Any]], None]  # aha's own: fn(state, row) for every logged row


class FlowCallback(DefaultFlowCallback):
    """aha's schedule, from the config's strategies as transformers' ``DefaultFlowCallback`` reads them: log every
    ``logging_steps`` (``logging_strategy="steps"``), at each epoch's end (``"epoch"``), never (``"no"``), at step 1
    with ``logging_first_step``, and at the last step unless ``"no"``; evaluate every ``eval_steps``
    (``eval_strategy="steps"``, and at the last step, as transformers does) or at each epoch's end
    (``eval_strategy="epoch"``), not before ``eval_delay`` (steps; epochs with "epoch"); save every ``save_steps``
    (``save_strategy="steps"``) or at each epoch's end (``"epoch"``); stop at ``state.max_steps``."""

    def on_step_end(self, args, state, control, **kwargs):
        step, last = state.global_step, state.global_step >= state.max_steps
        logging = getattr(args, "logging_strategy", "steps")
        if (
            (logging == "steps" and step % state.logging_steps == 0)
            or (last and logging != "no")
            or (step == 1 and getattr(args, "logging_first_step", False))
        ):
            control.should_log = True
        delayed = step < getattr(args, "eval_delay", 0)  # transformers' eval_delay: no evaluation before it
        if getattr(args, "eval_strategy", "no") == "steps" and (step % state.eval_steps == 0 or last) and not delayed:
            control.should_evaluate = True
        if getattr(args, "save_strategy", "steps") == "steps" and step % state.save_steps == 0:
            control.should_save = True
        if last:
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        if getattr(args, "logging_strategy", "steps") == "epoch":
            control.should_log = True
        if getattr(args, "eval_strategy", "no") == "epoch" and state.epoch >= getattr(args, "eval_delay", 0):
            control.should_evaluate = True
        if getattr(args, "save_strategy", "steps") == "epoch":
            control.should_save = True
        return control


def every(value: float, total_steps: int) -> int:
    """``logging_steps`` / ``save_steps`` / ``eval_steps`` as a step interval: >= 1 is steps, in (0, 1) that
    fraction of the run, rounded up (as transformers' ``Trainer`` does)."""
    return int(value) if value >= 1 else max(1, math.ceil(value * total_steps))


class Callbacks:
    """The callbacks of one trainer (see the module docstring). `callbacks`: ``TrainerCallback`` objects or
    classes (instantiated, as transformers does) and aha's plain ``fn(state, row)`` callables, in any mix."""

    def __init__(self, callbacks: Iterable[Any], args: Any, state: Any, model: Any = None, tokenizer: Any = None):
        self.args, self.state = args, state
        self.control = TrainerControl()
        self.plain: list[PlainCallback] = []
        self.handler = CallbackHandler([FlowCallback()], model, tokenizer, None, None)
        for cb in callbacks:
            self.add(cb)

    # ------------------------------------------------------------------------------------------ the list
    def add(self, callback: Any) -> None:
        """As ``Trainer.add_callback``: a ``TrainerCallback`` class or object, or a plain ``fn(state, row)``."""
        if _is_trainer_callback(callback):
            self.handler.add_callback(callback)
        elif callable(callback):
            self.plain.append(callback)
        else:
            raise ValueError(
                f"callbacks: {callback!r} is neither a transformers.TrainerCallback nor a callable fn(state, row)"
            )

    def pop(self, callback: Any) -> Any:
        """As ``Trainer.pop_callback``: remove and return the first match (by class or object), None if none."""
        if _is_trainer_callback(callback):
            return self.handler.pop_callback(callback)
        if callback in self.plain:
            self.plain.remove(callback)
            return callback
        return None

    def remove(self, callback: Any) -> None:
        """As ``Trainer.remove_callback``: remove the first match (by class or object); an object not there is
        a ValueError, as in transformers."""
        if _is_trainer_callback(callback):
            self.handler.remove_callback(callback)
        else:
            self.plain.remove(callback)

    @property
    def objects(self) -> list[TrainerCallback]:
        """The ``TrainerCallback`` objects in call order (``FlowCallback`` first unless removed)."""
        return self.handler.callbacks

    def bind(self, **objects: Any) -> None:
        """What the events pass as keyword arguments besides args/state/control: ``model``, ``processing_class``,
        ``optimizer``, ``lr_scheduler``."""
        for k, v in objects.items():
            setattr(self.handler, k, v)

    # ------------------------------------------------------------------------------------------ events
    def event(self, name: str, **kwargs: Any) -> TrainerControl:
        """Run ``on_<name>`` of every ``TrainerCallback`` (transformers' handler: it resets the flags the event
        owns); returns the control, which a callback may replace."""
        self.control = getattr(self.handler, name)(self.args, self.state, self.control, **kwargs)
        return self.control

    def log(self, row: dict[str, Any], plain: bool = True) -> None:
        """A logged row: every plain callable gets ``(state, row)`` (if `plain`), every ``TrainerCallback``
        ``on_log`` with the row's metrics as ``logs`` (transformers' form: ``epoch`` in, ``step`` and aha's
        ``phase`` out)."""
        for cb in self.plain if plain else ():
            cb(self.state, row)
        logs = {k: v for k, v in row.items() if k not in ("step", "phase")}
        self.event("on_log", logs=logs)

    # ------------------------------------------------------------------------------------------ the schedule
    def start(self, args: Any, max_steps: int, batch_size: int, epochs: float, main: bool, local_main: bool) -> None:
        """The state's schedule fields, as ``Trainer.train`` sets them before ``on_train_begin``."""
        s = self.state
        s.max_steps, s.train_batch_size, s.num_train_epochs = max_steps, batch_size, math.ceil(epochs)
        s.logging_steps, s.save_steps = every(args.logging_steps, max_steps), every(args.save_steps, max_steps)
        s.eval_steps = every(getattr(args, "eval_steps", None) or args.logging_steps, max_steps)
        s.is_world_process_zero, s.is_local_process_zero = main, local_main


def _is_trainer_callback(cb: Any) -> bool:
    return isinstance(cb, TrainerCallback) or (isinstance(cb, type) and issubclass(cb, TrainerCallback))
