"""``aha chat``: talk to a model, its thought shown dimmed and its answer plainly.

The replies come from aha's own sampler (:func:`aha.rollout.engine.stream_completion`, the fast decoder where the
model allows it), the one training and ``aha eval`` sample with, so a chat shows what they see; each reply is
printed as its tokens are drawn (the sampler's per-token hook). With ``--tool`` the model may call tools: each call
and its result are shown (``→ calculator({...})``, ``← 42``) and the model goes on from the result, as in training
(:mod:`aha.tools.calls`). Heavy libraries (torch, transformers) are imported in :func:`run`, so ``aha chat --help``
is quick.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from aha.cli import add_dtype_option

if TYPE_CHECKING:
    from rich.console import Console

NAME = "chat"
OPEN_TAGS = ("<think>", "<reasoning>")
CLOSE_TAGS = ("</think>", "</reasoning>")
TAGS = OPEN_TAGS + CLOSE_TAGS + ("<answer>", "</answer>")
EXIT_WORDS = {"exit", "quit", ":q"}


def add_parser(sub) -> None:
    p = sub.add_parser(
        NAME,
        help="chat with a model: one question, or an interactive loop",
        description="Ask a model (directory, run directory, LoRA adapter or Hub id) one QUESTION, or, without one, "
        "chat line by line from standard input until end of input or 'exit'. The thought is shown dimmed, "
        "the answer plainly.",
    )
    p.add_argument("question", nargs="?", default=None, help="the question (omit it for an interactive loop)")
    p.add_argument("--model", required=True, help="model directory, run directory, adapter directory or Hub id")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature, 0 = greedy (default: 0.6)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=1024, help="completion token limit (default: 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--tool",
        action="append",
        default=None,
        metavar="TOOL",
        help="a tool the model may call: calculator, python or file.py:function (repeat for several); its calls "
        "and results are shown",
    )
    p.add_argument(
        "--max-tool-calls", type=int, default=5, help="rounds of tool calls per answer, with --tool (default: 5)"
    )
    add_dtype_option(p)


class ReasoningPrinter:
    """Prints streamed text: thought (inside ``<think>``/``<reasoning>``) dimmed, the rest plainly.

    A chunk ending in what may be the start of a tag is held back until the tag is complete.
    """

    def __init__(self, console: Console, in_thought: bool = False) -> None:
        self.console, self.in_thought = console, in_thought
        self.buf, self.text = "", ""

    def _emit(self, s: str, dim: bool | None = None) -> None:
        from rich.text import Text

        if s:
            style = "dim" if (self.in_thought if dim is None else dim) else ""
            self.console.print(Text(s, style=style), end="", soft_wrap=True)

    def show_tag(self, tag: str) -> None:
        """Print `tag` dimmed without it counting as text (a tag the prompt's template already opened)."""
        self._emit(tag, dim=True)

    def feed(self, chunk: str) -> None:
        self.text += chunk
        self.buf += chunk
        self._drain(final=False)

    def finish(self) -> None:
        self._drain(final=True)
        self.console.print()

    def _drain(self, final: bool) -> None:
        while self.buf:
            i = self.buf.find("<")
            if i != 0:
                head, self.buf = (self.buf, "") if i < 0 else (self.buf[:i], self.buf[i:])
                self._emit(head)
                continue
            tag = next((t for t in TAGS if self.buf.startswith(t)), None)
            if tag is None:
                if not final and any(t.startswith(self.buf) for t in TAGS):
                    return  # maybe a tag still arriving
                self._emit("<")
                self.buf = self.buf[1:]
                continue
            if tag in OPEN_TAGS:
                self.in_thought = True
            self._emit(tag, dim=True)
            if tag in CLOSE_TAGS:
                self.in_thought = False
            self.buf = self.buf[len(tag) :]


def reply(model, tok, messages: list[dict[str, str]], args: argparse.Namespace, console: Console, seed: int) -> str:
    """Sample one assistant turn with aha's sampler (seeded `seed`), printing it as its tokens are drawn; returns
    the completion text."""
    from aha.rollout.engine import stream_completion
    from aha.rollout.sampler import SamplingParams

    if tok.chat_template is not None:
        prompt: str | list[dict[str, str]] = messages
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model: plain text
        prompt = rendered = "\n\n".join(m["content"] for m in messages) + "\n"
    prefilled = rendered.rstrip().endswith(OPEN_TAGS)
    printer = ReasoningPrinter(console, in_thought=prefilled)
    if prefilled:
        printer.show_tag(next(t for t in OPEN_TAGS if rendered.rstrip().endswith(t)))  # the template's own tag
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    text, _, _ = stream_completion(model, tok, prompt, params, printer.feed, seed=seed)
    printer.finish()
    return text


def tool_reply(model, tok, messages, args, console: Console, seed: int, toolbox) -> str:
    """One answer with tools: each assistant turn streamed; its calls run by `toolbox` and shown (``→ name(args)``
    then ``← result``, red when it failed), the results appended in the template's tokens, and the model goes on,
    for at most ``--max-tool-calls`` rounds. Returns the last turn's text."""
    import json

    from rich.text import Text

    from aha.rollout.engine import stream_completion
    from aha.rollout.sampler import SamplingParams
    from aha.tools.calls import detect_format, parse_turn, render_tool_prompt, tool_suffix_ids
    from aha.tools.toolbox import ToolResult

    fmt = detect_format(tok)
    text = render_tool_prompt(tok, messages, toolbox.schemas)
    budget = args.max_new_tokens
    for rnd in range(args.max_tool_calls + 1):
        printer = ReasoningPrinter(console)
        params = SamplingParams(max_new_tokens=budget, temperature=args.temperature, top_p=args.top_p)
        turn, n, cut = stream_completion(model, tok, text, params, printer.feed, seed=seed + 7919 * rnd)
        printer.finish()
        budget -= n
        parsed = parse_turn(turn, fmt)
        if cut or not (parsed.calls or parsed.errors) or rnd == args.max_tool_calls or budget <= 0:
            return turn
        results = list(toolbox.call_many(parsed.calls))
        results += [ToolResult("unknown", f"Error: {e}", True) for e in parsed.errors]
        for call, result in zip([*parsed.calls, *[None] * len(parsed.errors)], results):
            shown = f"{call.name}({json.dumps(call.arguments)})" if call is not None else "malformed call"
            console.print(Text(f"→ {shown}", style="cyan"))
            console.print(Text(f"← {result.content}", style="red" if result.error else "cyan"))
        suffix = tool_suffix_ids(tok, results)
        text += turn + tok.eos_token + tok.decode(suffix)
        budget -= len(suffix)
    return turn


def _turn(model, tok, history, question, args, console, turn: int, toolbox=None) -> None:
    from aha.data.answers import parse_reasoning

    history.append({"role": "user", "content": question})
    seed = args.seed + turn  # each turn draws fresh numbers
    if toolbox is not None:
        text = tool_reply(model, tok, history, args, console, seed, toolbox)
    else:
        text = reply(model, tok, history, args, console, seed=seed)
    parsed = parse_reasoning(text)
    # Later turns see only the answer, not the thought (as R1-style models are meant to be prompted).
    history.append({"role": "assistant", "content": parsed.answer})


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from aha.workflows.inference import load_for_inference

    if args.temperature < 0 or args.max_new_tokens < 1:
        raise ValueError("--temperature must be >= 0 and --max-new-tokens at least 1")
    if not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.max_tool_calls < 0:
        raise ValueError(f"--max-tool-calls must be >= 0, got {args.max_tool_calls}")
    toolbox = None
    if args.tool:
        from aha.tools import Toolbox, resolve_tools

        toolbox = Toolbox(resolve_tools(args.tool))
    model, tok = load_for_inference(args.model, args.dtype)
    if toolbox is not None and tok.chat_template is None:
        raise ValueError(f"--tool: {args.model} has no chat template to render the tools and their results")
    console = Console(highlight=False)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    turn = 0
    if args.question is not None:
        _turn(model, tok, history, args.question, args, console, turn, toolbox)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        console.print("[dim]type a question; 'exit' or Ctrl-D to leave[/dim]")
    while True:
        if interactive:
            console.print("[bold]>[/bold] ", end="")
        line = sys.stdin.readline()
        if not line:
            break
        question = line.strip()
        if question.lower() in EXIT_WORDS:
            break
        if question:
            _turn(model, tok, history, question, args, console, turn, toolbox)
            turn += 1
    return 0
