"""``aha chat``: talk to a model, its thought streamed dimmed and its answer plainly."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.text import Text

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


class ReasoningPrinter:
    """Prints streamed text: thought (inside ``<think>``/``<reasoning>``) dimmed, the rest plainly.

    A chunk ending in what may be the start of a tag is held back until the tag is complete.
    """

    def __init__(self, console: Console, in_thought: bool = False) -> None:
        self.console, self.in_thought = console, in_thought
        self.buf, self.text = "", ""

    def _emit(self, s: str, dim: bool | None = None) -> None:
        if s:
            style = "dim" if (self.in_thought if dim is None else dim) else ""
            self.console.print(Text(s, style=style), end="", soft_wrap=True)

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


def _streamer(tokenizer, printer: ReasoningPrinter):
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            printer.feed(text)

    return _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def reply(model, tok, messages: list[dict[str, str]], args: argparse.Namespace, console: Console) -> str:
    """Generate and stream one assistant turn; returns the completion text."""
    import torch

    from aha.data.prompts import eos_ids

    if tok.chat_template is not None:
        prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:  # a base model: plain text
        prompt = "\n\n".join(m["content"] for m in messages) + "\n"
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    prefilled = prompt.rstrip().endswith(OPEN_TAGS)
    printer = ReasoningPrinter(console, in_thought=prefilled)
    if prefilled:
        printer._emit(next(t for t in OPEN_TAGS if prompt.rstrip().endswith(t)), dim=True)  # the template's tag
    eos = eos_ids(tok, model)
    sampling = {"do_sample": True, "temperature": args.temperature, "top_p": args.top_p, "top_k": 0}
    kwargs = sampling if args.temperature > 0 else {"do_sample": False}
    with torch.no_grad():
        model.generate(
            **enc,
            streamer=_streamer(tok, printer),
            max_new_tokens=args.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
            **kwargs,
        )
    printer.finish()
    return printer.text


def _turn(model, tok, history, question, args, console) -> None:
    from aha.data.answers import parse_reasoning

    history.append({"role": "user", "content": question})
    text = reply(model, tok, history, args, console)
    parsed = parse_reasoning(text)
    # Later turns see only the answer, not the thought (as R1-style models are meant to be prompted).
    history.append({"role": "assistant", "content": parsed.answer})


def run(args: argparse.Namespace) -> int:
    import torch

    from aha.models.loading import load_model

    if args.temperature < 0 or args.max_new_tokens < 1:
        raise ValueError("--temperature must be >= 0 and --max-new-tokens at least 1")
    model, tok = load_model(args.model)
    torch.manual_seed(args.seed)
    console = Console(highlight=False)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    if args.question is not None:
        _turn(model, tok, history, args.question, args, console)
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
            _turn(model, tok, history, question, args, console)
    return 0
