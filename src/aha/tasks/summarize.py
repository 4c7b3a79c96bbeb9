"""Summarize: short generated news stories to summarize, rewarded by length (an offline smoltldr).

The course's smoltldr exercise trains with ``reward = -abs(ideal_length - len(completion))``: there is no
reference answer, only a length to aim at. Here a document is a few templated sentences about a local
event; rows carry ``prompt`` and a ``target_length`` column (the task's ``ideal_length``, in characters, as
``len`` on text, like the course's reward). There is no ground truth, so the ``answer`` column holds the ideal
length as a string (what :meth:`Summarize.is_correct` compares against, so the evaluation harness works
unchanged): a summary is "correct" when its length is within ``tolerance`` characters of it.

The column is not called ``ideal_length``: the trainer passes every column to the rewards as a keyword argument,
so a column of that name would override the ``length`` reward's own ``ideal_length`` parameter (a recipe
refuses that clash); with ``target_length`` the recipe's reward parameter says what is rewarded, and
:func:`length_reward` here reads the column.

The summary is the ``<answer>…</answer>`` content when there is one, else the whole completion (which
is exactly the course's reward for completions without tags). The SFT trace lists the key facts in
``<think>`` and gives, in ``<answer>``, the templated summary whose length is closest to the ideal.
"""

from __future__ import annotations

import random
import string
from typing import Any

from aha.data.answers import extract_answer
from aha.data.prompts import completion_text
from aha.tasks.base import Task, task_row

TOWNS = ["Millbrook", "Ashford", "Lakeside", "Greenvale", "Stonebridge", "Riverton", "Oakhurst"]
EVENTS = ["spring fair", "book sale", "charity run", "food festival", "art show", "music night"]
NAMES = ["Anna Ruiz", "Ben Okafor", "Clara Jensen", "David Cho", "Elena Petrova", "Farid Haddad"]
ROLES = ["teacher", "baker", "librarian", "nurse", "shop owner", "retired engineer"]
CAUSES = ["school library", "animal shelter", "new playground", "food bank", "community garden"]
DAYS = ["Saturday", "Sunday", "Friday evening", "weekend"]
VENUES = ["town hall", "riverside park", "old market square", "sports centre"]

# The first sentence always opens the document; a random, ordered subset of the others follows.
OPENING = "Last {day}, {town} held its annual {event}."
SENTENCES = [
    "The {event} was organised by {name}, a local {role}.",
    "About {count} people came, more than the organisers had expected.",
    "Volunteers set up stalls along the main street early in the morning.",
    "{name} said the day raised {money} dollars for the {cause}.",
    "Rain threatened in the afternoon, but the sky stayed clear.",
    "Children took part in a drawing contest, and the winners received books.",
    "The mayor thanked everyone who had helped.",
    "Next year the {event} will move to the {venue}.",
]
# Summaries of increasing length, each with the facts the document must state for it to be used
# ("role" stands for the sentence naming the organiser).
SUMMARIES: list[tuple[str, set[str]]] = [
    ("{town} held its {event}.", set()),
    ("{town}'s {event} drew {count} people.", {"count"}),
    ("{town}'s {event} will move to the {venue} next year.", {"venue"}),
    ("{town}'s {event} raised {money} dollars for the {cause}.", {"money"}),
    ("{town}'s {event}, run by {name}, drew {count} people.", {"role", "count"}),
    ("{town}'s {event} drew {count} people and raised {money} dollars.", {"count", "money"}),
    (
        "{town}'s {event}, organised by {name}, drew about {count} people and raised {money} dollars for the {cause}.",
        {"role", "count", "money"},
    ),
]


def summary_text(completion: Any) -> str:
    """What is measured: the last ``<answer>`` content when there is one, else the whole completion."""
    text = completion_text(completion)
    got = extract_answer(text)
    return text if got is None else got


def length_reward(completions: list[Any], target_length: list[Any], **kwargs: Any) -> list[float]:
    """The course's length reward, per row: ``-abs(target_length - len(summary))`` (characters)."""
    return [-float(abs(int(ideal) - len(summary_text(c)))) for c, ideal in zip(completions, target_length)]


