"""reasoning-gym's procedural generators as aha tasks: ``rg:<name>`` and weighted mixes ``rg:[a, b]``.

`reasoning-gym <https://github.com/open-thought/reasoning-gym>`_ (``pip install "aha[rg]"``) has about a hundred
generators (``chain_sum``, ``countdown``, ``sudoku``, ...), each with a configuration and a verifier
``score_answer(answer, entry) -> float`` in [0, 1]. As a data spec::

    dataset: {task: "rg:chain_sum", n: 1000, seed: 0, config: {min_terms: 2, max_terms: 2}}
    dataset: {task: "rg:[chain_sum, countdown]", weights: [3, 1], config: {countdown: {max_target: 50}}}

`config` is the generator's configuration (``aha tasks show rg:NAME`` lists its fields); for a mix it maps some of
the mix's generators to theirs. A mix is reasoning-gym's ``composite`` data set: each row's generator is drawn with
the given `weights` (equal by default). ``size`` and ``seed`` are the spec's ``n`` and ``seed``, never config keys.

Splits: each split reads its own seeded stream of the generator, and a question (its generator and text) belongs
to the held-out ``eval`` split iff :func:`aha.tasks.base.in_eval_split` says so, as for aha's own tasks: training
rows (``sft``, ``train``) and evaluation rows never share a question, whatever the sizes and seeds. (Two phrasings
of the same problem are two questions: generators with several templates are partitioned by the text shown.)

Rows: the user's message is the generator's question followed by the task instruction (aha's ``<think>``/
``<answer>`` format; ``instruction: false`` leaves the question bare), ``answer`` is the generator's reference answer
(None for the few generators that accept many answers and give none), ``rg_entry`` the generator's entry as JSON and
``rg_config`` the generator's name and configuration as JSON: what the verifier needs. reasoning-gym has answers,
not worked solutions, so the ``sft`` split's completion is ``<think></think><answer>ANSWER</answer>``: a cold start
in the format that leaves the thinking to reinforcement learning.

Verifier: :func:`score` reads the completion's final answer with :func:`aha.data.answers.final_answer` and calls the
generator's ``score_answer`` on the row's entry. The ``rg_score`` reward is that score (partial credit included);
``correctness`` and the evaluator count a completion correct when it scores at least :data:`CORRECT_SCORE` (1.0),
so a partly right or merely well-formatted answer (several generators give 0.01-0.5 for those) is not correct.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import importlib.util
import json
from typing import Any

from aha.data.answers import final_answer
from aha.tasks.base import SPLITS, Task, in_eval_split, reasoning_instruction, task_row

PREFIX = "rg:"
INSTALL = 'pip install "aha[rg]" (or: pip install reasoning-gym==0.1.25)'
ENTRY_COLUMN, CONFIG_COLUMN = "rg_entry", "rg_config"
CORRECT_SCORE = 1.0  # a completion is correct (correctness reward, evaluation) when its score reaches this
RESERVED = ("size", "seed")  # the spec's n and seed
TASK_PARAMS = ("config", "weights", "eval_fraction", "instruction")  # ReasoningGym's own parameters


def with_config(params: dict[str, Any]) -> dict[str, Any]:
    """Command-line parameters of a reasoning-gym task (``--data rg:NAME:k=v``, ``--set k=v``): the task's own
    (TASK_PARAMS) as they are, every other key moved into its generator's `config`."""
    out = {k: v for k, v in params.items() if k in TASK_PARAMS}
    config = {k: v for k, v in params.items() if k not in TASK_PARAMS}
    if config:
        if out.get("config") is not None and not isinstance(out["config"], dict):
            raise ValueError(f"config must be a mapping of the generator's fields, got {out['config']!r}")
        out["config"] = {**(out.get("config") or {}), **config}
    return out


def available() -> bool:
    """Is reasoning-gym installed?"""
    return importlib.util.find_spec("reasoning_gym") is not None


def library() -> Any:
    """The ``reasoning_gym`` module, or one ValueError saying how to install it."""
    try:
        import reasoning_gym
    except ImportError:
        raise ValueError(f"reasoning-gym tasks (rg:NAME) need the reasoning-gym package: {INSTALL}") from None
    return reasoning_gym


def generators() -> dict[str, tuple[type, type]]:
    """reasoning-gym's generators: name -> (dataset class, config dataclass), without ``composite`` (the mixer)."""
    library()
    from reasoning_gym.factory import DATASETS

    return {name: classes for name, classes in sorted(DATASETS.items()) if name != "composite"}


