"""Data-parallel training (issue: scale past one process): 2 processes × batch b must end with the same
parameters as 1 process × batch 2b — same seeds, same completions, gradients averaged by DDP over gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

WORKER = Path(__file__).with_name("_dist_worker.py")


def _run(kind: str, tmp_path: Path, procs: int, batch: int, stop_at: int = 0) -> dict[str, torch.Tensor] | None:
    out, run_dir = tmp_path / f"{kind}-{procs}.pt", tmp_path / f"{kind}-{procs}"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", AHA_NO_PROGRESS="1", AHA_TEST_STOP_AT=str(stop_at))
    args = [str(WORKER), kind, str(out), str(batch), str(run_dir)]
    if procs == 1:
        cmd = [sys.executable, *args]
    else:
        port = str(_free_port())
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port", port]
        cmd += ["--master_addr", "127.0.0.1", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return None if stop_at else torch.load(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> None:
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 1e-3, "training did not change the parameters: the comparison would prove nothing"
    # Adam divides by sqrt(v): an element whose gradient is ~0 turns float noise (summation order differs
    # between the layouts) into an update of up to lr; 1e-4 is 3% of what 3 steps at lr 3e-3 can move one
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-4, msg=lambda m, k=k: f"{k}: {m}")


def _start() -> dict[str, torch.Tensor]:
    from aha.models.tiny import build_tiny

    torch.manual_seed(0)
    model, _ = build_tiny(hidden_size=64, num_hidden_layers=2, intermediate_size=128)
    return model.state_dict()


@pytest.mark.parametrize("kind", ["grpo", "sft"])
def test_two_processes_equal_one_process_with_twice_the_batch(kind, tmp_path):
    # GRPO: groups of 4 and per-device batch 6 -> the 12-row generation batch puts one group across both processes
    batch = 6 if kind == "grpo" else 8
    one = _run(kind, tmp_path, 1, 2 * batch)
    two = _run(kind, tmp_path, 2, batch)
    _assert_same(one, two, _start())
    if kind == "grpo":  # only the first process wrote: one metrics file, checkpoints, the model
        # the loss forward took token_logps' fast path under DDP (gradients averaged by average_gradients)
        assert json.loads((tmp_path / "grpo-2.json").read_text()) == {"by_hand": True}
        assert json.loads((tmp_path / "grpo-1.json").read_text()) == {"by_hand": False}
        run = tmp_path / "grpo-2"
        lines = (run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 3
        assert (run / "checkpoint-2").is_dir() and (run / "model" / "model.safetensors").is_file()


def test_tool_rollouts_on_two_processes_equal_one_process(tmp_path):
    """Multi-turn rollouts with the calculator (a scripted sampler: calls depend on the row's seed): 2 processes ×
    batch 6 end where 1 × 12 does, with the same tool metrics (gathered) and the same masked-token normaliser."""
    one = _run("grpo-tools", tmp_path, 1, 12)
    two = _run("grpo-tools", tmp_path, 2, 6)
    _assert_same(one, two, _start())

    def logged(procs: int) -> list[dict]:
        return [json.loads(x) for x in (tmp_path / f"grpo-tools-{procs}" / "metrics.jsonl").read_text().splitlines()]

    a, b = logged(1), logged(2)
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert 0 < x["tools/call_frequency"] < 1 and x["tools/masked_share"] > 0
        for k in ("tools/call_frequency", "tools/used", "tools/turns", "tools/masked_share", "reward"):
            assert x[k] == pytest.approx(y[k]), k


def test_dynamic_sampling_on_two_processes_equals_one_process(tmp_path):
    # kept groups gathered from both processes, then split evenly: same kept batch, same update as one process
    one = _run("grpo-dynamic", tmp_path, 1, 12)
    two = _run("grpo-dynamic", tmp_path, 2, 6)
    _assert_same(one, two, _start())
    rows = [json.loads(x) for x in (tmp_path / "grpo-dynamic-2" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["dynamic_sampling/dropped_groups"] for r in rows) > 0  # groups were dropped and refilled
    assert sum(r["dynamic_sampling/rounds"] for r in rows) > 0
    ones = [json.loads(x) for x in (tmp_path / "grpo-dynamic-1" / "metrics.jsonl").read_text().splitlines()]
    keys = ("dynamic_sampling/kept_groups", "dynamic_sampling/dropped_groups", "dynamic_sampling/rounds")
    assert [[r[k] for k in keys] for r in rows] == [[r[k] for k in keys] for r in ones]


def test_two_processes_resume_in_the_middle_of_a_batch(tmp_path):
    full = _run("grpo-resume", tmp_path / "full", 2, 4)
    _run("grpo-resume", tmp_path / "cut", 2, 4, stop_at=3)  # both processes stop after step 3, checkpoint-2 kept
    run = tmp_path / "cut" / "grpo-resume-2"
    assert (run / "checkpoint-2").is_dir() and not (run / "checkpoint-3").exists()
    state = torch.load(run / "checkpoint-2" / "loop_state.pt", weights_only=True)
    inflight = [p["batches"]["inflight"] for p in state["by_process"]]  # saved mid-batch: each process's own rows
    assert len(inflight) == 2 and not torch.equal(
        inflight[0]["batch"]["advantages"], inflight[1]["batch"]["advantages"]
    )
    resumed = _run("grpo-resume", tmp_path / "cut", 2, 4)  # "auto": from checkpoint-2
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_a_mid_batch_checkpoint_resumes_on_as_many_processes_only():
    from types import SimpleNamespace

    from aha.train.rollouts import InFlight, RolloutSource

    def flight(rows: int) -> dict:
        batch = {"prompt_ids": torch.zeros(rows, 2, dtype=torch.long), "advantages": torch.zeros(rows)}
        return {"inflight": InFlight(batch, {}, 1.0, mb=1).state_dict()}

    source = RolloutSource.__new__(RolloutSource)  # only its resume rule, no model
    source.args = SimpleNamespace(num_iterations=1)
    states = [flight(2), flight(3)]
    source.load_local_state_dict(states, 1, 2, "ck")
    assert source.current.rows == 3  # rank 1 gets rank 1's rows
    source.load_local_state_dict([flight(2)], 0, 1, "ck")
    assert source.current.rows == 2
    source.load_local_state_dict([{"inflight": None}], 0, 3, "ck")  # the end of a batch: any number of processes
    assert source.current is None
    with pytest.raises(ValueError, match="ck was saved by 2 process.*resume it with 2 process.*not 1"):
        source.load_local_state_dict(states, 0, 1, "ck")
    with pytest.raises(ValueError, match="saved by 1 process.*not 2"):
        source.load_local_state_dict([flight(2)], 0, 2, "ck")


def test_even_share_tops_up_with_rows_that_carry_no_loss():
    from types import SimpleNamespace

    from aha.train.rollouts import even_share

    batch = {
        "prompt_ids": torch.arange(10).view(5, 2),
        "completion_mask": torch.ones(5, 3, dtype=torch.int),
        "advantages": torch.arange(1.0, 6.0),
    }
    shares = [even_share(SimpleNamespace(num_processes=2, process_index=r), batch) for r in (0, 1)]
    assert [s["prompt_ids"].size(0) for s in shares] == [3, 3]
    assert torch.equal(torch.cat([s["advantages"] for s in shares]), torch.tensor([1.0, 2, 3, 4, 5, 0]))
    assert torch.equal(shares[1]["prompt_ids"], torch.tensor([[6, 7], [8, 9], [0, 1]]))  # row 0's copy
    assert shares[1]["completion_mask"][2].sum() == 0 and shares[0]["completion_mask"].all()
    assert even_share(SimpleNamespace(num_processes=1, process_index=0), batch) is batch


def test_aha_train_under_torchrun_writes_one_run_directory(tmp_path):
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", AHA_NO_PROGRESS="1")
    recipe = Path(__file__).parents[2] / "recipes" / "demo-grpo.yaml"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd += ["--master_addr", "127.0.0.1", "-m", "aha.cli", "train", str(recipe), "--out", str(out), "--no-plot"]
    for s in ("training.max_steps=2", "training.max_completion_length=8", "eval.dataset.n=4", "eval.samples=2"):
        cmd += ["--set", s]
    cmd += ["--set", "training.per_device_train_batch_size=8", "--set", "training.logging_steps=1"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["step"]) for r in rows] == [("eval", 0), ("grpo", 1), ("grpo", 2), ("eval", 2)]
    assert (out / "model" / "model.safetensors").is_file() and (out / "summary.json").is_file()
    assert done.stderr.count("GRPO on") == 1  # one voice: the other process prints nothing


def test_average_gradients_covers_every_parameter_in_buckets(monkeypatch):
    from aha.train import distributed

    store = torch.distributed.HashStore()
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        monkeypatch.setattr(distributed, "GRAD_BUCKET", 10)  # buckets: [3, 4], [20], [1, 2] elements
        params = [torch.nn.Parameter(torch.ones(n)) for n in (3, 4, 20, 1, 2)]
        for i, p in enumerate(params):
            if i != 3:  # parameter 3 got no gradient on this process
                p.grad = torch.full_like(p, float(i + 1))
        distributed.average_gradients(params, world=2)  # one process standing in for two: every gradient halved
        for i, p in enumerate(params):
            assert torch.equal(p.grad, torch.full_like(p, 0.0 if i == 3 else (i + 1) / 2))
    finally:
        torch.distributed.destroy_process_group()
