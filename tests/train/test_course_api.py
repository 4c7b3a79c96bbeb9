"""The Hugging Face LLM course's GRPO program (ch. 12 §5/§6), written the course's way, runs on aha."""

import importlib.util
import re

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel, get_peft_model

from aha import GRPOConfig, GRPOTrainer, devices
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train.grpo import token_logps

SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)

SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""


# --- the course's reward functions, in the course's shapes
def extract_xml_answer(text: str) -> str:
    answer = text.split("<answer>")[-1]
    answer = answer.split("</answer>")[0]
    return answer.strip()


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]


def correctness_reward_func(prompts, completions, answer, **kwargs) -> list[float]:
    responses = [completion[0]["content"] for completion in completions]
    q = prompts[0][-1]["content"]
    assert re.fullmatch(r"\d+\+\d+", q)
    extracted_responses = [extract_xml_answer(r) for r in responses]
    return [2.0 if r == a else 0.0 for r, a in zip(extracted_responses, answer)]


def count_xml(text) -> float:
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def xmlcount_reward_func(completions, **kwargs) -> list[float]:
    contents = [completion[0]["content"] for completion in completions]
    return [count_xml(c) for c in contents]


def course_dataset(n=32):
    rows = get_task("arithmetic", instruction=False).rows(
        "train", n, seed=0
    )  # the bare question: the course's system prompt asks the format
    return Dataset.from_list(
        [
            {
                "prompt": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": r["prompt"][-1]["content"]},
                ],
                "answer": r["answer"],
            }
            for r in rows
        ]
    )


def course_args(output_dir, **kw):
    base = dict(
        output_dir=str(output_dir),
        learning_rate=2e-5,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        max_prompt_length=512,
        max_completion_length=16,
        num_generations=8,
        num_train_epochs=1,
        report_to=[],
        remove_unused_columns=False,
        logging_steps=1,
        warmup_ratio=0.1,
        max_steps=3,
    )
    base.update(kw)
    return GRPOConfig(**base)


def lora_model():
    model, tokenizer = build_tiny(**SIZES)
    lora_config = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, target_modules="all-linear")
    return get_peft_model(model, lora_config), tokenizer


def test_course_program_runs(tmp_path):
    model, tokenizer = lora_model()
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    lora_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    assert base_before and lora_before
    training_args = course_args(tmp_path / "run", learning_rate=1e-2)  # large enough to move LoRA-B off zero
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[xmlcount_reward_func, reward_len, correctness_reward_func],
        args=training_args,
        train_dataset=course_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert len(trainer.state.log_history) == 4  # 3 windows and the summary
    assert "rewards/reward_len/mean" in trainer.state.log_history[0]
    after = trainer.model.state_dict()
    for k, v in base_before.items():  # the base is bit-identical, only the adapter learned
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())

    ids = tokenizer("<|im_start|>user\n12+30<|im_end|>\n", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        peft_logits = trainer.model(input_ids=ids).logits
    trainer.save_model(tmp_path / "adapter")
    merged = trainer.model.merge_and_unload()
    assert not isinstance(merged, PeftModel) and not any("lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, peft_logits, atol=1e-5)

    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    fresh, _ = build_tiny(**SIZES)
    loaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(loaded(input_ids=ids).logits, peft_logits, atol=1e-5)


def test_peft_kl_uses_disabled_adapter(tmp_path):
    model, tokenizer = lora_model()
    args = course_args(tmp_path / "run", beta=0.04, learning_rate=1e-2, max_steps=2)
    trainer = GRPOTrainer(model, [reward_len], args, course_dataset(), processing_class=tokenizer)
    assert trainer.ref_model is None  # no reference copy: the base with the adapter off is π_ref
    batch = trainer.batches.generate_and_score(list(course_dataset(2))).batch
    parts = [batch[k] for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")]
    with torch.no_grad():
        policy = token_logps(trainer.model, *parts, args.temperature)[0]
    assert torch.equal(batch["ref_logps"], policy)  # LoRA-B starts at zero: π_θ == π_ref, KL == 0
    trainer.train()
    assert trainer.state.log_history[0]["kl"] == 0.0  # first step: computed before any update
    ref_after = trainer.logps(batch, reference=True)
    with torch.no_grad():
        policy_after = token_logps(trainer.model, *parts, args.temperature)[0]
        with trainer.model.disable_adapter():
            base = token_logps(trainer.model, *parts, args.temperature)[0]
    assert torch.equal(ref_after, batch["ref_logps"]) and torch.equal(ref_after, base)
    assert not torch.equal(policy_after, ref_after)  # the adapter moved, the reference did not


def test_standard_format_dataset(small_tiny, tmp_path):
    model, tokenizer = small_tiny
    seen = []

    def reward_len(completions, **kwargs):
        seen.extend(completions)
        return [-abs(20 - len(completion)) for completion in completions]

    dataset = Dataset.from_list([{"prompt": f"{a}+{a}=", "answer": str(2 * a)} for a in range(16)])
    trainer = GRPOTrainer(model, [reward_len], course_args(tmp_path / "run", max_steps=1), dataset, tokenizer)
    trainer.train()
    assert seen and all(isinstance(c, str) for c in seen)
    assert trainer.state.log_history[0]["rewards/reward_len/mean"] <= 0


@pytest.mark.parametrize(
    "field, value",
    [("bf16", True), ("optim", "adamw_8bit"), ("report_to", ["wandb"]), ("report_to", "wandb")],
)
def test_course_fields_that_cannot_work_on_cpu(tmp_path, field, value, monkeypatch):
    if field == "report_to" and importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    if field == "bf16":  # bf16 runs on a GPU, or a CPU with bf16 instructions (tests/train/test_mixed_precision.py)
        if torch.cuda.is_available():
            pytest.skip("bf16 works on this GPU")
        monkeypatch.setattr(devices, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.raises(ValueError, match=rf"GRPOConfig\.{field}") as err:
        course_args(tmp_path, **{field: value})
    if field == "report_to":
        assert "wandb" in str(err.value)


def test_push_to_hub_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for kw in ({"hub_model_id": "me/model"}, {}):
        with pytest.raises(ValueError, match=r"GRPOConfig\.push_to_hub.*push_to_hub=False.*aha export"):
            course_args(tmp_path, push_to_hub=True, **kw)
