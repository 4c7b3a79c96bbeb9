"""Rejection sampling (R1 phase 3, and distillation): sample n completions per prompt, verify them, keep the
accepted ones as an SFT dataset.

Data: a ``--data`` string (:func:`aha.data.load.data_spec`): a built-in task (``arithmetic`` or
``arithmetic:digits=3``; its ``train`` split by default and its own verifier), a local GSM8K/MATH-style file or a
Hub data set (verified by :class:`aha.eval.metrics.Verifier`); or a :func:`aha.data.load.load_rows` spec mapping
(what a pipeline's ``sample`` stage gives). :func:`aha.eval.metrics.verified_rows` loads both. With ``rewards`` a
completion is accepted when its weighted summed reward is at least ``min_reward`` instead.

Output (``out``, JSON lines): one line per kept completion ``{"prompt": [...messages], "completion":
[{"role": "assistant", "content": text}], "answer": ..., "pass_rate": p}`` (plus the row's other columns, and
``correct`` with ``keep="all"``); identical completions of a prompt are kept once. The sidecar
``<out stem>.pass_rates.jsonl`` holds one line per prompt: its samples, accepted count, pass rate, whether
the pass rate is within ``[min_pass_rate, max_pass_rate]`` (only those prompts' samples are kept) and how
many lines were kept.

Interrupts and resuming: the prompts are sampled a chunk at a time, each chunk's results appended to hidden
partial files next to ``out`` with a progress record; Ctrl-C or SIGTERM under the command line stops at the end
of the chunk in flight, keeping what was accepted, and ``aha sample ... --resume`` continues to the files an
uninterrupted run writes (each chunk's draws depend only on the seed and where the chunk starts).

Generation: any :class:`aha.rollout.engine.CompletionEngine`: the model in this process
(:class:`aha.rollout.engine.LocalEngine`: aha's ``fast`` sampler or transformers' ``hf`` generate), an in-process
vLLM engine (:class:`aha.rollout.vllm.VLLMRollout`), or an OpenAI-compatible server such as ``vllm serve``
(:class:`aha.rollout.server.EndpointEngine`), whichever the caller built.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from aha.data.prompts import render_prompt
from aha.eval.metrics import Verifier, verified_rows
from aha.rollout.engine import CompletionEngine
from aha.rollout.sampler import SamplingParams
from aha.settings import Checked
from aha.workflows.rundir import OutputKind, check_output, prepare_output

KEEP = ("correct", "all")
DROP_COLUMNS = ("prompt", "completion")


@dataclass
class SampleConfig(Checked):
    """Settings of one rejection-sampling run (``aha sample`` options / a pipeline's ``sample`` stage)."""

    n: int = 8  # completions per prompt
    keep: str = "correct"  # correct: accepted completions only; all: every (unique) completion
    max_per_prompt: int | None = None  # at most this many kept completions per prompt
    min_pass_rate: float = 0.0  # keep a prompt's samples only when its pass rate is in [min, max]
    max_pass_rate: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    limit: int | None = None  # prompts (default: 100 for a task, all rows of a file)
    split: str | None = None  # None: a built-in task's train split, a Hub data set's test split
    seed: int = 0
    batch_size: int = 64  # rows per generation batch of the local model (LocalEngine)
    rewards: list[Any] = field(default_factory=list)  # reward specs (names, dicts); empty: the verifier
    min_reward: float = 1.0  # with rewards: accepted when the weighted sum is >= this

    def validate(self) -> None:
        """The value rules (run at construction; errors name the command-line option)."""
        if self.n < 1:
            raise ValueError(f"--n must be at least 1, got {self.n}")
        if self.keep not in KEEP:
            raise ValueError(f"--keep must be one of {', '.join(KEEP)}, got {self.keep!r}")
        if self.max_per_prompt is not None and self.max_per_prompt < 1:
            raise ValueError(f"--max-per-prompt must be at least 1, got {self.max_per_prompt}")
        if not 0.0 <= self.min_pass_rate <= self.max_pass_rate <= 1.0:
            raise ValueError(
                f"pass rates: need 0 <= --min-pass-rate <= --max-pass-rate <= 1, "
                f"got {self.min_pass_rate} and {self.max_pass_rate}"
            )
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p)


