"""Training and evaluation rows from a spec: a Hub dataset, local files, or a built-in task.

:func:`load_rows` returns a plain ``list[dict]`` (``len(rows)``, ``rows[i] -> dict``, as the GRPO trainer
needs), materialised once so that filtering and sampling are exact and cheap to reason about.

A spec is a dict (e.g. a YAML section)::

    {"path": "openai/gsm8k", "name": "main", "split": "train", "prompt_column": "question",
     "answer_column": "answer", "answer_format": "gsm8k", "system_prompt": "Respond in ..."}
    {"path": "data/train.jsonl"}                      # or .json / .parquet / .csv, or a directory of them
    {"task": "countdown", "count": 3, "n": 500, "split": "train", "seed": 0}

Each row keeps its original columns, with ``prompt`` (from `prompt_column`; ``[system, user]`` messages when
`system_prompt` is given; with `few_shot`, a list of ``{user: ..., assistant: ...}`` solved examples, those turns
come before the question, after any system message: in-context examples of the answer format) and, when `answer_column` is given, ``answer`` (the normalised final answer as a
string; it replaces an original ``answer`` column). Rows whose answer cannot be extracted, and rows whose
prompt is longer than `max_prompt_length` tokens, are dropped (never truncated), and the count is logged.

``auto`` detects, from the data: `prompt_column` (the first of PROMPT_COLUMNS the data has), `answer_column`
(the first of ANSWER_COLUMNS) and `answer_format` (:func:`aha.data.answers.detect_answer_format` on the answer
column); :func:`resolve_spec` returns the spec with them filled in.

:func:`data_spec` parses the command line's ``--data`` strings into a spec: a built-in task (``arithmetic``,
``arithmetic:digits=3``; its held-out ``eval`` split unless told otherwise; a reasoning-gym one ``rg:chain_sum``,
``rg:chain_sum:max_terms=3`` (the generator's config) or ``rg:[chain_sum, countdown]``), a local ``.jsonl``/``.json``/``.csv``/
``.parquet`` file or directory of them, or a Hub data set ``owner/name[:config]`` (its ``test`` split); files and
Hub data sets have their columns and answer format detected.
"""

from __future__ import annotations

import difflib
import json
import logging
import random
from pathlib import Path
from typing import Any

from aha.data.answers import ANSWER_FORMATS, detect_answer_format, reference_answer
from aha.data.prompts import is_conversational, render_prompt

