"""aha.workflows.recipe: --set overrides, validation errors, column checks, and a LoRA run (adapter only, merge)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aha.rewards import get
from aha.workflows.recipe import apply_set, load_recipe, needed_columns, read_recipe, resolve_rewards

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}


def test_set_dotted_paths_are_typed() -> None:
    r = read_recipe(RECIPES / "gsm8k.yaml")
    apply_set(r, "training.learning_rate=1e-5", "grpo")  # YAML 1.1 reads 1e-5 as text: coerced to float
    apply_set(r, "model=tiny", "grpo")
    apply_set(r, "model.tiny.hidden_size=64", "grpo")
    apply_set(r, "rewards.correctness.value=3", "grpo")
    apply_set(r, "dataset.task=arithmetic", "grpo")  # a task replaces the Hub path; common keys stay
    apply_set(r, "dataset.digits=3", "grpo")
    apply_set(r, "peft.r=8", "grpo")
    assert r["training"]["learning_rate"] == 1e-5 and isinstance(r["training"]["learning_rate"], float)
    assert r["model"] == {"tiny": {"hidden_size": 64}}
    assert r["rewards"][4] == {"name": "correctness", "value": 3}
    assert r["dataset"]["task"] == "arithmetic" and "path" not in r["dataset"] and "system_prompt" in r["dataset"]
    assert r["dataset"]["digits"] == 3 and r["peft"]["r"] == 8


def test_set_text_with_a_colon_stays_text() -> None:
    r = read_recipe(RECIPES / "demo-grpo.yaml")
    apply_set(r, "dataset.system_prompt=Answer: in tags", "grpo")
    assert r["dataset"]["system_prompt"] == "Answer: in tags"


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("training.warmup_ratio=lots", "training.warmup_ratio must be float"),
        ("model.tiny.hidden_sise=3", "did you mean 'hidden_size'"),
        ("dataset.digts=3", "unknown dataset key 'digts' (did you mean 'digits'?)"),
        ("dataset.digits=three", "dataset.digits must be int"),
        ("rewards.format.style=xml", "parameter 'style' must be one of"),
        ("rewards.format.stlye=think", "has no parameter 'stlye'"),
        ("rewards.7.value=1", "no index 7"),
        ("peft.rank=8", "LoraConfig has no field 'rank'"),
        ("eval.sample=3", "did you mean 'samples'"),
        ("nothing", "expected KEY=VALUE"),
    ],
)
def test_set_errors_name_the_key(assignment: str, message: str) -> None:
    r = read_recipe(RECIPES / "demo-grpo.yaml")
    with pytest.raises(ValueError, match="--set") as e:
        apply_set(r, assignment, "grpo")
    assert message in str(e.value)


def test_malformed_yaml_gives_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\ndataset: {task: arithmetic\nrewards: [format]\n")
    with pytest.raises(ValueError, match=r"bad\.yaml:3:\d+: malformed YAML"):
        read_recipe(bad)


def test_a_directory_or_a_binary_file_is_not_a_recipe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^{tmp_path}/ is a directory, not a recipe file"):
        read_recipe(f"{tmp_path}/")
    blob = tmp_path / "model.safetensors"
    blob.write_bytes(b"\x00\x01\xff\xfe binary")
    with pytest.raises(ValueError, match=f"^{blob}: not a recipe: not UTF-8 text \\(byte 2 is 0xff\\)"):
        read_recipe(blob)


@pytest.mark.parametrize(
    ("assignment", "key"),
    [
        ("dataset={task: arithmetic", "dataset"),
        ("training={max_steps: 2", "training"),
        ("training.report_to=[none", "training.report_to"),
        ("eval.dataset={task: arithmetic", "eval.dataset"),
        ("rewards=[format, correctness", "rewards"),
        ("rewards.0={name: format", "rewards.0"),
    ],
)
def test_a_yaml_syntax_error_in_a_set_is_reported_as_one(assignment: str, key: str) -> None:
    r = read_recipe(RECIPES / "demo-grpo.yaml")
    before = json.dumps(r, sort_keys=True)
    value = assignment.partition("=")[2]
    with pytest.raises(ValueError) as e:
        apply_set(r, assignment, "grpo")
    assert str(e.value).startswith(f"--set {key}: YAML syntax error in the value {value!r}: "), str(e.value)
    assert json.dumps(r, sort_keys=True) == before


def test_a_relative_reward_file_is_the_recipes_neighbour(tmp_path: Path, monkeypatch) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "rw.py").write_text("def fn(completions, **kw):\n    return [1.0] * len(completions)\n")
    recipe = project / "r.yaml"
    recipe.write_text("model: tiny\ndataset: {task: arithmetic, n: 8}\nrewards: [rw.py:fn]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory has no rw.py: the recipe's directory is where it is read
    (entry,) = load_recipe(recipe).rewards
    assert entry.fn(["a", "b"]) == [1.0, 1.0]
    recipe.write_text("model: tiny\ndataset: {task: arithmetic, n: 8}\nrewards: [missing.py:fn]\n")
    with pytest.raises(ValueError) as e:
        load_recipe(recipe)
    assert f"no file '{project / 'missing.py'}' (a relative path is read from the recipe's directory {project})" in str(
        e.value
    )


def test_missing_recipe_and_unknown_top_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    f = tmp_path / "r.yaml"
    f.write_text("model: tiny\ndataset: {task: arithmetic}\nreward: [format]\n")
    with pytest.raises(ValueError, match="unknown recipe key 'reward' \\(did you mean 'rewards'\\?\\)"):
        load_recipe(f)


def test_empty_local_dataset(tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_recipe(RECIPES / "demo-grpo.yaml", [f"dataset.path={tmp_path / 'empty.jsonl'}"])


def test_needed_columns_from_signatures(tmp_path: Path) -> None:
    assert needed_columns(get("correctness"), {}) == [("answer",)]
    assert needed_columns(get("length"), {}) == []
    assert needed_columns(get("kimi_length"), {}) == [("solution", "answer")]
    assert needed_columns(get("accuracy", gold_column="ref"), {"gold_column": "ref"}) == [("ref", "answer")]
    code = "def brevity(prompts, completions, target, *, scale=1.0, **kwargs):\n    return [0.0] * len(completions)\n"
    (tmp_path / "my_rewards.py").write_text(code)
    (entry,) = resolve_rewards([{"name": f"{tmp_path / 'my_rewards.py'}:brevity", "scale": 2.0}])
    assert entry.needs == [("target",)]


def test_local_file_columns_are_checked(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"{i}+1", "target": str(i + 1)}) for i in range(4)) + "\n")
    with pytest.raises(ValueError, match="reward 'correctness' needs the dataset column 'answer'.*has: prompt, target"):
        load_recipe(RECIPES / "demo-grpo.yaml", [f"dataset.path={data}"])
    recipe = load_recipe(RECIPES / "demo-grpo.yaml", [f"dataset.path={data}", "dataset.answer_column=target"])
    assert recipe.dataset["answer_column"] == "target"


def test_reward_weights_go_to_the_config() -> None:
    recipe = load_recipe(RECIPES / "countdown.yaml")
    assert recipe.config.reward_weights == [1.0, 0.5]
    with pytest.raises(ValueError, match="either in rewards"):
        load_recipe(RECIPES / "countdown.yaml", ["training.reward_weights=[1, 1]"])


def test_lora_trains_only_the_adapter_and_merges(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    import aha.workflows.run as rr
    from aha.models.loading import load_model
    from aha.models.tiny import build_tiny

    seen: dict[str, dict[str, torch.Tensor]] = {}
    save = rr._save

    def spy(recipe, model, tok, run, base_dir, saved):
        seen["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return save(recipe, model, tok, run, base_dir, saved)

    monkeypatch.setattr(rr, "_save", spy)
    sets = [
        "model={tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}",
        "peft={r: 4, lora_alpha: 8, target_modules: all-linear}",
        "dataset={task: arithmetic, n: 16}",
        "eval=null",
        "rewards=[{name: length, ideal_length: 5}]",  # varies between completions even for an untrained model
        "training.learning_rate=0.01",
        "training.max_steps=2",
        "training.max_completion_length=12",
        "training.num_generations=4",
        "training.per_device_train_batch_size=8",
    ]
    recipe = load_recipe(RECIPES / "demo-grpo.yaml", sets, out=str(tmp_path / "run"), merge=True)
    summary = rr.run_recipe(recipe, plot=False)
    assert 0 < summary["trainable_parameters"] < summary["parameters"]

    base, tok = build_tiny(**SMALL, seed=0)  # the same seed the run used: the untouched base
    state = seen["state"]
    lora = {k: v for k, v in state.items() if "lora_" in k}
    assert lora and any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # the adapter trained
    for name, value in base.state_dict().items():
        wrapped = [k for k in state if k.endswith(name) or k.endswith(name.replace(".weight", ".base_layer.weight"))]
        assert wrapped, name
        assert torch.equal(state[wrapped[0]], value), f"base weight {name} changed"

    adapted, _ = load_model(tmp_path / "run" / "model")  # base + adapter (the base saved in RUN/base)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "merged").eval()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])  # the merge folded a trained adapter in
    ids = tok(["12+34", "7+8="], return_tensors="pt", padding=True)
    kw = dict(max_new_tokens=10, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        a = adapted.generate(**ids, **kw)
        b = merged.generate(**ids, **kw)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["smollm2-reasoning.yaml", "smollm2-smoltldr.yaml"])
def test_real_model_recipes_smoke_on_the_tiny_model(tmp_path, name):
    """The two SmolLM2 recipes' header smoke test: 2 steps on the tiny model, evaluated before and after."""
    from aha.cli import main

    sets = ["model=tiny", "training.max_steps=2", "training.max_completion_length=16", "eval.dataset.n=4"]
    sets += ["training.bf16=false", "eval.max_new_tokens=16", "training.save_steps=2"]
    args = ["train", str(RECIPES / name), "--out", str(tmp_path / "run")]
    assert main([*args, *[x for s in sets for x in ("--set", s)]]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and "accuracy_before" in summary and "accuracy_after" in summary
