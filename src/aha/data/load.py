"""Training and evaluation rows from a spec: a Hub dataset, local files, or a built-in task.

:func:`load_rows` returns a plain ``list[dict]`` (``len(rows)``, ``rows[i] -> dict``, as the GRPO trainer
needs), materialised once so that filtering and sampling are exact and cheap to reason about.

A spec is a dict (e.g. a YAML section)::

    {"path": "openai/gsm8k", "name": "main", "split": "train", "prompt_column": "question",
     "answer_column": "answer", "answer_format": "gsm8k", "system_prompt": "Respond in ..."}
    {"path": "data/train.jsonl"}                      # or .json / .parquet / .csv, or a directory of them
    {"task": "countdown", "count": 3, "n": 500, "split": "train", "seed": 0}

Each row keeps its original columns, with ``prompt`` (from `prompt_column`; ``[system, user]`` messages when
`system_prompt` is given) and, when `answer_column` is given, ``answer`` (the normalised final answer as a
string; it replaces an original ``answer`` column). Rows whose answer cannot be extracted, and rows whose
prompt is longer than `max_prompt_length` tokens, are dropped (never truncated), and the count is logged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aha.data.answers import boxed_answer, gsm8k_answer
from aha.data.prompts import is_conversational, render_prompt

log = logging.getLogger(__name__)

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
ANSWER_FORMATS: dict[str, Callable[[str], str | None]] = {"gsm8k": gsm8k_answer, "math": boxed_answer}
COMMON_KEYS = {"split", "max_samples", "shuffle_seed", "system_prompt", "max_prompt_length"}
FILE_KEYS = COMMON_KEYS | {"path", "name", "prompt_column", "answer_column", "answer_format"}
TASK_KEYS = COMMON_KEYS | {"task", "n", "seed", "params"}


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
        except Exception as e:  # malformed JSON, CSV, parquet: name the file, keep the cause
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
    from aha.tasks import get_task

    params = dict(spec.get("params") or {})
    if not isinstance(params, dict):
        raise ValueError(f"data: params must be a mapping of task parameters, got {spec['params']!r}")
    extra = {k: v for k, v in spec.items() if k not in TASK_KEYS}
    if set(extra) & set(params):
        raise ValueError(f"data: task parameter(s) {', '.join(sorted(set(extra) & set(params)))} given twice")
    params.update(extra)
    n, seed, split = spec.get("n", 1000), spec.get("seed", 0), spec.get("split", "train")
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    task = get_task(str(spec["task"]), **params)
    rows = task.rows(split, n, seed)
    where = f"task {spec['task']!r} split {split!r}"
    if spec.get("shuffle_seed") is not None:
        random.Random(spec["shuffle_seed"]).shuffle(rows)
    filters = _Filters(spec, tokenizer, where)
    out = []
    for row in rows:
        if spec.get("system_prompt") is not None:
            row["prompt"] = _with_system(row["prompt"], str(spec["system_prompt"]), where)
        if filters.keep(row["prompt"]):
            out.append(row)
        if spec.get("max_samples") is not None and len(out) >= spec["max_samples"]:
            break
    filters.report()
    return _finish(out, where, " (all prompts longer than max_prompt_length)" if filters.too_long else "")


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
    if "task" in spec:
        return _task_rows(spec, tokenizer)

    unknown = sorted(set(spec) - FILE_KEYS)
    if unknown:
        raise ValueError(f"data: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(FILE_KEYS))}")
    fmt = spec.get("answer_format")
    if fmt is not None and fmt not in ANSWER_FORMATS:
        raise ValueError(f"data: answer_format must be one of {', '.join(ANSWER_FORMATS)} or null, got {fmt!r}")
    prompt_col, answer_col = spec.get("prompt_column", "prompt"), spec.get("answer_column")
    if fmt is not None and answer_col is None:
        raise ValueError(f"data: answer_format {fmt!r} needs answer_column (the column holding the solutions)")
    filters = _Filters(spec, tokenizer, str(spec["path"]))  # checks max_prompt_length before any loading

    ds, where = _load_dataset(spec)
    filters.where = where
    columns = list(ds.column_names)
    for key, col in (("prompt_column", prompt_col), ("answer_column", answer_col)):
        if col is not None and col not in columns:
            raise ValueError(f"data: {key} {col!r} not found in {where}; its columns: {', '.join(columns)}")
    if len(ds) == 0:
        raise ValueError(f"data: {where} is empty")
    if spec.get("shuffle_seed") is not None:
        ds = ds.shuffle(seed=spec["shuffle_seed"])

    extract = ANSWER_FORMATS[fmt] if fmt is not None else None
    out: list[dict[str, Any]] = []
    no_answer = 0
    for raw in ds:
        row = dict(raw)
        prompt = row[prompt_col]
        if spec.get("system_prompt") is not None:
            prompt = _with_system(prompt, spec["system_prompt"], where)
        elif not isinstance(prompt, str) and not is_conversational(prompt):
            raise ValueError(f"data: prompt_column {prompt_col!r} of {where} holds {type(prompt).__name__}, not text")
        row["prompt"] = prompt
        if answer_col is not None:
            value = row[answer_col]
            answer = extract(str(value)) if extract is not None and value is not None else value
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
