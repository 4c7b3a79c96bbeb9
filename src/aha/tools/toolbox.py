"""The tools of one rollout and how they are called: ``Toolbox(tools).call(ToolCall(name, arguments))``.

A tool is a plain Python function (sync or ``async def``) with type hints on every argument and a Google-style
docstring with an ``Args:`` section: exactly what ``transformers.utils.get_json_schema`` (and so
``tokenizer.apply_chat_template(tools=[fn])``) needs to describe it to the model. :func:`tool_schema` checks that
once, up front, with one error saying what is missing.

:meth:`Toolbox.call` never raises because of the tool or of the model's call: an unknown name, arguments that do
not fit the signature or the schema's JSON types, an exception in the tool and a tool running past the timeout all
become a :class:`ToolResult` with ``error=True`` whose content tells the model what went wrong.

:meth:`Toolbox.from_environment` follows TRL 1.16's ``environment_factory`` contract: the public methods of the
environment's class (``reset`` and ``get_reward`` excepted) are tools bound to that one instance.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from transformers.utils import get_json_schema

SKIPPED_METHODS = ("reset", "get_reward")  # environment methods that are never tools (TRL 1.16)
SCHEMA_HELP = (
    "a tool needs a Google-style docstring (a description, then an 'Args:' section with one line per argument, "
    "e.g. 'x: the number to square') and a type hint on every argument (def square(x: float) -> float)"
)
JSON_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {  # schema type -> (what the model is told, check)
    "string": ("a string", lambda v: isinstance(v, str)),
    "integer": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "number": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "boolean": ("a boolean (true or false)", lambda v: isinstance(v, bool)),
    "array": ("an array", lambda v: isinstance(v, list)),
    "object": ("an object", lambda v: isinstance(v, dict)),
    "null": ("null", lambda v: v is None),
}


def qualified_name(fn: Callable) -> str:
    """``module.qualname`` of `fn` (a bound method: of its function), for error messages."""
    target = getattr(fn, "__func__", fn)
    qualname = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(fn)
    module = getattr(target, "__module__", None)
    return f"{module}.{qualname}" if module else qualname


def tool_schema(fn: Callable) -> dict[str, Any]:
    """The OpenAI-style schema ``{"type": "function", "function": {"name", "description", "parameters"}}`` of
    `fn`, as ``transformers.utils.get_json_schema`` makes it (what ``apply_chat_template(tools=[fn])`` renders).

    Raises one ValueError naming the function (its qualified name), what is missing and how to fix it: no
    docstring, an argument without a type hint or a description, ``*args``/``**kwargs`` or positional-only
    arguments (the model passes named JSON arguments only), or a callable without a ``__name__``."""
    if not callable(fn):
        raise ValueError(f"tool {fn!r} is a {type(fn).__name__}, not a callable")
    name = qualified_name(fn)
    if not isinstance(getattr(fn, "__name__", None), str):
        raise ValueError(f"tool {name}: it has no __name__ (a functools.partial?); wrap it in a def: {SCHEMA_HELP}")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError) as e:
        raise ValueError(f"tool {name}: its signature cannot be read ({e})") from e
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    odd = [p.name for p in params if p.kind not in kinds]
    if odd:
        raise ValueError(
            f"tool {name}: the arguments {odd} are *args, **kwargs or positional-only; the model calls a tool with "
            "named arguments only: give each its own keyword parameter"
        )
    try:
        schema = get_json_schema(fn)
    except Exception as e:  # transformers' DocstringParsingException, TypeHintParsingException; NameError for hints
        raise ValueError(f"tool {name} cannot be described to the model: {e}; {SCHEMA_HELP}") from e
    if not schema["function"].get("description"):
        raise ValueError(f"tool {name}: its docstring has no description before 'Args:'; {SCHEMA_HELP}")
    return schema


@dataclass
class ToolCall:
    """One call the model asked for: the tool's `name` and its JSON `arguments` (already decoded)."""

    name: str
    arguments: dict[str, Any]


@dataclass
class ToolResult:
    """What a call gave back to the model: `content` (the tool's result as text, or what went wrong) and whether
    the call failed (`error`: unknown tool, bad arguments, the tool raised or timed out)."""

    name: str
    content: str
    error: bool


def environment_methods(env_type: type) -> list[str]:
    """The names of the tool methods of an environment class (TRL 1.16's contract): its public functions
    (``inspect.getmembers(env_type, inspect.isfunction)``, so sorted by name; inherited ones too), ``reset`` and
    ``get_reward`` excepted. Raises ValueError naming the class when it has no ``reset``."""
    members = inspect.getmembers(env_type, inspect.isfunction)
    if not any(name == "reset" for name, _ in members):
        raise ValueError(
            f"environment class {env_type.__qualname__} has no reset method: environment_factory must return an "
            "object with a reset(**row) method"
        )
    return [name for name, _ in members if not name.startswith("_") and name not in SKIPPED_METHODS]


