"""The pairwise submission (D3PO rounds): which image of each noise-sharing pair is better, or no preference.

Body of ``POST /api/submit-pairs``::

    {"round": r, "winners": [[winner, loser], ...], "ties": [[i, j], ...]}

Every pair the round shows must be answered exactly once, as a winner/loser or as a tie. Why every pair: one
image judged is one feedback, and the log counts a submitted round as all its images judged, so a round with
pairs left unanswered would be counted as feedback the person never gave. "No preference" is always available,
so answering every pair never forces a choice the person did not make (a tie teaches D3PO nothing and is not
stored as a pair).

Malformed bodies (wrong fields, non-integer ids, booleans as ids, integers beyond ±``MAX_JSON_INT``) are 400;
a pair that is not one of the round's (unknown or out-of-range ids, an image against itself), a pair answered
twice and a pair left unanswered are 422. The checks here are pure; the session applies them under its lock
before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["MAX_JSON_INT", "SubmitError", "check_pairs", "is_json_int", "parse_pairs_submission"]

# Rounds and image ids are small; a bound here keeps 2**63 and beyond away from SQLite (OverflowError) and lists.
MAX_JSON_INT = 2**31 - 1
_FIELDS = {"round", "winners", "ties"}
Pair = tuple[int, int]


class SubmitError(Exception):
    """A rejected submission (good/best or pairwise): the HTTP status and a message meant for the person."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def is_json_int(x: Any) -> bool:
    """Whether ``x`` is an integer the API accepts: within ±MAX_JSON_INT, and not a boolean (true is not image 1)."""
    return isinstance(x, int) and not isinstance(x, bool) and -MAX_JSON_INT <= x <= MAX_JSON_INT


def _pair_list(value: Any, name: str) -> list[Pair]:
    if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(is_json_int(i) for i in p) for p in value):
        raise SubmitError(400, f"{name} must be a list of [image, image] pairs of integers (|id| ≤ {MAX_JSON_INT})")
    return [(p[0], p[1]) for p in value]


def parse_pairs_submission(payload: Any) -> tuple[int, list[Pair], list[Pair]]:
    """(round, winners as (winner, loser), ties) from the request's JSON, or SubmitError 400 when malformed."""
    if not isinstance(payload, dict):
        raise SubmitError(400, "the body must be a JSON object {round, winners, ties}")
    if set(payload) != _FIELDS:
        extra, missing = sorted(set(payload) - _FIELDS), sorted(_FIELDS - set(payload))
        raise SubmitError(400, "expected exactly the fields round, winners, ties "
                              f"(missing: {missing}, unknown: {extra})")
    rnd = payload["round"]
    if not is_json_int(rnd):
        raise SubmitError(400, f"round must be an integer (|round| ≤ {MAX_JSON_INT}), got {str(rnd)[:40]}")
    return rnd, _pair_list(payload["winners"], "winners"), _pair_list(payload["ties"], "ties")


def check_pairs(shown: Sequence[Pair], winners: list[Pair], ties: list[Pair]) -> list[Pair]:
    """The sorted (winner, loser) list when winners and ties answer each shown pair exactly once; else 422."""
    known = {frozenset(p): tuple(p) for p in shown}
    answered: set[frozenset] = set()
    for i, j in [*winners, *ties]:
        key = frozenset((i, j))
        if key not in known:
            raise SubmitError(422, f"({i}, {j}) is not one of this round's pairs "
                                  f"({', '.join(f'{a}/{b}' for a, b in shown)})")
        if key in answered:
            raise SubmitError(422, f"the pair {known[key][0]}/{known[key][1]} is answered twice")
        answered.add(key)
    missing = [p for key, p in known.items() if key not in answered]
    if missing:
        a, b = missing[0]
        raise SubmitError(422, f"{len(missing)} pair(s) not answered, e.g. {a}/{b}: choose the better image "
                              "or no preference for every pair")
    return sorted(winners)
