"""GRPO with tools: the batch's tool mask, the loss over a two-turn rollout, environments, and a TRL program with
``tools=[...]`` run with only its import changed."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset

# a TRL program reads: from trl import GRPOConfig, GRPOTrainer
from aha import GRPOConfig, GRPOTrainer
from aha.grpo import policy_loss
from aha.train.forward import token_logps
from aha.train.rollouts import loss_mask


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def call_text(name: str, **args) -> str:
    return "<tool_call>" + json.dumps({"name": name, "arguments": args}) + "</tool_call>"


def scripted_sampler(tok, first, second):
    """Stands in for aha.rollout.sampler.sample: a prompt that does not yet hold a tool message gets
    `first(question)`, one that does gets `second(tool result)`; both end with EOS."""

    def sample(model, prompt_ids, prompt_mask, params, eos, pad, generator=None, backend="fast", **kw):
        rows = []
        for ids, m in zip(prompt_ids, prompt_mask):
            text = tok.decode(ids[m.bool()].tolist())
            if "<|im_start|>tool\n" in text:
                result = text.rsplit("<|im_start|>tool\n", 1)[1].split("<|im_end|>")[0]
                out = second(result)
            else:
                question = text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
                out = first(question)
            rows.append((tok(out, add_special_tokens=False)["input_ids"] + [eos[0]])[: params.max_new_tokens])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    return sample


def _cfg(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        learning_rate=1e-3,
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=4,
        max_completion_length=120,
        logging_steps=1,
        seed=0,
        use_cpu=True,
        report_to="none",
    )
    base.update(kw)
    return GRPOConfig(**base)


def _questions(n=4):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"{a}*{a + 1}"}], "answer": str(a * (a + 1))} for a in range(n)]
    )


def correct(completions, answer, **kwargs):
    return [float(c[-1]["content"] == f"<answer>{a}</answer>") for c, a in zip(completions, answer)]


def test_two_turn_batch_masks_the_tool_result_out_of_the_loss(small_tiny, tmp_path, monkeypatch):
    model, tok = small_tiny

    turn = iter(range(100))

    def first(q):  # the first completion of each prompt calls the tool, the second guesses 0
        a, b = q.split("*")
        return call_text("multiply", a=int(a), b=int(b)) if next(turn) % 2 == 0 else "<answer>0</answer>"

    monkeypatch.setattr("aha.train.rollouts.sample", scripted_sampler(tok, first, lambda r: f"<answer>{r}</answer>"))
    trainer = GRPOTrainer(
        model, correct, _cfg(tmp_path, beta=0.1), _questions(), processing_class=tok, tools=[multiply]
    )
    rollout = trainer.batches.generate_and_score(_questions().to_list(), with_logps=True)
    b = rollout.batch
    assert "tool_mask" in b and b["ref_logps"].shape == b["completion_ids"].shape
    rewards = rollout.rewards[:, 0].tolist()
    assert rewards == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # the calls are right (and 0*1 = 0)
    assert b["advantages"].abs().sum() > 0
    for i in range(8):
        ids, cm, tm = b["completion_ids"][i], b["completion_mask"][i].bool(), b["tool_mask"][i].bool()
        model_text = tok.decode(ids[cm & tm].tolist())
        hidden = tok.decode(ids[cm & ~tm].tolist())
        if i % 2 == 0:  # two turns: the call, then the answer; the glue and result masked
            a = i // 2
            assert (
                model_text
                == call_text("multiply", a=a, b=a + 1) + "<|im_end|>" + f"<answer>{a * (a + 1)}</answer><|im_end|>"
            )
            assert hidden == f"\n<|im_start|>tool\n{a * (a + 1)}<|im_end|>\n<|im_start|>assistant\n"
        else:
            assert hidden == "" and model_text == "<answer>0</answer><|im_end|>"
    assert rollout.info["tools/call_frequency"] == 0.5 and rollout.info["tools/failure_frequency"] == 0.0
    # completions/mean_length counts the model's tokens only (as TRL)
    assert rollout.info["completions/mean_length"] == pytest.approx(loss_mask(b).sum(1).float().mean().item())

    # the loss sees only what the model wrote: equal to the loss over the hand-built mask, not the full one
    mb = {k: v for k, v in b.items()}
    num_items = float(loss_mask(b).sum())
    loss, _ = trainer.compute_loss(mb, num_items, accumulation=1)
    logps, _ = token_logps(model, b["prompt_ids"], b["prompt_mask"], b["completion_ids"], b["completion_mask"], 1.0)
    kw = dict(loss_type=trainer.args.loss_type, beta=0.1, max_completion_length=120, num_items=num_items)
    by_hand, _ = policy_loss(logps, None, b["ref_logps"], b["advantages"], b["completion_mask"] * b["tool_mask"], **kw)
    unmasked, _ = policy_loss(logps, None, b["ref_logps"], b["advantages"], b["completion_mask"], **kw)
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert abs(loss.item() - unmasked.item()) > 1e-4
    # and no gradient reaches the policy through a masked token: the tool result's log-probs do not matter
    lp = logps.detach().clone().requires_grad_(True)
    out, _ = policy_loss(lp, None, b["ref_logps"], b["advantages"], loss_mask(b), **kw)
    out.backward()
    hidden = (b["completion_mask"] * (1 - b["tool_mask"])).bool()
    assert hidden.any() and lp.grad[hidden].abs().max() == 0 and lp.grad[loss_mask(b).bool()].abs().max() > 0


@pytest.mark.parametrize("backend", ["fast", "hf"])
def test_trl_program_with_tools_runs_with_only_the_import_changed(small_tiny, tmp_path, backend):
    """The program as TRL's docs write it (tools=[...], max_tool_calling_iterations), on aha's sampler and on
    transformers' generate."""
    model, tok = small_tiny
    args = GRPOConfig(
        rollout_backend=backend,
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=24,
        max_steps=2,
        logging_steps=1,
        max_tool_calling_iterations=2,
        use_cpu=True,
        report_to="none",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=args,
        train_dataset=_questions(),
        processing_class=tok,
        tools=[multiply],
    )
    trainer.train()
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert len(rows) == 2 and all("tools/call_frequency" in r and "tools/failure_frequency" in r for r in rows)


