"""``aha eval``: greedy accuracy, pass@k, maj@k, format rate and lengths of a model on a data set,
with every completion written to ``samples.jsonl`` and the numbers to ``summary.json``.

Data (``--data``): a built-in task name (``arithmetic`` or ``arithmetic:digits=3``; its held-out split
and its own verifier), a local ``.jsonl``/``.json``/``.csv``/``.parquet`` file, or a Hub data set id
(``openai/gsm8k:main``, test split). Files need a question column (one of PROMPT_COLUMNS) and an answer
column (one of ANSWER_COLUMNS). GSM8K answers (``… #### 72``, or plain numbers) are graded by exact
numeric match of the last number in the completion's answer; MATH answers (``\\boxed{}`` solutions or
free-form) by math-verify equivalence.

Output layout (``--out DIR``): ``samples.jsonl`` (one line per question: prompt, ground truth, the
greedy completion and each sampled one with its extracted answer and correctness), ``summary.json``;
with ``--compare``: ``compare/samples.jsonl``, ``compare/summary.json`` and ``comparison.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from aha.data.answers import parse_reasoning
from aha.data.prompts import render_prompt
from aha.eval.metrics import ANSWER_FORMATS, Verifier, detect_format, maj_at_k, pass_at_k
from aha.rollout.engine import generate_texts
from aha.rollout.sampler import SamplingParams
from aha.workflows.rundir import OutputKind, check_output, prepare_output

PROMPT_COLUMNS = ("prompt", "question", "problem", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth", "target", "solution", "output")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
DEFAULT_TASK_ROWS = 100
EVAL_DIR = OutputKind("an aha eval directory", markers=("samples.jsonl",))  # + summary.json, compare/, comparison.json


@dataclass
class EvalConfig:
    n: int = 8  # sampled completions per question
    ks: list[int] = field(default_factory=lambda: [1, 4, 8])
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 512
    limit: int | None = None
    seed: int = 0
    batch_size: int = 64
    answer_format: str | None = None  # None: the task's verifier, or detected from the answers

    def validate(self) -> None:
        if self.n < 1:
            raise ValueError(f"--n must be at least 1, got {self.n}")
        if not self.ks:
            raise ValueError("--k needs at least one value")
        for k in self.ks:
            if k < 1:
                raise ValueError(f"--k values must be at least 1, got {k}")
            if k > self.n:
                raise ValueError(f"--k {k} is larger than --n {self.n}: pass@{k} needs at least {k} samples")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("--temperature must be >= 0 and --top-p in (0, 1]")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("--max-new-tokens and --batch-size must be at least 1")
        if self.answer_format not in (None, *ANSWER_FORMATS):
            raise ValueError(f"--answer-format must be one of {ANSWER_FORMATS}, got {self.answer_format!r}")


# ---- data --------------------------------------------------------------------------------------------


def task_from_spec(spec: str):
    from aha.tasks import TASKS, get_task

    name, _, params = spec.partition(":")
    if name not in TASKS:
        return None
    kwargs: dict[str, Any] = {}
    for item in filter(None, params.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--data {spec}: task parameters are key=value pairs, got {item!r}")
        try:
            kwargs[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key.strip()] = value
    return get_task(name, **kwargs)


def _records(spec: str) -> list[dict[str, Any]]:
    from datasets import load_dataset

    path = Path(spec).expanduser()
    if path.suffix.lower() in FILE_BUILDERS:
        if not path.is_file():
            raise FileNotFoundError(f"data file {path} does not exist")
        return list(load_dataset(FILE_BUILDERS[path.suffix.lower()], data_files=str(path), split="train"))
    if path.exists():
        raise ValueError(f"--data {spec}: unsupported file type; use {', '.join(FILE_BUILDERS)}")
    if "/" not in spec:
        from aha.tasks import TASKS

        raise ValueError(f"--data {spec}: not a built-in task ({', '.join(sorted(TASKS))}) nor a data file")
    name, _, config = spec.partition(":")
    try:  # a Hub data set: needs the network (or the datasets cache)
        return list(load_dataset(name, config or None, split="test"))
    except Exception as e:
        raise ValueError(f"--data {spec}: cannot load it from the Hub ({str(e).splitlines()[0]})") from None


def load_eval_data(
    spec: str, limit: int | None = None, seed: int = 0, answer_format: str | None = None
) -> tuple[list[dict[str, Any]], Verifier]:
    """Rows ``{"prompt", "answer", "raw_answer"}`` (answer: the ground truth as compared) and their verifier."""
    task = task_from_spec(spec)
    if task is not None and answer_format in (None, "task"):
        rows = task.rows("eval", limit or DEFAULT_TASK_ROWS, seed)
        verifier = Verifier("task", task)
        return [{"prompt": r["prompt"], "answer": str(r["answer"]), "raw_answer": r["answer"]} for r in rows], verifier
    records = task.rows("eval", limit or DEFAULT_TASK_ROWS, seed) if task else _records(spec)
    if not records:
        raise ValueError(f"--data {spec}: no rows")
    columns = list(records[0])
    q_col = next((c for c in PROMPT_COLUMNS if c in columns), None)
    a_col = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if a_col is None:
        raise ValueError(
            f"--data {spec}: no answer column (expected one of {', '.join(ANSWER_COLUMNS)}); "
            f"columns found: {', '.join(columns)}"
        )
    if q_col is None:
        raise ValueError(
            f"--data {spec}: no question column (expected one of {', '.join(PROMPT_COLUMNS)}); "
            f"columns found: {', '.join(columns)}"
        )
    records = records[:limit] if limit else records
    raw = [str(r[a_col]) for r in records]
    fmt = answer_format or detect_format(raw)
    if fmt == "task":
        raise ValueError(f"--answer-format task needs a built-in task as --data, got {spec}")
    verifier = Verifier(fmt)
    rows = []
    for r, a in zip(records, raw):
        q = r[q_col]
        prompt = q if isinstance(q, list) else [{"role": "user", "content": str(q)}]
        rows.append({"prompt": prompt, "answer": verifier.truth(a), "raw_answer": a})
    return rows, verifier


# ---- evaluation --------------------------------------------------------------------------------------


def _generate(model, tok, prompts, params, cfg, seed, bar, task_id) -> tuple[list[str], list[int], list[bool]]:
    texts, lengths, trunc = [], [], []
    for i, s in enumerate(range(0, len(prompts), cfg.batch_size)):
        chunk = prompts[s : s + cfg.batch_size]
        t, n, x = generate_texts(model, tok, chunk, params, batch_size=len(chunk), seed=seed + i)
        texts += t
        lengths += n
        trunc += x
        bar.advance(task_id, len(chunk))
    return texts, lengths, trunc


def _judge(text: str, length: int, truncated: bool, row: dict[str, Any], verifier: Verifier) -> dict[str, Any]:
    return {
        "completion": text,
        "extracted": verifier.extract(text),
        "correct": verifier.is_correct(text, row["answer"], row),
        "format_ok": parse_reasoning(text, verifier.prefilled).format_ok,
        "length": length,
        "truncated": truncated,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def evaluate_model(model, tok, rows, verifier: Verifier, cfg: EvalConfig, label: str = "eval"):
    """Greedy and `cfg.n` sampled completions per row. Returns (per-question records, metrics)."""
    from aha.console import progress

    prompts = [r["prompt"] for r in rows]
    if tok.chat_template is None:  # a base model: the question as plain text
        prompts = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    first = render_prompt(tok, prompts[0])
    verifier = replace(verifier, prefilled=first.rstrip().endswith(("<think>", "<reasoning>")))
    greedy_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    sample_p = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    with progress() as bar:
        tid = bar.add_task(label, total=len(rows) * (1 + cfg.n), info="")
        g = _generate(model, tok, prompts, greedy_p, cfg, cfg.seed, bar, tid)
        rep = [p for p in prompts for _ in range(cfg.n)]
        s = _generate(model, tok, rep, sample_p, cfg, cfg.seed + 1_000_003, bar, tid)
    records = []
    for i, row in enumerate(rows):
        greedy = _judge(g[0][i], g[1][i], g[2][i], row, verifier)
        span = range(i * cfg.n, (i + 1) * cfg.n)
        samples = [_judge(s[0][j], s[1][j], s[2][j], row, verifier) for j in span]
        correct = [x["correct"] for x in samples]
        answers = [x["extracted"] for x in samples]
        rec = {"index": i, "prompt": row["prompt"], "answer": row["answer"], "greedy": greedy, "samples": samples}
        rec["n_correct"] = sum(correct)
        rec["pass@k"] = {str(k): pass_at_k(cfg.n, sum(correct), k) for k in cfg.ks}
        rec["maj@k"] = {str(k): maj_at_k(answers, correct, k) for k in cfg.ks}
        records.append(rec)
    greedy_all = [r["greedy"] for r in records]
    sampled = [x for r in records for x in r["samples"]]
    metrics: dict[str, Any] = {"greedy_accuracy": _mean([x["correct"] for x in greedy_all])}
    ks = sorted(set(cfg.ks) | {1})
    for k in ks:
        metrics[f"pass@{k}"] = _mean([pass_at_k(cfg.n, r["n_correct"], k) for r in records])
    for k in sorted(cfg.ks):
        metrics[f"maj@{k}"] = _mean([float(r["maj@k"][str(k)]) for r in records])
    for prefix, group in (("", sampled), ("greedy_", greedy_all)):
        metrics[prefix + "format_rate"] = _mean([x["format_ok"] for x in group])
        metrics[prefix + "mean_length"] = _mean([x["length"] for x in group])
        metrics[prefix + "max_length"] = max(x["length"] for x in group)
        metrics[prefix + "truncated"] = _mean([x["truncated"] for x in group])
    return records, metrics


def _write(out: Path, records: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samples.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def compare_records(a: list[dict[str, Any]], b: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Per-question wins/losses/ties of model A against B on sampled pass@1 and on greedy correctness."""
    out: dict[str, Any] = {}
    for key, score in (
        ("pass@1", lambda r: r["n_correct"] / n),
        ("greedy", lambda r: float(r["greedy"]["correct"])),
    ):
        diffs = [score(x) - score(y) for x, y in zip(a, b)]
        out[key] = {
            "wins": sum(d > 0 for d in diffs),
            "losses": sum(d < 0 for d in diffs),
            "ties": sum(d == 0 for d in diffs),
        }
    out["questions"] = [
        {
            "index": x["index"],
            "a_pass@1": x["n_correct"] / n,
            "b_pass@1": y["n_correct"] / n,
            "a_greedy": x["greedy"]["correct"],
            "b_greedy": y["greedy"]["correct"],
        }
        for x, y in zip(a, b)
    ]
    return out