OUTPUT = OutputKind("a JSON-lines file", suffix=".jsonl", sidecars=(".pass_rates.jsonl",))


def sidecar_path(out: str | Path) -> Path:
    """``x.jsonl`` → ``x.pass_rates.jsonl`` (next to the output)."""
    return OUTPUT.paths(Path(out))[1]


# ---- data --------------------------------------------------------------------------------------------


def load_sample_data(
    data: str | dict[str, Any], cfg: SampleConfig, tokenizer: Any = None
) -> tuple[list[dict[str, Any]], Verifier]:
    """Rows (``prompt``, ``answer`` and the row's other columns) and the verifier that judges them: `data` is a
    ``--data`` string (:func:`aha.data.load.data_spec`; a task's ``cfg.split``, by default ``train``) or a
    :func:`aha.data.load.load_rows` spec; at most ``cfg.limit`` rows."""
    from aha.data.load import data_spec

    if isinstance(data, str):
        data = data_spec(data, split=cfg.split, task_split="train", limit=cfg.limit, seed=cfg.seed)
    rows, verifier = verified_rows(data, tokenizer)
    return rows[: cfg.limit] if cfg.limit else rows, verifier


# ---- judging -----------------------------------------------------------------------------------------


def reward_scores(specs: list[Any], rows: list[dict[str, Any]], texts: list[str], tokenizer: Any = None) -> list[float]:
    """Weighted summed rewards of `texts` (``texts[i]`` answers ``rows[i]``), TRL's call convention: prompts,
    completions (messages when the prompt is), completion_ids and every other column as keyword lists."""
    from aha.rewards import resolve
    from aha.rewards.scoring import refuse_all_nonfinite

    prompts = [r["prompt"] for r in rows]
    chat = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": t}] if chat else t for t in texts]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt", "completion")}
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts] if tokenizer is not None else None
    total = [0.0] * len(texts)
    for spec in specs:
        fn, weight = resolve(spec)
        values = fn(prompts=prompts, completions=completions, completion_ids=ids, **columns)
        given = [float(v) for v in values if v is not None]
        finite = sum(math.isfinite(v) for v in given)
        name = spec if isinstance(spec, str) else spec.get("name") if isinstance(spec, dict) else fn.__name__
        refuse_all_nonfinite(f"reward function {name!r}", len(given) - finite, finite, len(values))
        # None and NaN/inf "do not apply" to that completion (as in training): they add nothing
        total = [t + weight * (v if v is not None and math.isfinite(v) else 0.0) for t, v in zip(total, values)]
    return total


def judge(
    rows: list[dict[str, Any]], texts: list[str], verifier: Verifier, cfg: SampleConfig, tokenizer: Any = None
) -> list[bool]:
    """Is each completion accepted? (``texts`` holds ``cfg.n`` consecutive completions per row.)"""
    rep = [r for r in rows for _ in range(cfg.n)]
    if cfg.rewards:
        return [s >= cfg.min_reward for s in reward_scores(cfg.rewards, rep, texts, tokenizer)]
    return [bool(verifier.is_correct(t, r["answer"], r)) for t, r in zip(texts, rep)]