class Counter:
    """An environment (TRL's contract): reset per rollout, its methods are tools, get_reward scores it."""

    def reset(self, **row):
        self.target = int(row["answer"])
        self.total = 0
        return " (use add)"

    def add(self, k: int) -> int:
        """Add k to the running total.

        Args:
            k: how much to add
        """
        self.total += k
        return self.total

    def get_reward(self) -> float:
        return float(self.total == self.target)


def test_environment_factory_gives_tools_and_the_reward(small_tiny, tmp_path, monkeypatch):
    model, tok = small_tiny
    seen = []

    def first(q):
        seen.append(q)
        a, b = q.split(" ")[0].split("*")
        return call_text("add", k=int(a) * int(b) if int(a) < 2 else 1)

    monkeypatch.setattr("aha.train.rollouts.sample", scripted_sampler(tok, first, lambda r: f"<answer>{r}</answer>"))
    kwargs_seen = []

    def spy(completions, environments=None, **kw):
        kwargs_seen.append(environments)
        return [0.0] * len(completions)

    trainer = GRPOTrainer(model, None, _cfg(tmp_path), _questions(), processing_class=tok, environment_factory=Counter)
    assert [getattr(f, "__name__", "") for f in trainer.reward_funcs] == ["Counter"]
    rollout = trainer.batches.generate_and_score(_questions().to_list(), with_logps=False)
    assert all(q.endswith(" (use add)") for q in seen)  # reset's observation appended to the prompt
    # a=0: 0*1=0, total 0 == 0; a=1: 1*2=2 == 2; a=2,3: add 1 != 6, 12
    assert rollout.rewards[:, 0].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert len(trainer.batches.tool_use.pool[None]) == 8  # one instance per rollout
    # reward functions get the instances; a second batch reuses the pooled instances
    trainer2 = GRPOTrainer(
        model, spy, _cfg(tmp_path / "b"), _questions(), processing_class=tok, environment_factory=Counter
    )
    trainer2.batches.generate_and_score(_questions().to_list(), with_logps=False)
    trainer2.batches.generate_and_score(_questions().to_list(), with_logps=False)
    assert len(kwargs_seen) == 2 and all(isinstance(e, Counter) for e in kwargs_seen[0])
    assert [id(e) for e in kwargs_seen[0]] == [id(e) for e in kwargs_seen[1]]
    assert [f.__name__ for f in trainer2.reward_funcs] == ["spy", "Counter"]
    # reward_weights for reward_funcs only: the environment's reward gets weight 1, the caller's config untouched
    cfg = _cfg(tmp_path / "c", reward_weights=[0.5])
    trainer3 = GRPOTrainer(model, spy, cfg, _questions(), processing_class=tok, environment_factory=Counter)
    assert trainer3.args.reward_weights == [0.5, 1.0] and cfg.reward_weights == [0.5]