log = logging.getLogger(__name__)

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
AUTO = "auto"  # a column or answer format detected from the data
PROMPT_COLUMNS = ("prompt", "question", "problem", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth", "target", "solution", "output")
DEFAULT_TASK_ROWS = 100  # rows of a task named by a --data string without a limit
COMMON_KEYS = {"split", "max_samples", "shuffle_seed", "system_prompt", "few_shot", "max_prompt_length"}
FILE_KEYS = COMMON_KEYS | {"path", "name", "prompt_column", "answer_column", "answer_format"}
TASK_KEYS = COMMON_KEYS | {"task", "n", "seed", "params"}
RG = "rg"  # reasoning-gym tasks: rg:NAME, rg:[a, b] (aha.tasks.reasoning_gym)


def spec_name(spec: Any) -> str:
    """How messages name a spec's data: ``task 'arithmetic'`` or ``data 'gsm.jsonl'``."""
    if isinstance(spec, dict) and "task" in spec:
        return f"task {spec['task']!r}"
    if isinstance(spec, dict) and "path" in spec:
        return f"data {spec['path']!r}"
    return "data"


def data_spec(
    text: str, *, split: str | None = None, task_split: str = "eval", limit: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """The spec of a ``--data`` string (see the module doc). `split`: the split to read (default: `task_split` for a
    task, ``test`` for a Hub data set); `limit`: at most this many rows (a task: exactly, default
    DEFAULT_TASK_ROWS); `seed`: a task's draw."""
    from aha.tasks import TASKS, is_task_name

    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"--data: expected a task name, a data file or a Hub id, got {text!r}")
    _check_int("limit", limit, 1)
    name, _, params = text.partition(":")
    if name == RG:  # rg:NAME[:key=value,...] or rg:[a, b]: the generator's name, then its config
        body = params.strip()
        end = (body.find("]") + 1 or len(body)) if body.startswith("[") else len(body.partition(":")[0])
        name, params = f"{RG}:{body[:end].strip()}", body[end:].removeprefix(":")
        if params.strip() and body.startswith("["):
            raise ValueError(f"--data {text}: configure a mix in a recipe's dataset section (config: {{name: ...}})")
    if is_task_name(name):
        spec: dict[str, Any] = {"task": name}
        for item in filter(None, (x.strip() for x in params.split(","))):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(f"--data {text}: task parameters are key=value pairs, got {item!r}")
            if key in TASK_KEYS:
                raise ValueError(f"--data {text}: {key!r} is not a parameter of task {name!r}")
            try:
                spec[key] = json.loads(value)
            except json.JSONDecodeError:
                spec[key] = value
        if name not in TASKS:  # a reasoning-gym task: its generator's settings go into its config
            from aha.tasks.reasoning_gym import with_config

            spec = {"task": name, **with_config({k: v for k, v in spec.items() if k != "task"})}
        return {**spec, "split": split or task_split, "n": limit or DEFAULT_TASK_ROWS, "seed": seed}
    detected = {"prompt_column": AUTO, "answer_column": AUTO, "answer_format": AUTO}
    limits = {"max_samples": limit} if limit is not None else {}
    if is_local(text):
        return {"path": text, **({"split": split} if split else {}), **detected, **limits}
    if text.count("/") != 1 or not all(text.partition(":")[0].split("/")):
        close = difflib.get_close_matches(name, TASKS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise ValueError(
            f"--data {text}: not a built-in task{hint} ({', '.join(sorted(TASKS))}; or rg:NAME), a data file "
            f"({', '.join(sorted(BUILDERS))}) nor a Hub data set (owner/name[:config])"
        )
    path, _, config = text.partition(":")
    return {"path": path, **({"name": config} if config else {}), "split": split or "test", **detected, **limits}


def task_of(spec: dict[str, Any]) -> Any:
    """The built-in task of a task spec, with its parameters (top-level keys and ``params``)."""
    from aha.tasks import get_task

    params = dict(spec.get("params") or {})
    if not isinstance(params, dict):
        raise ValueError(f"data: params must be a mapping of task parameters, got {spec['params']!r}")
    extra = {k: v for k, v in spec.items() if k not in TASK_KEYS}
    if set(extra) & set(params):
        raise ValueError(f"data: task parameter(s) {', '.join(sorted(set(extra) & set(params)))} given twice")
    return get_task(str(spec["task"]), **params, **extra)


def _check_int(key: str, value: Any, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"data: {key} must be an integer >= {minimum}, got {value!r}")


def is_local(path: str) -> bool:
    """Does `path` name a local file or directory rather than a Hub id (``owner/name``)?"""
    p = Path(path).expanduser()
    return (
        p.exists()
        or path.startswith((".", "/", "~"))
        or p.suffix.lower() in BUILDERS
        or path.count("/") > 1
        or "\\" in path
    )


def _local_files(path: Path) -> tuple[str, list[str]]:
    """(builder, files) for a data file or a directory of data files of one format."""
    if not path.exists():
        raise FileNotFoundError(f"data: no such file or directory: {str(path)!r}")
    if path.is_file():
        builder = BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"data: cannot read {str(path)!r}: supported files are {', '.join(sorted(BUILDERS))}")
        return builder, [str(path)]
    files = sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in BUILDERS)
    if not files:
        raise FileNotFoundError(f"data: no {'/'.join(sorted(BUILDERS))} files in directory {str(path)!r}")
    builders = {BUILDERS[f.suffix.lower()] for f in files}
    if len(builders) > 1:
        raise ValueError(f"data: directory {str(path)!r} mixes formats ({', '.join(sorted(builders))}); keep one")
    return builders.pop(), [str(f) for f in files]


