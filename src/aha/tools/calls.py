"""How a model writes a tool call and reads its result: the tool-call formats of chat templates.

A model trained for tools writes its calls in its chat template's format, and the template renders the tool
schemas into the prompt and the results as messages. aha reads two formats, the ones the open models use:

- ``hermes`` (Qwen 2.5/3, Hermes, most ChatML models): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  one block per call, anywhere in the assistant's turn;
- ``llama3`` (Llama 3.1/3.2 JSON tool calling): the assistant's whole turn is ``{"name": ..., "parameters": {...}}``
  (optionally after ``<|python_tag|>``; several calls separated by ``;``).

:func:`detect_format` picks one from the chat template's text. A template that does not render tools at all
(SmolLM2's, any plain ChatML one: :func:`renders_tools` is False) gets the tools from aha instead: a system message
in the Hermes convention (:func:`tool_system_prompt`), and the Hermes format to call them — so any chat model can
be taught tool use by RL. aha's tiny model's own template renders tools compactly (``aha.models.tiny``).

A malformed call (a ``<tool_call>`` block that is not JSON, or has no name) is not dropped: it comes back to the
model as a tool error (:attr:`ParsedTurn.errors`), which is how a model learns the format.

The results go back as ``tool`` messages, tokenised by the template itself (:func:`tool_suffix_ids`: the tokens
the template puts between the end of the assistant's turn and the next assistant turn, with the results inside),
so the rollout's token layout is what the template gives the whole conversation.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aha.tools.toolbox import ToolCall, ToolResult

FORMATS = ("hermes", "llama3")
HERMES_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
PYTHON_TAG = "<|python_tag|>"


@dataclass
class ParsedTurn:
    """One assistant turn read: its text outside the calls, the calls, and what was wrong with the malformed ones."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def message(self) -> dict[str, Any]:
        """The turn as a chat message (``tool_calls`` in the OpenAI/transformers form when it made calls)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            msg["tool_calls"] = [
                {"type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in self.calls
            ]
        return msg


def _call_from_json(text: str, args_key: str) -> ToolCall | str:
    """A ToolCall from one call's JSON text, or what is wrong with it."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return f"the tool call is not valid JSON ({e.msg} at character {e.pos}): {text.strip()[:200]!r}"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return f'a tool call must be a JSON object with a "name": {text.strip()[:200]!r}'
    args = obj.get(args_key, obj.get("arguments" if args_key != "arguments" else "parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return f'the "{args_key}" of the call to {obj["name"]!r} are not a JSON object: {args[:200]!r}'
    if not isinstance(args, dict):
        return f'the "{args_key}" of the call to {obj["name"]!r} must be a JSON object, got {json.dumps(args)[:200]}'
    return ToolCall(obj["name"], args)


def parse_hermes(text: str) -> ParsedTurn:
    calls, errors = [], []
    for block in HERMES_CALL.findall(text):
        got = _call_from_json(block, "arguments")
        (calls if isinstance(got, ToolCall) else errors).append(got)
    content = HERMES_CALL.sub("", text).strip()
    return ParsedTurn(content, calls, errors)


def parse_llama3(text: str) -> ParsedTurn:
    body = text.strip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG) :].strip()
    if not body.startswith("{"):  # plain text: no call
        return ParsedTurn(text.strip())
    calls, errors = [], []
    for part in _split_top_level(body):
        got = _call_from_json(part, "parameters")
        (calls if isinstance(got, ToolCall) else errors).append(got)
    return ParsedTurn("", calls, errors)


def _split_top_level(body: str) -> list[str]:
    """``{...}; {...}`` → the objects' texts (``;`` inside strings or braces does not split)."""
    parts, depth, start, in_str, esc = [], 0, 0, False, False
    for i, ch in enumerate(body):
        if in_str:
            esc, in_str = (not esc and ch == "\\"), in_str and (esc or ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == ";" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p for p in parts if p.strip()]


PARSERS = {"hermes": parse_hermes, "llama3": parse_llama3}


def parse_turn(text: str, fmt: str) -> ParsedTurn:
    """The calls in one assistant turn's text (special tokens kept or not), in format `fmt` (see FORMATS)."""
    if fmt not in PARSERS:
        raise ValueError(f"unknown tool-call format {fmt!r}; choose from {FORMATS}")
    return PARSERS[fmt](text)


def format_call(call: ToolCall, fmt: str) -> str:
    """The text a model writes for `call` in format `fmt` (cold-start traces, tests)."""
    if fmt == "hermes":
        return "<tool_call>" + json.dumps({"name": call.name, "arguments": call.arguments}) + "</tool_call>"
    if fmt == "llama3":
        return json.dumps({"name": call.name, "parameters": call.arguments})
    raise ValueError(f"unknown tool-call format {fmt!r}; choose from {FORMATS}")


