"""Training curves of a run: PNGs in ``RUN/plots/`` and a ``RUN/report.md`` that shows them.

Reads ``RUN/metrics.jsonl`` (lines tagged ``"phase": "sft" | "grpo"``, TRL metric names) and draws one
figure per metric family that is present: total reward, reward per function, held-out accuracy (logged
``eval/…`` metrics, else the before/after numbers of ``summary.json``), KL, entropy, clip ratios,
completion length, truncated fraction, groups with zero reward spread and the cold-start SFT loss. Each
curve is an exponential moving average (debiased, its weight growing with the number of points) drawn
over the faint raw values. Figures are rendered with matplotlib's Agg canvas, without pyplot.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import PercentFormatter

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]


@dataclass
class PlotSpec:
    """One figure: `series` are (metric key, legend label); `phase` selects the metrics lines."""

    name: str
    title: str
    ylabel: str
    series: list[tuple[str, str]] = field(default_factory=list)
    phase: str = "grpo"
    percent: bool = False


FIXED_SPECS = [
    PlotSpec("kl", "KL divergence from the reference model", "KL (nats per token)", [("kl", "KL")]),
    PlotSpec("entropy", "Entropy of the policy on completion tokens", "entropy (nats)", [("entropy", "entropy")]),
    PlotSpec(
        "clip_ratio",
        "Tokens whose probability ratio was clipped",
        "fraction of tokens",
        [
            ("clip_ratio/region_mean", "either side"),
            ("clip_ratio/low_mean", "low (ratio < 1 − ε)"),
            ("clip_ratio/high_mean", "high (ratio > 1 + ε)"),
        ],
        percent=True,
    ),
    PlotSpec(
        "completion_length",
        "Completion length",
        "tokens",
        [
            ("completions/mean_length", "mean"),
            ("completions/max_length", "longest"),
            ("completions/min_length", "shortest"),
        ],
    ),
    PlotSpec(
        "truncated",
        "Completions cut off at the length limit",
        "fraction of completions",
        [("completions/clipped_ratio", "truncated")],
        percent=True,
    ),
    PlotSpec(
        "zero_std",
        "Groups whose completions all got the same reward (no signal)",
        "fraction of groups",
        [("frac_reward_zero_std", "zero reward spread")],
        percent=True,
    ),
    PlotSpec(
        "tool_use",
        "Tool use in the rollouts",
        "fraction",
        [
            ("tools/used", "completions calling a tool"),
            ("tools/failure_frequency", "calls that failed"),
            ("tools/masked_share", "tokens the model did not write"),
        ],
        percent=True,
    ),
    PlotSpec("sft_loss", "Cold-start SFT loss", "cross-entropy loss", [("loss", "loss")], phase="sft"),
]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Lines of a metrics.jsonl; a broken line (a run killed mid-write) is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def ema_weight(n: int) -> float:
    """Smoothing weight for `n` points: none for up to 10 points, rising to 0.9 for 100 or more."""
    return min(0.9, max(0.0, 1.0 - 10.0 / n)) if n else 0.0


def ema(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = weight * acc + (1 - weight) * v
        out.append(acc / (1 - weight**i) if weight > 0 else v)
    return out


def _series(rows: list[dict[str, Any]], key: str, phase: str) -> tuple[list[float], list[float]]:
    has_phase = any("phase" in r for r in rows)
    xs, ys = [], []
    for i, r in enumerate(rows):
        if has_phase and r.get("phase") != phase:
            continue
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            xs.append(float(r.get("step", i + 1)))
            ys.append(float(v))
    return xs, ys


def _new_figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.5, 4.2), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def draw_curves(spec: PlotSpec, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Draw `spec` from `rows` into `path`; None (nothing written) when none of its metrics is present."""
    data = [(label, *_series(rows, key, spec.phase)) for key, label in spec.series]
    data = [d for d in data if d[1]]
    if not data:
        return None
    fig, ax = _new_figure()
    smoothed_any = False
    for color, (label, xs, ys) in zip(COLORS, data):
        w = ema_weight(len(ys))
        if w > 0:
            smoothed_any = True
            ax.plot(xs, ys, color=color, alpha=0.25, linewidth=1)
        ax.plot(xs, ema(ys, w), color=color, linewidth=2, label=label, marker="o" if len(ys) <= 10 else None)
    ax.set_title(spec.title, fontsize=13, fontweight="bold")
    ax.set_xlabel("SFT step" if spec.phase == "sft" else "GRPO step")
    ax.set_ylabel(spec.ylabel)
    if spec.percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    handles, labels = ax.get_legend_handles_labels()
    if smoothed_any:
        handles.append(Line2D([], [], color="gray", alpha=0.35, linewidth=1))
        labels.append("raw (faint); solid = moving average")
    if len(data) > 1 or smoothed_any:
        ax.legend(handles, labels, frameon=False, fontsize=9)
    fig.savefig(path)
    return path