class Summarize(Task):
    name = "summarize"
    description = "smoltldr-like: summarize generated short stories; length reward (ideal_length chars), no reference"
    # The summary is the whole reply (as the course's reward measures it), so the format is: nothing else.
    default_instruction = "Reply with the summary only."

    def __init__(
        self,
        ideal_length: int = 50,
        tolerance: int = 10,
        min_sentences: int = 3,
        max_sentences: int = 6,
        eval_fraction: float = 0.1,
        instruction: bool | str = True,
    ) -> None:
        if not isinstance(ideal_length, int) or isinstance(ideal_length, bool) or not 1 <= ideal_length <= 10_000:
            raise ValueError(f"summarize: ideal_length must be an integer from 1 to 10000, got {ideal_length!r}")
        if not isinstance(tolerance, int) or isinstance(tolerance, bool) or tolerance < 0:
            raise ValueError(f"summarize: tolerance must be a non-negative integer, got {tolerance!r}")
        most = len(SENTENCES) + 1
        if not isinstance(max_sentences, int) or isinstance(max_sentences, bool) or not 1 <= max_sentences <= most:
            raise ValueError(f"summarize: max_sentences must be an integer from 1 to {most}, got {max_sentences!r}")
        if (
            not isinstance(min_sentences, int)
            or isinstance(min_sentences, bool)
            or not 1 <= min_sentences <= max_sentences
        ):
            raise ValueError(
                f"summarize: min_sentences must be an integer from 1 to max_sentences ({max_sentences}), "
                f"got {min_sentences!r}"
            )
        if not isinstance(eval_fraction, (int, float)) or not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"summarize: eval_fraction must be in (0, 1), got {eval_fraction!r}")
        self.ideal_length, self.tolerance = ideal_length, tolerance
        self.min_sentences, self.max_sentences = min_sentences, max_sentences
        self.eval_fraction = float(eval_fraction)
        self.set_instruction(instruction)

    def _document(self, rng: random.Random) -> tuple[str, dict[str, Any]]:
        facts = {
            "town": rng.choice(TOWNS),
            "event": rng.choice(EVENTS),
            "name": rng.choice(NAMES),
            "role": rng.choice(ROLES),
            "cause": rng.choice(CAUSES),
            "day": rng.choice(DAYS),
            "venue": rng.choice(VENUES),
            "count": rng.randrange(50, 2000, 10),
            "money": rng.randrange(200, 20_000, 50),
        }
        k = rng.randint(self.min_sentences, self.max_sentences) - 1
        chosen = sorted(rng.sample(range(len(SENTENCES)), k))
        templates = [OPENING, *(SENTENCES[i] for i in chosen)]
        facts["stated"] = {f for t in templates for _, f, _, _ in string.Formatter().parse(t) if f}
        return " ".join(t.format(**facts) for t in templates), facts

    def _trace(self, facts: dict[str, Any]) -> str:
        """Key facts in <think>, then the summary closest to the ideal length; both use only facts the
        document states (a trace must not teach the model to invent details)."""
        stated = facts["stated"]
        candidates = [s.format(**facts) for s, needs in SUMMARIES if needs <= stated]
        best = min(candidates, key=lambda s: abs(len(s) - self.ideal_length))
        notes = [f"the {facts['event']} in {facts['town']}"]
        notes += [f"run by {facts['name']}"] * ("role" in stated) + [f"{facts['count']} people"] * ("count" in stated)
        if "money" in stated:
            notes.append(f"{facts['money']} dollars for the {facts['cause']}")
        if "venue" in stated:
            notes.append(f"moving to the {facts['venue']}")
        thought = f"Key facts: {'; '.join(notes)}. Aim for about {self.ideal_length} characters."
        return f"<think>{thought}</think><answer>{best}</answer>"

    def rows(self, split: str, n: int, seed: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []

        def draw(rng: random.Random) -> tuple[str, tuple[str, dict[str, Any]]]:
            doc, facts = self._document(rng)
            return doc, (doc, facts)

        for _, (doc, facts) in self.draws(split, n, seed, draw):
            question = self.ask(f"Summarize the following text.\n\n{doc}")
            trace = self._trace(facts) if split == "sft" else None
            out.append(task_row(question, str(self.ideal_length), trace, target_length=self.ideal_length))
        return out

    def is_correct(self, completion: str, answer: str, **columns: Any) -> bool:
        """Is the summary's length within ``tolerance`` characters of the ideal length (`answer`)?"""
        try:
            ideal = int(str(answer).strip())
        except ValueError:
            raise ValueError(f"summarize: the answer must be the ideal length (an integer), got {answer!r}") from None
        return abs(len(summary_text(completion)) - ideal) <= self.tolerance

    def reward_columns(self) -> list[str]:
        return ["target_length"]
