"""``aha eval``: greedy accuracy, pass@k, maj@k, format rate and lengths of a model on a data set."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from aha.cli import add_dtype_option

if TYPE_CHECKING:
    from rich.table import Table

NAME = "eval"

RATE_KEYS = ("greedy_accuracy", "format_rate", "truncated", "greedy_format_rate", "greedy_truncated")
RATE_KEYS += ("tool_use_rate", "greedy_tool_use_rate", "tool_failure_rate", "greedy_tool_failure_rate")
LABELS = {
    "greedy_accuracy": "greedy accuracy",
    "format_rate": "format rate (sampled)",
    "mean_length": "mean length (sampled, tokens)",
    "max_length": "max length (sampled, tokens)",
    "truncated": "truncated (sampled)",
    "greedy_format_rate": "format rate (greedy)",
    "greedy_mean_length": "mean length (greedy, tokens)",
    "greedy_max_length": "max length (greedy, tokens)",
    "greedy_truncated": "truncated (greedy)",
    "tool_use_rate": "completions calling a tool (sampled)",
    "tool_calls": "tool calls per completion (sampled)",
    "tool_failure_rate": "tool calls failed (sampled)",
    "greedy_tool_use_rate": "completions calling a tool (greedy)",
    "greedy_tool_calls": "tool calls per completion (greedy)",
    "greedy_tool_failure_rate": "tool calls failed (greedy)",
}


def _ks(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,8, got {text!r}") from None


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="evaluate a model: greedy accuracy, pass@k, maj@k, format rate, lengths",
        description="Evaluate a model (directory, run directory, LoRA adapter or Hub id) on a built-in task, "
        "a local .jsonl/.json/.csv/.parquet file (GSM8K '#### 72' or MATH '\\boxed{}' answers) or a Hub data set. "
        "pass@k is the unbiased estimator 1 - C(n-c,k)/C(n,k); maj@k is a majority vote over the extracted "
        "answers of the first k samples, ties going to the answer seen first.",
    )
    p.add_argument("--model", required=True, help="model directory, run directory, adapter directory or Hub id")
    p.add_argument("--data", required=True, help="built-in task (e.g. arithmetic, arithmetic:digits=3), file or Hub id")
    p.add_argument("--n", type=int, default=8, help="sampled completions per question (default: 8)")
    p.add_argument("--k", type=_ks, default=None, help="k values for pass@k and maj@k (default: those of 1,4,8 <= n)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default: 0.6)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="completion token limit (default: 256 on a CPU, 512 on a GPU)",
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate the first L questions (tasks: default 100)")
    p.add_argument(
        "--batch-size", type=int, default=None, help="prompts per generation batch (default: 16 on a CPU, 64 on a GPU)"
    )
    p.add_argument("--answer-format", choices=("task", "gsm8k", "math"), default=None, help="override detection")
    p.add_argument("--out", default=None, help="write samples.jsonl and summary.json into this directory")
    p.add_argument("--overwrite", action="store_true", help="replace the results in an existing non-empty --out")
    p.add_argument("--compare", default=None, metavar="OTHER_MODEL", help="evaluate another model side by side")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--backend",
        choices=("fast", "vllm"),
        default="fast",
        help="who samples: fast (aha's sampler on the loaded model, default) or vllm (an in-process vLLM engine)",
    )
    p.add_argument(
        "--tool",
        action="append",
        default=None,
        metavar="TOOL",
        help="a tool the model may call (calculator, python or file.py:function; repeat for several; default: the "
        "task's own tools, e.g. the calculator task's): multi-turn completions, graded on their last turn",
    )
    add_dtype_option(p, extra="; with --backend vllm: the engine's dtype (auto: vLLM's choice)")


def _fmt(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "–"
    if key in RATE_KEYS or key.startswith(("pass@", "maj@")):
        return f"{100 * v:.1f}%"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def _delta(key: str, a: float, b: float) -> str:
    if key in RATE_KEYS or key.startswith(("pass@", "maj@")):
        return f"{100 * (a - b):+.1f} pts"
    return f"{a - b:+.1f}"


def metric_keys(summary: dict[str, Any]) -> list[str]:
    keys = ["greedy_accuracy"] + [k for k in summary if k.startswith("pass@")] + [k for k in summary if "maj@" in k]
    return keys + [k for k in LABELS if k != "greedy_accuracy" and k in summary]


def summary_table(s: dict[str, Any]) -> Table:
    from rich.table import Table

    t = Table(title=f"{s['model']} on {s['data']} ({s['n_questions']} questions, n={s['n']}, {s['answer_format']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k in metric_keys(s):
        t.add_row(LABELS.get(k, k), _fmt(k, s[k]))
    return t


def comparison_tables(a: dict[str, Any], b: dict[str, Any], comparison: dict[str, Any]) -> list[Table]:
    from rich.table import Table

    t = Table(title=f"{a['data']} ({a['n_questions']} questions, n={a['n']}): A = {a['model']}, B = {b['model']}")
    t.add_column("metric")
    t.add_column("A", justify="right")
    t.add_column("B", justify="right")
    t.add_column("A − B", justify="right")
    for k in metric_keys(a):
        t.add_row(LABELS.get(k, k), _fmt(k, a[k]), _fmt(k, b.get(k)), _delta(k, a[k], b.get(k, float("nan"))))
    w = Table(title="Per question: A against B")
    for col in ("judged on", "A better", "B better", "same"):
        w.add_column(col, justify="right" if col != "judged on" else "left")
    for key, label in (("pass@1", "sampled pass@1"), ("greedy", "greedy correct")):
        c = comparison[key]
        w.add_row(label, str(c["wins"]), str(c["losses"]), str(c["ties"]))
    return [t, w]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aha.eval.evaluate import EvalConfig
    from aha.workflows.evaluation import run_eval

    ks = args.k if args.k is not None else [k for k in (1, 4, 8) if k <= max(args.n, 1)]
    cfg = EvalConfig(
        n=args.n,
        ks=ks,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
    )
    result = run_eval(
        args.model,
        args.data,
        cfg,
        limit=args.limit,
        answer_format=args.answer_format,
        out=args.out,
        overwrite=args.overwrite,
        compare=args.compare,
        dtype=args.dtype,
        backend=args.backend,
        tools=args.tool,
    )
    console = Console(soft_wrap=False)
    if result["comparison"] is not None:
        for table in comparison_tables(result["summary"], result["compare"], result["comparison"]):
            console.print(table)
    else:
        console.print(summary_table(result["summary"]))
    if args.out:
        console.print(f"samples and summary in {args.out}", markup=False, highlight=False)
    else:
        console.print("(pass --out DIR to keep samples.jsonl and summary.json)", markup=False, highlight=False)
    return 0
