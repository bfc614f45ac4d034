"""Prompt sets: the prompts a run fine-tunes on, read from a file, and which prompt each image of a round gets.

A file holds one prompt per line, or JSON Lines: ``{"prompt": "three red circles", "hidden_background":
"black"}`` with the simulated human's task options for that prompt (``TaskOptions``). Blank lines and lines
starting with ``#`` are skipped. ``--prompt TEXT`` is a set of one.

Every error is one line naming the file and the line: an empty file, an unknown option, a duplicated prompt.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

__all__ = ["MIXES", "PromptFileError", "PromptSpec", "TaskOptions", "group_slices", "read_prompt_file",
           "round_prompts"]

MIXES = ("even", "random")
Mix = Literal["even", "random"]


class PromptFileError(ValueError):
    """A prompt file that cannot be used, told in one line naming the file and the line."""


class TaskOptions(BaseModel):
    """What the simulated human wants beyond the prompt (toy world): a hidden background, a forbidden colour."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), coerce_numbers_to_str=True)

    hidden_background: str | None = None
    forbidden_colour: str | None = None

    @field_validator("hidden_background", "forbidden_colour")
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        from hero.toyworld.scenes import BACKGROUNDS, COLOURS  # lazy: only a task option needs the toy world
        allowed = BACKGROUNDS if info.field_name == "hidden_background" else COLOURS
        if v is not None and v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)} or null")
        return v


class PromptSpec(TaskOptions):
    """One prompt of a set, with the simulated human's task options for it (unset: the run's ``task`` section)."""

    prompt: str = Field(min_length=1)

    @field_validator("prompt")
    @classmethod
    def _stripped(cls, v: str) -> str:
        v = " ".join(v.split())
        if not v:
            raise ValueError("is empty")
        return v

    def task_options(self, defaults: dict[str, str] | None = None) -> dict[str, str]:
        """Keywords for ``parse_task``: this prompt's options over the run's ``defaults``."""
        return {**(defaults or {}), **self.model_dump(exclude_none=True, exclude={"prompt"})}


def read_prompt_file(path: str | Path, check: Callable[[PromptSpec], object] | None = None) -> list[PromptSpec]:
    """The prompts of ``path`` (plain lines or JSON Lines, one prompt each), in file order.

    Args:
        path: the file.
        check: called on each prompt; a ``ValueError`` it raises becomes the line's error (e.g. the toy world's
            judge cannot parse the prompt).
    Raises ``PromptFileError`` (one line, naming the file and line) for an unreadable or empty file, a line that
    is not a prompt or a JSON object, an unknown option, a prompt given twice, or one that ``check`` rejects.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PromptFileError(f"{path}: cannot be read ({e.__class__.__name__}: {e})") from None
    specs: list[PromptSpec] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec = _parse_line(path, number, line)
        if spec.prompt in first_line:
            raise PromptFileError(f"{path}:{number}: {spec.prompt!r} is also on line {first_line[spec.prompt]}: "
                                  "give each prompt once (the mix setting decides how often each is sampled)")
        first_line[spec.prompt] = number
        try:
            if check is not None:
                check(spec)
        except ValueError as e:
            raise PromptFileError(f"{path}:{number}: {e}") from None
        specs.append(spec)
    if not specs:
        raise PromptFileError(f"{path}: holds no prompt (one per line, or JSON Lines with a \"prompt\" key)")
    return specs


def _parse_line(path: Path, number: int, line: str) -> PromptSpec:
    data: object = {"prompt": line}
    if line.startswith(("{", "[")):  # JSON Lines (a list is an error, not a prompt)
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}:{number}: not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(data, dict):
        raise PromptFileError(f"{path}:{number}: expected a JSON object with a \"prompt\" key")
    try:
        return PromptSpec.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "prompt"
        if err["type"] == "extra_forbidden":
            known = ", ".join(PromptSpec.model_fields)
            raise PromptFileError(f"{path}:{number}: unknown option {key!r} (known: {known})") from None
        raise PromptFileError(f"{path}:{number}: bad value for {key!r}: {err['msg']}") from None


def round_prompts(prompts: list[str], n: int, round_index: int, mix: Mix, seed: int) -> list[str]:
    """The prompt of each of round ``round_index``'s ``n`` images, grouped: all of a prompt's images together, the
    groups in set order (the page shows them so, and a resumed round gets the same list).

    ``even``: the set's prompts taken in turn, continuing from where the last round stopped, so counts differ by at
    most one within a round and even out over rounds. ``random``: each image draws a prompt uniformly (a generator
    seeded by (seed, round)).
    """
    if len(prompts) == 1:
        return [prompts[0]] * n
    if mix == "even":
        picks = [(round_index * n + i) % len(prompts) for i in range(n)]
    elif mix == "random":
        # The round generators' formula (hero.algorithms.base.round_generator) with a stream of its own, 7.
        g = torch.Generator().manual_seed(seed * 1_000_003 + round_index * 101 + 7)
        picks = torch.randint(len(prompts), (n,), generator=g).tolist()
    else:
        raise ValueError(f"unknown prompt mix {mix!r}: expected one of {', '.join(MIXES)}")
    return [prompts[i] for i in sorted(picks)]


def group_slices(prompts: list[str]) -> list[tuple[str, slice]]:
    """The runs of equal prompts in a round's list, as (prompt, slice), in order; a prompt appears in one run."""
    out: list[tuple[str, slice]] = []
    start = 0
    for i in range(1, len(prompts) + 1):
        if i == len(prompts) or prompts[i] != prompts[start]:
            out.append((prompts[start], slice(start, i)))
            start = i
    counts = Counter(p for p, _ in out)
    if any(c > 1 for c in counts.values()):
        raise ValueError("a round's images must be grouped by prompt (each prompt's images together)")
    return out
