"""Answers: a completion's thought and final answer, and the final answers of reference solutions.

Splitting a reasoning model's completion into its thought and its answer.

``parse_reasoning(text)`` understands the shapes a completion takes in practice:

* ``<think>…</think>`` followed by free text (DeepSeek-R1, Qwen3) or by ``<answer>…</answer>``;
* the course's ``<reasoning>…</reasoning><answer>…</answer>`` style;
* a thought cut off by the token limit (no closing tag): everything after the opening tag is thought,
  the answer is empty and ``truncated`` is True;
* a ``<think>`` prefilled by the chat template: the completion starts inside the thought, so it holds a
  ``</think>`` with no opening tag; the text before it is the thought;
* several thought blocks: their contents are joined (blank line between) and the answer is what follows
  the last one;
* no tags at all: no thought, and the whole (stripped) text is the answer.

The answer is the content of the last closed ``<answer>…</answer>`` after the last thought when there is
one; else of an unclosed trailing ``<answer>`` (truncated); else the free text after the last thought.

``format_ok`` is True when the completion is exactly one closed thought block (opened by the text or by
the chat template) with nothing but whitespace before it, followed by a non-empty answer: either a
single ``<answer>…</answer>`` with nothing but whitespace after it, or free text with no answer tags.
An empty thought (``<think></think>``, Qwen3's non-thinking mode) is allowed, as the format reward allows it.

Final answers, one function per source, the same for training rewards, tasks, the data loader and the evaluator:

* a completion's ``<answer>…</answer>`` block: :func:`extract_answer`;
* a completion's final answer in whichever format it is written (:func:`final_answer`, what the built-in tasks and
  the correctness reward read): a closed ``<answer>`` block wins, then ``\\boxed{}``, then a final ``#### N`` line,
  then a final "The answer is N" / "Answer: N" (:func:`stated_answer`); :func:`numeric_answer` reads a number in it;
* a completion's answer for grading in a format (:func:`completion_answer`): ``auto`` :func:`final_answer`;
  ``tag`` the ``<answer>`` block;
  ``gsm8k`` the last number of the answer part (its ``\\boxed{}``, else its ``####`` tail, else all of it);
  ``math`` the answer part's last ``\\boxed{}``, else the answer part itself;
* a reference solution's answer (:func:`reference_answer`): ``gsm8k`` its ``#### 72`` line, or the whole text
  when it is a plain number; ``math`` its last ``\\boxed{…}``, or the whole text when it has no ``\\boxed``
  (:func:`detect_answer_format` picks the format of a column of them);
* numbers compare as canonical strings (:func:`normalize_number`): ``$1,234.00`` and ``1234`` are the same answer.

>>> gsm8k_answer("48/2 = <<48/2=24>>24\\n#### 1,234")
'1234'
>>> boxed_answer(r"so $x = \\boxed{\\frac{1}{2}}$.")
'\\\\frac{1}{2}'
>>> completion_answer("<think>3*24=72</think>The answer is $1,072.", "gsm8k")
'1072'
>>> final_answer("48/2 = 24 clips in May, 48+24 = 72 in all.\\n#### 72")
'72'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

OPEN_RE = re.compile(r"<(think|reasoning)>")
CLOSE_RE = re.compile(r"</(think|reasoning)>")
ANSWER_BLOCK_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
ANSWER_TAG_RE = re.compile(r"</?answer>")


@dataclass(frozen=True)
class Reasoning:
    """A parsed completion. ``thought`` and ``answer`` are stripped strings (possibly empty)."""

    thought: str
    answer: str
    format_ok: bool
    truncated: bool = False  # the thought or the <answer> block was never closed
    blocks: tuple[str, ...] = ()  # each thought block's content, in order
    prefilled: bool = False  # the text started inside a thought opened by the chat template

    @property
    def has_thought(self) -> bool:
        return bool(self.blocks)


def _split_thoughts(text: str) -> tuple[list[str], str, str, bool, bool]:
    """Returns (blocks, text before the first block, text after the last one, prefilled, truncated)."""
    blocks: list[str] = []
    prefilled = False
    first_close, first_open = CLOSE_RE.search(text), OPEN_RE.search(text)
    pos, before = 0, ""
    if first_close and (first_open is None or first_close.start() < first_open.start()):
        prefilled = True  # the template opened the thought: the text begins inside it
        blocks.append(text[: first_close.start()])
        pos = first_close.end()
    elif first_open is None:
        return [], "", text, False, False
    else:
        before = text[: first_open.start()]
        pos = first_open.start()
    while True:
        opened = OPEN_RE.search(text, pos)
        if opened is None:
            return blocks, before, text[pos:], prefilled, False
        between = text[pos : opened.start()]
        if blocks and between.strip():
            before += between  # stray text between two thoughts: neither thought nor final answer
        closed = CLOSE_RE.search(text, opened.end())
        if closed is None:  # cut off inside the thought
            blocks.append(text[opened.end() :])
            return blocks, before, "", prefilled, True
        blocks.append(text[opened.end() : closed.start()])
        pos = closed.end()


def parse_reasoning(text: str, prefilled: bool | None = None) -> Reasoning:
    """Parse a completion into thought, answer and whether it is well formatted (see the module doc).

    `prefilled` says whether the chat template opened the thought: None accepts both forms; False makes a
    completion that closes a thought it never opened not ``format_ok`` (it is parsed the same way); True
    reads a completion with no tags at all as a thought cut off before ``</think>``.
    """
    added = bool(prefilled and not OPEN_RE.search(text) and not CLOSE_RE.search(text))
    if added:
        text = "<think>" + text
    blocks, before, after, started_inside, truncated = _split_thoughts(text)
    thought = "\n\n".join(b.strip() for b in blocks if b.strip())
    answers = ANSWER_BLOCK_RE.findall(after)
    rest_ok = False
    if answers:
        answer = answers[-1].strip()
        last = list(ANSWER_BLOCK_RE.finditer(after))[-1]
        rest_ok = len(answers) == 1 and not after[: last.start()].strip() and not after[last.end() :].strip()
    elif "<answer>" in after:  # opened, never closed: the output was cut off
        answer = after.split("<answer>")[-1].strip()
        truncated = True
    else:
        answer = ANSWER_TAG_RE.sub("", after).strip()
        rest_ok = not ANSWER_TAG_RE.search(after)
    format_ok = bool(len(blocks) == 1 and not truncated and not before.strip() and rest_ok and answer) and not (
        started_inside and prefilled is False
    )
    return Reasoning(
        thought=thought,
        answer=answer,
        format_ok=format_ok,
        truncated=truncated,
        blocks=tuple(b.strip() for b in blocks),
        prefilled=started_inside or added,
    )


_PLAIN_NUMBER_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d+)?|\.\d+)$")
# a number as written in running text: thousands groups (1,234) only when every group has three digits, and a
# sign only where it cannot be a minus between two terms (5-3 holds the numbers 5 and 3)
NUMBER_RE = re.compile(r"(?:(?<![\w)\]])[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?:(?<![\w)\]])-)?\.\d+")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")


def normalize_number(text: str) -> str:
    """A number as written by people, canonical: ``"$1,234.00"`` -> ``"1234"``, ``"-0.50"`` -> ``"-0.5"``,
    ``"+7"`` -> ``"7"``, ``".5"`` -> ``"0.5"``. Text that is not a plain number comes back stripped but otherwise
    unchanged."""
    s = text.strip()
    t = s.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not _PLAIN_NUMBER_RE.match(t):
        return s
    sign = "-" if t.startswith("-") else ""
    t = t.lstrip("+-")
    whole, _, frac = t.partition(".")
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    out = whole + (f".{frac}" if frac else "")
    return "0" if out == "0" else sign + out


def gsm8k_answer(text: str) -> str | None:
    """The final answer of a GSM8K solution: the first line after the last ``####``, as a canonical number
    (commas and ``$`` dropped). None when there is no ``####`` or nothing after it."""
    if not isinstance(text, str) or "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip()
    line = tail.splitlines()[0].strip() if tail else ""
    return normalize_number(line) or None


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the brace group opening at text[start] == '{' and the index after it; None if unbalanced.
    Escaped braces (``\\{``, ``\\}``) do not count."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : i], i + 1
        i += 1
    return None


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` (or ``\\fbox{…}``) with balanced, possibly nested braces; also the
    brace-less form ``\\boxed 5``. None when there is none, when the last one is unbalanced (e.g. a
    truncated completion) or empty."""
    if not isinstance(text, str):
        return None
    matches = list(_BOXED_RE.finditer(text))
    if not matches:
        return None
    end = matches[-1].end()
    rest = text[end:]
    stripped = rest.lstrip()
    if stripped.startswith("{"):
        found = _braced(text, end + len(rest) - len(stripped))
        if found is None:
            return None
        content = found[0].strip()
    elif rest[:1].isspace():  # \boxed 5 (old-style): up to the next space, `$` or end
        m = re.match(r"[^\s$]+", stripped)
        content = m.group(0) if m else ""
    else:
        return None
    return content or None


def extract_answer(text: str) -> str | None:
    """The content of the last ``<answer>…</answer>`` block, stripped; None when there is none."""
    found = ANSWER_BLOCK_RE.findall(text)
    return found[-1].strip() if found else None


def is_number(text: str) -> bool:
    """Is `text` a plain number once normalised (``1,234``, ``$72``, ``-0.5``; not ``1/2`` nor ``1e3``)?"""
    return bool(_PLAIN_NUMBER_RE.match(normalize_number(text)))


def last_number(text: str) -> str | None:
    """The last number written in `text`, canonical (``"so 3 apples cost $1,072."`` -> ``"1072"``); None if none."""
    found = NUMBER_RE.findall(text)
    return normalize_number(found[-1]) if found else None


ANSWER_PHRASE_RE = re.compile(r"\b(?:final\s+answer|answer)\s*(?:is\b|:)\s*:?", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
_NUMBER_AND_WORDS_RE = re.compile(
    r"\$?\s*((?:[-+])?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+)(?:\s*[A-Za-z%][A-Za-z% ]*)?"
)


def _clean(value: str) -> str:
    """An answer as written after ``####`` or "the answer is": markdown bold, a closing full stop and a pair of
    ``$…$`` around it dropped (``**$72$**.`` -> ``72``)."""
    value = value.strip().strip("*").strip().rstrip(".").strip()
    if len(value) > 1 and value.startswith("$") and value.endswith("$"):
        value = value[1:-1].strip()
    return value


def stated_answer(part: str) -> str | None:
    """The answer `part` (a completion's text after its thought) states, without ``<answer>`` tags: its last
    ``\\boxed{…}``; else the rest of its line after its last ``####`` when nothing but whitespace follows that line
    (GSM8K's ending; a ``####`` heading followed by more text is not an answer); else the rest of the sentence
    after its last "The (final) answer is" / "Answer:". None when it states none of these."""
    boxed = boxed_answer(part)
    if boxed is not None:
        return boxed
    if "####" in part:
        line, _, rest = part.rsplit("####", 1)[1].lstrip(" \t").partition("\n")
        if _clean(line) and not rest.strip():
            return _clean(line)
    found = list(ANSWER_PHRASE_RE.finditer(part))
    if found:
        value = _SENTENCE_END_RE.split(part[found[-1].end() :].split("\n", 1)[0], maxsplit=1)[0]
        return _clean(value) or None
    return None


def final_answer(text: str, prefilled: bool | None = None) -> str | None:
    """A completion's final answer in any of the formats people use, in this order of precedence:

    1. the last closed ``<answer>…</answer>`` block: its content (or the ``\\boxed{}``/``####``/"the answer is"
       answer inside it, see :func:`stated_answer`); an empty block is no answer;
    2. otherwise the answer part, the text after the last closed thought (all of it when there is no thought),
       read by :func:`stated_answer`: ``\\boxed{…}``, then a final ``#### N``, then "The answer is N" / "Answer: N".

    A thought or ``<answer>`` cut off by the token limit has no answer, and neither has a completion that only
    reasons (no stated answer: the last number of the reasoning is not taken). `prefilled`: see
    :func:`parse_reasoning`. Returns the answer as written (stripped); compare numbers with :func:`numeric_answer`.
    """
    if not isinstance(text, str):
        return None
    block = extract_answer(text)
    if block is not None:
        return (stated_answer(block) or block) or None
    if prefilled and not OPEN_RE.search(text) and not CLOSE_RE.search(text):
        return None  # the template opened the thought and it was never closed
    _, _, after, _, truncated = _split_thoughts(text)
    if truncated or "<answer>" in after:
        return None
    return stated_answer(after)


def numeric_answer(text: str | None) -> str | None:
    """`text` as a canonical number when it is one, possibly with a currency sign or unit words around it
    (``"$1,234.00"``, ``"72 apples"`` -> ``"1234"``, ``"72"``); None otherwise (``"8 5"``, ``"seventy-two"``,
    ``"5, then 7"``)."""
    if text is None:
        return None
    m = _NUMBER_AND_WORDS_RE.fullmatch(text.strip().rstrip(".").strip())
    return normalize_number(m.group(1)) if m else None


ANSWER_FORMATS = ("gsm8k", "math")  # formats of reference solutions (and of the completions graded against them)
COMPLETION_FORMATS = ("auto", "tag", *ANSWER_FORMATS)


def completion_answer(text: str, fmt: str, prefilled: bool | None = None) -> str | None:
    """The final answer of a completion, for grading in format `fmt` (see the module doc); None when it has none.

    ``gsm8k`` and ``math`` read the answer part :func:`parse_reasoning` finds (`prefilled`: see there), so a
    thought cut off by the token limit has no answer, whatever numbers it holds."""
    if fmt == "auto":
        return final_answer(text, prefilled)
    if fmt == "tag":
        return extract_answer(text)
    if fmt not in ANSWER_FORMATS:
        raise ValueError(f"answer format must be one of {', '.join(COMPLETION_FORMATS)}, got {fmt!r}")
    answer = parse_reasoning(text, prefilled).answer
    if not answer:
        return None
    if fmt == "math":
        return boxed_answer(answer) or answer
    tail = answer.rsplit("####", 1)[1] if "####" in answer else None
    for candidate in (boxed_answer(answer), tail, answer):
        number = last_number(candidate) if candidate else None
        if number is not None:
            return number
    return None


def reference_answer(text: str, fmt: str) -> str | None:
    """The final answer of a reference solution in format `fmt` (see the module doc); None when it has none
    (e.g. a GSM8K-style text with neither ``####`` nor a plain number, or an unbalanced ``\\boxed{``)."""
    text = str(text)
    if fmt == "gsm8k":
        if "####" in text:
            return gsm8k_answer(text)
        return normalize_number(text) if is_number(text) else None
    if fmt == "math":
        if _BOXED_RE.search(text):
            return boxed_answer(text)
        return text.strip() or None
    raise ValueError(f"answer format must be one of {', '.join(ANSWER_FORMATS)}, got {fmt!r}")


def detect_answer_format(answers: Sequence[str]) -> str:
    """``gsm8k`` when reference answers carry ``####`` or are all plain numbers, ``math`` otherwise (``\\boxed{}``
    solutions or free-form answers, compared by math-verify)."""
    answers = [str(a) for a in answers]
    if any("####" in a for a in answers):
        return "gsm8k"
    if any(_BOXED_RE.search(a) for a in answers):
        return "math"
    if answers and all(is_number(a) for a in answers):
        return "gsm8k"
    return "math"
