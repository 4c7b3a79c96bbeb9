"""push_to_hub (aha.train.hub): what goes to the Hub and when, with HfApi's calls intercepted (no network)."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
import pytest
from datasets import Dataset, DatasetInfo
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

import aha.models.loading
from aha import GRPOConfig, GRPOTrainer
from aha.tasks import get_task
from aha.train.hub import HubPusher, model_card

BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class FakeHub:
    """HfApi.create_repo / upload_folder recorded: the repo made, and for each upload the files it would send."""

    def __init__(self, monkeypatch, fail: str | None = None) -> None:
        self.repos: list[dict] = []
        self.uploads: list[dict] = []
        hub = self

        def create_repo(api, repo_id, *, private=None, exist_ok=False, repo_type=None, **kw):
            if fail == "create":
                raise OSError("401 Client Error: Unauthorized\nmore detail")
            hub.repos.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok, "token": api.token})
            return huggingface_hub.RepoUrl(f"https://huggingface.co/{'me/' if '/' not in repo_id else ''}{repo_id}")

        def upload_folder(
            api, *, repo_id, folder_path, path_in_repo=None, commit_message=None, ignore_patterns=None, **kw
        ):
            if fail == "upload":
                raise OSError("503 Server Error")
            root = Path(folder_path)
            names = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
            files = list(filter_repo_objects(names, ignore_patterns=ignore_patterns))
            readme = (root / "README.md").read_text() if "README.md" in files else None
            hub.uploads.append(
                {
                    "repo_id": repo_id,
                    "in_repo": path_in_repo,
                    "message": commit_message,
                    "files": files,
                    "readme": readme,
                }
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
        # the Hub counts as reachable (config.py probes it), with no token of this machine's
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(aha.models.loading, "hub_unreachable", lambda: False)
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)


def digits(completions, **kwargs):
    return [float(sum(ch.isdigit() for ch in str(c))) for c in completions]


def args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        save_steps=1,
        num_generations=4,
        per_device_train_batch_size=8,
        max_completion_length=6,
        logging_steps=1,
        use_cpu=True,
        push_to_hub=True,
        hub_model_id="me/tiny-grpo",
        hub_token="hf_test",
        seed=0,
    )
    return GRPOConfig(**(base | kw))


def dataset():
    info = DatasetInfo(dataset_name="openai/gsm8k")
    return Dataset.from_list(get_task("arithmetic").rows("train", 8, seed=0), info=info)


def test_grpo_pushes_checkpoints_and_the_final_model_with_a_card(small_tiny, tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    model, tok = small_tiny
    model.config._name_or_path = BASE  # as if loaded from the Hub
    trainer = GRPOTrainer(
        model, digits, args(tmp_path, hub_strategy="checkpoint", hub_private_repo=True), dataset(), tok
    )
    assert hub.repos == [{"repo_id": "me/tiny-grpo", "private": True, "exist_ok": True, "token": "hf_test"}]
    assert hub.uploads == []  # the repository is made with the trainer, before any training
    trainer.train()
    where = [(u["in_repo"], u["message"]) for u in hub.uploads]
    assert where == [
        (None, "Training in progress, step 1"),
        ("last-checkpoint", "Training in progress, step 1, checkpoint"),
        (None, "Training in progress, step 2"),
        ("last-checkpoint", "Training in progress, step 2, checkpoint"),
        (None, "End of training"),
    ]
    assert all(u["repo_id"] == "me/tiny-grpo" for u in hub.uploads)
    model_files = {"model.safetensors", "config.json", "tokenizer.json", "README.md"}
    root = hub.uploads[0]["files"]
    assert model_files <= set(root) and not {"optimizer.pt", "rng_state.pt", "trainer_state.json"} & set(root)
    assert {"optimizer.pt", "loop_state.pt", "trainer_state.json"} <= set(hub.uploads[1]["files"])  # to resume
    final = hub.uploads[-1]["files"]
    assert model_files | {"metrics.jsonl"} <= set(final)
    assert not [f for f in final if f.startswith("checkpoint-")]
    card = hub.uploads[-1]["readme"]
    assert (Path(tmp_path / "run" / "README.md")).read_text() == card
    for text in (
        f"base_model: {BASE}",
        "datasets:\n- openai/gsm8k",
        f"[{BASE}](https://huggingface.co/{BASE})",
        "`digits` (weight 1)",
        "2 optimiser steps.",
        "| num_generations | 4 |",
        "| loss_type | dapo |",
        "| learning_rate | 1e-06 |",
        'pipeline("text-generation", model="me/tiny-grpo")',
    ):
        assert text in card, text
    assert "1 optimiser step." in hub.uploads[0]["readme"]  # each checkpoint's card says where it is
    # the token is in no file that is pushed or kept (checkpoints hold the settings, masked as transformers does)
    assert not [f for f in (tmp_path / "run").rglob("*") if f.is_file() and b"hf_test" in f.read_bytes()]
    assert trainer.args.to_dict()["hub_token"] == "<HUB_TOKEN>" and trainer.args.hub_token == "hf_test"


@pytest.mark.parametrize(
    "strategy, expected",
    [
        ("end", []),
        ("every_save", [None]),
        ("checkpoint", [None, "last-checkpoint"]),
        ("all_checkpoints", [None, "checkpoint-3"]),
    ],
)
def test_hub_strategy_decides_what_each_checkpoint_pushes(tmp_path, monkeypatch, strategy, expected):
    hub = FakeHub(monkeypatch)
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json", "checkpoint_complete.json"):
        (ckpt / name).write_text("x")
    pusher = HubPusher(args(tmp_path, hub_strategy=strategy))
    pusher.push_checkpoint(ckpt, 3, "card")
    assert [u["in_repo"] for u in hub.uploads] == expected
    if expected:
        assert hub.uploads[0]["files"] == ["README.md", "model.safetensors"]
        assert set(hub.uploads[-1]["files"]) >= ({"optimizer.pt"} if len(expected) > 1 else set())


def test_hub_model_id_defaults_to_output_dirs_name_and_the_token_to_the_login(tmp_path, monkeypatch):
    hub = FakeHub(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_login")
    pusher = HubPusher(args(tmp_path, hub_model_id=None, hub_token=None))
    assert hub.repos == [{"repo_id": "run", "private": None, "exist_ok": True, "token": "hf_login"}]
    assert pusher.repo_id == "me/run"  # the namespace the Hub put it in


def test_push_failures_are_one_clear_error(small_tiny, tmp_path, monkeypatch):
    FakeHub(monkeypatch)
    model, tok = small_tiny
    with pytest.raises(ValueError, match=r"push_to_hub=True but there is no Hub token: run `hf auth login`"):
        GRPOTrainer(model, digits, args(tmp_path, hub_token=None), dataset(), tok)
    FakeHub(monkeypatch, fail="create")
    with pytest.raises(ValueError, match=r"GRPOConfig\.hub_model_id: could not create .*'me/tiny-grpo': 401 Client"):
        GRPOTrainer(model, digits, args(tmp_path), dataset(), tok)
    FakeHub(monkeypatch, fail="upload")
    pusher = HubPusher(args(tmp_path))
    with pytest.raises(RuntimeError, match=r"push to the Hub repository me/tiny-grpo failed: 503 Server Error"):
        pusher.push_folder(tmp_path, "card")


def test_a_failed_checkpoint_push_warns_and_training_goes_on(tmp_path, monkeypatch, capsys):
    FakeHub(monkeypatch, fail="upload")
    ckpt = tmp_path / "checkpoint-1"
    ckpt.mkdir()
    HubPusher(args(tmp_path)).push_checkpoint(ckpt, 1, "card")
    out = " ".join(capsys.readouterr().err.split())  # aha's console: stderr, wrapped
    assert "warning" in out and "me/tiny-grpo failed: 503 Server Error" in out and "training goes on" in out


def test_hub_fields_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"GRPOConfig\.hub_strategy: must be one of end, every_save"):
        GRPOConfig(hub_strategy="sometimes")
    with pytest.raises(ValueError, match=r"GRPOConfig\.hub_model_id: must be a Hub repository id"):
        GRPOConfig(hub_model_id="a/b/c")


def test_hub_defaults_are_trls():
    trl = pytest.importorskip("trl")
    theirs = {f.name: f.default for f in __import__("dataclasses").fields(trl.GRPOConfig)}
    ours = GRPOConfig()
    for name in ("push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo", "hub_token", "run_name", "project"):
        assert getattr(ours, name) == theirs[name], name
    assert theirs["report_to"] == "none" and ours.report_to == []


def test_the_card_of_a_model_built_here(small_tiny):
    card = model_card("me/x", GRPOConfig(), base_model=None, dataset=None, rewards=[("a", 1.0), ("b", 0.5)], steps=3)
    assert "base_model" not in card and "datasets:" not in card
    assert "a model built from scratch trained on a prompt dataset" in card
    assert "`b` (weight 0.5)" in card
