import torch

from aha.tasks import get_task
from aha.train.sft import SFTConfig, tokenize_sft_row, train_sft


def test_labels_cover_completion_only(small_tiny):
    _, tok = small_tiny
    row = get_task("arithmetic").rows("sft", 1, seed=0)[0]
    ids, labels = tokenize_sft_row(tok, row, max_length=256)
    n_prompt = sum(1 for x in labels if x == -100)
    prompt_text = tok.decode(ids[:n_prompt])
    assert prompt_text.endswith("<|im_start|>assistant\n")
    completion = tok.decode(ids[n_prompt:], skip_special_tokens=True)
    assert completion == row["completion"][0]["content"]
    assert labels[-1] == tok.eos_token_id
    assert labels[n_prompt:] == ids[n_prompt:]


def test_sft_loss_falls(small_tiny):
    model, tok = small_tiny
    rows = get_task("arithmetic").rows("sft", 256, seed=0)
    cfg = SFTConfig(max_steps=40, per_device_train_batch_size=32, learning_rate=3e-3, logging_steps=10)
    batch = [tokenize_sft_row(tok, r, 256) for r in rows[:32]]
    from aha.train.sft import collate

    b = collate(batch, tok.pad_token_id)
    with torch.no_grad():
        before = model(**b).loss.item()
    out = train_sft(model, tok, rows, cfg)
    with torch.no_grad():
        after = model(**b).loss.item()
    assert out["steps"] == 40
    assert after < before * 0.75, (before, after)