def bad_json_line(files: list[str]) -> str | None:
    """``FILE: line N: what is wrong`` for the first line of a JSON-lines file that is not a JSON object (a ``.json``
    file holding one JSON document: where that document breaks), or None when every file parses."""
    for file in files:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            line = Path(file).read_bytes()[: e.start].count(b"\n") + 1
            return f"{file}: line {line}: not UTF-8 text (byte {e.start})"
        if file.lower().endswith(".json") and text.lstrip()[:1] in ("[", "{"):
            try:
                json.loads(text)
                continue
            except json.JSONDecodeError as e:
                if text.lstrip()[:1] == "[" or "\n" not in text.strip():
                    return f"{file}: line {e.lineno}: not valid JSON: {e.msg} (column {e.colno})"
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                return f"{file}: line {n}: not valid JSON: {e.msg} (column {e.colno})"
            if not isinstance(value, dict):
                return f"{file}: line {n}: a row must be a JSON object ({{...}}), got {type(value).__name__}"
    return None


def _load_dataset(spec: dict[str, Any]) -> tuple[Any, str]:
    """The `datasets.Dataset` of the spec's split, and a name for it in messages."""
    from datasets import load_dataset

    path, name, split = str(spec["path"]), spec.get("name"), spec.get("split", "train")
    if is_local(path):
        builder, files = _local_files(Path(path).expanduser())
        where = f"{path!r}"
        try:
            # A local file or directory is the requested split, whatever its file names.
            ds = load_dataset(builder, data_files={split: files}, split=split)
        except Exception as e:  # malformed JSON, CSV, parquet: name the file (and the line), keep the cause
            bad = bad_json_line(files) if builder == "json" else None
            if bad is not None:
                raise ValueError(bad) from e
            raise ValueError(f"data: cannot read {where} as {builder}: {type(e).__name__}: {e}") from e
        return ds, where
    where = f"{path!r}" + (f" (config {name!r})" if name else "") + f" split {split!r}"
    try:
        ds = load_dataset(path, name, split=split)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"data: cannot load Hub dataset {where}: {e}") from e
    except Exception as e:  # offline, gated, ...: one clear line rather than a traceback
        raise ValueError(f"data: cannot load Hub dataset {where}: {type(e).__name__}: {e}") from e
    return ds, where


def _with_system(prompt: Any, system_prompt: str, where: str) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
    if is_conversational(prompt):
        if prompt and prompt[0]["role"] == "system":
            raise ValueError(
                f"data: system_prompt given but the prompts of {where} already start with a system message"
            )
        return [{"role": "system", "content": system_prompt}, *prompt]
    raise ValueError(f"data: a prompt of {where} is neither text nor chat messages: {prompt!r:.80}")


def few_shot_turns(few_shot: Any) -> list[dict[str, str]]:
    """The chat turns of a spec's `few_shot` examples, checked: each is ``{user: text, assistant: text}``, or
    ``{messages: [...]}``, a whole solved exchange as chat messages (``user``, ``assistant`` and ``tool`` roles:
    e.g. a question, a tool call, the tool's result, the answer)."""
    if few_shot is None:
        return []
    if not isinstance(few_shot, list) or not few_shot:
        raise ValueError(
            f"data: few_shot must be a non-empty list of {{user: ..., assistant: ...}}, got {few_shot!r:.80}"
        )
    turns: list[dict[str, str]] = []
    for i, ex in enumerate(few_shot):
        if isinstance(ex, dict) and set(ex) == {"messages"}:
            turns += few_shot_messages(ex["messages"], i)
            continue
        if not isinstance(ex, dict) or set(ex) != {"user", "assistant"}:
            raise ValueError(
                f"data: few_shot[{i}] must have exactly the keys user and assistant (or messages), got {ex!r:.80}"
            )
        for role in ("user", "assistant"):
            if not isinstance(ex[role], str) or not ex[role].strip():
                raise ValueError(f"data: few_shot[{i}].{role} must be a non-empty string, got {ex[role]!r:.80}")
            turns.append({"role": role, "content": ex[role]})
    return turns


FEW_SHOT_ROLES = ("user", "assistant", "tool")


