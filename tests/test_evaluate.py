"""Why `hero eval` says images were rejected: the judge's components, binding without repeating count."""

from __future__ import annotations

from hero.evaluate import failed_components
from hero.toyworld import parse_task, verdict
from hero.toyworld.judge import Analysis, Component


def _seen(*objects: tuple[str, str]) -> Analysis:
    """What the judge would see: these (colour, shape) objects, on white, cleanly drawn."""
    comps = tuple(Component(colour, shape, 40, (0, 8 * i, 6, 8 * i + 6)) for i, (colour, shape) in enumerate(objects))
    return Analysis("white", comps, 0, 0.0)


def test_a_wrong_count_is_not_also_reported_as_binding():
    four = verdict(_seen(*[("green", "triangle")] * 4), parse_task("three green triangles"))
    assert not four.binding and not four.count  # the judge's own check fails both
    assert failed_components(four) == {"count"}


def test_swapped_attributes_are_reported_as_binding():
    task = parse_task("one red circle and one blue square")
    swapped = verdict(_seen(("red", "square"), ("blue", "circle")), task)
    assert swapped.colour and swapped.shape and swapped.count and not swapped.good
    assert failed_components(swapped) == {"binding"}
    assert failed_components(verdict(_seen(("red", "circle"), ("blue", "square")), task)) == set()