def select(
    rows: list[dict[str, Any]], texts: list[str], accepted: list[bool], cfg: SampleConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(output lines, per-prompt pass-rate records): pass-rate filter, keep mode, dedup, max_per_prompt."""
    lines: list[dict[str, Any]] = []
    rates: list[dict[str, Any]] = []
    for i, row in enumerate(rows):
        span = range(i * cfg.n, (i + 1) * cfg.n)
        n_ok = sum(accepted[j] for j in span)
        rate = n_ok / cfg.n
        in_range = cfg.min_pass_rate <= rate <= cfg.max_pass_rate
        kept: list[dict[str, Any]] = []
        seen: set[str] = set()
        for j in span if in_range else range(0):
            if (cfg.keep == "correct" and not accepted[j]) or texts[j] in seen:
                continue
            if cfg.max_per_prompt is not None and len(kept) >= cfg.max_per_prompt:
                break
            seen.add(texts[j])
            extra = {k: v for k, v in row.items() if k not in DROP_COLUMNS}
            line = {**extra, "prompt": row["prompt"], "completion": [{"role": "assistant", "content": texts[j]}]}
            line |= {"answer": row["answer"], "pass_rate": rate}
            if cfg.keep == "all":
                line["correct"] = accepted[j]
            kept.append(line)
        lines += kept
        rates.append(
            {"prompt": row["prompt"], "answer": row["answer"], "n": cfg.n, "accepted": n_ok, "pass_rate": rate}
            | {"in_range": in_range, "kept": len(kept)}
        )
    return lines, rates


# ---- running -----------------------------------------------------------------------------------------

CHUNK = 64  # prompts sampled at a time, about (a whole number of generation batches): the unit a run resumes at


def chunk_prompts(cfg: SampleConfig) -> int:
    """Prompts per chunk: a multiple of the prompts that fill whole generation batches of ``batch_size`` rows
    (``n`` per prompt), at least :data:`CHUNK`."""
    whole = cfg.batch_size // math.gcd(cfg.n, cfg.batch_size)
    return whole * max(1, -(-CHUNK // whole))


def partial_paths(out: str | Path) -> tuple[Path, Path, Path]:
    """(the lines so far, the pass rates so far, the progress record) of a run writing `out` that has not
    finished: hidden files next to it, renamed into place (the first two) when it finishes."""
    out, side = Path(out), sidecar_path(out)
    return (
        out.with_name(f".{out.name}.partial"),
        side.with_name(f".{side.name}.partial"),
        out.with_name(f".{out.name}.progress.json"),
    )


def _settings(data: str | dict[str, Any], cfg: SampleConfig) -> dict[str, Any]:
    """What a resumed run must share with the one it continues (as JSON would hold it)."""
    return json.loads(json.dumps({"data": data, "config": asdict(cfg), "chunk": chunk_prompts(cfg)}, default=str))


def resumable(out: str | Path, data: str | dict[str, Any], cfg: SampleConfig) -> bool:
    """Whether an interrupted run with these settings left its progress for `out` (see :func:`run_sample`)."""
    progress = partial_paths(out)[2]
    try:
        return json.loads(progress.read_text())["settings"] == _settings(data, cfg)
    except (OSError, ValueError, KeyError):
        return False


def check_sample_output(out: str | Path, overwrite: bool, resume: bool, sources: list[str | Path] = ()) -> Path:
    """The checks before a run writes `out` (nothing touched): :func:`aha.workflows.rundir.check_output`, and with
    `resume` the progress an interrupted run left; without it, such progress is refused unless `overwrite`."""
    progress = partial_paths(out)[2]
    if resume and overwrite:
        raise ValueError("--resume continues an interrupted run and --overwrite starts over: pass one of them")
    path = check_output(out, OUTPUT, overwrite or resume, sources=sources)
    if resume and not progress.is_file():
        raise ValueError(f"--resume: no interrupted run of {path} to continue (no {progress}); run without --resume")
    if not resume and progress.exists() and not overwrite:
        raise ValueError(
            f"--out {path}: an interrupted run left its progress ({progress.name}); continue it with --resume or "
            "start over with --overwrite"
        )
    return path


def _append_jsonl(path: Path, records: list[dict[str, Any]]) -> int:
    """Append `records` to `path`, on disk when this returns; returns the file's new length."""
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
        return os.fstat(f.fileno()).st_size


def sample_rows(
    engine: CompletionEngine, rows: list[dict[str, Any]], verifier: Verifier, cfg: SampleConfig, start: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate ``cfg.n`` completions per row with `engine`, judge and select them; `start`: the index of
    ``rows[0]`` in the whole run (its draws depend on it, see :class:`aha.rollout.engine.CompletionEngine`)."""
    tok = engine.tokenizer
    prompts = [r["prompt"] for r in rows]
    if tok is not None and getattr(tok, "chat_template", None) is None:  # a base model: the question as plain text
        prompts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    prefilled = tok is not None and render_prompt(tok, prompts[0]).rstrip().endswith(("<think>", "<reasoning>"))
    verifier = replace(verifier, prefilled=prefilled)
    texts = engine.complete(prompts, cfg.n, cfg.sampling(), cfg.seed, start=start)
    if len(texts) != len(rows) * cfg.n:
        raise ValueError(f"sample: the engine returned {len(texts)} completions for {len(rows)} prompts × {cfg.n}")
    accepted = judge(rows, texts, verifier, cfg, tok)
    return select(rows, texts, accepted, cfg)


def run_sample(
    engine: CompletionEngine,
    data: str | dict[str, Any],
    out: str | Path,
    cfg: SampleConfig,
    overwrite: bool = False,
    resume: bool = False,
) -> dict[str, Any]:
    """Sample with `engine`, verify and write `out` plus its pass-rate sidecar; returns a summary.

    The prompts go in chunks (:func:`chunk_prompts`); each chunk's kept lines and pass rates are appended to
    hidden partial files next to `out` and a progress record says how far the run got, so that a run stopped by
    SIGINT/SIGTERM (at the end of a chunk, under :func:`aha.train.interrupts.graceful_signals`) or killed keeps
    what it accepted (a run that fails keeps it too, once it has finished a chunk), and `resume` continues it
    (the same settings) to the output an uninterrupted run writes. At the end the partial files are renamed into
    place: an old output (`overwrite`) is replaced only then."""
    from aha.train.interrupts import Interrupted, requested, stoppable

    if cfg.rewards:
        from aha.rewards import resolve

        for spec in cfg.rewards:
            resolve(spec)  # unknown names and bad parameters fail before any generation
    sources = [data] if isinstance(data, str) else [data["path"]] if "path" in data else []
    path = check_sample_output(out, overwrite, resume, sources)
    lines_part, rates_part, progress = partial_paths(path)
    start = time.perf_counter()
    rows, verifier = load_sample_data(data, cfg, engine.tokenizer)
    settings = _settings(data, cfg)
    if resume:
        record = json.loads(progress.read_text())
        if record.get("settings") != settings:
            raise ValueError(
                f"--resume: {path} was being written with other settings ({progress}): pass the same options, or "
                "--overwrite to start over"
            )
        done = record["done"]
        for f, size in ((lines_part, record["lines_bytes"]), (rates_part, record["rates_bytes"])):
            os.truncate(f, size)  # drop what a killed run appended after its last progress record
    else:
        done = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in (lines_part, rates_part):
            f.write_text("")
        _write_atomic(progress, {"settings": settings, "done": 0, "lines_bytes": 0, "rates_bytes": 0})
    step = chunk_prompts(cfg)
    try:
        with stoppable():
            for first in range(done, len(rows), step):
                lines, rates = sample_rows(engine, rows[first : first + step], verifier, cfg, start=first)
                done = first + len(rates)
                record = {"settings": settings, "done": done, "lines_bytes": _append_jsonl(lines_part, lines)}
                record["rates_bytes"] = _append_jsonl(rates_part, rates)
                _write_atomic(progress, record)
                signum = requested()
                if signum is not None and done < len(rows):
                    raise Interrupted(signum, saved=lines_part, after=f"{done} of {len(rows)} prompts")
    except BaseException:
        if done == 0:  # failed or stopped before its first chunk: nothing worth resuming, leave nothing behind
            for f in (lines_part, rates_part, progress):
                f.unlink(missing_ok=True)
        raise
    rates = [json.loads(x) for x in rates_part.read_text(encoding="utf-8").splitlines()]
    prepare_output(path, OUTPUT, True, sources=sources)  # checked above: an old output goes only now
    os.replace(rates_part, sidecar_path(path))
    os.replace(lines_part, path)
    progress.unlink()
    n_in = sum(r["in_range"] for r in rates)
    return {
        "prompts": len(rows),
        "samples": len(rows) * cfg.n,
        "accepted": sum(r["accepted"] for r in rates),
        "mean_pass_rate": sum(r["pass_rate"] for r in rates) / len(rates),
        "prompts_in_range": n_in,
        "kept": sum(r["kept"] for r in rates),
        "out": str(path),
        "pass_rates": str(sidecar_path(path)),
        "seconds": round(time.perf_counter() - start, 1),
    }


def _write_atomic(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(json.dumps(record) + "\n")
    os.replace(tmp, path)
