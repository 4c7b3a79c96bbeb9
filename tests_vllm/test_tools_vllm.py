"""Multi-turn GRPO rollouts with tools on vLLM: the engine continues each conversation from the trainer's own token
layout (prompt + turn + the template's tool suffix), so its log-probs of the turn after a tool result equal the
trainer's there, and the tool result's tokens carry no sampling log-prob and no loss."""

from __future__ import annotations

import json

import torch
from vllm_helpers import MAX_MODEL_LEN, build_model

from aha import GRPOConfig, GRPOTrainer
from aha.rollout.vllm import VLLMRollout
from aha.tools import calculator


def test_tool_rollouts_on_vllm(tmp_path, monkeypatch) -> None:
    model, tok = build_model()
    cfg = GRPOConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=120,
        max_prompt_length=MAX_MODEL_LEN - 120,
        seed=0,
        use_cpu=True,
        use_vllm=True,
        vllm_mode="colocate",
        temperature=1.0,
    )
    rows = [{"prompt": [{"role": "user", "content": q}], "answer": a} for q, a in (("12*34", "408"), ("56*78", "4368"))]

    def reward(completions, answer, **kw):
        return [float(a in c[-1]["content"]) for c, a in zip(completions, answer)]

    trainer = GRPOTrainer(model, reward, cfg, rows * 4, processing_class=tok, tools=[calculator])
    real = VLLMRollout.generate
    turns: list[list[list[int]]] = []

    def first_turn_calls(self, prompts, params, row_seeds=None):
        """Turn 0 of the even rows: a scripted calculator call (its log-probs made up); everything else vLLM's."""
        ids, logps = real(self, prompts, params, row_seeds)
        turns.append(prompts)
        if all("<|im_start|>tool\n" not in tok.decode(p) for p in prompts):
            for i in range(0, len(ids), 2):
                q = tok.decode(prompts[i]).rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
                text = (
                    "<tool_call>" + json.dumps({"name": "calculator", "arguments": {"expression": q}}) + "</tool_call>"
                )
                ids[i] = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                logps[i] = [-1.0] * len(ids[i])
        return ids, logps

    monkeypatch.setattr(VLLMRollout, "generate", first_turn_calls)
    try:
        out = trainer.batches.generate_and_score(rows, with_logps=False)
        b = out.batch
        sampled = b["sampling_logps"].clone()
        trainer.add_logps(b)  # π_old by the trainer's forward, and the importance weights
    finally:
        if trainer.batches.vllm is not None:
            trainer.batches.vllm.close()
    b["sampling_logps"] = sampled
    assert len(turns) == 2 and len(turns[1]) == 4  # the 4 rows that called went on, from their conversation
    assert out.info["tools/call_frequency"] == 0.5
    cm, tm = b["completion_mask"].bool(), b["tool_mask"].bool()
    hidden = cm & ~tm
    assert hidden[0::2].any(1).all() and not hidden[1::2].any()
    assert (b["sampling_logps"][hidden] == 0).all()
    # the turn after the tool result: vLLM's log-probs are the trainer's (the same tokens in the same layout)
    after = torch.zeros_like(cm)
    for i in range(0, cm.size(0), 2):
        last_hidden = int(hidden[i].nonzero().max())
        after[i, last_hidden + 1 :] = cm[i, last_hidden + 1 :]
    assert after.any()
    gap = (b["old_logps"] - b["sampling_logps"])[after].abs().max().item()
    assert gap < 2e-3, gap
    odd = cm.clone()
    odd[0::2] = False
    assert (b["old_logps"] - b["sampling_logps"])[odd].abs().max().item() < 2e-3
    assert b["sampling_weights"].shape == cm.shape
