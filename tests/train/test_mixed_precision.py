"""Mixed precision (bf16 / fp16): accelerate's mixed_precision, autocast for the loss forward, fp32 master weights
and optimiser state, fp32 log-probs; bf16 on a CPU with bf16 instructions, clear refusals elsewhere."""

import json
import math
from pathlib import Path

import pytest
import torch

from aha import GRPOConfig, GRPOTrainer, devices
from aha.data.prompts import completion_text
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train import checkpoint
from aha.train.forward import has_fast_path, lm_head_logps, token_logps
from aha.train.sft import SFTConfig, SFTTrainer

cpu_bf16 = pytest.mark.skipif(not devices.bf16_supported("cpu"), reason="this CPU has no bf16 instructions")
NO_BF16_CPU = frozenset({"avx2", "avx512f"})


def digits(completions, **kw):
    return [sum(ch.isdigit() for ch in completion_text(c)) / max(1, len(completion_text(c))) for c in completions]


def _tiny():
    return build_tiny(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, seed=0)


def _grpo(out, model=None, tok=None, **kw):
    if model is None:
        model, tok = _tiny()
    base = dict(
        output_dir=str(out),
        learning_rate=1e-2,
        max_steps=2,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=8,
        logging_steps=1,
        seed=0,
        use_cpu=True,
    )
    base.update(kw)
    return GRPOTrainer(model, digits, GRPOConfig(**base), get_task("arithmetic").rows("train", 16, seed=0), tok)


def _sft(out, model, tok, **kw):
    cfg = SFTConfig(output_dir=str(out), max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2, **kw)
    return SFTTrainer(model, cfg, get_task("arithmetic").rows("sft", 16, seed=0), tok)


def _watch(model) -> list[tuple[bool, torch.dtype]]:
    """(grad enabled, output dtype) of every call of one decoder Linear."""
    seen: list[tuple[bool, torch.dtype]] = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(
        lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype))
    )
    return seen


def _assert_fp32_master_state(model, optimizer) -> None:
    assert all(p.dtype == torch.float32 for p in model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    assert states and all(v.dtype == torch.float32 for v in states)  # exp_avg, exp_avg_sq


# ------------------------------------------------------------------------------------------ GRPO and SFT steps
@cpu_bf16
@pytest.mark.parametrize("bf16, dtype", [(True, torch.bfloat16), (None, torch.float32)])
def test_grpo_step_runs_the_loss_forward_under_autocast(tmp_path, bf16, dtype):
    model, tok = _tiny()
    seen = _watch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _grpo(tmp_path / "run", model, tok, bf16=bf16)
    assert trainer.precision == ("bf16" if bf16 else "no")
    state = trainer.train()
    loss_calls = {d for grad, d in seen if grad}
    sampler_calls = {d for grad, d in seen if not grad}
    assert loss_calls == {dtype}  # the loss forward: bf16 activations from fp32 weights
    assert sampler_calls == {dtype}  # the sampler in the training's compute dtype (the HF forward: hooks are on)
    _assert_fp32_master_state(model, trainer.loop.optimizer)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in state.log_history[:-1])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@cpu_bf16
def test_grpo_bf16_old_logps_in_the_loss_precision(tmp_path):
    """π_old (num_iterations 2: computed after sampling, without gradients) comes from a bf16 forward too, as the
    loss's does: the ratio π/π_old compares log-probs of one precision."""
    model, tok = _tiny()
    seen = _watch(model)
    trainer = _grpo(tmp_path / "run", model, tok, bf16=True, num_iterations=2, max_steps=1)
    trainer.train()
    assert {d for _, d in seen} == {torch.bfloat16}
    assert trainer.state.log_history[0]["clip_ratio/region_mean"] == 0.0


