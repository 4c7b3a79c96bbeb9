"""aha in normal use raises no FutureWarning or DeprecationWarning: sampling (fast and hf, plain and LoRA),
loading an adapter, a GRPO step with LoRA and activation checkpointing, and a short ``aha eval`` / ``aha chat``.

transformers announces its API changes this way (``past_key_values`` -> ``cache``, ``gradient_checkpointing_*`` ->
``activation_checkpointing_*``) before removing the old names: a warning here is a break in a later release."""

import warnings

import pytest
from peft import LoraConfig

import aha.rewards
from aha import GRPOConfig, GRPOTrainer
from aha.cli import main
from aha.data.prompts import encode_prompts, eos_ids, render_prompt
from aha.models.loading import load_model, peft_model
from aha.rollout.sampler import SamplingParams, sample
from aha.tasks import get_task


@pytest.fixture
def caught():
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield seen


def _deprecations(seen) -> list[str]:
    kinds = (FutureWarning, DeprecationWarning)
    return [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in seen if issubclass(w.category, kinds)
    ]


def test_sampling_and_a_lora_grpo_step(model_dir, tmp_path, caught):
    model, tok = load_model(model_dir)
    lora = peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ids, mask = encode_prompts(tok, [render_prompt(tok, [{"role": "user", "content": "1+1"}])] * 2)
    for m in (model, lora):
        for backend in ("fast", "hf"):
            params = SamplingParams(max_new_tokens=4, temperature=1.0)
            sample(m, ids, mask, params, eos_ids(tok, m), tok.pad_token_id, backend=backend)
    lora.save_pretrained(tmp_path / "adapter")
    load_model(tmp_path / "adapter")
    cfg = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=4,
        gradient_checkpointing=True,
        use_cpu=True,
        report_to=[],
    )
    rows = get_task("arithmetic").rows("train", 4, seed=0)
    config = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    fresh, _ = load_model(model_dir)  # (peft_model wrapped `model` in place)
    GRPOTrainer(fresh, aha.rewards.get("format"), cfg, rows, processing_class=tok, peft_config=config).train()
    assert _deprecations(caught) == []


def test_eval_and_chat_commands(model_dir, capsys, caught):
    assert (
        main(
            ["eval", "--model", model_dir, "--data", "arithmetic", "--n", "1", "--limit", "2", "--max-new-tokens", "3"]
        )
        == 0
    )
    assert main(["chat", "--model", model_dir, "1+1", "--max-new-tokens", "3"]) == 0
    assert _deprecations(caught) == []
