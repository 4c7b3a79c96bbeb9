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

Teachers: the model in this process (aha's ``fast`` sampler or transformers' ``hf`` generate), an in-process vLLM
engine (:class:`VLLMTeacher`), or any OpenAI-compatible server such as ``vllm serve`` (:class:`EndpointTeacher`).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from aha.data.prompts import render_prompt
from aha.eval.evaluate import generate_texts
from aha.eval.metrics import Verifier, verified_rows
from aha.rollout.sampler import SamplingParams

KEEP = ("correct", "all")
BACKENDS = ("fast", "hf")  # in-process sampling of the local model; vLLM and endpoints are teachers below
DROP_COLUMNS = ("prompt", "completion")


@dataclass
class SampleConfig:
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
    batch_size: int = 64
    rewards: list[Any] = field(default_factory=list)  # reward specs (names, dicts); empty: the verifier
    min_reward: float = 1.0  # with rewards: accepted when the weighted sum is >= this

    def validate(self) -> None:
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


def sidecar_path(out: str | Path) -> Path:
    """``x.jsonl`` → ``x.pass_rates.jsonl`` (next to the output)."""
    out = Path(out)
    return out.with_name(f"{out.stem}.pass_rates.jsonl")


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

    prompts = [r["prompt"] for r in rows]
    chat = isinstance(prompts[0], list)
    completions = [[{"role": "assistant", "content": t}] if chat else t for t in texts]
    columns = {k: [r.get(k) for r in rows] for k in rows[0] if k not in ("prompt", "completion")}
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts] if tokenizer is not None else None
    total = [0.0] * len(texts)
    for spec in specs:
        fn, weight = resolve(spec)
        values = fn(prompts=prompts, completions=completions, completion_ids=ids, **columns)
        total = [t + weight * (v or 0.0) for t, v in zip(total, values)]
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


# ---- teachers ----------------------------------------------------------------------------------------


class Teacher(Protocol):
    """Generates for :func:`sample_rows` instead of the local model: ``cfg.n`` consecutive completions per prompt
    (prompts are message lists, or plain strings for a tokenizer without a chat template)."""

    def complete(self, prompts: list[Any], cfg: SampleConfig) -> list[str]: ...


def request_seed(seed: int, prompt_index: int, n: int) -> int:
    """The seed of prompt `prompt_index`'s request; its j-th completion draws with ``request_seed(...) + j``, which
    is what vLLM does for a seeded request with ``n`` > 1, so every (prompt, sample) has a stream of its own."""
    return (int(seed) * 1_000_003 + prompt_index * n) % 2**31


def _as_messages(prompt: Any) -> list[dict[str, str]]:
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


@dataclass
class EndpointTeacher:
    """A teacher behind an OpenAI-compatible API (``vllm serve``, an inference provider, ...) at `url`, its API
    root (``http://127.0.0.1:8000/v1``; a bare ``http://host:port`` means ``/v1`` there).

    With a local `tokenizer`, each prompt is rendered with its chat template, exactly as in-process sampling
    renders it, and sent to ``/completions`` as token ids: the served model sees the same tokens as the local one
    (no server-side template, no second BOS), and the verifier knows whether the template pre-fills ``<think>``.
    Without one, the messages go to ``/chat/completions`` and the server applies its own template. One request per
    prompt (``n`` completions, ``seed`` = :func:`request_seed`; greedy: one completion, used ``n`` times),
    `concurrency` at a time. Every failure (bad URL,
    server down, HTTP error, malformed answer) is one :class:`aha.rollout.server.EndpointError` naming the URL.
    """

    url: str
    model: str
    tokenizer: Any = None
    api_key: str | None = None
    timeout: float = 600.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        parsed = urlparse(self.url) if isinstance(self.url, str) else None
        if parsed is None or parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"--endpoint must be an http(s):// URL such as http://127.0.0.1:8000/v1, got {self.url!r}")
        self.url = self.url.rstrip("/")
        if parsed.path in ("", "/"):
            self.url += "/v1"
        if not self.model:
            raise ValueError("--model: the endpoint needs the served model's name")
        if self.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, got {self.concurrency}")

    def complete(self, prompts: list[Any], cfg: SampleConfig) -> list[str]:
        from aha.data.prompts import render_prompt
        from aha.rollout.server import EndpointError, http_json

        chat = self.tokenizer is None
        url = f"{self.url}/{'chat/completions' if chat else 'completions'}"
        greedy = cfg.temperature == 0  # one greedy completion repeated n times: vLLM refuses n > 1 when greedy
        common = {
            "model": self.model,
            "n": 1 if greedy else cfg.n,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_new_tokens,
        }

        def one(i: int) -> list[str]:
            body = {**common, "seed": request_seed(cfg.seed, i, cfg.n)}
            if chat:
                body["messages"] = _as_messages(prompts[i])
            else:
                text = render_prompt(self.tokenizer, prompts[i])
                body["prompt"] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            answer = http_json(url, body, timeout=self.timeout, api_key=self.api_key)
            try:
                choices = sorted(answer["choices"], key=lambda c: c.get("index", 0))
                texts = [c["message"]["content"] if chat else c["text"] for c in choices]
            except (KeyError, TypeError, AttributeError):
                raise EndpointError(
                    f"{url}: the answer has no choices[].{'message.content' if chat else 'text'}"
                ) from None
            if len(texts) != common["n"] or not all(isinstance(t, str) for t in texts):
                raise EndpointError(f"{url}: asked for {common['n']} completions of prompt {i}, got {len(texts)}")
            return texts * cfg.n if greedy else texts

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return [t for texts in pool.map(one, range(len(prompts))) for t in texts]


