"""A recipe's `tools:` (built-in tool names): checked, passed to the SFT trainer, refused by GRPO for now."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aha.workflows.pipeline import build_stages, dry_run_report, read_pipeline, validate
from aha.workflows.recipe import BUILTIN_TOOLS, apply_set, load_recipe, read_recipe, resolve_tools

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


def test_resolve_tools_names_the_known_ones():
    from aha.tools.calculator import calculator

    assert BUILTIN_TOOLS == ("calculator",)
    assert resolve_tools(["calculator"]) == [calculator] and resolve_tools(None) == []
    with pytest.raises(ValueError, match=r"unknown tool 'calculater' \(did you mean 'calculator'\?\); built-in tools"):
        resolve_tools(["calculater"])
    with pytest.raises(ValueError, match="unknown tool 'search'.*built-in tools: calculator"):
        resolve_tools(["search"])
    with pytest.raises(ValueError, match="tools: expected a list of built-in tool names"):
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


def test_bad_tools_and_grpo_tools_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        load_recipe(sft_recipe(tmp_path, tools=["abacus"]), kind="sft")
    grpo = read_recipe(RECIPES / "demo-grpo.yaml")
    grpo["tools"] = ["calculator"]
    (tmp_path / "grpo.yaml").write_text(yaml.safe_dump(grpo))
    with pytest.raises(ValueError, match="tools: a GRPO recipe takes no tools yet"):
        load_recipe(tmp_path / "grpo.yaml", kind="grpo")


def test_set_tools(tmp_path):
    raw = read_recipe(sft_recipe(tmp_path))
    apply_set(raw, "tools=[calculator]", "sft")
    assert raw["tools"] == ["calculator"]
    with pytest.raises(ValueError, match="--set tools: tools: unknown tool 'abacus'"):
        apply_set(raw, "tools=[abacus]", "sft")
    with pytest.raises(ValueError, match="--set tools: tools must be list"):
        apply_set(raw, "tools=3", "sft")
    assert load_recipe(sft_recipe(tmp_path), ["tools=[calculator]"], kind="sft").tools == ["calculator"]


def test_a_pipelines_sft_stage_takes_tools(tmp_path):
    """recipes/tools-tiny.yaml: its cold-start stage gets the calculator; its grpo stage's tools wait for the GRPO
    tool rollout (refused until then: with them set aside the draft is valid)."""
    path = RECIPES / "tools-tiny.yaml"
    raw = read_pipeline(path)
    stages = build_stages(raw, path.parent)
    with pytest.raises(ValueError, match="stage 2-grpo: .*a GRPO recipe takes no tools yet"):
        validate(raw, stages, tmp_path)
    report = dry_run_report(path, ["stages.grpo.tools=null"], out=str(tmp_path / "out"))
    resolved = yaml.safe_load(report)
    cold, grpo = resolved["stages"]
    assert cold["tools"] == ["calculator"] and cold["dataset"]["task"] == "calculator"
    assert cold["dataset"]["split"] == "sft" and grpo["training"]["max_completion_length"] == 160
    assert grpo["rewards"] == ["correctness"] and resolved["stages"][0]["eval"]["dataset"]["split"] == "eval"
    assert "# stage 1-cold-start: tools: calculator" in report
    with pytest.raises(ValueError, match="unknown tool 'abacus'"):
        dry_run_report(path, ["stages.cold-start.tools=[abacus]"], out=str(tmp_path / "out"))
