import json

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from aha.cli import main

SMALL = [
    "--sft-steps",
    "30",
    "--sft-examples",
    "400",
    "--sft-batch-size",
    "32",
    "--grpo-steps",
    "4",
    "--prompts-per-step",
    "2",
    "--num-generations",
    "4",
    "--eval-size",
    "12",
    "--eval-samples",
    "2",
    "--hidden-size",
    "32",
    "--num-hidden-layers",
    "1",
    "--max-completion-length",
    "24",
    "--logging-steps",
    "2",
]


# a model just big enough to learn 1-digit sums in seconds, so that the accuracies compared are not all 0
LEARNS = (
    "--digits 1 --sft-steps 200 --sft-examples 2000 --sft-learning-rate 0.005 --hidden-size 64 --num-hidden-layers 2"
)


def test_demo_reduced(tmp_path):
    out = tmp_path / "run"
    assert main(["demo", "--out", str(out), "--seed", "3", *SMALL, *LEARNS.split()]) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("accuracy_before", "accuracy_after", "pass1_before", "pass1_after", "grpo_steps", "seconds"):
        assert key in summary, key
    assert 0.3 < summary["accuracy_after"] <= 1.0 and 0.0 <= summary["accuracy_before"] <= 1.0
    assert summary["grpo_steps"] == 4 and summary["seed"] == 3
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["demo"]["seed"] == 3 and config["grpo"]["num_generations"] == 4
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {x["phase"] for x in lines} == {"sft", "grpo"}
    assert [x["step"] for x in lines if x["phase"] == "grpo"] == [2, 4]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert (out / "sft" / "config.json").exists()
    assert (out / "report.md").exists() and list((out / "plots").glob("*.png"))
    # `aha eval` on the same held-out split reproduces the greedy accuracy the demo reported
    ev = tmp_path / "eval"
    args = f"eval --model {out} --data arithmetic:digits=1 --limit 12 --seed 3 --n 1 --max-new-tokens 24 --out {ev}"
    assert main(args.split()) == 0
    got = json.loads((ev / "summary.json").read_text())
    assert got["greedy_accuracy"] == summary["accuracy_after"], (got, summary)


def test_demo_refuses_existing_run(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert main(["demo", "--out", str(out), *SMALL]) == 1
    assert "already holds files" in capsys.readouterr().err
    # --overwrite still refuses a directory that is not an aha run, and leaves it as it was
    assert main(["demo", "--out", str(out), "--overwrite", *SMALL]) == 1
    assert "not an aha run directory" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "precious"


def test_demo_overwrite_replaces_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["demo", "--out", str(out), "--overwrite", *SMALL, "--grpo-steps", "2"]) == 0
    assert json.loads((out / "summary.json").read_text())["grpo_steps"] == 2


def test_unknown_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["demo", "--bogus", "1"])
    assert e.value.code == 2
    assert "--bogus" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, culprit",
    [(["--num-generations", "1"], "num_generations"), (["--digits", "0"], "digits"), (["--seed", "x"], "--seed")],
)
def test_bad_values(tmp_path, capsys, args, culprit):
    try:
        code = main(["demo", "--out", str(tmp_path / "r"), *SMALL, *args])
    except SystemExit as e:  # argparse type errors
        code = e.code
    assert code != 0
    assert culprit in capsys.readouterr().err


def test_bad_value_leaves_no_run_dir(tmp_path):
    out = tmp_path / "r"
    assert main(["demo", "--out", str(out), *SMALL, "--num-generations", "1"]) == 1
    assert not out.exists()
