"""``aha train`` / ``aha sft``: every shipped recipe passes --dry-run offline and runs 2 steps on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aha.cli import main

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GRPO_RECIPES = ["demo-grpo", "smoltldr", "gsm8k", "openr1-math", "r1-zero", "countdown"]
SMALL = "{tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}"
FAST = [
    f"model={SMALL}",
    "training.max_steps=2",
    "training.max_completion_length=16",
    "training.num_generations=4",
    "training.per_device_train_batch_size=8",
    "training.gradient_accumulation_steps=1",
]
# the dataset swap each recipe's header documents (demo and countdown already use a built-in task)
DATASET = {r: "dataset={task: arithmetic, n: 64}" for r in ("smoltldr", "gsm8k", "openr1-math", "r1-zero")}
DATASET |= {"demo-grpo": "dataset.n=64", "countdown": "dataset.n=64"}
PIPELINE_RECIPES = ["demo", "r1-pipeline-tiny", "tools-tiny"]
# the real model's recipes (its fetched directory is not here in `make test`): smoke-tested on the tiny model in
# tests/workflows/test_recipe.py, run for real by hand (README's table)
REAL_MODEL_RECIPES = ["smollm2-reasoning", "smollm2-smoltldr", "smollm2-tools"]
RG_RECIPES = ["rg-tiny"]  # need reasoning-gym: run in tests/tasks/test_reasoning_gym.py (skipped without it)


def _sets(items: list[str]) -> list[str]:
    return [x for item in items for x in ("--set", item)]


def test_all_recipes_are_tested() -> None:
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(
        [*GRPO_RECIPES, "demo-sft", *PIPELINE_RECIPES, *REAL_MODEL_RECIPES, *RG_RECIPES]
    )


@pytest.mark.parametrize("name", PIPELINE_RECIPES)
def test_pipeline_dry_run(name: str, capsys) -> None:
    assert main(["pipeline", str(RECIPES / f"{name}.yaml"), "--dry-run"]) == 0
    stages = __import__("yaml").safe_load(capsys.readouterr().out)["stages"]
    assert stages[0]["trainer"] == "sft" and stages[1]["trainer"] == "grpo" and stages[1]["rewards"]


@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_dry_run(name: str, capsys) -> None:
    assert main(["train", str(RECIPES / f"{name}.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe is valid" in out
    resolved = __import__("yaml").safe_load(out)  # the printed config is YAML (notes are comments)
    assert resolved["trainer"] == "grpo" and resolved["rewards"] and resolved["training"]["learning_rate"] > 0


def test_dry_run_says_what_it_cannot_check(capsys) -> None:
    assert main(["train", str(RECIPES / "gsm8k.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "is a Hub dataset" in out and "cannot be checked" in out and "is a Hub id" in out


@pytest.mark.parametrize("name", GRPO_RECIPES)
def test_tiny_substitution_runs(name: str, tmp_path: Path) -> None:
    out = tmp_path / name
    extra = ["eval.dataset.n=8", "eval.samples=1"] if name in ("demo-grpo", "countdown") else []
    argv = ["train", str(RECIPES / f"{name}.yaml"), *_sets([*FAST, DATASET[name], *extra])]
    assert main([*argv, "--out", str(out), "--no-plot"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (out / "config.yaml").is_file() and (out / "metrics.jsonl").read_text().strip()
    model_dir = out / "model"
    assert (
        model_dir / ("adapter_config.json" if name in ("smoltldr", "gsm8k", "countdown") else "config.json")
    ).is_file()
    if name in ("demo-grpo", "countdown"):
        assert "greedy_accuracy" in summary["eval"] and (out / "eval" / "summary.json").is_file()


def test_sft_dry_run_and_run(tmp_path: Path, capsys) -> None:
    recipe = str(RECIPES / "demo-sft.yaml")
    assert main(["sft", recipe, "--dry-run"]) == 0
    assert "completion" in capsys.readouterr().out
    sets = _sets([f"model={SMALL}", "training.max_steps=2", "training.per_device_train_batch_size=8", "dataset.n=32"])
    assert main(["sft", recipe, *sets, "--out", str(tmp_path / "sft")]) == 0  # with plots
    summary = json.loads((tmp_path / "sft" / "summary.json").read_text())
    assert summary["trainer"] == "sft" and summary["steps"] == 2
    assert (tmp_path / "sft" / "report.md").is_file()
    # phase 2 from the phase-1 run directory
    grpo = ["train", str(RECIPES / "demo-grpo.yaml"), *_sets([*FAST[1:], "dataset.n=16", "eval=null"])]
    assert main([*grpo, "--set", f"model={tmp_path / 'sft'}", "--out", str(tmp_path / "grpo"), "--no-plot"]) == 0


def test_run_dir_is_not_clobbered(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["train", str(RECIPES / "demo-grpo.yaml"), *_sets([*FAST, "dataset.n=8", "eval=null"]), "--out", str(out)]
    for extra in ([], ["--overwrite"]):
        assert main([*argv, *extra]) == 1
        assert "is not an aha run directory that aha created: it holds notes.txt" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(
    ("recipe", "sets", "message"),
    [
        ("demo-grpo", ["rewards=[corectness]"], "unknown reward 'corectness' (did you mean correctness"),
        ("demo-grpo", ["rewards.correctness.value=abc"], "parameter 'value' must be float"),
        ("countdown", ["dataset={task: arithmetic, n: 8}"], "needs the dataset column 'numbers'"),
        ("demo-grpo", ["dataset.task=arithmetc"], "unknown task 'arithmetc' (did you mean arithmetic"),
        ("demo-grpo", ["training.learnig_rate=1e-5"], "no field 'learnig_rate' (did you mean 'learning_rate'?)"),
        ("demo-grpo", ["modle=tiny"], "unknown recipe key 'modle' (did you mean 'model'?)"),
        ("demo-grpo", ["training.num_generations=many"], "training.num_generations must be int"),
        ("demo-sft", [], "for trainer 'sft', not 'grpo'; run it with `aha sft`"),
    ],
)
def test_errors_are_one_line(recipe: str, sets: list[str], message: str, capsys) -> None:
    assert main(["train", str(RECIPES / f"{recipe}.yaml"), *_sets(sets), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("aha train: error: ")


def test_missing_recipe_file(tmp_path: Path, capsys) -> None:
    assert main(["sft", str(tmp_path / "nope.yaml"), "--dry-run"]) == 1
    assert "does not exist" in capsys.readouterr().err
