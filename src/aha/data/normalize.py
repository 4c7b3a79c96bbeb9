"""Final answers out of reference solutions: GSM8K's ``#### 72`` and MATH's ``\\boxed{…}``.

>>> gsm8k_answer("48/2 = <<48/2=24>>24\\n#### 1,234")
'1234'
>>> boxed_answer(r"so $x = \\boxed{\\frac{1}{2}}$.")
'\\\\frac{1}{2}'
"""

from __future__ import annotations

import re

_NUMBER_RE = re.compile(r"^[-+]?\d+(?:\.\d+)?$")
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")


def normalize_number(text: str) -> str:
    """A number as written by people, canonical: ``"$1,234.00"`` -> ``"1234"``, ``"-0.50"`` -> ``"-0.5"``,
    ``"+7"`` -> ``"7"``. Text that is not a plain number comes back stripped but otherwise unchanged."""
    s = text.strip()
    t = s.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    if not _NUMBER_RE.match(t):
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