def config_fields(name: str) -> dict[str, Any]:
    """The configuration fields of generator `name` and their defaults (``size`` and ``seed`` left out; a default
    built by a factory is shown as that factory's value)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(generators()[name][1]):
        if f.name in RESERVED:
            continue
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = None
    return out


def describe(name: str) -> str:
    """The first line of generator `name`'s docstring."""
    doc = (generators()[name][0].__doc__ or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def parse_name(task: str) -> list[str]:
    """The generator names of a task name: ``rg:chain_sum`` -> [chain_sum], ``rg:[a, b]`` -> [a, b]; each checked to
    exist (with suggestions), once."""
    if not isinstance(task, str) or not task.startswith(PREFIX):
        raise ValueError(f"a reasoning-gym task name is rg:NAME or rg:[NAME, ...], got {task!r}")
    body = task[len(PREFIX) :].strip()
    if body.startswith("[") != body.endswith("]"):
        raise ValueError(f"task {task!r}: a mix is written rg:[name, name, ...]")
    names = [x.strip() for x in body.strip("[]").split(",")] if body.startswith("[") else [body]
    if not all(names):
        raise ValueError(f"task {task!r}: empty generator name; a mix is written rg:[name, name, ...]")
    known = generators()
    for name in names:
        if name == "composite":
            raise ValueError(f"task {task!r}: mix generators with rg:[name, name, ...] (and weights), not composite")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(
                f"unknown reasoning-gym task {name!r}{hint}; `aha tasks list` shows the {len(known)} generators"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"task {task!r}: a generator appears twice in the mix")
    return names


def _jsonable(value: Any) -> Any:
    """What json.dumps cannot write in an entry's metadata: sets (sorted when possible), numpy scalars, the rest
    as text."""
    if isinstance(value, (set, frozenset)):
        try:
            return sorted(value)
        except TypeError:
            return list(value)
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    return str(value)


def _stream_seed(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 2**31


@functools.lru_cache(maxsize=128)
def _scorer(config_json: str) -> Any:
    """A generator built from a row's ``rg_config`` (its name and configuration), for its ``score_answer``."""
    spec = json.loads(config_json)
    return library().create_dataset(spec["dataset"], size=1, seed=0, **spec["config"])


def score(answer: str | None, entry: str | dict[str, Any], config: str | dict[str, Any]) -> float:
    """The generator's ``score_answer`` of the extracted `answer` (None: no answer) on a row's `entry` and `config`
    (the ``rg_entry`` and ``rg_config`` columns, JSON text or parsed). A scorer that raises on an odd answer scores
    0.0; a malformed column is a ValueError naming it."""
    try:
        entry_d = json.loads(entry) if isinstance(entry, str) else entry
        config_d = json.loads(config) if isinstance(config, str) else config
        config_json = json.dumps({"dataset": config_d["dataset"], "config": config_d["config"]}, sort_keys=True)
        if not isinstance(entry_d, dict) or "question" not in entry_d:
            raise KeyError("question")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(
            f"reasoning-gym: a row's {ENTRY_COLUMN}/{CONFIG_COLUMN} columns are not a reasoning-gym entry and "
            f"its generator ({type(e).__name__}: {e}); they come from a dataset task rg:NAME"
        ) from None
    scorer = _scorer(config_json)
    try:
        value = scorer.score_answer(answer, entry_d)
    except Exception:  # a model's malformed answer is a wrong answer, never a crash
        return 0.0
    return float(value or 0.0)


def score_completion(text: str, entry: str | dict[str, Any], config: str | dict[str, Any]) -> float:
    """:func:`score` of `text`'s final answer (:func:`aha.data.answers.final_answer`)."""
    return score(final_answer(text), entry, config)


class ReasoningGym(Task):
    """One reasoning-gym generator, or a weighted mix of several (see the module docstring)."""

    description = "a reasoning-gym generator (rg:NAME) or mix (rg:[a, b]); its own score_answer verifier"
    default_instruction = reasoning_instruction("answer")

    def __init__(
        self,
        task: str,
        config: dict[str, Any] | None = None,
        weights: list[float] | None = None,
        eval_fraction: float = 0.1,
        instruction: bool | str = True,
    ) -> None:
        self.generators = parse_name(task)
        self.name = task if len(self.generators) == 1 else f"{PREFIX}[{', '.join(self.generators)}]"
        self.mix = task[len(PREFIX) :].strip().startswith("[")
        if not isinstance(eval_fraction, (int, float)) or isinstance(eval_fraction, bool):
            raise ValueError(f"{self.name}: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"{self.name}: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.eval_fraction = float(eval_fraction)
        self.configs = self._configs(config)
        self.weights = self._weights(weights)
        self.set_instruction(instruction)
        for name in self.generators:  # a bad value fails here, with the generator's own message
            self._build(name, self.configs[name], size=1, seed=0)

    def _configs(self, config: Any) -> dict[str, dict[str, Any]]:
        if config is None:
            return {name: {} for name in self.generators}
        if not isinstance(config, dict):
            raise ValueError(f"{self.name}: config must be a mapping, got {config!r}")
        if not self.mix:
            per = {self.generators[0]: config}
        else:
            stray = [k for k in config if k not in self.generators]
            if stray:
                raise ValueError(
                    f"{self.name}: the config of a mix maps its generators ({', '.join(self.generators)}) to their "
                    f"configs; {', '.join(map(str, stray))} is not one of them"
                )
            per = {name: config.get(name) or {} for name in self.generators}
        for name, cfg in per.items():
            if not isinstance(cfg, dict):
                raise ValueError(f"{self.name}: the config of {name} must be a mapping, got {cfg!r}")
            fields = config_fields(name)
            for key in cfg:
                if key in RESERVED:
                    raise ValueError(
                        f"{self.name}: config key {key!r} of {name}: set the spec's n (rows) and seed instead"
                    )
                if key not in fields:
                    close = difflib.get_close_matches(str(key), fields, n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise ValueError(
                        f"{self.name}: {name} has no config field {key!r}{hint}; its fields: {', '.join(fields)}"
                    )
        return per

    def _weights(self, weights: Any) -> list[float]:
        if weights is None:
            return [1.0] * len(self.generators)
        if not self.mix:
            raise ValueError(f"{self.name}: weights are for a mix (rg:[a, b]); a single generator has none")
        ok = isinstance(weights, (list, tuple)) and all(
            isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in weights
        )
        if not ok or len(weights) != len(self.generators):
            raise ValueError(
                f"{self.name}: weights must be {len(self.generators)} positive numbers, one per generator "
                f"({', '.join(self.generators)}), got {weights!r}"
            )
        return [float(w) for w in weights]

    def _build(self, name: str, config: dict[str, Any], size: int, seed: int) -> Any:
        try:
            return library().create_dataset(name, size=size, seed=seed, **config)
        except (AssertionError, TypeError, ValueError) as e:
            raise ValueError(f"{self.name}: config {config!r} of {name}: {e or type(e).__name__}") from None

    def _source(self, size: int, seed: int) -> Any:
        """The entries of one split's stream: the generator, or reasoning-gym's composite over the mix."""
        if not self.mix:
            return self._build(self.generators[0], self.configs[self.generators[0]], size, seed)
        from reasoning_gym.composite import CompositeConfig, CompositeDataset, DatasetSpec

        specs = [DatasetSpec(n, w, dict(self.configs[n])) for n, w in zip(self.generators, self.weights)]
        config = CompositeConfig(size=size, seed=seed, datasets=specs)
        config.validate()
        return CompositeDataset(config)

    def entries(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` generator entries of `split` (see the module docstring), deterministic in `seed`."""
        if split not in SPLITS:
            raise ValueError(f"{self.name}: unknown split {split!r}; choose from {SPLITS}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{self.name}: n must be a positive integer, got {n!r}")
        stream = _stream_seed(f"{self.name}/{split}/{seed}")
        share = self.eval_fraction if split == "eval" else 1.0 - self.eval_fraction
        size, limit = int(n / share * 1.3) + 32, 1000 * n + 10_000
        while True:
            # Some generators make all `size` entries up front: start near what the split needs, grow if short.
            source, kept = self._source(size, stream), []
            for idx in range(size):
                entry = source[idx]
                origin = entry.get("metadata", {}).get("source_dataset", self.generators[0])
                if in_eval_split(f"{origin}\n{entry['question']}", self.eval_fraction) == (split == "eval"):
                    kept.append(entry)
                    if len(kept) == n:
                        return kept
            if size >= limit:
                raise ValueError(f"{self.name}: cannot draw {n} {split} entries from {size} generated")
            size = min(4 * size, limit)

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for entry in self.entries(split, n, seed):
            origin = entry.get("metadata", {}).get("source_dataset", self.generators[0])
            answer = None if entry.get("answer") is None else str(entry["answer"])
            trace = None
            if split == "sft":
                if answer is None:
                    raise ValueError(
                        f"{self.name}: {origin} gives no reference answer (it accepts many), so it has no sft split; "
                        "train it with GRPO only"
                    )
                trace = f"<think></think><answer>{answer}</answer>"
            columns = {
                ENTRY_COLUMN: json.dumps(entry, default=_jsonable),
                CONFIG_COLUMN: json.dumps({"dataset": origin, "config": self.configs.get(origin, {})}, sort_keys=True),
            }
            out.append(task_row(self.ask(entry["question"]), answer, trace, **columns))  # type: ignore[arg-type]
        return out

    def is_correct(
        self, completion: str, answer: str, rg_entry: str | None = None, rg_config: str | None = None, **columns: Any
    ) -> bool:
        """Does the final answer (:func:`aha.data.answers.final_answer`) score at least CORRECT_SCORE with the
        generator's ``score_answer``? The row's ``rg_entry`` and ``rg_config`` columns are required."""
        if rg_entry is None or rg_config is None:
            raise ValueError(
                f"{self.name}: is_correct needs the row's {ENTRY_COLUMN} and {CONFIG_COLUMN} columns "
                f"(is_correct(text, answer, rg_entry=..., rg_config=...))"
            )
        return score_completion(completion, rg_entry, rg_config) >= CORRECT_SCORE

    def reward_columns(self) -> list[str]:
        return ["answer", ENTRY_COLUMN, CONFIG_COLUMN]
