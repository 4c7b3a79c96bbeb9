"""Pushing a GRPO run to the Hugging Face Hub: ``push_to_hub``, ``hub_model_id``, ``hub_strategy``,
``hub_private_repo``, ``hub_token`` with transformers' names and meanings, through ``huggingface_hub.HfApi``.

The repository is created (``create_repo(exist_ok=True)``) when the trainer is made, so a bad token or name fails
before any training. At the end of ``train()`` the model is saved to OUTPUT_DIR with a model card (README.md: the
base model, the dataset, the rewards and the GRPO settings) and OUTPUT_DIR is uploaded without its checkpoints.
At each checkpoint, by ``hub_strategy``:

- ``"end"``: nothing (only the final push);
- ``"every_save"``: the checkpoint's model, tokenizer and card to the repository's root;
- ``"checkpoint"``: that, and the whole checkpoint (optimiser and all) to ``last-checkpoint/``, to resume from;
- ``"all_checkpoints"``: that, and each checkpoint to its own ``checkpoint-<step>/``.

Uploads are synchronous (training waits for them). A checkpoint's failed upload is a warning (training goes on, the
checkpoint is on disk and the next save pushes again); the final one's is an error naming the repository.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from aha.console import console

HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
REPO_ID = re.compile(r"([\w.-]+/)?[\w.-]+")
# a checkpoint's training state: pushed with the checkpoint folders, not as the model
TRAINING_STATE = ["*.pt", "trainer_state.json", "checkpoint_complete.json"]
# what the final push of OUTPUT_DIR leaves out: checkpoints, half-written ones, trackers' local stores
NOT_THE_MODEL = ["_*", "checkpoint-*", ".checkpoint-*", "wandb/*", "mlflow.db", "mlartifacts/*"]
# the GRPO settings the model card shows
CARD_SETTINGS = (
    "learning_rate",
    "lr_scheduler_type",
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "generation_batch_size",
    "num_iterations",
    "max_prompt_length",
    "max_completion_length",
    "temperature",
    "top_p",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "importance_sampling_level",
    "mask_truncated_completions",
    "bf16",
    "seed",
)


def base_model_name(model: Any) -> str | None:
    """The Hub id or path `model` was loaded from (a PEFT model: its base's), or None for a model built here."""
    peft = getattr(model, "peft_config", None)
    if isinstance(peft, dict) and peft:
        name = getattr(next(iter(peft.values())), "base_model_name_or_path", None)
        if name:
            return str(name)
    name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return str(name) if name else None


def dataset_name(dataset: Any) -> str | None:
    """A ``datasets.Dataset``'s name (``info.dataset_name`` or its builder's), or None."""
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    return str(name) if name else None


def model_card(
    repo_id: str,
    args: Any,
    *,
    base_model: str | None,
    dataset: str | None,
    rewards: list[tuple[str, float]],
    steps: int,
    adapter: bool = False,
    last_row: dict[str, Any] | None = None,
) -> str:
    """README.md for a GRPO-trained model: YAML metadata, what it was trained from and how, and how to load it.
    `rewards`: (name, weight) per reward function; `last_row`: the last logged metrics (reward, loss)."""
    meta = ["---", f"library_name: {'peft' if adapter else 'transformers'}", "pipeline_tag: text-generation"]
    if base_model:
        meta.append(f"base_model: {base_model}")
    if dataset:
        meta += ["datasets:", f"- {dataset}"]
    meta += ["tags:", "- aha", "- grpo", "- trl", "---", ""]
    name = repo_id.split("/")[-1]
    source = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a model built from scratch"
    data = f"[{dataset}](https://huggingface.co/datasets/{dataset})" if dataset else "a prompt dataset"
    body = [
        f"# {name}",
        "",
        f"This model is {source} trained on {data} with GRPO (Group Relative Policy Optimization, as in "
        "DeepSeekMath and DeepSeek-R1) using aha, a drop-in for TRL's GRPOTrainer.",
        "",
        "## Rewards",
        "",
        *[f"- `{r}` (weight {w:g})" for r, w in rewards],
        "",
        "## Training",
        "",
        f"{steps} optimiser step{'' if steps == 1 else 's'}.",
    ]
    shown = {k: last_row[k] for k in ("reward", "reward_std", "loss") if last_row and last_row.get(k) is not None}
    if shown:
        body[-1] += " Last logged: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()) + "."
    body += ["", "| setting | value |", "|---|---|"]
    body += [f"| {k} | {getattr(args, k)} |" for k in CARD_SETTINGS if hasattr(args, k)]
    body += [
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'chat = pipeline("text-generation", model="{repo_id}")',
        'print(chat([{"role": "user", "content": "What is 47+38?"}], max_new_tokens=128)[0]["generated_text"][-1])',
        "```",
        "",
    ]
    return "\n".join(meta + body)


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


class HubPusher:
    """The run's Hub repository: created here (`args`: a GRPOConfig with ``push_to_hub``), pushed to by
    :meth:`push_checkpoint` (per ``hub_strategy``) and :meth:`push_folder` (the end of training)."""

    def __init__(self, args: Any) -> None:
        import huggingface_hub
        from huggingface_hub import HfApi

        self.args = args
        token = args.hub_token or huggingface_hub.get_token()
        if not token:
            raise ValueError(
                "GRPOConfig.push_to_hub=True but there is no Hub token: run `hf auth login`, set HF_TOKEN, or pass "
                "hub_token"
            )
        self.api = HfApi(token=token)
        name = args.hub_model_id or Path(args.output_dir).absolute().name
        try:
            url = self.api.create_repo(name, private=args.hub_private_repo, exist_ok=True, repo_type="model")
        except Exception as e:  # HTTP, auth, network: one clear line
            raise ValueError(
                f"GRPOConfig.hub_model_id: could not create the Hub repository {name!r}: {_first_line(e)}"
            ) from e
        self.repo_id: str = getattr(url, "repo_id", None) or name

    def upload(self, folder: Path, commit_message: str, path_in_repo: str | None = None, ignore=None) -> None:
        try:
            self.api.upload_folder(
                repo_id=self.repo_id,
                folder_path=str(folder),
                path_in_repo=path_in_repo,
                commit_message=commit_message,
                ignore_patterns=ignore,
                repo_type="model",
            )
        except Exception as e:
            raise RuntimeError(
                f"push to the Hub repository {self.repo_id} failed: {_first_line(e)}; {folder} is kept"
            ) from e

    def push_checkpoint(self, checkpoint: Path, step: int, card: str) -> None:
        """After checkpoint `checkpoint` of `step` is written: push per ``hub_strategy`` (see the module docstring);
        `card` is written into the checkpoint as its README.md."""
        strategy = self.args.hub_strategy
        if strategy == "end":
            return
        (checkpoint / "README.md").write_text(card)
        message = f"Training in progress, step {step}"
        try:
            self.upload(checkpoint, message, ignore=TRAINING_STATE)
            if strategy in ("checkpoint", "all_checkpoints"):
                where = "last-checkpoint" if strategy == "checkpoint" else checkpoint.name
                self.upload(checkpoint, message + ", checkpoint", path_in_repo=where)
        except RuntimeError as e:  # a network blip must not end hours of training
            console.print(f"[yellow]warning[/yellow]: {e}; training goes on")

    def push_folder(self, folder: Path, card: str, commit_message: str = "End of training") -> None:
        """Upload `folder` (OUTPUT_DIR with the final model) to the repository's root with `card` as README.md,
        leaving out checkpoints and the trackers' local stores."""
        (folder / "README.md").write_text(card)
        self.upload(folder, commit_message, ignore=NOT_THE_MODEL)