def test_environment_dict_routes_rows_by_their_environment_column(small_tiny, tmp_path, monkeypatch):
    model, tok = small_tiny

    class Other(Counter):
        def reset(self, **row):
            super().reset(**row)
            assert "environment" not in row  # the routing column is not passed to reset
            return None

        def get_reward(self) -> float:
            return -1.0

    monkeypatch.setattr(
        "aha.train.rollouts.sample", scripted_sampler(tok, lambda q: "<answer>1</answer>", lambda r: "x")
    )
    data = Dataset.from_list(
        [{**r, "environment": "c" if i % 2 == 0 else "o"} for i, r in enumerate(_questions().to_list())]
    )
    trainer = GRPOTrainer(
        model, None, _cfg(tmp_path), data, processing_class=tok, environment_factory={"c": Counter, "o": Other}
    )
    rollout = trainer.batches.generate_and_score(data.to_list(), with_logps=False)
    r = rollout.rewards  # (8, 2): Counter's column, Other's column; NaN where the rollout is the other class
    assert torch.isnan(r[0::4, 1]).all() and (r[2::4, 1] == -1.0).all()
    bad = Dataset.from_list([{**data[0], "environment": "zzz"}] * 4)
    trainer = GRPOTrainer(model, None, _cfg(tmp_path), bad, processing_class=tok, environment_factory={"c": Counter})
    with pytest.raises(ValueError, match="environment='zzz'"):
        trainer.batches.generate_and_score(bad.to_list(), with_logps=False)


def test_bad_tool_setups_are_one_clear_error(small_tiny, tmp_path):
    model, tok = small_tiny

    def undocumented(x):
        return x

    with pytest.raises(ValueError, match="undocumented"):
        GRPOTrainer(model, correct, _cfg(tmp_path), _questions(), processing_class=tok, tools=[undocumented])

    class NoReset:
        def act(self, x: int) -> int:
            """Act.

            Args:
                x: a number
            """
            return x

    with pytest.raises(ValueError, match="NoReset"):
        GRPOTrainer(model, correct, _cfg(tmp_path), _questions(), processing_class=tok, environment_factory=NoReset)
    with pytest.raises(ValueError, match="reward_funcs is required"):
        GRPOTrainer(model, None, _cfg(tmp_path), _questions(), processing_class=tok, tools=[multiply])
    with pytest.raises(ValueError, match="train_dataset is required: aha does not take the prompts"):
        GRPOTrainer(model, None, _cfg(tmp_path), None, processing_class=tok, environment_factory=Counter)
    plain = Dataset.from_list([{"prompt": "2*3", "answer": "6"}] * 4)
    trainer = GRPOTrainer(model, correct, _cfg(tmp_path), plain, processing_class=tok, tools=[multiply])
    with pytest.raises(ValueError, match="conversational prompts"):
        trainer.batches.generate_and_score(plain.to_list(), with_logps=False)
    with pytest.raises(ValueError, match="max_tool_calling_iterations"):
        _cfg(tmp_path, max_tool_calling_iterations=-1)