def run_eval(
    model: str,
    data: str,
    cfg: EvalConfig,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    compare: str | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (and `compare`) on `data` with the same rows and seeds; write results under `out`
    when given. Returns ``{"summary": …, "compare": … | None, "comparison": … | None}``."""
    from aha.models.loading import load_model, resolve_model_path

    cfg.validate()
    paths = [resolve_model_path(model)] + ([resolve_model_path(compare)] if compare else [])
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_output(out_dir, EVAL_DIR, overwrite, sources=[*paths, data])
    rows, verifier = load_eval_data(data, cfg.limit, cfg.seed, cfg.answer_format)
    results = []
    for label, path in zip(("model", "compare"), paths):
        start = time.perf_counter()
        m, tok = load_model(path)
        records, metrics = evaluate_model(m, tok, rows, verifier, cfg, label=f"{label} {Path(path).name}")
        summary = {
            "model": path,
            "data": data,
            "answer_format": verifier.format,
            "n_questions": len(rows),
            **{k: v for k, v in asdict(cfg).items() if k not in ("limit", "answer_format")},
            **metrics,
            "seconds": round(time.perf_counter() - start, 1),
        }
        results.append((records, summary))
        del m
    comparison = compare_records(results[0][0], results[1][0], cfg.n) if compare else None
    if out_dir is not None:
        prepare_output(out_dir, EVAL_DIR, overwrite, sources=[*paths, data])
        _write(out_dir, *results[0])
        if compare:
            _write(out_dir / "compare", *results[1])
            (out_dir / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
    return {
        "summary": results[0][1],
        "compare": results[1][1] if compare else None,
        "comparison": comparison,
    }
