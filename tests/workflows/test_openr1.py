"""aha.workflows.openr1: Open R1 and `trl grpo --config` files read as they are (dry-run offline, errors, training)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from aha.cli import main
from aha.devices import bf16_supported
from aha.settings import field_types
from aha.train.config import GRPOConfig
from aha.workflows.openr1 import OWN_KEYS, is_openr1_config, translate
from aha.workflows.recipe import load_recipe

# huggingface/open-r1 recipes/Qwen2.5-1.5B-Instruct/grpo/config_demo.yaml, as it is
QWEN_DEMO = r"""# Model arguments
model_name_or_path: Qwen/Qwen2.5-1.5B-Instruct
model_revision: main
torch_dtype: bfloat16
attn_implementation: flash_attention_2

# Data training arguments
dataset_name: open-r1/OpenR1-Math-220k
dataset_prompt_column: problem
system_prompt: "You are a helpful AI Assistant that provides well-reasoned and detailed responses. You first think about the reasoning process as an internal monologue and then provide the user with the answer. Respond in the following format: <think>\n...\n</think>\n<answer>\n...\n</answer>"

# GRPO trainer config
bf16: true
use_vllm: true
do_eval: false
gradient_accumulation_steps: 4
gradient_checkpointing: true
gradient_checkpointing_kwargs:
  use_reentrant: false
hub_model_id: Qwen2.5-1.5B-Open-R1-GRPO
hub_strategy: every_save
learning_rate: 2.0e-05
log_completions: true
log_level: info
logging_first_step: true
logging_steps: 1
logging_strategy: steps
lr_scheduler_type: cosine
max_prompt_length: 512
max_completion_length: 1024
max_steps: -1
num_generations: 16
num_train_epochs: 1
output_dir: data/Qwen2.5-1.5B-Open-R1-GRPO
overwrite_output_dir: true
per_device_eval_batch_size: 16
per_device_train_batch_size: 16
push_to_hub: true
report_to:
- wandb
reward_funcs:
- accuracy
- format
- tag_count
reward_weights:
- 1.0
- 1.0
- 1.0
save_strategy: "epoch"
save_total_limit: 1
seed: 42
warmup_ratio: 0.1
"""

# the same recipe's code variant (config_demo_code.yaml), the reward part
QWEN_CODE = (
    QWEN_DEMO.replace("open-r1/OpenR1-Math-220k", "open-r1/verifiable-coding-problems-python")
    .replace("dataset_prompt_column: problem", "dataset_prompt_column: problem_statement")
    .replace(
        "reward_funcs:\n- accuracy\n- format\n- tag_count\nreward_weights:\n- 1.0\n- 1.0\n- 1.0\n",
        "reward_funcs:\n- code\n- format\nreward_weights:\n- 1.0\n- 0.1\n",
    )
)

# the course's SmolLM2 in Open R1's format: LoRA, and the rewards with parameter fields
SMOLLM2 = r"""model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct
model_revision: main
torch_dtype: float32
use_peft: true
lora_r: 16
lora_alpha: 32
lora_target_modules: all-linear
dataset_name: mlabonne/smoltldr
dataset_train_split: train
system_prompt: "Summarise the post in one short paragraph."
reward_funcs: [cosine, repetition_penalty, soft_overlong_punishment, reasoning_steps]
reward_weights: [1.0, 0.5, 1.0, 0.2]
cosine_max_len: 200
cosine_min_value_correct: 0.25
repetition_n_grams: 2
max_completion_len: 256
soft_punish_cache: 64
learning_rate: 1.0e-5
num_generations: 4
per_device_train_batch_size: 4
max_completion_length: 256
output_dir: data/SmolLM2-135M-GRPO
"""

# `trl grpo --config` (TRL's ScriptArguments + ModelConfig + GRPOConfig, flat)
TRL_CONFIG = r"""model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
dtype: bfloat16
dataset_name: trl-lib/DeepMath-103K
dataset_config: default
dataset_train_split: train
reward_funcs: [accuracy_reward, get_soft_overlong_punishment]
learning_rate: 1.0e-6
num_generations: 8
per_device_train_batch_size: 8
max_completion_length: 1280
output_dir: runs/trl-grpo
"""


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _sets(*extra: str) -> list[str]:
    out = list(extra)
    if not bf16_supported("cpu"):
        out.append("training.bf16=null")  # torch_dtype bfloat16 means bf16 compute, which this CPU lacks
    return out


def _pending(raw: dict) -> list[str]:
    """TRL GRPOConfig fields the file sets that aha's GRPOConfig does not have yet (TRL is the oracle)."""
    import trl

    trl_fields = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    missing = [k for k in raw if k not in OWN_KEYS and k not in field_types(GRPOConfig)]
    assert all(k in trl_fields for k in missing), [k for k in missing if k not in trl_fields]
    return missing


