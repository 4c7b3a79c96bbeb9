"""reasoning-gym tasks (rg:NAME, rg:[a, b]): rows, disjoint splits, the rg_score reward and correctness, mixes with
weights, the instruction, the CLI (list, show, --data, eval) and the rg-tiny recipe at smoke size."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("reasoning_gym")

from aha import rewards  # noqa: E402
from aha.cli import main  # noqa: E402
from aha.data.load import data_spec, load_rows  # noqa: E402
from aha.tasks import get_task, is_task_name, task_class  # noqa: E402
from aha.tasks import reasoning_gym as rg  # noqa: E402
from aha.tasks.base import in_eval_split  # noqa: E402

SMALL = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "rg-tiny.yaml"


def _q(row: dict) -> str:
    return json.loads(row["rg_entry"])["question"]


def _done(answer: str) -> list[dict]:
    return [{"role": "assistant", "content": f"<think>x</think><answer>{answer}</answer>"}]


def test_rows_prompt_answer_entry_and_sft_trace() -> None:
    task = get_task("rg:chain_sum", config=SMALL)
    rows = task.rows("sft", 5, 0)
    assert rows == task.rows("sft", 5, 0)  # deterministic in the seed
    assert rows != task.rows("sft", 5, 1)
    for row in rows:
        entry = json.loads(row["rg_entry"])
        assert row["prompt"][0]["content"] == f"{entry['question']}\n\n{rg.reasoning_instruction('answer')}"
        assert row["answer"] == entry["answer"] and entry["metadata"]["source_dataset"] == "chain_sum"
        assert json.loads(row["rg_config"]) == {"dataset": "chain_sum", "config": SMALL}
        assert row["completion"][0]["content"] == f"<think></think><answer>{row['answer']}</answer>"
        a, op, b = entry["metadata"]["expression"].split()
        assert int(row["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))  # the config applies
        assert len(a) == len(b) == 1
    assert "completion" not in task.rows("train", 1, 0)[0]


def test_splits_never_share_a_question() -> None:
    task = get_task("rg:chain_sum", config=SMALL, eval_fraction=0.2)
    train = {_q(r) for r in task.rows("train", 400, 0)} | {_q(r) for r in task.rows("sft", 400, 3)}
    held = {_q(r) for r in task.rows("eval", 100, 0)}
    assert train and held and not train & held
    assert all(in_eval_split(f"chain_sum\n{q}", 0.2) for q in held)
    assert len(train | held) > 150  # nearly all of the 200 one-digit sums, the held-out share ~0.2
    assert 0.1 < len(held) / len(train | held) < 0.3


def test_rg_score_reward_and_correctness_use_the_generator_verifier() -> None:
    rows = get_task("rg:countdown", config={"min_numbers": 3, "max_numbers": 3}).rows("train", 4, 0)
    cols = {c: [r[c] for r in rows] for c in ("answer", "rg_entry", "rg_config")}
    # another expression than the reference, with the same value: countdown's verifier accepts it
    other = [f"({r['answer']})" for r in rows]
    good, bad = [_done(o) for o in other], [_done("1+1") for _ in rows]
    score = rewards.get("rg_score")
    assert score(completions=good, **cols) == [1.0] * 4
    assert max(score(completions=bad, **cols)) < 1.0
    correctness = rewards.get("correctness")
    assert correctness(completions=good, **cols) == [1.0] * 4  # exact match on `answer` would say 0.0
    assert correctness(completions=bad, **cols) == [0.0] * 4
    tag_only = [[{"role": "assistant", "content": f"\\boxed{{{o}}}"}] for o in other]
    assert score(completions=tag_only, **cols) == [1.0] * 4
    assert max(rewards.get("rg_score", answer_format="tag")(completions=tag_only, **cols)) < 1.0
    task = get_task("rg:countdown", config={"min_numbers": 3, "max_numbers": 3})
    assert task.check(good[0][0]["content"], rows[0]) and not task.check("<answer>1+1</answer>", rows[0])


def test_rg_score_handles_a_very_long_completion() -> None:
    """As every registered reward (tests/rewards/test_custom.py): a 40k-token completion is scored quickly."""
    import time

    rows = get_task("rg:basic_arithmetic", config=SMALL).rows("train", 1, 0)
    cols = {c: [r[c] for r in rows] for c in ("rg_entry", "rg_config")}
    long_text = (
        "<think>\n" + "so we add the numbers and carry. " * 6_000 + f"\n</think>\n<answer>{rows[0]['answer']}</answer>"
    )
    start = time.perf_counter()
    assert rewards.get("rg_score")(completions=[long_text], **cols) == [1.0]
    assert time.perf_counter() - start < 10
    as_chat = [[{"role": "assistant", "content": long_text}]]  # standard and conversational completions score alike
    assert rewards.get("rg_score")(completions=as_chat, **cols) == [1.0]
    assert rewards.get("rg_score")(prompts=[], completions=[], rg_entry=[], rg_config=[]) == []


def test_rg_score_errors() -> None:
    score = rewards.get("rg_score")
    with pytest.raises(ValueError, match="needs the rg_entry and rg_config columns"):
        score(completions=_done("1"), rg_entry=None, rg_config=None)
    with pytest.raises(ValueError, match="rg_entry/rg_config columns are not a reasoning-gym entry"):
        score(completions=_done("1"), rg_entry=["{}"], rg_config=['{"dataset": "chain_sum", "config": {}}'])
    with pytest.raises(ValueError, match="answer_format"):
        rewards.get("rg_score", answer_format="xml")
    row = get_task("rg:chain_sum").rows("train", 1, 0)[0]
    with pytest.raises(ValueError, match="needs the row's rg_entry and rg_config"):
        get_task("rg:chain_sum").is_correct("<answer>1</answer>", row["answer"])


def test_mix_with_weights() -> None:
    task = get_task("rg:[chain_sum, gcd]", weights=[1, 4], config={"chain_sum": SMALL})
    rows = task.rows("train", 200, 0)
    counts = Counter(json.loads(r["rg_entry"])["metadata"]["source_dataset"] for r in rows)
    assert set(counts) == {"chain_sum", "gcd"} and counts["gcd"] > 2.5 * counts["chain_sum"]
    configs = {json.loads(r["rg_config"])["dataset"]: json.loads(r["rg_config"])["config"] for r in rows}
    assert configs == {"chain_sum": SMALL, "gcd": {}}
    even = Counter(
        json.loads(r["rg_entry"])["metadata"]["source_dataset"]
        for r in get_task("rg:[chain_sum, gcd]").rows("train", 200, 0)
    )
    assert abs(even["gcd"] - even["chain_sum"]) < 60
    # the mix holds out the same questions as its generators alone
    held = {_q(r) for r in get_task("rg:[chain_sum, gcd]", config={"chain_sum": SMALL}).rows("eval", 60, 0)}
    assert not any(in_eval_split(f"{json.loads(r['rg_config'])['dataset']}\n{_q(r)}", 0.1) for r in rows)
    assert not held & {_q(r) for r in rows}
    right = [_done(r["answer"]) for r in rows[:10]]
    cols = {c: [r[c] for r in rows[:10]] for c in ("answer", "rg_entry", "rg_config")}
    assert rewards.get("rg_score")(completions=right, **cols) == [1.0] * 10


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("rg:chain_sun", {}, "did you mean chain_sum"),
        ("rg:composite", {}, "mix generators with rg:"),
        ("rg:[chain_sum, chain_sum]", {}, "appears twice"),
        ("rg:[chain_sum, gcd", {}, "a mix is written"),
        ("rg:chain_sum", {"weights": [1]}, "weights are for a mix"),
        ("rg:[chain_sum, gcd]", {"weights": [1, 0]}, "2 positive numbers"),
        ("rg:[chain_sum, gcd]", {"weights": [1]}, "2 positive numbers"),
        ("rg:chain_sum", {"config": {"max_term": 2}}, "no config field 'max_term' \\(did you mean max_terms"),
        ("rg:chain_sum", {"config": {"size": 2}}, "set the spec's n"),
        ("rg:chain_sum", {"config": {"min_terms": 5, "max_terms": 2}}, "config .* of chain_sum"),
        ("rg:[chain_sum, gcd]", {"config": {"lcm": {}}}, "lcm is not one of them"),
        ("rg:chain_sum", {"max_terms": 2}, "go under config"),
        ("rg:chain_sum", {"eval_fraction": 1.5}, "eval_fraction must be in"),
        ("rg:chain_sum", {"instruction": ""}, "instruction must be"),
    ],
)
def test_errors_name_the_culprit(name: str, params: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        get_task(name, **params)


def test_instruction_option() -> None:
    bare = get_task("rg:chain_sum", instruction=False).rows("train", 2, 0)
    assert [r["prompt"][0]["content"] for r in bare] == [_q(r) for r in bare]
    own = get_task("rg:chain_sum", instruction="Answer in <answer></answer>.").rows("train", 2, 0)
    assert all(r["prompt"][0]["content"] == f"{_q(r)}\n\nAnswer in <answer></answer>." for r in own)
    assert [_q(r) for r in own] == [_q(r) for r in bare]  # the instruction does not change the draw


def test_generator_without_reference_answer_has_no_sft_split() -> None:
    task = get_task("rg:propositional_logic")
    assert task.rows("train", 1, 0)[0]["answer"] is None
    with pytest.raises(ValueError, match="no sft split"):
        task.rows("sft", 1, 0)


def test_data_spec_and_load_rows() -> None:
    spec = data_spec("rg:chain_sum:max_terms=2,min_terms=2,instruction=false", limit=3)
    assert spec == {
        "task": "rg:chain_sum",
        "instruction": False,
        "config": {"max_terms": 2, "min_terms": 2},
        "split": "eval",
        "n": 3,
        "seed": 0,
    }
    rows = load_rows(spec)
    assert len(rows) == 3 and all(r["prompt"][0]["content"] == _q(r) for r in rows)
    assert data_spec("rg:[chain_sum, gcd]")["task"] == "rg:[chain_sum, gcd]"
    with pytest.raises(ValueError, match="configure a mix in a recipe"):
        data_spec("rg:[chain_sum, gcd]:max_terms=2")
    assert is_task_name("rg:chain_sum") and task_class("rg:chain_sum") is rg.ReasoningGym


def test_missing_library_message(monkeypatch) -> None:
    import builtins

    real = builtins.__import__

    def no_rg(name, *args, **kwargs):
        if name.startswith("reasoning_gym"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rg)
    monkeypatch.setattr(rg, "available", lambda: False)
    with pytest.raises(ValueError, match=r'pip install "aha\[rg\]"'):
        get_task("rg:chain_sum")


def test_cli_list_and_show(capsys) -> None:
    assert main(["tasks", "list"]) == 0
    out = capsys.readouterr().out
    n = len(rg.generators())
    assert n > 90 and f"reasoning-gym tasks ({n})" in out
    assert "rg:chain_sum" in out and "rg:[a, b]" in out and "arithmetic" in out
    assert main(["tasks", "show", "rg:countdown", "--set", "min_numbers=3", "--set", "max_numbers=3"]) == 0
    out = capsys.readouterr().out
    assert "config: min_numbers=4" in out and "split sft" in out and "split eval" in out
    body = out.split("split eval")[1].split("\n", 1)[1]
    assert len(json.loads(json.loads(body)["rg_entry"])["metadata"]["numbers"]) == 3
    assert main(["tasks", "show", "rg:countdwn"]) == 1
    assert "did you mean countdown" in capsys.readouterr().err


def test_cli_eval(tmp_path, capsys) -> None:
    from aha.models.tiny import build_tiny

    build_tiny(tmp_path / "m", seed=0, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    fast = ["--n", "2", "--max-new-tokens", "4", "--limit", "3"]
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", "rg:chain_sum", *fast]) == 0
    assert "greedy accuracy" in capsys.readouterr().out
    assert main(["eval", "--model", str(tmp_path / "m"), "--data", "rg:countdwn", *fast]) == 1
    assert "did you mean countdown" in capsys.readouterr().err


def test_rg_tiny_recipe_smoke(tmp_path) -> None:
    sets = [
        "model={tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}",
        "eval.dataset.n=4",
        "eval.samples=1",
        "stages.*.training.max_steps=2",
        "stages.*.training.per_device_train_batch_size=8",
        "stages.*.training.num_generations=4",
        "stages.*.dataset.n=16",
    ]
    out = tmp_path / "run"
    assert (
        main(["pipeline", str(RECIPE), "--out", str(out), "--no-plot", *[x for s in sets for x in ("--set", s)]]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    trained = [(st["stage"], st["steps"]) for st in summary["stages"] if "steps" in st]
    assert trained == [("1-cold-start", 2), ("2-grpo", 2)]
    assert len(summary["stages"]) == 3  # and the untrained model's evaluation (eval.before)
    assert 0.0 <= summary["accuracy_after"] <= 1.0 and "accuracy_before" in summary
    metrics = (out / "2-grpo" / "metrics.jsonl").read_text()
    assert "rewards/rg_score/mean" in metrics  # the reasoning-gym verifier scored the rollouts


def test_rg_tiny_recipe_dry_run(capsys) -> None:
    assert main(["pipeline", str(RECIPE), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "reward rg_score (weight 1) needs rg_entry, rg_config" in out
    stages = __import__("yaml").safe_load(out)["stages"]
    assert [s["trainer"] for s in stages] == ["sft", "grpo"]
    assert {s["dataset"]["eval_fraction"] for s in stages} == {0.2}  # the same partition in every stage
