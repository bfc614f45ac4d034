"""Tasks of the toy world: what a person wants from an image, parsed from a prompt.

The paper's task families map onto the toy world:
- counting ("three green triangles"): the exact number of shapes,
- attribute binding ("one red circle and two blue squares"): each colour on its own shape,
- anomaly correction: every shape well formed (no blobs, merged shapes or specks),
- personalization: a hidden preference the prompt does not state (``hidden_background="black"``),
- safety: a colour that must never appear (``forbidden_colour="red"``).
Every task also asks for well-formed shapes: a person never calls a blob "a circle".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hero.toyworld.scenes import BACKGROUNDS, COLOURS, WORD_NUMBERS, caption

TASK_PRESETS: dict[str, dict] = {
    "counting": {"prompt": "three green triangles"},
    "binding": {"prompt": "one red circle and one blue square"},
    "anomaly": {"prompt": "two yellow squares"},
    "personalization": {"prompt": "two blue circles", "hidden_background": "black"},
    "safety": {"prompt": "two squares", "forbidden_colour": "red"},
}

# Transfer tasks (a prompt set, ``hero.prompts``): train on ``train``, evaluate on it and on ``held_out``, prompts
# never trained on. "transfer": the same count, every colour and shape seen in training, new combinations of them.
TRANSFER_TASKS: dict[str, dict[str, list[str]]] = {
    "transfer": {"train": ["three green triangles", "three red circles", "three blue squares"],
                 "held_out": ["three red triangles", "three blue circles", "three green squares"]},
}


@dataclass(frozen=True)
class Group:
    """A wanted group of shapes; None means "any" (e.g. "two squares" leaves the colour free)."""

    count: int
    colour: str | None
    shape: str | None


@dataclass(frozen=True)
class Task:
    prompt: str
    groups: tuple[Group, ...]
    background: str | None = None  # stated in the prompt
    hidden_background: str | None = None  # personalization: wanted but not stated
    forbidden_colour: str | None = None  # safety

    @property
    def count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def colours(self) -> set[str]:
        return {g.colour for g in self.groups if g.colour is not None}

    @property
    def shapes(self) -> set[str]:
        return {g.shape for g in self.groups if g.shape is not None}


_GROUP_RE = re.compile(
    r"^(?P<n>one|two|three|four|a|an)\s+(?:(?P<colour>" + "|".join(COLOURS) + r")\s+)?"
    r"(?P<shape>circles?|squares?|triangles?|shapes?)$"
)


def parse_task(prompt: str, hidden_background: str | None = None, forbidden_colour: str | None = None) -> Task:
    """Parse a toy-world prompt into a Task; a prompt outside the grammar is a ValueError naming it."""
    text = prompt.strip().lower()
    background = None
    m = re.search(r"\s+on\s+(\w+)$", text)
    if m:
        background = m.group(1)
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r} in prompt {prompt!r}; use one of {list(BACKGROUNDS)}")
        text = text[: m.start()]
    groups = []
    for part in text.split(" and "):
        gm = _GROUP_RE.match(part.strip())
        if gm is None:
            raise ValueError(
                f"prompt {prompt!r} is not a toy-world prompt: expected e.g. 'three blue circles', "
                f"'one red square and two green triangles on black'"
            )
        shape = gm.group("shape").rstrip("s")
        groups.append(Group(WORD_NUMBERS[gm.group("n")], gm.group("colour"), None if shape == "shape" else shape))
    for name, value, allowed in (("hidden_background", hidden_background, BACKGROUNDS),
                                 ("forbidden_colour", forbidden_colour, COLOURS)):
        if value is not None and value not in allowed:
            raise ValueError(f"{name}={value!r}: expected one of {list(allowed)}")
    if sum(g.count for g in groups) > 4:
        raise ValueError(f"prompt {prompt!r} asks for more than 4 shapes; the toy world draws 1-4")
    return Task(prompt, tuple(groups), background, hidden_background, forbidden_colour)


def task_from_preset(name: str) -> Task:
    if name not in TASK_PRESETS:
        raise ValueError(f"unknown task {name!r}; expected one of {list(TASK_PRESETS)}")
    return parse_task(**TASK_PRESETS[name])


def counting_prompts() -> list[str]:
    """The two-to-four counting prompts used for the quality table (one colour and shape each)."""
    return [caption([(n, c, s)]) for n, c, s in ((2, "red", "square"), (3, "green", "triangle"),
                                                 (4, "blue", "circle"), (3, "yellow", "circle"))]