def test_open_r1_demo_as_it_is_dry_runs_offline(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = yaml.safe_load(QWEN_DEMO)
    assert is_openr1_config(raw)
    path = _write(tmp_path, QWEN_DEMO)
    sets = _sets("training.use_vllm=false", "training.push_to_hub=false")  # no vLLM, no Hub here
    pending = _pending(raw)
    if pending:  # a TRL field aha's GRPOConfig lacks: GRPOConfig's own error names it
        with pytest.raises(ValueError, match=f"GRPOConfig has no field '{pending[0]}'"):
            load_recipe(path, sets)
        path = _write(tmp_path, yaml.safe_dump({k: v for k, v in raw.items() if k not in pending}), "trimmed.yaml")
    args = ["train", path, "--dry-run", *[x for s in sets for x in ("--set", s)]]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {path}: read as an Open R1 / TRL GRPO config")
    adopted = yaml.safe_load(out)  # the printed recipe is an aha recipe: it loads as one
    assert adopted["model"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert adopted["dataset"] == {
        "path": "open-r1/OpenR1-Math-220k",
        "split": "train",
        "prompt_column": "problem",
        "system_prompt": raw["system_prompt"],
    }
    assert adopted["rewards"] == ["accuracy", "format", "tag_count"]
    assert adopted["training"]["output_dir"] == "data/Qwen2.5-1.5B-Open-R1-GRPO"
    assert adopted["training"]["use_vllm"] is False  # --set applied to the translated recipe
    assert "attn_implementation: 'flash_attention_2' not carried" in out and "overwrite_output_dir" in out
    again = load_recipe(_write(tmp_path, yaml.safe_dump(adopted), "adopted.yaml"))
    assert again.translated is None and again.config.learning_rate == 2e-5 and again.config.num_generations == 16


def test_open_r1_code_recipe_maps_code_rewards_and_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    raw = {k: v for k, v in yaml.safe_load(QWEN_CODE).items() if k not in _pending(yaml.safe_load(QWEN_CODE))}
    t = translate(raw, "code.yaml")
    assert t.recipe["rewards"] == [
        {"name": "code", "tests_column": "verification_info"},
        {"name": "format", "weight": 0.1},
    ]
    recipe = load_recipe(
        _write(tmp_path, yaml.safe_dump(raw)), _sets("training.use_vllm=false", "training.push_to_hub=false")
    )
    assert recipe.config.reward_weights == [1.0, 0.1] and recipe.dataset["prompt_column"] == "problem_statement"


def test_smollm2_lora_and_reward_parameters(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["train", _write(tmp_path, SMOLLM2), "--dry-run"]) == 0
    adopted = yaml.safe_load(capsys.readouterr().out)
    assert adopted["peft"] == {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
    cosine, repetition, overlong, steps = adopted["rewards"]
    assert cosine == {
        "name": "cosine",
        "unit": "characters",  # Open R1 measures len(text)
        "min_value_wrong": 0.0,  # Open R1's default, not aha's -1.0
        "max_value_wrong": -0.5,
        "min_value_correct": 0.25,
        "max_value_correct": 1.0,
        "max_len": 200,
    }
    assert repetition == {"name": "repetition_penalty", "ngram_size": 2, "max_penalty": -1.0, "weight": 0.5}
    assert overlong == {"name": "soft_overlong", "max_completion_len": 256, "soft_punish_cache": 64}
    assert steps == {"name": "reasoning_steps", "weight": 0.2}
    assert "bf16" not in adopted["training"]  # torch_dtype float32: aha's float32 training as it is


def test_renamed_rewards_and_their_differences_are_noted() -> None:
    raw = {"model_name_or_path": "tiny", "dataset_name": "arithmetic", "reward_funcs": ["length", "cosine"]}
    t = translate(raw, "c.yaml")
    assert t.recipe["rewards"][0] == {"name": "kimi_length", "unit": "characters"}  # Open R1's length is Kimi's
    assert "reward 'length' as aha's 'kimi_length': min/max length over each prompt's completions" in t.notes[0]
    assert t.notes[1].startswith("reward 'cosine': the length is clipped at max_len")


def test_trl_grpo_config_and_dotted_reward(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "my_rewards.py").write_text("def brevity(completions, **kw):\n    return [0.0 for _ in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    text = TRL_CONFIG.replace("get_soft_overlong_punishment]", "get_soft_overlong_punishment, my_rewards.brevity]")
    recipe = load_recipe(_write(tmp_path, text), _sets())
    assert [r.name for r in recipe.rewards] == ["accuracy", "soft_overlong", "my_rewards:brevity"]
    assert recipe.rewards[1].params == {"max_completion_len": 1280, "soft_punish_cache": 256}  # trl grpo's values
    assert recipe.dataset == {"path": "trl-lib/DeepMath-103K", "name": "default", "split": "train"}
    assert recipe.translated["training"].get("bf16") is (True if bf16_supported("cpu") else None)


def test_builtin_task_and_tiny_model(tmp_path, capsys) -> None:
    text = "model_name_or_path: tiny\ndataset_name: arithmetic\nreward_funcs: [accuracy, format]\nmax_steps: 2\n"
    assert main(["train", _write(tmp_path, text), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert yaml.safe_load(out)["dataset"] == {"task": "arithmetic", "split": "train"}
    assert "task 'arithmetic': 1000 rows checked" in out  # read for real: accuracy's answer column is there


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"reward_funcs": ["accuracy", "ioi_code"]},
            r"'ioi_code' \(Open R1's IOI grader, on Piston or MorphCloud\) has no aha counterpart.*own rewards: .*correctness",
        ),
        ({"reward_funcs": ["acuracy"]}, r"'acuracy' \(did you mean 'accuracy'\?\) has no aha counterpart"),
        (
            {"dataset_prompt_colum": "problem"},
            r"unknown key 'dataset_prompt_colum' \(did you mean 'dataset_prompt_column'",
        ),
        ({"learnin_rate": 1e-5}, r"GRPOConfig has no field 'learnin_rate' \(did you mean 'learning_rate'"),
        ({"cosine_max_len": 100}, r"cosine_max_len sets Open R1's 'cosine' reward, which reward_funcs does not list"),
        (
            {"chat_template": "{{ x }}" * 50},
            r"chat_template: '(\{\{ x \}\})+\{\{… has no aha counterpart: aha uses the",
        ),
        ({"dataset_mixture": {"datasets": [{"id": "a/b"}]}}, r"dataset_mixture: .*aha reads one data set"),
        ({"model_revision": "v1"}, r"model_revision: 'v1' .*--revision"),
        ({"lora_r": 8}, r"lora_r is set but use_peft is not"),
        ({"reward_weights": [1.0]}, r"reward_weights must be 2 numbers"),
        ({"torch_dtype": "bfloat16", "bf16": False}, r"torch_dtype: bfloat16 with bf16: false"),
        ({"code_eval_test_batch_size": 3}, r"code_eval_test_batch_size sets Open R1's ioi_code or cf_code reward"),
    ],
)
def test_errors_name_the_key(tmp_path, change, message) -> None:
    raw = {"model_name_or_path": "tiny", "dataset_name": "arithmetic", "reward_funcs": ["accuracy", "format"]}
    with pytest.raises(ValueError, match=message):
        load_recipe(_write(tmp_path, yaml.safe_dump({**raw, **change})))


