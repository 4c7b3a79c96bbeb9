"""GRPO with vLLM rollouts (`use_vllm=True`), colocate and server: a few steps train, the engine's weights follow
the policy (lazily, at the next rollout after an optimiser step) and the importance-sampling weights of the
batches are ~1 (the engine samples from the trainer's distribution)."""

from __future__ import annotations

import json

import test_server
import torch
from vllm_helpers import build_model, hf_greedy, prompts

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.rollout import SamplingParams
from aha.rollout.vllm import VLLMRollout
from aha.tasks import get_task

server = test_server.server  # the same `vllm serve` fixture (module scope: this module starts its own)

STEPS = 3
NEW = 12  # = max_completion_length: the colocate engine's max_model_len is prompt + completion


def digit_share(completions, **kwargs):
    """Fraction of digit characters: a reward the tiny model moves in a few steps."""
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def _train(tmp_path, monkeypatch, **vllm_args):
    """STEPS GRPO steps of the tiny model with vLLM rollouts. Returns the trainer (engine still open), the batches
    `add_logps` completed (with their sampling log-probs) and the global steps at which weights were synced."""
    model, tok = build_model()
    cfg = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        max_steps=STEPS,
        num_generations=8,
        per_device_train_batch_size=16,
        max_completion_length=NEW,
        logging_steps=1,
        seed=0,
        use_cpu=True,
        use_vllm=True,
        **vllm_args,
    )
    trainer = GRPOTrainer(model, digit_share, cfg, get_task("arithmetic").rows("train", 32, 0), processing_class=tok)

    synced: list[int] = []
    sync = VLLMRollout.sync_weights

    def counting_sync(self, m):
        synced.append(trainer.state.global_step)
        sync(self, m)

    monkeypatch.setattr(VLLMRollout, "sync_weights", counting_sync)
    batches: list[dict[str, torch.Tensor]] = []
    add_logps = trainer.add_logps

    def recording_add_logps(batch):
        sampled = batch["sampling_logps"].clone()
        add_logps(batch)
        batches.append({**batch, "sampling_logps": sampled})

    monkeypatch.setattr(trainer, "add_logps", recording_add_logps)
    trainer.train()
    return trainer, batches, synced


def _check_sampling_weights(batch) -> None:
    """The engine's log-probs equal the policy's (float32 both sides), so every weight is ~1."""
    mask = batch["completion_mask"].bool()
    assert mask.any()
    gap = (batch["old_logps"] - batch["sampling_logps"][:, : mask.size(1)])[mask].abs().max().item()
    assert gap < 2e-3, gap
    w = batch["sampling_weights"]  # sequence_mask (TRL's default): one weight per row, 0 outside [., 3]
    assert w.shape == mask.shape
    assert torch.allclose(w[mask], torch.ones(()), atol=1e-2), w[mask]


def _check_run(trainer, batches, synced, tmp_path, first_sync: list[int]) -> None:
    tok = trainer.tokenizer
    assert trainer.state.global_step == STEPS
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, STEPS + 1))
    assert all(x["loss"] == x["loss"] and "rewards/digit_share/mean" in x for x in lines)
    assert len(batches) == STEPS  # one generation batch per step
    for b in batches:
        _check_sampling_weights(b)
    assert synced == first_sync + list(range(1, STEPS))  # after each optimiser step, at the next rollout
    assert trainer.batches.synced_step == STEPS - 1  # the last update is not in the engine yet ...

    ps = prompts(tok, 8, seed=5)
    greedy = SamplingParams(max_new_tokens=NEW, temperature=0.0)
    untrained, _ = build_model()
    before = hf_greedy(untrained.eval(), tok, ps, NEW)
    trainer.model.eval()
    want = hf_greedy(trainer.model, tok, ps, NEW)
    assert want != before  # training changed the policy's greedy completions

    out = trainer.batches.generate_and_score(get_task("arithmetic").rows("train", 2, 9))  # ... until the next rollout
    assert synced[-1] == STEPS and trainer.batches.synced_step == STEPS
    assert len(batches) == STEPS + 1 and torch.equal(batches[-1]["completion_ids"], out.batch["completion_ids"])
    _check_sampling_weights(batches[-1])  # the trained policy and the synced engine agree too
    got, _ = trainer.batches.vllm.generate(ps, greedy)
    assert got == want


def test_grpo_colocate(tmp_path, monkeypatch) -> None:
    trainer, batches, synced = _train(tmp_path, monkeypatch, vllm_mode="colocate")
    try:
        _check_run(trainer, batches, synced, tmp_path, first_sync=[])  # the engine starts from the policy
    finally:
        trainer.batches.vllm.close()


def test_grpo_server(server, tmp_path, monkeypatch) -> None:
    trainer, batches, synced = _train(tmp_path, monkeypatch, vllm_mode="server", vllm_server_base_url=server)
    try:
        _check_run(trainer, batches, synced, tmp_path, first_sync=[0])  # the server's weights are pushed first
    finally:
        trainer.batches.vllm.close()