def few_shot_messages(messages: Any, i: int) -> list[dict[str, str]]:
    """A ``few_shot[i].messages`` list, checked: chat messages with a role of FEW_SHOT_ROLES and a text content
    (a ``tool`` message may name its tool), starting with the user's and ending with the assistant's."""
    where = f"data: few_shot[{i}].messages"
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where} must be a non-empty list of {{role: ..., content: ...}}, got {messages!r:.80}")
    out = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in FEW_SHOT_ROLES or not isinstance(m.get("content"), str):
            raise ValueError(
                f"{where}[{j}] must be {{role: {' | '.join(FEW_SHOT_ROLES)}, content: text}}, got {m!r:.80}"
            )
        if set(m) - {"role", "content", "name"}:
            raise ValueError(f"{where}[{j}]: unknown keys {sorted(set(m) - {'role', 'content', 'name'})}")
        out.append({k: str(v) for k, v in m.items()})
    if out[0]["role"] != "user" or out[-1]["role"] != "assistant":
        raise ValueError(f"{where} must start with a user message and end with an assistant message")
    return out


def _with_context(prompt: Any, spec: dict[str, Any], where: str) -> Any:
    """`prompt` with the spec's system prompt and few-shot turns in front (unchanged without either)."""
    if spec.get("system_prompt") is not None:
        prompt = _with_system(prompt, str(spec["system_prompt"]), where)
    turns = few_shot_turns(spec.get("few_shot"))
    if not turns:
        return prompt
    if isinstance(prompt, str):
        return [*turns, {"role": "user", "content": prompt}]
    if not is_conversational(prompt):
        raise ValueError(f"data: a prompt of {where} is neither text nor chat messages: {prompt!r:.80}")
    head = 1 if prompt and prompt[0]["role"] == "system" else 0
    return [*prompt[:head], *turns, *prompt[head:]]