def test_set_takes_aha_keys_and_sft_refuses(tmp_path) -> None:
    path = _write(tmp_path, "model_name_or_path: tiny\ndataset_name: arithmetic\nlearning_rate: 1.0e-5\n")
    assert load_recipe(path, ["training.learning_rate=3e-5"]).config.learning_rate == 3e-5
    with pytest.raises(ValueError, match="unknown recipe key 'learning_rate'"):
        load_recipe(path, ["learning_rate=3e-5"])
    with pytest.raises(ValueError, match="run it with `aha train`"):
        load_recipe(path, kind="sft")


def test_two_training_steps_on_a_local_model_and_file(tmp_path, model_dir, capsys) -> None:
    """An Open R1 config naming a local model directory and a local jsonl file (problem, solution) trains for real."""
    rows = [{"problem": f"What is {a} + {b}?", "solution": str(a + b)} for a, b in [(1, 2), (3, 4), (5, 6), (7, 1)]]
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = f"""model_name_or_path: {model_dir}
model_revision: main
torch_dtype: float32
attn_implementation: sdpa
use_peft: true
lora_r: 4
lora_alpha: 8
lora_target_modules: all-linear
dataset_name: {data}
dataset_prompt_column: problem
system_prompt: "Think in <think></think>, answer in <answer></answer>."
reward_funcs: [accuracy, format, tag_count]
reward_weights: [1.0, 0.5, 0.5]
bf16: false
learning_rate: 1.0e-3
num_generations: 2
per_device_train_batch_size: 4
max_completion_length: 8
max_steps: 2
logging_steps: 1
overwrite_output_dir: true
output_dir: {tmp_path / "run"}
"""
    assert main(["train", _write(tmp_path, text), "--no-plot"]) == 0
    assert "read as an Open R1 / TRL GRPO config" in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (
        summary["steps"] == 2 and summary["rows"] == 4 and 0 < summary["trainable_parameters"] < summary["parameters"]
    )
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["peft"]["r"] == 4 and config["training"]["reward_weights"] == [1.0, 0.5, 0.5]
    assert config["dataset"]["prompt_column"] == "problem"
    assert (tmp_path / "run" / "model" / "adapter_config.json").exists()
