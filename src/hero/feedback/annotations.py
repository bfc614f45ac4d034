"""The annotation file of D3PO's offline workflow: which image of each noise-sharing pair is better.

A sample folder (``hero sample --pairs --out S``) holds ``S/sample.json`` and the images
``S/rounds/round_000/images/0000.png`` ...; images 0000/0001 share a starting noise, so do 0002/0003, and so on.
The annotations are a JSON list, written by ``hero label S`` (as ``S/annotations.json``) or by hand::

    [{"winner": "0003.png", "loser": "0002.png"},
     {"winner": "0000.png", "loser": "0001.png"},
     {"tie": ["0004.png", "0005.png"]}]

An image is named by its file name (a path ending in it, e.g. "rounds/round_000/images/0003.png", works too) or
by its index (3). Each entry compares the two images of one noise-sharing pair, each pair at most once; a pair
not listed was not judged. ``hero export S``'s ``pairs.jsonl`` ({"round": 0, "winner": 3, "loser": 2} per line)
is accepted as well. Why so strict: D3PO's per-step loss compares two trajectories from the *same* z_T, and the
feedback is counted per image judged (each image named once = one feedback, ties included), so a mistyped name,
a pair across noises or a pair given twice would silently train on, or count, something the person never said.
Every problem is one ``ValueError`` line naming the file, the entry and what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from hero.runs.atomic import atomic_write_text
from hero.runs.feedback_log import FeedbackLog

__all__ = ["SAMPLE_META", "Annotations", "comparison_pairs", "find_samples", "image_name", "load_annotations",
           "read_annotations", "read_sample_meta", "write_annotations"]

SAMPLE_META = "sample.json"
_SHAPE = 'expected {"winner": IMAGE, "loser": IMAGE} or {"tie": [IMAGE, IMAGE]}'



def comparison_pairs(n: int) -> list[tuple[int, int]]:
    """The pairs the person compares: images that share a starting noise, (0, 1), (2, 3), ..."""
    return [(i, i + 1) for i in range(0, n - 1, 2)]


def load_annotations(path: str | Path) -> list[tuple[int, int, int]]:
    """(round, winner, loser) from a JSONL of {"round", "winner", "loser", ...} (``hero export``'s pairs.jsonl)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            try:
                r, w, lo = int(rec["round"]), int(rec["winner"]), int(rec["loser"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}:{line_no}: expected integer round, winner and loser, got {rec!r}") from None
            if w == lo or min(r, w, lo) < 0:
                raise ValueError(f"{path}:{line_no}: ({w}, {lo}) is not two distinct images of round {r}")
            out.append((r, w, lo))
    return out


@dataclass(frozen=True)
class Annotations:
    """Validated judgements over one sample folder: (winner, loser) pairs, tied pairs, and the images judged."""

    samples: Path
    meta: dict
    pairs: list[tuple[int, int]]
    ties: list[tuple[int, int]]

    @property
    def feedback(self) -> int:
        """Images judged: both images of every answered pair (one image judged = one feedback)."""
        return 2 * (len(self.pairs) + len(self.ties))


def image_name(i: int) -> str:
    return f"{i:04d}.png"


def read_sample_meta(folder: str | Path) -> dict | None:
    """The folder's ``sample.json`` (written by ``hero sample --pairs``), or None when it is not a sample folder."""
    path = Path(folder) / SAMPLE_META
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def find_samples(path: Path) -> Path:
    """The sample folder an annotation file belongs to: its own folder, or the one above (S/export/pairs.jsonl)."""
    for folder in (path.parent, path.parent.parent):
        if (folder / SAMPLE_META).is_file():
            return folder
    raise ValueError(f"{path}: no {SAMPLE_META} in its folder or the one above: keep the annotation file in the "
                     "folder written by `hero sample --pairs` (or a subfolder of it)")


def read_annotations(path: str | Path) -> Annotations:
    """Read and validate an annotation file (JSON list, or ``hero export``'s pairs.jsonl) against its samples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotations file {path} not found")
    samples = find_samples(path)
    meta = read_sample_meta(samples)
    n = int(meta["n"])
    entries = _entries(path)
    if not entries:
        raise ValueError(f"{path}: no annotations in the file")
    pairs, ties, seen = [], [], {}
    shared = {frozenset(p) for p in comparison_pairs(n)}
    for k, entry in enumerate(entries, 1):
        where = f"{path}: entry {k}"
        a, b, tie = _parse_entry(entry, where, n)
        if a == b:
            raise ValueError(f"{where}: {image_name(a)} is compared with itself")
        key = frozenset((a, b))
        if key not in shared:
            raise ValueError(f"{where}: {image_name(a)} and {image_name(b)} do not share a starting noise (the pairs "
                             f"are {image_name(0)}/{image_name(1)}, {image_name(2)}/{image_name(3)}, ...)")
        if key in seen:
            raise ValueError(f"{where}: the pair {image_name(min(a, b))}/{image_name(max(a, b))} is already "
                             f"judged in entry {seen[key]}")
        seen[key] = k
        (ties if tie else pairs).append((a, b))
    if not pairs:
        raise ValueError(f"{path}: every pair is a tie: nothing to learn from")
    return Annotations(samples, meta, pairs, ties)


def _entries(path: Path) -> list[Any]:
    """The raw entries: a JSON list, or pairs.jsonl lines turned into {"winner", "loser"} (round 0 only)."""
    if path.suffix == ".jsonl":
        try:
            rows = load_annotations(path)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON Lines ({e})") from None
        for r, _, _ in rows:
            if r != 0:
                raise ValueError(f"{path}: round {r}: a sample folder holds round 0 only")
        return [{"winner": w, "loser": lo} for _, w, lo in rows]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of annotations, {_SHAPE}")
    return data


def _parse_entry(entry: Any, where: str, n: int) -> tuple[int, int, bool]:
    """(a, b, is_tie): for a preference a is the winner, b the loser."""
    if isinstance(entry, dict) and set(entry) == {"winner", "loser"}:
        return _image(entry["winner"], where, n), _image(entry["loser"], where, n), False
    if isinstance(entry, dict) and set(entry) == {"tie"} and isinstance(entry["tie"], list) and len(entry["tie"]) == 2:
        return _image(entry["tie"][0], where, n), _image(entry["tie"][1], where, n), True
    raise ValueError(f"{where}: {_SHAPE}, got {json.dumps(entry)[:80]}")


def _image(ref: Any, where: str, n: int) -> int:
    """An image index from a file name ("0003.png", or a path ending in it) or an index (3)."""
    if isinstance(ref, int) and not isinstance(ref, bool) and 0 <= ref < n:
        return ref
    if isinstance(ref, str):
        name = PurePosixPath(ref.replace("\\", "/")).name
        if name.endswith(".png") and name[:-4].isdigit() and int(name[:-4]) < n and name == image_name(int(name[:-4])):
            return int(name[:-4])
    raise ValueError(f"{where}: no image {json.dumps(ref)} in the samples (images {image_name(0)} to "
                     f"{image_name(n - 1)}, or indices 0 to {n - 1})")


def write_annotations(folder: str | Path) -> Path | None:
    """Write ``S/annotations.json`` from the pairwise round 0 in ``S/feedback.sqlite`` (``hero label S``).

    The page asks for every pair, so a pair not in the log is a tie: it is written as one, and the file counts the
    same feedback as the log. Returns the path, or None when round 0 is not judged yet.
    """
    folder = Path(folder)
    if not (folder / "feedback.sqlite").is_file():
        return None
    with FeedbackLog(folder / "feedback.sqlite") as log:
        fb = log.get_round(0)
    if fb is None:
        return None
    won = {frozenset(p) for p in fb.pairs or ()}
    entries = [{"winner": image_name(w), "loser": image_name(lo)} for w, lo in fb.pairs or ()]
    entries += [{"tie": [image_name(i), image_name(j)]} for i, j in comparison_pairs(fb.n_images)
                if frozenset((i, j)) not in won]
    path = folder / "annotations.json"
    atomic_write_text(path, "[\n" + ",\n".join(" " + json.dumps(e) for e in entries) + "\n]\n")
    return path