class _Filters:
    """Drops over-long prompts (and counts what it drops)."""

    def __init__(self, spec: dict[str, Any], tokenizer: Any, where: str) -> None:
        self.max_len = spec.get("max_prompt_length")
        _check_int("max_prompt_length", self.max_len, 1)
        if self.max_len is not None and tokenizer is None:
            raise ValueError("data: max_prompt_length needs a tokenizer (load_rows(spec, tokenizer=...))")
        self.tokenizer, self.where, self.too_long = tokenizer, where, 0

    def keep(self, prompt: Any) -> bool:
        if self.max_len is None:
            return True
        ids = self.tokenizer(render_prompt(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]
        if len(ids) > self.max_len:
            self.too_long += 1
            return False
        return True

    def report(self) -> None:
        if self.too_long:
            log.warning(
                "data: dropped %d rows of %s whose prompt is longer than max_prompt_length=%d tokens",
                self.too_long,
                self.where,
                self.max_len,
            )


def _finish(rows: list[dict[str, Any]], where: str, cause: str) -> list[dict[str, Any]]:
    if not rows:
        raise ValueError(f"data: no rows left from {where}{cause}")
    return rows


def _task_rows(spec: dict[str, Any], tokenizer: Any) -> list[dict[str, Any]]:
    n, seed, split = spec.get("n", 1000), spec.get("seed", 0), spec.get("split", "train")
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    task = task_of(spec)
    rows = task.rows(split, n, seed)
    where = f"task {spec['task']!r} split {split!r}"
    if spec.get("shuffle_seed") is not None:
        random.Random(spec["shuffle_seed"]).shuffle(rows)
    filters = _Filters(spec, tokenizer, where)
    out = []
    for row in rows:
        row["prompt"] = _with_context(row["prompt"], spec, where)
        if filters.keep(row["prompt"]):
            out.append(row)
        if spec.get("max_samples") is not None and len(out) >= spec["max_samples"]:
            break
    filters.report()
    return _finish(out, where, " (all prompts longer than max_prompt_length)" if filters.too_long else "")


def _check_file_spec(spec: dict[str, Any]) -> None:
    unknown = sorted(set(spec) - FILE_KEYS)
    if unknown:
        raise ValueError(f"data: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(FILE_KEYS))}")
    fmt = spec.get("answer_format")
    if fmt is not None and fmt not in (*ANSWER_FORMATS, AUTO):
        raise ValueError(f"data: answer_format must be one of {', '.join(ANSWER_FORMATS)}, {AUTO} or null, got {fmt!r}")
    if fmt is not None and spec.get("answer_column") is None:
        raise ValueError(f"data: answer_format {fmt!r} needs answer_column (the column holding the solutions)")


def _resolve(spec: dict[str, Any], ds: Any, where: str) -> dict[str, Any]:
    """`spec` with its ``auto`` columns and answer format detected in `ds`; every column checked to exist."""
    out, columns = dict(spec), list(ds.column_names)
    for key, default, candidates in (
        ("prompt_column", "prompt", PROMPT_COLUMNS),
        ("answer_column", None, ANSWER_COLUMNS),
    ):
        col = out.get(key, default)
        if col == AUTO:
            col = next((c for c in candidates if c in columns), None)
            if col is None:
                what = key.split("_")[0]
                raise ValueError(
                    f"data: no {what} column in {where} (expected one of {', '.join(candidates)}, or set {key}); "
                    f"its columns: {', '.join(columns)}"
                )
            out[key] = col
        if col is not None and col not in columns:
            raise ValueError(f"data: {key} {col!r} not found in {where}; its columns: {', '.join(columns)}")
    if out.get("answer_format") == AUTO:
        out["answer_format"] = detect_answer_format([str(v) for v in ds[out["answer_column"]] if v is not None])
    return out


def resolve_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """`spec` with its ``auto`` columns and answer format filled in (the data is read to detect them); a task
    spec, or one with nothing to detect, comes back as it is."""
    if (
        not isinstance(spec, dict)
        or "path" not in spec
        or AUTO
        not in (
            spec.get("prompt_column"),
            spec.get("answer_column"),
            spec.get("answer_format"),
        )
    ):
        return spec
    _check_file_spec(spec)
    ds, where = _load_dataset(spec)
    return _resolve(spec, ds, where)


def load_rows(spec: dict[str, Any], tokenizer: Any = None) -> list[dict[str, Any]]:
    """Rows for training or evaluation from `spec` (see the module docstring). `tokenizer` is needed only
    for `max_prompt_length`. Bad input raises one ValueError or FileNotFoundError naming the culprit."""
    if not isinstance(spec, dict):
        raise ValueError(f"data: a dataset spec must be a mapping, got {type(spec).__name__}")
    if ("path" in spec) == ("task" in spec):
        raise ValueError("data: a dataset spec needs exactly one of `path` (Hub id or local files) or `task`")
    _check_int("max_samples", spec.get("max_samples"), 1)
    _check_int("shuffle_seed", spec.get("shuffle_seed"), 0)
    if spec.get("system_prompt") is not None and not isinstance(spec["system_prompt"], str):
        raise ValueError(f"data: system_prompt must be a string, got {spec['system_prompt']!r}")
    few_shot_turns(spec.get("few_shot"))  # checked before any loading
    if "task" in spec:
        return _task_rows(spec, tokenizer)

    _check_file_spec(spec)
    filters = _Filters(spec, tokenizer, str(spec["path"]))  # checks max_prompt_length before any loading

    ds, where = _load_dataset(spec)
    filters.where = where
    if len(ds) == 0:
        raise ValueError(f"data: {where} is empty")
    spec = _resolve(spec, ds, where)
    prompt_col, answer_col, fmt = (
        spec.get("prompt_column", "prompt"),
        spec.get("answer_column"),
        spec.get("answer_format"),
    )
    if spec.get("shuffle_seed") is not None:
        ds = ds.shuffle(seed=spec["shuffle_seed"])

    out: list[dict[str, Any]] = []
    no_answer = 0
    for raw in ds:
        row = dict(raw)
        prompt = row[prompt_col]
        if spec.get("system_prompt") is None and not isinstance(prompt, str) and not is_conversational(prompt):
            raise ValueError(f"data: prompt_column {prompt_col!r} of {where} holds {type(prompt).__name__}, not text")
        prompt = _with_context(prompt, spec, where)
        row["prompt"] = prompt
        if answer_col is not None:
            value = row[answer_col]
            answer = reference_answer(str(value), fmt) if fmt is not None and value is not None else value
            if answer is None:
                no_answer += 1
                continue
            row["answer"] = str(answer).strip()
        if not filters.keep(prompt):
            continue
        out.append(row)
        if spec.get("max_samples") is not None and len(out) >= spec["max_samples"]:
            break
    if no_answer:
        what = f"{fmt} answer" if fmt else "answer"
        log.warning("data: dropped %d rows of %s with no %s in column %r", no_answer, where, what, answer_col)
    filters.report()
    causes = [c for c, k in ((" (no answer found)", no_answer), (" (prompts too long)", filters.too_long)) if k]
    return _finish(out, where, "".join(causes))
