"""Run by tests/train/test_distributed.py, under torchrun (several processes) or alone: a few GRPO (``grpo``; with
DAPO's dynamic sampling: ``grpo-dynamic``) or SFT steps on a tiny model; the first process saves the final
parameters to OUT (a torch file)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from aha import GRPOConfig, GRPOTrainer
from aha.data.prompts import completion_text
from aha.models.tiny import build_tiny
from aha.tasks import get_task
from aha.train.distributed import is_main_process
from aha.train.sft import SFTConfig, SFTTrainer


def digit_share(completions, **kwargs):
    texts = [completion_text(c) for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


def has_digit(completions, **kwargs):  # 0/1: many groups tie (all 0 or all 1), so dynamic sampling drops some
    return [float(any(ch.isdigit() for ch in completion_text(c))) for c in completions]


def correct(completions, answer, **kwargs):
    return [float(completion_text(c) == f"<answer>{a}</answer>") for c, a in zip(completions, answer)]


def scripted_tool_calls(tok) -> None:
    """aha's sampler replaced by a script that depends on the row alone (its seed and its conversation), so that a
    row's turns are the same whichever process samples it: odd seeds call the calculator on the question and then
    answer with its result, even ones guess 0."""
    import json as _json

    import aha.train.rollouts as rollouts

    def sample(model, ids, mask, params, eos, pad, generator=None, backend="fast", row_seeds=None, **kw):
        out = []
        for r, m, seed in zip(ids, mask, row_seeds):
            text = tok.decode(r[m.bool()].tolist())
            if "<|im_start|>tool\n" in text:
                turn = "<answer>" + text.rsplit("<|im_start|>tool\n", 1)[1].split("<|im_end|>")[0] + "</answer>"
            elif seed % 2:
                q = text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
                turn = (
                    "<tool_call>" + _json.dumps({"name": "calculator", "arguments": {"expression": q}}) + "</tool_call>"
                )
            else:
                turn = "<answer>0</answer>"
            out.append((tok(turn, add_special_tokens=False)["input_ids"] + [eos[0]])[: params.max_new_tokens])
        width = max(len(x) for x in out)
        return torch.tensor([x + [pad] * (width - len(x)) for x in out])

    rollouts.sample = sample


def main(kind: str, out: str, batch: int, run_dir: str) -> None:
    torch.manual_seed(0)
    model, tok = build_tiny(hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    rows = get_task("arithmetic").rows("sft" if kind == "sft" else "train", 64, seed=0)
    common = dict(  # the GRPO runs' shared settings
        output_dir=run_dir,
        learning_rate=3e-3,
        num_generations=4,
        per_device_train_batch_size=batch,
        loss_type="dapo",
        logging_steps=1,
        seed=0,
        lr_scheduler_type="constant",
        use_cpu=True,
    )
    if kind in ("grpo", "grpo-dynamic"):
        dynamic = kind == "grpo-dynamic"
        cfg = GRPOConfig(
            **common,
            max_steps=3,
            max_completion_length=10,
            save_steps=2,
            dynamic_sampling=dynamic,
            max_resample_rounds=3,
        )
        trainer = GRPOTrainer(model, has_digit if dynamic else digit_share, cfg, rows, processing_class=tok)
        trainer.train()
        trainer.save_model(run_dir + "/model")
        if is_main_process():  # under DDP the loss ran on the plain model (fast path), gradients averaged by hand
            Path(out).with_suffix(".json").write_text(
                json.dumps({"by_hand": trainer.loss_model is not trainer.train_model})
            )
    elif kind == "grpo-tools":  # multi-turn rollouts: a scripted sampler calls the calculator on odd row seeds
        from aha.tools import calculator

        scripted_tool_calls(tok)
        cfg = GRPOConfig(**common, max_steps=3, max_completion_length=120, save_steps=10)
        rows = get_task("calculator", digits=2).rows("train", 64, seed=0)
        trainer = GRPOTrainer(model, correct, cfg, rows, processing_class=tok, tools=[calculator])
        trainer.train()
    elif kind == "grpo-resume":  # 2 steps per generation × 2 iterations: checkpoints fall in the middle of a batch
        stop = int(os.environ.get("AHA_TEST_STOP_AT", "0"))

        def halt(state, row):  # every process leaves after step `stop`'s metrics, before checkpoint-`stop`
            if state.global_step == stop:
                os._exit(0)

        cfg = GRPOConfig(
            **common, max_steps=4, steps_per_generation=2, num_iterations=2, max_completion_length=8, save_steps=1
        )
        trainer = GRPOTrainer(model, digit_share, cfg, rows, processing_class=tok, callbacks=[halt])
        trainer.train(resume_from_checkpoint="auto")
    else:
        cfg = SFTConfig(
            output_dir=str(Path(out).parent), learning_rate=3e-3, per_device_train_batch_size=batch, max_steps=3
        )
        SFTTrainer(model, cfg, rows, tok).train()
    if is_main_process():
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
