"""The trainer's tools and environments (TRL 1.16's ``GRPOTrainer(tools=..., environment_factory=...)``).

``tools``: plain functions (sync or async, with type hints and a Google-style docstring: their JSON schema comes
from ``transformers.utils.get_json_schema``) every rollout may call. ``environment_factory``: a callable returning
an object per rollout, or a dict ``{name: factory}`` with each dataset row naming its environment in an
``environment`` column. The object's ``reset(**row)`` is called before the rollout (a string it returns is
appended to the prompt's last message), its public methods are tools bound to that rollout's state, and a
``get_reward()`` method makes it a reward source (logged under the class name, weight 1), so ``reward_funcs`` may
be left out. Instances are pooled and reused across batches (``reset`` again), as TRL does; reward functions get
the batch's instances as ``environments``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

from aha.data.prompts import is_conversational
from aha.tools.calls import detect_format, render_tool_prompt, renders_tools
from aha.tools.toolbox import Toolbox


class ToolUse:
    """What the rollouts need to call tools: the tool-call format, one :class:`Toolbox` per rollout (its
    environment's methods plus the standalone tools) and the prompts with the tools in them."""

    def __init__(
        self,
        tools: Sequence[Callable] | None,
        environment_factory: Callable[[], Any] | dict[str, Callable[[], Any]] | None,
        tokenizer: Any,
        timeout: float = 10.0,
    ) -> None:
        self.tools = list(tools or [])
        self.tokenizer = tokenizer
        self.timeout = timeout
        self.multi = isinstance(environment_factory, dict)
        if environment_factory is None:
            self.factories: dict[str | None, Callable[[], Any]] | None = None
        elif self.multi:
            if not environment_factory:
                raise ValueError("GRPOTrainer(environment_factory={}): give at least one environment")
            self.factories = dict(environment_factory)
        elif callable(environment_factory):
            self.factories = {None: environment_factory}
        else:
            raise TypeError(
                "GRPOTrainer(environment_factory=...) must be a callable returning an environment, or a dict "
                f"{{name: callable}}; got {type(environment_factory).__name__}"
            )
        self.shared = Toolbox(self.tools, timeout=timeout)  # checks every standalone tool's schema
        self.pool: dict[Any, list[Any]] = {}
        self.boxes: dict[int, Toolbox] = {}  # id of a pooled instance -> its toolbox (schemas read once)
        self.reward_funcs: list[Callable] = []
        rewarded: set[type] = set()  # one reward column per environment class with get_reward (as TRL)
        for name, factory in (self.factories or {}).items():
            env = factory()
            Toolbox.from_environment(env, self.tools, timeout=timeout)  # checks reset and the methods' schemas
            self.pool[name] = [env]
            if callable(getattr(type(env), "get_reward", None)) and type(env) not in rewarded:
                rewarded.add(type(env))
                self.reward_funcs.append(environment_reward(type(env)))
        self.format = detect_format(tokenizer)
        self.template_renders_tools = renders_tools(tokenizer)

    @property
    def active(self) -> bool:
        return bool(self.tools) or self.factories is not None

    def prepare(self, rows: Sequence[dict[str, Any]]) -> tuple[list[Any], list[Toolbox], list[Any] | None]:
        """For each rollout's dataset row: its prompt (with the environment's observation appended), its toolbox
        and its environment (None without environments)."""
        prompts = [r.get("prompt") for r in rows]
        for i, p in enumerate(prompts):
            if not is_conversational(p):
                raise ValueError(
                    f"GRPOTrainer(tools=...): the prompt of row {i} is not a list of chat messages; tool calling needs "
                    "conversational prompts (the chat template renders the tools and their results)"
                )
        if self.factories is None:
            return prompts, [self.shared] * len(rows), None
        envs, cursor = [], {}
        for r in rows:
            name = r.get("environment") if self.multi else None
            if name not in self.factories:
                raise ValueError(
                    f"dataset row has environment={name!r}, which is not among environment_factory's: "
                    f"{sorted(str(k) for k in self.factories)}"
                )
            pool, k = self.pool[name], cursor.get(name, 0)
            if k == len(pool):
                pool.append(self.factories[name]())
            cursor[name] = k + 1
            envs.append(pool[k])
        boxes = []
        for i, (env, r) in enumerate(zip(envs, rows)):
            kwargs = {k: v for k, v in r.items() if not (self.multi and k == "environment")}
            observation = env.reset(**kwargs)
            if observation is not None:
                last = prompts[i][-1]
                prompts[i] = [*prompts[i][:-1], {**last, "content": str(last["content"]) + str(observation)}]
            if id(env) not in self.boxes:  # pooled instances live as long as the trainer: their ids stay theirs
                self.boxes[id(env)] = Toolbox.from_environment(env, self.tools, timeout=self.timeout)
            boxes.append(self.boxes[id(env)])
        return prompts, boxes, envs

    def render(self, prompt: list[dict[str, Any]], box: Toolbox, chat_template_kwargs: dict | None) -> str:
        """The prompt text with `box`'s tools in it (see ``aha.tools.calls.render_tool_prompt``)."""
        return render_tool_prompt(self.tokenizer, prompt, box.schemas, chat_template_kwargs)


def environment_reward(env_type: type) -> Callable[..., list[float | None]]:
    """A reward function reading ``get_reward()`` of the rollouts whose environment is exactly `env_type` (None for
    the others), named after the class; async when ``get_reward`` is."""
    if inspect.iscoroutinefunction(env_type.get_reward):

        async def reward(prompts=None, completions=None, environments=None, **kwargs):
            return [await e.get_reward() if type(e) is env_type else None for e in environments or []]
    else:

        def reward(prompts=None, completions=None, environments=None, **kwargs):  # type: ignore[misc]
            return [e.get_reward() if type(e) is env_type else None for e in environments or []]

    reward.__name__ = reward.__qualname__ = env_type.__name__
    reward.env_type = env_type  # type: ignore[attr-defined]
    return reward
