import pytest
import torch

from aha.tasks import get_task
from aha.train.sft import SFTConfig, SFTTrainer, tokenize_sft_row


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


def test_sft_loss_falls(small_tiny, tmp_path):
    model, tok = small_tiny
    rows = get_task("arithmetic").rows("sft", 256, seed=0)
    cfg = SFTConfig(
        output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=32, learning_rate=3e-3, logging_steps=10
    )
    batch = [tokenize_sft_row(tok, r, 256) for r in rows[:32]]
    from aha.train.sft import collate

    b = collate(batch, tok.pad_token_id)
    with torch.no_grad():
        before = model(**b).loss.item()
    state = SFTTrainer(model, cfg, rows, tok).train()
    with torch.no_grad():
        after = model(**b).loss.item()
    assert state.global_step == 40 and [r["step"] for r in state.log_history] == [10, 20, 30, 40, 40]  # + the summary
    assert after < before * 0.75, (before, after)


# `aha sft` in a process of its own, SIGKILLed right after optimiser step K (its metrics line written, its
# checkpoint not), then resumed with --resume: the end is bit-identical to a run that was never interrupted
SFT_CLI = """
import os, signal, sys
import pytest
import torch

torch.set_num_threads(1)
from aha.cli import main
from aha.train.loop import TrainingLoop

kill_at = int(sys.argv[1])
end_step = TrainingLoop.end_step


def end_step_then_die(self, *args, **kwargs):
    end_step(self, *args, **kwargs)
    if self.state.global_step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


TrainingLoop.end_step = end_step_then_die
raise SystemExit(main(sys.argv[2:]))
"""
SFT_SETS = [
    "model={tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}",
    "dataset.n=64",
    "training.max_steps=6",
    "training.per_device_train_batch_size=8",
    "training.gradient_accumulation_steps=2",
    "training.logging_steps=1",
    "training.save_steps=2",
    "training.learning_rate=3e-3",
]


def _sft_cli(tmp_path, out, kill_at=0, resume=False):
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "sft_cli.py"
    script.write_text(SFT_CLI)
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "demo-sft.yaml"
    argv = ["sft", str(recipe), *[x for s in SFT_SETS for x in ("--set", s)], "--no-plot", "--out", str(out)]
    env = {**os.environ, "AHA_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(script), str(kill_at), *argv, *(["--resume"] if resume else [])]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _sft_lines(out):
    import json

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "step_time"} for r in rows if r.get("phase") == "sft"]


def test_aha_sft_killed_and_resumed_is_bit_identical(tmp_path):
    from safetensors.torch import load_file

    ref = _sft_cli(tmp_path, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    out = tmp_path / "run"
    killed = _sft_cli(tmp_path, out, kill_at=5)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert len(_sft_lines(out)) == 5 and not (out / "model").exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2", "checkpoint-4"]
    again = _sft_cli(tmp_path, out, resume=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from" in again.stderr and "checkpoint-4" in again.stderr
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _sft_lines(tmp_path / "ref") == _sft_lines(out) and [r["step"] for r in _sft_lines(out)] == [
        1,
        2,
        3,
        4,
        5,
        6,
    ]


def test_sft_callbacks_see_every_logged_row_and_nonfinite_loss_stops(small_tiny, tmp_path):
    model, tok = small_tiny
    rows = get_task("arithmetic").rows("sft", 32, seed=0)
    seen = []
    cfg = SFTConfig(output_dir=str(tmp_path / "a"), max_steps=4, per_device_train_batch_size=8, logging_steps=2)
    SFTTrainer(
        model, cfg, rows, tok, callbacks=[lambda state, row: seen.append((state.global_step, row["step"]))]
    ).train()
    assert seen == [(2, 2), (4, 4)]
    forward = model.forward

    def poisoned(*args, **kwargs):
        out = forward(*args, **kwargs)
        out.logits = out.logits * float("nan")
        return out

    model.forward = poisoned
    cfg = SFTConfig(output_dir=str(tmp_path / "b"), max_steps=4, per_device_train_batch_size=8)
    with pytest.raises(RuntimeError, match=r"non-finite loss in optimiser step 1.*checkpoint-0"):
        SFTTrainer(model, cfg, rows, tok).train()