class VLLMTeacher:
    """The model in an in-process vLLM engine (:class:`aha.rollout.vllm.VLLMRollout`, colocate): prompts rendered
    and tokenised as in-process sampling does, completion j of prompt i seeded as :class:`EndpointTeacher` seeds it
    (so a local engine and a ``vllm serve`` of the same model give the same samples)."""

    def __init__(self, model: Any, tokenizer: Any, *, seed: int = 0, **engine_kwargs: Any) -> None:
        from aha.rollout.vllm import VLLMRollout

        self.tokenizer = tokenizer
        self.rollout = VLLMRollout(model, tokenizer, mode="colocate", seed=seed, **engine_kwargs)

    def complete(self, prompts: list[Any], cfg: SampleConfig) -> list[str]:
        from aha.data.prompts import render_prompt

        ids = [self.tokenizer(render_prompt(self.tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
        rep = [x for x in ids for _ in range(cfg.n)]
        seeds = [request_seed(cfg.seed, i, cfg.n) + j for i in range(len(ids)) for j in range(cfg.n)]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        out, _ = self.rollout.generate(rep, params, row_seeds=seeds)
        return [self.tokenizer.decode(row, skip_special_tokens=True) for row in out]

    def close(self) -> None:
        self.rollout.close()


# ---- running -----------------------------------------------------------------------------------------


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write atomically (a temporary file renamed into place): a killed run leaves no half file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The output path; an existing output (or sidecar) is refused unless `overwrite`."""
    path = Path(out)
    if path.suffix != ".jsonl":
        raise ValueError(f"--out {path}: the output is a .jsonl file")
    for p in (path, sidecar_path(path)):
        if p.exists() and not overwrite:
            raise ValueError(f"--out: {p} already exists; choose another file or pass --overwrite")
    return path


def sample_rows(
    model: Any,
    tok: Any,
    rows: list[dict[str, Any]],
    verifier: Verifier,
    cfg: SampleConfig,
    teacher: Teacher | None = None,
    backend: str = "fast",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generate ``cfg.n`` completions per row (with `teacher`, else the local `model` and aha's sampler
    `backend`), judge and select them. `tok` may be None only with a teacher (an endpoint's chat API)."""
    prompts = [r["prompt"] for r in rows]
    if tok is not None and getattr(tok, "chat_template", None) is None:  # a base model: the question as plain text
        prompts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    prefilled = tok is not None and render_prompt(tok, prompts[0]).rstrip().endswith(("<think>", "<reasoning>"))
    verifier = replace(verifier, prefilled=prefilled)
    if teacher is not None:
        texts = teacher.complete(prompts, cfg)
    else:
        if backend not in BACKENDS:
            raise ValueError(f"sample: unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
        rep = [p for p in prompts for _ in range(cfg.n)]
        was_training = model.training
        model.eval()
        texts, _, _ = generate_texts(model, tok, rep, params, batch_size=cfg.batch_size, seed=cfg.seed, backend=backend)
        model.train(was_training)
    if len(texts) != len(rows) * cfg.n:
        raise ValueError(f"sample: the teacher returned {len(texts)} completions for {len(rows)} prompts × {cfg.n}")
    accepted = judge(rows, texts, verifier, cfg, tok)
    return select(rows, texts, accepted, cfg)


def run_sample(
    model: Any,
    tok: Any,
    data: str | dict[str, Any],
    out: str | Path,
    cfg: SampleConfig,
    overwrite: bool = False,
    teacher: Teacher | None = None,
    backend: str = "fast",
) -> dict[str, Any]:
    """Sample (with `teacher` when given, else `model`), verify and write `out` plus its pass-rate sidecar;
    returns a summary."""
    cfg.validate()
    if cfg.rewards:
        from aha.rewards import resolve

        for spec in cfg.rewards:
            resolve(spec)  # unknown names and bad parameters fail before any generation
    path = check_out(out, overwrite)
    start = time.perf_counter()
    rows, verifier = load_sample_data(data, cfg, tok)
    lines, rates = sample_rows(model, tok, rows, verifier, cfg, teacher=teacher, backend=backend)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_jsonl(sidecar_path(path), rates)
    _write_jsonl(path, lines)
    n_in = sum(r["in_range"] for r in rates)
    return {
        "prompts": len(rows),
        "samples": len(rows) * cfg.n,
        "accepted": sum(r["accepted"] for r in rates),
        "mean_pass_rate": sum(r["pass_rate"] for r in rates) / len(rates),
        "prompts_in_range": n_in,
        "kept": len(lines),
        "out": str(path),
        "pass_rates": str(sidecar_path(path)),
        "seconds": round(time.perf_counter() - start, 1),
    }