@cpu_bf16
def test_sft_step_runs_under_autocast(tmp_path):
    model, tok = _tiny()
    seen = _watch(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sft = _sft(tmp_path / "sft", model, tok, bf16=True)
    assert sft.precision == "bf16" and sft.accelerator.mixed_precision == "bf16"
    captured = {}
    real = sft.compute_loss

    def spy(batch, m):
        loss, metrics = real(batch, m)
        captured["dtype"] = loss.dtype
        return loss, metrics

    sft.compute_loss = spy
    state = sft.train()
    assert {d for grad, d in seen if grad} == {torch.bfloat16}
    assert captured["dtype"] == torch.float32  # the cross-entropy in fp32
    assert all(math.isfinite(r["loss"]) for r in state.log_history[:-1])  # the last row: the summary
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the next trainer in this process trains in fp32 again
    model2, tok2 = _tiny()
    seen2 = _watch(model2)
    _sft(tmp_path / "sft2", model2, tok2).train()
    assert {d for _, d in seen2} == {torch.float32}


@cpu_bf16
def test_the_sampler_takes_the_training_dtype_on_the_fast_decoder(tmp_path, monkeypatch):
    from peft import LoraConfig, get_peft_model

    from aha.train import rollouts

    calls: list[torch.dtype | None] = []
    real = rollouts.sample

    def spy(*args, **kw):
        calls.append(kw.get("dtype"))
        return real(*args, **kw)

    monkeypatch.setattr(rollouts, "sample", spy)
    model, tok = _tiny()
    lora = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    trainer = _grpo(tmp_path / "b", lora, tok, bf16=True, max_steps=1)
    assert trainer.batches.sample_dtype == torch.bfloat16
    state = trainer.train()
    assert calls and set(calls) == {torch.bfloat16}  # bf16 packed weights for the fast decoder, LoRA merged
    assert [r["rollout/fast_decoder"] for r in state.log_history if "rollout/fast_decoder" in r] == [1.0]
    assert _grpo(tmp_path / "c").batches.sample_dtype == torch.float32


# ------------------------------------------------------------------------------------------ refusals
def test_bf16_refused_on_a_cpu_without_bf16(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "cpu_flags", lambda: NO_BF16_CPU)
    model, tok = _tiny()
    with pytest.raises(ValueError, match=r"GRPOConfig\.bf16=True: this CPU has no bf16 instructions.*bf16=False"):
        _grpo(tmp_path / "g", model, tok, bf16=True)
    with pytest.raises(ValueError, match=r"SFTConfig\.bf16=True: this CPU has no bf16 instructions.*bf16=False"):
        _sft(tmp_path / "s", model, tok, bf16=True)


def test_fp16_refused_on_cpu(tmp_path):
    model, tok = _tiny()
    with pytest.raises(ValueError, match=r"GRPOConfig\.fp16=True needs a CUDA GPU.*fp16=False"):
        _grpo(tmp_path / "g", model, tok, fp16=True)
    with pytest.raises(ValueError, match=r"SFTConfig\.fp16=True needs a CUDA GPU.*fp16=False"):
        _sft(tmp_path / "s", model, tok, fp16=True)
    with pytest.raises(ValueError, match=r"SFTConfig: bf16=True and fp16=True both set"):
        SFTConfig(bf16=True, fp16=True)


@cpu_bf16
def test_a_trainer_keeps_its_precision_when_another_is_made_after_it(tmp_path):
    """accelerate keeps one mixed precision per process (the last Accelerator made sets it); the loop's autocast
    is the trainer's own, so a bf16 trainer made before an fp32 one still trains in bf16."""
    model, tok = _tiny()
    seen = _watch(model)
    first = _grpo(tmp_path / "a", model, tok, bf16=True, max_steps=1)
    _grpo(tmp_path / "b")  # fp32: accelerate's process-wide state back to "no"
    first.train()
    assert {d for grad, d in seen if grad} == {torch.bfloat16}


# ------------------------------------------------------------------------------------------ the loss maths
@cpu_bf16
def test_lm_head_logps_under_autocast_matches_autograd():
    """The chunked head under autocast: fp32 log-probs equal to log_softmax of the bf16 logits, and gradients
    (recomputed in bf16 in its backward) equal to autograd's through the same bf16 matmul."""
    torch.manual_seed(0)
    hidden = torch.randn(40, 16, requires_grad=True)
    head = torch.nn.Linear(16, 50, bias=False)
    targets = torch.randint(0, 50, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, ent = lm_head_logps(hidden, head, targets, temperature=0.7, budget=50 * 7)  # chunks of 7 rows
    assert lp.dtype == ent.dtype == torch.float32
    (lp * torch.linspace(-1, 1, 40)).sum().backward()
    g_h, g_w = hidden.grad.clone(), head.weight.grad.clone()
    hidden.grad = head.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torch.log_softmax(head(hidden).float() / 0.7, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=1e-5)
    (ref * torch.linspace(-1, 1, 40)).sum().backward()
    torch.testing.assert_close(g_h, hidden.grad, atol=1e-3, rtol=1e-2)
    # each chunk's bf16 matmul is rounded to bf16 before the fp32 sum (one rounding per chunk, not one in all)
    torch.testing.assert_close(g_w, head.weight.grad, atol=4e-3, rtol=1e-2)
    assert g_h.dtype == g_w.dtype == torch.float32


@cpu_bf16
def test_token_logps_fp32_on_both_paths_under_autocast(small_tiny):
    model, _ = small_tiny
    assert has_fast_path(model)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(3, 100, (4, 5), generator=g)
    comp = torch.randint(3, 100, (4, 6), generator=g)
    pm, cm = torch.ones_like(prompt), torch.ones_like(comp)
    with torch.no_grad():
        fp32, _ = token_logps(model, prompt, pm, comp, cm, 1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast, fast_ent = token_logps(model, prompt, pm, comp, cm, 1.0, with_entropy=True)
            hook = model.register_forward_hook(lambda *a: None)  # a hooked model takes the plain path
            plain, plain_ent = token_logps(model, prompt, pm, comp, cm, 1.0, with_entropy=True)
            hook.remove()
    assert {t.dtype for t in (fast, fast_ent, plain, plain_ent)} == {torch.float32}
    torch.testing.assert_close(fast, plain, atol=2e-2, rtol=0)  # both bf16 matmuls, reduced in fp32
    torch.testing.assert_close(fast, fp32, atol=5e-2, rtol=0)
    assert not torch.equal(fast, fp32)  # it did run in bf16


# ------------------------------------------------------------------------------------------ checkpoints
@cpu_bf16
def test_bf16_checkpoint_and_resume_match_the_uninterrupted_run(tmp_path, monkeypatch):
    ref = _grpo(tmp_path / "ref", bf16=True, max_steps=4, save_steps=1)
    ref.train()
    out = tmp_path / "run"
    real = checkpoint.write_checkpoint

    def crash(output_dir, step, **parts):
        if step == 3:
            raise KeyboardInterrupt  # dies before checkpoint-3
        return real(output_dir, step, **parts)

    monkeypatch.setattr(checkpoint, "write_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        _grpo(out, bf16=True, max_steps=4, save_steps=1).train()
    monkeypatch.setattr(checkpoint, "write_checkpoint", real)
    meta = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert meta["args"]["bf16"] is True
    resumed = _grpo(out, bf16=True, max_steps=4, save_steps=1)
    assert resumed.train(resume_from_checkpoint="auto").global_step == 4
    for (name, a), b in zip(ref.model.state_dict().items(), resumed.model.state_dict().values()):
        assert a.dtype == torch.float32 and torch.equal(a, b), name
    _assert_fp32_master_state(resumed.model, resumed.loop.optimizer)


# ------------------------------------------------------------------------------------------ recipes
@cpu_bf16
def test_recipe_training_bf16_true_through_aha_train(tmp_path, monkeypatch):
    from aha.cli import main
    from aha.train import grpo

    precisions = []
    real = grpo.GRPOTrainer.train

    def spy(self, *a, **kw):
        precisions.append(self.precision)
        return real(self, *a, **kw)

    monkeypatch.setattr(grpo.GRPOTrainer, "train", spy)
    recipe = str(Path(__file__).resolve().parents[2] / "recipes" / "smoltldr.yaml")
    sets = [
        "model={tiny: {hidden_size: 32, intermediate_size: 64, num_hidden_layers: 1, num_attention_heads: 2}}",
        "dataset={task: arithmetic, n: 16}",
        "training.max_steps=1",
        "training.max_completion_length=8",
        "training.num_generations=4",
        "training.per_device_train_batch_size=8",
        "training.gradient_accumulation_steps=1",
        "training.bf16=true",
    ]
    argv = ["train", recipe, *[x for s in sets for x in ("--set", s)], "--no-plot", "--out", str(tmp_path / "r")]
    assert main(argv) == 0
    assert precisions == ["bf16"]


# ------------------------------------------------------------------------------------------ GPU
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("field", ["bf16", "fp16"])
def test_mixed_precision_on_a_gpu(tmp_path, field):
    if field == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    model, tok = _tiny()
    seen = _watch(model)
    trainer = _grpo(tmp_path / "run", model, tok, use_cpu=False, bf16=field == "bf16", fp16=field == "fp16")
    state = trainer.train()
    want = torch.bfloat16 if field == "bf16" else torch.float16
    assert {d for grad, d in seen if grad} == {want}
    _assert_fp32_master_state(model, trainer.loop.optimizer)
    assert all(math.isfinite(r["loss"]) for r in state.log_history[:-1])  # the last row: the summary
    assert (trainer.loop.scaler is not None) == (field == "fp16")
