import json
import math
import random

import pytest
import yaml

from aha.workflows.report import ema, ema_weight, plot_run


def _synthetic_run(path, steps=60, with_eval=False):
    path.mkdir()
    rng = random.Random(0)
    lines = [{"phase": "sft", "step": s, "loss": 3.0 * math.exp(-s / 20) + rng.random() * 0.2} for s in range(2, 42, 2)]
    for s in range(1, steps + 1):
        corr = min(1.0, s / steps + rng.gauss(0, 0.1))
        row = {
            "phase": "grpo",
            "step": s,
            "reward": corr + 0.9,
            "reward_std": 0.3,
            "rewards/correctness/mean": corr,
            "rewards/format/mean": 0.9 + rng.random() * 0.1,
            "kl": 0.001 * s + rng.random() * 0.002,
            "entropy": 1.5 - s / steps + rng.random() * 0.1,
            "clip_ratio/low_mean": rng.random() * 0.01,
            "clip_ratio/high_mean": rng.random() * 0.01,
            "clip_ratio/region_mean": rng.random() * 0.02,
            "completions/mean_length": 20 + s / 3 + rng.random() * 3,
            "completions/clipped_ratio": max(0.0, 0.3 - s / steps / 3 + rng.random() * 0.05),
            "frac_reward_zero_std": 0.2,
            "loss": 0.01,
            "step_time": 0.5,
        }
        if with_eval and s % 20 == 0:
            row["eval/accuracy"] = s / steps
        lines.append(row)
    lines[-1]["kl"] = None  # NaN is logged as null
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken"
    (path / "metrics.jsonl").write_text(text)
    (path / "config.yaml").write_text(yaml.safe_dump({"demo": {"seed": 0, "grpo_steps": steps}}))
    summary = {"accuracy_before": 0.2, "accuracy_after": 0.6, "pass1_before": 0.15, "pass1_after": 0.55}
    (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_plot_run_writes_pngs_and_report(tmp_path):
    run = _synthetic_run(tmp_path / "run")
    paths = plot_run(run)
    names = {p.name for p in paths}
    assert {
        "reward.png",
        "reward_per_function.png",
        "held_out.png",
        "kl.png",
        "entropy.png",
        "clip_ratio.png",
        "completion_length.png",
        "truncated.png",
        "sft_loss.png",
    } <= names
    for p in paths:
        assert p.parent == run / "plots" and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (run / "report.md").read_text()
    for p in paths:
        assert f"(plots/{p.name})" in report
    assert "accuracy_after" in report and "grpo_steps: 60" in report


def test_plot_skips_absent_metrics_and_uses_logged_eval(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": s, "reward": s / 10, "eval/accuracy": s / 20} for s in range(1, 6)]  # no phase tags
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    names = {p.name for p in plot_run(run)}
    assert names == {"reward.png", "held_out.png"}
    assert "Configuration" not in (run / "report.md").read_text()


def test_plot_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_run(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no metrics.jsonl"):
        plot_run(tmp_path)


def test_ema():
    assert ema([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]
    assert ema([5.0, 5.0, 5.0], 0.9) == pytest.approx([5.0, 5.0, 5.0])  # debiased: no pull towards 0
    assert ema_weight(5) == 0.0 and ema_weight(1000) == 0.9


def test_plot_cli(tmp_path, capsys):
    from aha.cli import main

    run = _synthetic_run(tmp_path / "run", steps=12)
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "reward.png").exists()
    assert main(["plot", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_tool_run_gets_its_tool_use_curve(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [
        {"phase": "grpo", "step": s, "reward": s / 10, "tools/used": s / 5, "tools/masked_share": 0.2}
        for s in (1, 2, 3)
    ]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert "tool_use.png" in {p.name for p in plot_run(run)}
