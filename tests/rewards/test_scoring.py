import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from aha import GRPOConfig, GRPOTrainer
from aha.models.tiny import build_tokenizer
from aha.rewards.scoring import reward_model_scores, reward_name
from aha.tasks import get_task


@pytest.fixture
def reward_model(tmp_path):
    """A tiny LlamaForSequenceClassification on aha's tokenizer, saved to tmp_path/rm-tiny."""
    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
    )
    model = LlamaForSequenceClassification(cfg).eval()
    path = tmp_path / "rm-tiny"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok, path


def _direct(model, tok, text):
    ids = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**ids).logits[0, 0].item()


def spy(prompts, completions, **kwargs):
    spy.seen = (prompts, completions)
    return [0.0] * len(completions)


def _cfg(tmp_path):
    return GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=8,
        use_cpu=True,
        logging_steps=1,
    )


def test_scores_match_direct_forward(reward_model):
    model, tok, _ = reward_model
    prompts = [[{"role": "user", "content": "1+2"}], [{"role": "user", "content": "10+20"}]]
    completions = [[{"role": "assistant", "content": "3"}], [{"role": "assistant", "content": "<answer>30</answer>"}]]
    got = reward_model_scores(model, tok, prompts, completions)
    texts = [tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    assert texts[0] == "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
    assert got == pytest.approx([_direct(model, tok, t) for t in texts], abs=1e-5)
    # standard format: plain concatenation
    got = reward_model_scores(model, tok, ["1+2=", "10+20="], ["3", "30 and more"])
    assert got == pytest.approx([_direct(model, tok, "1+2=3"), _direct(model, tok, "10+20=30 and more")], abs=1e-5)


@pytest.mark.parametrize("as_path", [False, True])
def test_trainer_scores_with_reward_model(small_tiny, reward_model, tmp_path, as_path):
    policy, tok = small_tiny
    model, rm_tok, path = reward_model
    rm = str(path) if as_path else model
    classes = None if as_path else [None, rm_tok]  # from a path the tokenizer is found next to the model
    rows = get_task("arithmetic").rows("train", 8, seed=0)
    trainer = GRPOTrainer(policy, [spy, rm], _cfg(tmp_path), rows, tok, reward_processing_classes=classes)
    loaded = trainer.reward_funcs[1]
    assert isinstance(loaded, LlamaForSequenceClassification) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    rollout = trainer.batches.generate_and_score(rows[:2])
    prompts, completions = spy.seen
    texts = [rm_tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompts, completions)]
    expected = torch.tensor([_direct(model, rm_tok, t) for t in texts])
    assert torch.allclose(rollout.rewards[:, 1], expected, atol=1e-5)
    name = "rm-tiny" if as_path else reward_name(model)
    assert f"rewards/{name}/mean" in rollout.info
    assert rollout.info[f"rewards/{name}/mean"] == pytest.approx(expected.mean().item(), abs=1e-5)
    if as_path:  # logged under the last part of the path, like TRL
        state = trainer.train()
        assert "rewards/rm-tiny/mean" in state.log_history[-2]  # the last window (the summary row follows)


def test_reward_model_errors(small_tiny, reward_model, tmp_path):
    policy, tok = small_tiny
    model, _, _ = reward_model
    rows = get_task("arithmetic").rows("train", 8, seed=0)
    with pytest.raises(ValueError, match="reward_processing_classes has 1 entries for 2"):
        GRPOTrainer(policy, [spy, model], _cfg(tmp_path), rows, tok, reward_processing_classes=[None])
    with pytest.raises(ValueError, match=r"reward_funcs\[0\]"):
        GRPOTrainer(policy, [42], _cfg(tmp_path), rows, tok)


def _score(fn, n=4):
    from aha.rewards.scoring import score

    return score([fn], ["q"] * n, ["c"] * n, [[1]] * n, {})


@pytest.mark.parametrize(
    ("values", "tail"),
    [
        ([math.nan] * 4, "NaN or inf for all 4 samples of a batch: no finite"),
        ([math.inf, -math.inf, math.inf, math.inf], "NaN or inf for all 4 samples of a batch: no finite"),
        ([None, math.nan, None, math.nan], "NaN or inf for all 2 samples of a batch and None for the other 2"),
    ],
)
def test_a_reward_with_no_finite_value_in_a_batch_is_refused_by_name(values, tail):
    def broken_parser(completions, **kw):
        return values

    with pytest.raises(ValueError) as e:
        _score(broken_parser)
    assert str(e.value).startswith(f"reward function 'broken_parser' returned {tail}"), str(e.value)
    assert "or None for a sample it does not apply to" in str(e.value)


def test_some_nonfinite_or_all_none_is_still_accepted():
    out = _score(lambda completions, **kw: [math.nan, 1.0, None, math.inf])
    assert torch.isnan(out[[0, 2, 3], 0]).all() and out[1, 0] == 1.0
    assert torch.isnan(_score(lambda completions, **kw: [None] * 4)).all()  # "does not apply" to this batch


def test_strings_are_built_in_rewards_custom_functions_or_reward_models(tmp_path, monkeypatch, reward_model):
    from aha.rewards.scoring import reward_from_string

    assert reward_from_string("format").__name__ == "format"
    (tmp_path / "rw.py").write_text("def mine(completions, **kw):\n    return [2.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    assert reward_from_string("rw.py:mine")(["a"]) == [2.0]
    assert isinstance(reward_from_string(str(reward_model[2])), LlamaForSequenceClassification)
    with pytest.raises(ValueError) as e:
        reward_from_string("corectness")  # never tried as a Hub model
    assert str(e.value).startswith("unknown reward 'corectness' (did you mean correctness")
    assert "built-in rewards are: " in str(e.value) and "format" in str(e.value)
    with pytest.raises(FileNotFoundError, match="^some/missing/rm: no such directory"):
        reward_from_string("some/missing/rm")
