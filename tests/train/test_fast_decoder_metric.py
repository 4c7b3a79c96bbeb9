"""The rollout metric ``rollout/fast_decoder``: 1.0 when aha's fast decoder sampled the generation batch (a plain
model, or one with LoRA adapters), 0.0 when the sampler fell back to the HF forward."""

import pytest
from peft import LoraConfig

from aha import GRPOConfig, GRPOTrainer
from aha.tasks import get_task


def _length(completions, **kwargs):
    return [float(len(str(c))) for c in completions]


def _fast_decoder_metric(small_tiny, tmp_path, **kw) -> float:
    model, tok = small_tiny
    cfg = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        seed=0,
        use_cpu=True,
        **kw.pop("config", {}),
    )
    rows = get_task("arithmetic").rows("train", 8, seed=0)
    state = GRPOTrainer(model, _length, cfg, rows, processing_class=tok, **kw).train()
    return state.log_history[-2]["rollout/fast_decoder"]  # the last window (the summary row follows)


def test_plain_model_samples_on_the_fast_decoder(small_tiny, tmp_path):
    assert _fast_decoder_metric(small_tiny, tmp_path) == 1.0


def test_lora_model_samples_on_the_fast_decoder(small_tiny, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    assert _fast_decoder_metric(small_tiny, tmp_path, peft_config=lora) == 1.0


@pytest.mark.parametrize("how", ["AHA_FAST_DECODE=0", "rollout_backend=hf"])
def test_a_fallback_shows_in_the_metric(small_tiny, tmp_path, monkeypatch, how):
    if how == "AHA_FAST_DECODE=0":
        monkeypatch.setenv("AHA_FAST_DECODE", "0")
        assert _fast_decoder_metric(small_tiny, tmp_path) == 0.0
    else:
        assert _fast_decoder_metric(small_tiny, tmp_path, config=dict(rollout_backend="hf")) == 0.0