def text_of(result: Any) -> str:
    """A tool's return value as the text the model reads: a str as is, None as "", anything else as JSON
    (``json.dumps(result, default=str)``: ``56088`` -> ``"56088"``, a dict -> its JSON)."""
    if isinstance(result, str):
        return result
    if result is None:
        return ""
    return json.dumps(result, default=str)


def run_coroutine(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run `coro` to its end in a fresh event loop; in a worker thread when this thread already runs a loop
    (a notebook), where ``asyncio.run`` would refuse."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as e:  # noqa: BLE001 (handed back to the caller's thread)
            box["error"] = e

    worker = threading.Thread(target=target, name="aha-tools-loop", daemon=True)
    worker.start()
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


class Toolbox:
    """The tools one rollout may call, by name, with a `timeout` (seconds) per call and each result's text capped
    at `max_chars` characters (the first `max_chars` are kept, then a ``…[truncated N chars]`` marker).

    `tools`: functions (sync or async) that :func:`tool_schema` can describe, with distinct ``__name__``\\ s."""

    def __init__(self, tools: Sequence[Callable], timeout: float = 10.0, max_chars: int = 4000) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Toolbox: timeout must be a positive number of seconds, got {timeout!r}")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"Toolbox: max_chars must be a positive integer, got {max_chars!r}")
        if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            raise ValueError(f"Toolbox: tools must be a list of functions, got {type(tools).__name__}")
        self.timeout = float(timeout)
        self.max_chars = max_chars
        self._tools: dict[str, Callable] = {}
        self._schemas: dict[str, dict[str, Any]] = {}
        for fn in tools:
            schema = tool_schema(fn)
            name = schema["function"]["name"]
            if name in self._tools:
                raise ValueError(
                    f"Toolbox: two tools are named {name!r}: {qualified_name(self._tools[name])} and "
                    f"{qualified_name(fn)}; the model calls tools by name, so rename one"
                )
            self._tools[name], self._schemas[name] = fn, schema

    @classmethod
    def from_environment(
        cls, env: object, tools: Sequence[Callable] = (), timeout: float = 10.0, max_chars: int = 4000
    ) -> Toolbox:
        """The toolbox of one rollout of an environment (TRL 1.16's ``environment_factory``): the standalone
        `tools` first, then the methods :func:`environment_methods` names, bound to `env`."""
        if isinstance(env, type):
            raise ValueError(
                f"Toolbox.from_environment: got the class {env.__qualname__}, not an instance; pass what "
                "environment_factory returns (an instance, one per rollout)"
            )
        methods = [getattr(env, name) for name in environment_methods(type(env))]
        return cls([*tools, *methods], timeout=timeout, max_chars=max_chars)

    @property
    def tools(self) -> list[Callable]:
        """The callables, in order: for ``tokenizer.apply_chat_template(messages, tools=toolbox.tools)``."""
        return list(self._tools.values())

    @property
    def names(self) -> list[str]:
        """The tools' names, in order."""
        return list(self._tools)

    @property
    def schemas(self) -> list[dict[str, Any]]:
        """The tools' JSON schemas (:func:`tool_schema`), in order."""
        return list(self._schemas.values())

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __repr__(self) -> str:
        return f"Toolbox({self.names}, timeout={self.timeout:g}, max_chars={self.max_chars})"

    def call(self, call: ToolCall) -> ToolResult:
        """Run one call and say how it went; never raises because of the tool or of the call.

        A sync tool runs in a daemon worker thread and is waited for at most `timeout` seconds: past it the call is
        an error result "timed out after Ns", but Python cannot kill a thread, so the tool keeps running in the
        background until it returns on its own (its result is then dropped; a tool that may hang should bound
        itself, as the sandboxed ``python`` tool does). An async tool is awaited with ``asyncio.wait_for`` (and
        cancelled at the timeout)."""
        return self.call_many([call])[0]

    def call_many(self, calls: list[ToolCall]) -> list[ToolResult]:
        """Run `calls` and return their results in the same order: the sync ones one after another, in order,
        then the async ones concurrently in one event loop."""
        results: list[ToolResult | None] = [None] * len(calls)
        pending: list[tuple[int, ToolCall]] = []
        for i, call in enumerate(calls):
            problem = self.check(call)
            if problem is not None:
                results[i] = self._finish(call, problem, error=True)
            elif inspect.iscoroutinefunction(self._tools[call.name]):
                pending.append((i, call))
            else:
                results[i] = self._run_sync(call)
        if pending:

            async def gather() -> list[ToolResult]:
                return list(await asyncio.gather(*(self._run_async(call) for _, call in pending)))

            for (i, _), result in zip(pending, run_coroutine(gather()), strict=True):
                results[i] = result
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def check(self, call: ToolCall) -> str | None:
        """What is wrong with `call` (an unknown tool; arguments missing, unexpected or of the wrong JSON type),
        as the message the model reads; None when it can run."""
        name = call.name
        if not isinstance(name, str) or name not in self._tools:
            available = ", ".join(self.names) or "(none)"
            return f"Error: unknown tool {name!r}; the available tools are: {available}"
        if not isinstance(call.arguments, dict):
            return f"Error: the arguments of {name!r} must be a JSON object, got {type(call.arguments).__name__}"
        params = inspect.signature(self._tools[name]).parameters
        unexpected = [a for a in call.arguments if a not in params]
        if unexpected:
            return f"Error: tool {name!r} has no argument {unexpected[0]!r} (its arguments: {', '.join(params)})"
        missing = [p.name for p in params.values() if p.default is p.empty and p.name not in call.arguments]
        if missing:
            return f"Error: tool {name!r} is missing the required argument {missing[0]!r}"
        properties = self._schemas[name]["function"]["parameters"].get("properties", {})
        for arg, value in call.arguments.items():
            prop = properties.get(arg, {})
            types = [prop["type"]] if isinstance(prop.get("type"), str) else list(prop.get("type") or [])
            if types and prop.get("nullable") and "null" not in types:  # transformers' form of Optional[...]
                types.append("null")
            known = [t for t in types if t in JSON_TYPES]
            if known and len(known) == len(types) and not any(JSON_TYPES[t][1](value) for t in known):
                wanted = " or ".join(JSON_TYPES[t][0] for t in known)
                return (
                    f"Error: argument {arg!r} of tool {name!r} must be {wanted}, got {json.dumps(value, default=str)}"
                )
        return None

    def _finish(self, call: ToolCall, content: str, error: bool) -> ToolResult:
        """The result of `call` with `content` capped at `max_chars` (a visible marker says how much was cut)."""
        if len(content) > self.max_chars:
            content = f"{content[: self.max_chars]}…[truncated {len(content) - self.max_chars} chars]"
        name = call.name if isinstance(call.name, str) else repr(call.name)
        return ToolResult(name=name, content=content, error=error)

    def _timed_out(self, call: ToolCall) -> ToolResult:
        return self._finish(call, f"Error: tool {call.name!r} timed out after {self.timeout:g}s", error=True)

    def _run_sync(self, call: ToolCall) -> ToolResult:
        """A checked call of a sync tool, in a daemon thread waited for at most `timeout` seconds."""
        fn, box = self._tools[call.name], {}

        def target() -> None:
            try:
                box["value"] = fn(**call.arguments)
            except BaseException as e:  # noqa: BLE001 (SystemExit too: a tool must not end the trainer)
                box["error"] = e

        worker = threading.Thread(target=target, name=f"aha-tool-{call.name}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            return self._timed_out(call)
        return self._outcome(call, box)

    async def _run_async(self, call: ToolCall) -> ToolResult:
        """A checked call of an async tool, awaited for at most `timeout` seconds (then cancelled)."""
        fn = self._tools[call.name]

        async def guarded() -> dict[str, Any]:  # the tool's own exceptions (a TimeoutError too) are its result
            try:
                return {"value": await fn(**call.arguments)}
            except (asyncio.CancelledError, KeyboardInterrupt):  # the timeout's cancellation; Ctrl-C
                raise
            except BaseException as e:  # noqa: BLE001 (SystemExit too: a tool must not end the trainer)
                return {"error": e}

        try:
            box = await asyncio.wait_for(guarded(), self.timeout)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            return self._timed_out(call)
        return self._outcome(call, box)

    def _outcome(self, call: ToolCall, box: dict[str, Any]) -> ToolResult:
        if "error" in box:
            e = box["error"]
            try:
                message = str(e)
            except Exception:  # an exception whose __str__ fails
                message = object.__repr__(e)
            return self._finish(call, f"Error: {type(e).__name__}: {message}", error=True)
        try:
            return self._finish(call, text_of(box["value"]), error=False)
        except Exception as e:  # json.dumps of something odd (a circular structure)
            return self._finish(call, f"Error: the result of {call.name!r} is not JSON: {e}", error=True)


__all__ = ["ToolCall", "ToolResult", "Toolbox", "environment_methods", "text_of", "tool_schema"]
