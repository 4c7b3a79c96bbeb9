"""``aha demo`` as the pipeline recipes/demo.yaml: each option sets the keys it names, the before/after table,
and a reduced demo end to end (its run directory, resume, refusals)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

import aha.workflows.pipeline
from aha.cli import main
from aha.workflows.demo import OPTIONS, RECIPE, before_after_table, demo_sets, run_demo
from aha.workflows.pipeline import build_stages, plan, read_pipeline

# a value for every option, each different from the recipe's
VALUES = {
    "seed": 7,
    "digits": 3,
    "guess_fraction": 0.3,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "sft_steps": 10,
    "sft_examples": 100,
    "sft_learning_rate": 1e-3,
    "sft_batch_size": 16,
    "grpo_steps": 3,
    "grpo_learning_rate": 1e-4,
    "grpo_prompts": 50,
    "num_generations": 4,
    "grpo_batch_size": 16,
    "max_completion_length": 20,
    "temperature": 0.7,
    "beta": 0.04,
    "eval_size": 10,
    "eval_samples": 2,
    "logging_steps": 5,
}


def yaml_of(path):
    return yaml.safe_load(path.read_text())


def _resolved(sets: list[str]) -> tuple[list, list[dict]]:
    raw = read_pipeline(RECIPE, sets)
    stages = build_stages(raw)
    return stages, plan(raw, stages)


def _values_at(key: str, stages: list, configs: list[dict]) -> list:
    """The value(s) `key` (a --set key) has in the stage configs that run: every stage it reaches."""
    path = key.split(".")
    if path[0] == "stages":
        chosen = [c for s, c in zip(stages, configs) if path[1] in ("*", s.name)]
        path = path[2:]
    elif path[0] == "model":
        chosen = configs[:1]  # later stages start from the previous stage's model
    else:
        chosen = configs
    out = []
    for c in chosen:
        for p in path:
            c = c[p]
        out.append(c)
    return out


def test_every_option_is_tested() -> None:
    assert [o.name for o in OPTIONS] == list(VALUES)


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_each_option_sets_its_keys(option) -> None:
    stages, default = _resolved([])
    value = VALUES[option.name]
    stages, configs = _resolved(demo_sets({option.name: value}))
    for key in option.keys:
        before, after = _values_at(key, stages, default), _values_at(key, stages, configs)
        assert after and all(v == value for v in after), (key, after)
        assert all(v != value for v in before), (key, before)  # the option changes what runs


def test_all_options_together_make_a_valid_pipeline(capsys) -> None:
    flags = [x for name, v in VALUES.items() for x in (f"--{name.replace('_', '-')}", str(v))]
    assert main(["demo", "--dry-run", *flags]) == 0
    out = capsys.readouterr().out
    assert "pipeline is valid" in out and "max_steps: 3" in out and "seed: 7" in out


def test_demo_sets_errors() -> None:
    assert demo_sets({"grpo_steps": None}) == []  # not given: the recipe's value
    assert demo_sets({"sft_learning_rate": 1}) == ["stages.cold-start.training.learning_rate=1"]
    with pytest.raises(ValueError, match="unknown option.*grpo_stepz"):
        demo_sets({"grpo_stepz": 3})
    with pytest.raises(ValueError, match="--grpo-steps must be int"):
        demo_sets({"grpo_steps": 1.5})


def test_before_after_table(capsys) -> None:
    from aha.console import console

    summary = {"accuracy_before": 0.05, "accuracy_after": 0.99, "pass1_before": 0.35, "pass1_after": 0.8}
    summary |= {"format_before": 1.0, "format_after": 1.0, "length_before": 11.8, "length_after": 20.5}
    console.print(before_after_table(summary))
    err = capsys.readouterr().err
    for text in ("greedy accuracy", "5.0%", "99.0%", "+94.0 pts", "sampled pass@1", "format rate", "+0.0 pts"):
        assert text in err, text
    assert "11.8" in err and "20.5" in err and "+8.7" in err
    with pytest.raises(ValueError, match="lacks length_before, length_after"):
        before_after_table({k: v for k, v in summary.items() if not k.startswith("length")})


# a model just big enough to learn 1-digit sums in seconds, so that the accuracies compared are not all 0
SMALL = {
    "digits": 1,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "sft_steps": 200,
    "sft_examples": 2000,
    "sft_learning_rate": 0.005,
    "sft_batch_size": 32,
    "grpo_steps": 4,
    "grpo_prompts": 64,
    "num_generations": 4,
    "grpo_batch_size": 8,
    "max_completion_length": 24,
    "eval_size": 12,
    "eval_samples": 2,
    "logging_steps": 2,
}
FLAGS = [x for name, v in SMALL.items() for x in (f"--{name.replace('_', '-')}", str(v))]


def test_reduced_demo_end_to_end(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--seed", "3", *FLAGS]) == 0
    err = capsys.readouterr().err
    assert "cold start → after GRPO" in err and "greedy accuracy" in err
    summary = json.loads((out / "summary.json").read_text())
    cold = json.loads((out / "1-cold-start" / "summary.json").read_text())
    grpo = json.loads((out / "2-grpo" / "summary.json").read_text())
    # before = the cold-start stage's held-out evaluation, after = the GRPO stage's
    for key, metric in (("accuracy", "greedy_accuracy"), ("pass1", "pass@1"), ("format", "greedy_format_rate")):
        assert summary[f"{key}_before"] == cold["eval"][metric] and summary[f"{key}_after"] == grpo["eval"][metric]
    assert summary["length_after"] == grpo["eval"]["greedy_mean_length"]
    assert 0.3 < summary["accuracy_after"] <= 1.0 and 0.0 <= summary["accuracy_before"] <= 1.0
    assert [(r["stage"], r["steps"]) for r in summary["stages"]] == [("1-cold-start", 200), ("2-grpo", 4)]
    assert grpo["eval"]["n_questions"] == 12
    stage = yaml_of(out / "1-cold-start" / "config.yaml")
    assert (
        stage["training"]["seed"] == 3 and stage["dataset"]["seed"] == 3 and stage["model"]["tiny"]["hidden_size"] == 64
    )
    assert yaml_of(out / "2-grpo" / "config.yaml")["training"]["num_generations"] == 4
    lines = [json.loads(x) for x in (out / "2-grpo" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["phase"] == "grpo"] == [2, 4]
    assert {x["phase"] for x in map(json.loads, (out / "1-cold-start" / "metrics.jsonl").read_text().splitlines())} >= {
        "sft"
    }
    for stage_dir in ("1-cold-start", "2-grpo"):
        assert (out / stage_dir / "model" / "config.json").is_file() and (out / stage_dir / "report.md").is_file()
        assert list((out / stage_dir / "plots").glob("*.png"))
    assert (out / "pipeline.yaml").is_file() and (out / "plots" / "held_out.png").is_file()
    model = AutoModelForCausalLM.from_pretrained(out / "2-grpo" / "model")
    assert model.generation_config.eos_token_id == AutoTokenizer.from_pretrained(out / "2-grpo" / "model").eos_token_id
    # `aha eval` on the same held-out split reproduces the greedy accuracy the demo reported
    ev = tmp_path / "eval"
    args = f"eval --model {out / '2-grpo'} --data arithmetic:digits=1,instruction=false --limit 12 --seed 3 --n 1 --max-new-tokens 24"
    assert main([*args.split(), "--out", str(ev)]) == 0
    assert json.loads((ev / "summary.json").read_text())["greedy_accuracy"] == summary["accuracy_after"]

    # again on the same directory: every stage finished, nothing runs, the same table
    assert main(["demo", "--out", str(out), "--seed", "3", *FLAGS]) == 0
    assert "finished earlier, skipped" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["accuracy_after"] == summary["accuracy_after"]
    # other settings on a finished directory: refused, unless --overwrite starts over
    assert main(["demo", "--out", str(out), "--seed", "3", *FLAGS, "--grpo-steps", "2"]) == 1
    assert "other settings" in capsys.readouterr().err
    assert main(["demo", "--out", str(out), "--seed", "3", *FLAGS, "--grpo-steps", "2", "--overwrite"]) == 0
    assert [r["steps"] for r in json.loads((out / "summary.json").read_text())["stages"]] == [200, 2]


def test_demo_refuses_a_directory_that_is_not_its_own(tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        assert main(["demo", "--out", str(out), *FLAGS, *extra]) == 1
        assert "not a pipeline directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "precious"


def test_bad_values_leave_no_directory(tmp_path, capsys) -> None:
    out = tmp_path / "r"
    for flags, culprit in ((["--digits", "0"], "digits"), (["--num-generations", "3"], "num_generations")):
        assert main(["demo", "--out", str(out), *FLAGS, *flags]) == 1
        assert culprit in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: not an integer
        main(["demo", "--seed", "x"])
    assert "--seed" in capsys.readouterr().err


def test_cli_passes_set_threads_and_no_plot(tmp_path, monkeypatch) -> None:
    seen = {}

    def fake_run_pipeline(recipe, sets, out, plot, overwrite):
        seen.update(sets=sets, out=out, plot=plot, overwrite=overwrite, threads=torch.get_num_threads())
        raise ValueError("stop")

    before = torch.get_num_threads()
    monkeypatch.setattr(aha.workflows.pipeline, "run_pipeline", fake_run_pipeline)
    argv = ["demo", "--out", str(tmp_path / "t"), "--grpo-steps", "3", "--set", "stages.grpo.training.top_p=0.9"]
    try:
        assert main([*argv, "--no-plot", "--threads", str(before + 1)]) == 1
    finally:
        torch.set_num_threads(before)
    assert seen == {
        "sets": ["stages.grpo.training.max_steps=3", "stages.grpo.training.top_p=0.9"],  # options, then --set
        "out": str(tmp_path / "t"),
        "plot": False,
        "overwrite": False,
        "threads": before + 1,
    }


def test_run_demo_refusals(tmp_path) -> None:
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        run_demo(out=str(tmp_path / "t"), threads=-1)
    with pytest.raises(FileNotFoundError, match="nope.yaml does not exist"):
        run_demo(recipe=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="needs the held-out evaluation"):
        run_demo(sets=["eval=null"], out=str(tmp_path / "t"))
    assert not (tmp_path / "t").exists()
