"""A recipe's `tools:` (built-in names or file.py:fn): checked, passed to the SFT trainer (rendered into the prompts),
the GRPO trainer (multi-turn rollouts) and the held-out evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aha.workflows.pipeline import build_stages, dry_run_report, read_pipeline, validate
from aha.workflows.recipe import apply_set, load_recipe, read_recipe, resolve_tools

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def sft_recipe(tmp_path: Path, **extra) -> Path:
    data = {
        "model": {"tiny": SMALL},
        "dataset": {"task": "calculator", "digits": 2, "split": "sft", "n": 64},
        "training": {"max_steps": 2, "per_device_train_batch_size": 8, "logging_steps": 1, "save_steps": 100},
        **extra,
    }
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_resolve_tools_names_the_known_ones(tmp_path):
    from aha.tools.calculator import calculator

    assert resolve_tools(["calculator"]) == [calculator] and resolve_tools(None) == []
    assert [t.__name__ for t in resolve_tools(["calculator", "python"])] == ["calculator", "python"]
    (tmp_path / "mytools.py").write_text(
        'def double(x: int) -> int:\n    """Double it.\n\n    Args:\n        x: a number\n    """\n    return 2 * x\n'
    )
    assert resolve_tools(["mytools.py:double"], tmp_path)[0](4) == 8  # a relative file: next to the recipe
    with pytest.raises(ValueError, match="tools: unknown tool 'search'.*built-in tools are calculator, python"):
        resolve_tools(["search"])
    with pytest.raises(ValueError, match="tools: expected a list of tool names"):
        resolve_tools("calculator")
    with pytest.raises(ValueError, match="'calculator' is listed twice"):
        resolve_tools(["calculator", "calculator"])


def test_sft_recipe_takes_tools_and_the_trainer_gets_them(tmp_path, monkeypatch):
    import aha.train.sft as sft
    from aha.tools.calculator import calculator
    from aha.workflows.run import run_recipe

    recipe = load_recipe(sft_recipe(tmp_path, tools=["calculator"]), kind="sft", out=str(tmp_path / "run"))
    assert recipe.tools == ["calculator"] and recipe.resolved()["tools"] == ["calculator"]
    assert any(n.startswith("tools: calculator") for n in recipe.notes)
    seen = {}

    class Spy(sft.SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["tools"], seen["example"] = self.tools, self.examples[0]

    monkeypatch.setattr(sft, "SFTTrainer", Spy)
    summary = run_recipe(recipe, plot=False)
    assert summary["steps"] == 2 and seen["tools"] == [calculator]
    from aha.models.tiny import build_tokenizer

    assert build_tokenizer().decode(seen["example"][0]).startswith("<|im_start|>system\ntools: calculator(expression)")
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["tools"] == ["calculator"]


def test_without_tools_a_task_made_for_them_gets_a_note(tmp_path):
    recipe = load_recipe(sft_recipe(tmp_path), kind="sft")
    assert recipe.tools == [] and "tools" not in recipe.resolved()
    assert any("made for the tools calculator, which this recipe does not give" in n for n in recipe.notes)
    recipe = load_recipe(sft_recipe(tmp_path, tools=["calculator"]), kind="sft")
    assert not any("made for the tools" in n for n in recipe.notes)


def test_bad_tools_are_refused_and_a_grpo_recipe_calls_them(tmp_path, monkeypatch):
    import aha.train.grpo as grpo_mod
    import aha.workflows.run as run

    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        load_recipe(sft_recipe(tmp_path, tools=["abacus"]), kind="sft")
    grpo = {
        "model": {"tiny": SMALL},
        "dataset": {"task": "calculator", "digits": 2, "split": "train", "n": 8},
        "rewards": ["correctness"],
        "tools": ["calculator"],
        "eval": {
            "dataset": {"task": "calculator", "digits": 2, "split": "eval", "n": 4},
            "samples": 1,
            "max_new_tokens": 40,
        },
        "training": {
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "num_generations": 2,
            "logging_steps": 1,
            "max_completion_length": 40,
            "max_tool_calling_iterations": 1,
        },
    }
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(grpo))
    recipe = load_recipe(tmp_path / "grpo.yaml", kind="grpo", out=str(tmp_path / "run"))
    assert any("called in multi-turn rollouts" in n for n in recipe.notes)
    seen = {}

    class Spy(grpo_mod.GRPOTrainer):
        def __init__(self, *args, tools=None, **kwargs):
            seen["tools"] = tools
            super().__init__(*args, tools=tools, **kwargs)

    import aha.eval.evaluate as ev

    real = ev.evaluate

    def spy_eval(*args, tools=None, max_tool_iterations=None, **kwargs):
        seen.setdefault("eval_tools", []).append((tools, max_tool_iterations))
        return real(*args, tools=tools, max_tool_iterations=max_tool_iterations, **kwargs)

    monkeypatch.setattr(grpo_mod, "GRPOTrainer", Spy)
    monkeypatch.setattr(ev, "evaluate", spy_eval)
    summary = run.run_recipe(recipe, plot=False)
    from aha.tools.calculator import calculator

    assert seen["tools"] == [calculator] and all(t == ([calculator], 1) for t in seen["eval_tools"])
    assert summary["steps"] == 1
    assert "tool_use_after" in summary and "tool_use_rate" in summary["eval"]


def test_set_tools(tmp_path):
    raw = read_recipe(sft_recipe(tmp_path))
    apply_set(raw, "tools=[calculator]", "sft")
    assert raw["tools"] == ["calculator"]
    with pytest.raises(ValueError, match="--set tools: tools: unknown tool 'abacus'"):
        apply_set(raw, "tools=[abacus]", "sft")
    with pytest.raises(ValueError, match="--set tools: tools must be list"):
        apply_set(raw, "tools=3", "sft")
    assert load_recipe(sft_recipe(tmp_path), ["tools=[calculator]"], kind="sft").tools == ["calculator"]


def test_the_tools_tiny_pipeline_gives_both_stages_the_calculator(tmp_path):
    """recipes/tools-tiny.yaml: its cold-start stage renders the calculator, its grpo stage calls it."""
    path = RECIPES / "tools-tiny.yaml"
    raw = read_pipeline(path)
    stages = build_stages(raw, path.parent)
    validate(raw, stages, tmp_path)
    report = dry_run_report(path, out=str(tmp_path / "out"))
    resolved = yaml.safe_load(report)
    cold, grpo = resolved["stages"]
    assert (
        cold["tools"] == ["calculator"] and grpo["tools"] == ["calculator"] and cold["dataset"]["task"] == "calculator"
    )
    assert cold["dataset"]["split"] == "sft" and grpo["training"]["max_completion_length"] == 160
    assert grpo["rewards"] == ["correctness"] and resolved["stages"][0]["eval"]["dataset"]["split"] == "eval"
    assert "# stage 1-cold-start: tools: calculator" in report
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        dry_run_report(path, ["stages.cold-start.tools=[abacus]"], out=str(tmp_path / "out"))


def test_the_smollm2_tools_pipeline_smoke_on_the_tiny_model(tmp_path):
    """recipes/smollm2-tools.yaml's stages on the tiny model for a step each: cold start with the calculator's
    traces, GRPO calling it, the held-out tool-use rate before and after."""
    import json

    from aha.cli import main

    sets = ["model=tiny", "training.bf16=false", "eval.dataset.n=4", "eval.max_new_tokens=24"]
    sets += ["stages.cold-start.training.max_steps=2", "stages.cold-start.dataset.n=16"]
    sets += ["stages.grpo.training.max_steps=1", "stages.grpo.training.max_completion_length=24"]
    sets += ["stages.grpo.training.per_device_train_batch_size=8", "stages.grpo.dataset.n=8"]
    args = ["pipeline", str(RECIPES / "smollm2-tools.yaml"), "--out", str(tmp_path / "run")]
    assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["0-start", "1-cold-start", "2-grpo"]
    assert "tool_use_before" in summary and "tool_use_sampled_after" in summary