# ------------------------------------------------------------------------------------------------ templates
def _template_text(tokenizer, chat_template: str | None = None) -> str:
    t = chat_template if chat_template is not None else getattr(tokenizer, "chat_template", None)
    if isinstance(t, dict):  # named templates: the tool_use one if there is one
        t = t.get("tool_use") or t.get("default") or next(iter(t.values()), "")
    return t or ""


def detect_format(tokenizer, chat_template: str | None = None) -> str:
    """The format the template's model calls tools in: ``llama3`` for Llama 3.1+ templates (ipython role,
    ``"parameters"``), ``hermes`` otherwise (also for templates that do not render tools, which aha then
    teaches the Hermes format, see :func:`tool_system_prompt`)."""
    text = _template_text(tokenizer, chat_template)
    if "<tool_call>" in text:
        return "hermes"
    if "ipython" in text or PYTHON_TAG in text:
        return "llama3"
    return "hermes"


def _probe() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": "aha_probe_tool_7f3a",
            "description": "probe",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    }


RENDERS_TOOLS: dict[tuple[int, str], bool] = {}  # (tokenizer id, template text) -> renders_tools's answer


def renders_tools(tokenizer, chat_template: str | None = None) -> bool:
    """Does the chat template put the tools it is given into the prompt? (Probed once per tokenizer and template.)"""
    key = (id(tokenizer), _template_text(tokenizer, chat_template))
    if key not in RENDERS_TOOLS:
        RENDERS_TOOLS[key] = _probe_renders(tokenizer, chat_template)
    return RENDERS_TOOLS[key]


def _probe_renders(tokenizer, chat_template: str | None) -> bool:
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}],
            tools=[_probe()],
            tokenize=False,
            add_generation_prompt=True,
            chat_template=chat_template,
        )
    except Exception:  # a template that fails on `tools` does not render them
        return False
    return "aha_probe_tool_7f3a" in text


def tool_system_prompt(schemas: Sequence[dict[str, Any]]) -> str:
    """The tools as a system message in the Hermes convention, for templates that do not render tools."""
    lines = "\n".join(json.dumps(s) for s in schemas)
    return (
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
    )


def with_tool_system_prompt(messages: list[dict[str, Any]], schemas: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with :func:`tool_system_prompt` first in the system message (added when there is none)."""
    text = tool_system_prompt(schemas)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{text}"}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def render_tool_prompt(
    tokenizer,
    messages: list[dict[str, Any]],
    schemas: Sequence[dict[str, Any]],
    chat_template_kwargs: dict[str, Any] | None = None,
) -> str:
    """The prompt text with the tools in it: by the template itself where it renders tools, else with aha's
    Hermes system message (:func:`with_tool_system_prompt`). No tools: the plain prompt."""
    kw = dict(chat_template_kwargs or {})
    if not schemas:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kw)
    if renders_tools(tokenizer):
        return tokenizer.apply_chat_template(
            messages, tools=list(schemas), tokenize=False, add_generation_prompt=True, **kw
        )
    return tokenizer.apply_chat_template(
        with_tool_system_prompt(messages, schemas), tokenize=False, add_generation_prompt=True, **kw
    )


def tool_messages(results: Sequence[ToolResult]) -> list[dict[str, Any]]:
    """The results as ``tool`` chat messages."""
    return [{"role": "tool", "name": r.name, "content": r.content} for r in results]


def tool_suffix_ids(
    tokenizer, results: Sequence[ToolResult], chat_template_kwargs: dict[str, Any] | None = None
) -> list[int]:
    """The tokens that follow an assistant turn ending in EOS: the template's end of that turn, the `results` as
    tool messages, and the start of the next assistant turn. Computed as the difference between the template's
    rendering of a conversation with and without the tool messages (the conversation cut at its last EOS), so
    it is exactly what the template gives. Raises ValueError when the template is not prefix-preserving."""
    if not results:
        raise ValueError("tool_suffix_ids: no tool results")
    kw = dict(chat_template_kwargs or {})
    call = {"type": "function", "function": {"name": results[0].name, "arguments": {}}}
    head = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    prefix = tokenizer.apply_chat_template(head, tokenize=True, add_generation_prompt=False, return_dict=False, **kw)
    full = tokenizer.apply_chat_template(
        head + tool_messages(results), tokenize=True, add_generation_prompt=True, return_dict=False, **kw
    )
    eos = tokenizer.eos_token_id
    cut = [i for i, t in enumerate(prefix) if t == eos]
    if cut:
        prefix = prefix[: cut[-1] + 1]
    if list(full[: len(prefix)]) != list(prefix):
        raise ValueError(
            "the chat template renders an assistant turn differently when tool messages follow it, so tool results "
            "cannot be appended to a generated turn; use a template that renders earlier turns unchanged"
        )
    return list(full[len(prefix) :])