def reward_specs(rows: list[dict[str, Any]]) -> list[PlotSpec]:
    """Total reward, and one curve per reward function (``rewards/<name>/mean``)."""
    names = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")})
    return [
        PlotSpec("reward", "Mean reward per GRPO step", "reward", [("reward", "total reward")]),
        PlotSpec(
            "reward_per_function", "Mean reward per function", "reward", [(f"rewards/{n}/mean", n) for n in names]
        ),
    ]


def eval_spec(rows: list[dict[str, Any]]) -> PlotSpec | None:
    """Held-out metrics logged during training (``eval/…`` or ``eval_…`` keys)."""
    keys = sorted({k for r in rows for k in r if k.startswith(("eval/", "eval_"))})
    keys = [k for k in keys if any(w in k for w in ("accuracy", "pass", "maj", "format"))]
    if not keys:
        return None
    series = [(k, k.split("/", 1)[-1].removeprefix("eval_").replace("_", " ")) for k in keys]
    phase = next((r.get("phase", "grpo") for r in rows if any(k in r for k in keys)), "grpo")
    return PlotSpec("held_out", "Held-out evaluation during training", "score", series, phase=phase, percent=True)


def draw_before_after(summary: dict[str, Any], path: Path) -> Path | None:
    """Bars of held-out accuracy and pass@1, cold start against after GRPO (from summary.json)."""
    pairs = [
        (label, summary.get(f"{key}_before"), summary.get(f"{key}_after"))
        for key, label in (("accuracy", "greedy accuracy"), ("pass1", "sampled pass@1"), ("format", "format rate"))
    ]
    pairs = [p for p in pairs if isinstance(p[1], (int, float)) and isinstance(p[2], (int, float))]
    if not pairs:
        return None
    fig, ax = _new_figure()
    ax.grid(True, axis="y", alpha=0.3)
    ax.grid(False, axis="x")
    width = 0.38
    for j, (name, color) in enumerate((("cold start", "#9aa5b1"), ("after GRPO", COLORS[0]))):
        xs = [i + (j - 0.5) * width for i in range(len(pairs))]
        vals = [p[1 + j] for p in pairs]
        bars = ax.bar(xs, vals, width, label=name, color=color)
        ax.bar_label(bars, labels=[f"{100 * v:.1f}%" for v in vals], padding=2, fontsize=9)
    ax.set_xticks(range(len(pairs)), [p[0] for p in pairs])
    ax.set_ylim(0, 1.12)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Held-out evaluation: cold start → after GRPO", fontsize=13, fontweight="bold")
    ax.set_ylabel("share of held-out problems")
    ax.legend(frameon=False, fontsize=9, loc="upper left")
    fig.savefig(path)
    return path


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def write_report(run: Path, plots: list[tuple[str, Path]], summary: dict[str, Any]) -> Path:
    """``RUN/report.md``: the summary, each plot, and the run's config (folded)."""
    lines = [f"# Run report: {run.name}", ""]
    if summary:
        lines += ["## Summary", "", "| metric | value |", "| --- | --- |"]
        for k, v in summary.items():
            shown = f"{v:.4g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else v
            lines.append(f"| {k} | {shown} |")
        lines.append("")
    lines += ["## Training curves", ""]
    if not plots:
        lines += ["No metrics to plot were found in metrics.jsonl.", ""]
    for title, path in plots:
        lines += [f"### {title}", "", f"![{title}](plots/{path.name})", ""]
    config = run / "config.yaml"
    if config.is_file():
        lines += ["## Configuration", "", "<details><summary>config.yaml</summary>", "", "```yaml"]
        lines += [config.read_text().rstrip(), "```", "", "</details>", ""]
    out = run / "report.md"
    out.write_text("\n".join(lines))
    return out


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the run's plots into ``RUN/plots/`` and ``RUN/report.md``; returns the PNG paths."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: is it an aha run directory?")
    rows = read_metrics(metrics)
    summary = _load_json(run / "summary.json")
    plots_dir = run / "plots"
    plots_dir.mkdir(exist_ok=True)
    specs = reward_specs(rows)
    held_out = eval_spec(rows)
    specs += [held_out] if held_out else []
    made: list[tuple[str, Path]] = []
    for spec in specs + FIXED_SPECS:
        path = draw_curves(spec, rows, plots_dir / f"{spec.name}.png")
        if path is not None:
            made.append((spec.title, path))
    if held_out is None:
        path = draw_before_after(summary, plots_dir / "held_out.png")
        if path is not None:
            made.insert(min(2, len(made)), ("Held-out evaluation: cold start → after GRPO", path))
    write_report(run, made, summary)
    return [p for _, p in made]
