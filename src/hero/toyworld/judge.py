"""The judge: a deterministic program that looks at an image and answers what a person answers.

It classifies every pixel against the palette, finds the background from the border, splits the
foreground into connected components and names each component's colour and shape from its row
profile. From that it answers, for a Task: is the colour right, the shape right, the count right, the
background right, is every shape well formed, is the hidden preference met, is the image safe; whether
the image is *good* (all of those), and a graded score in [0, 1] for picking the *best*.

With ``error_rate > 0`` it imitates an inconsistent person: each "good" answer is flipped with that
probability (seeded, so runs reproduce).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from hero.toyworld.scenes import BACKGROUNDS, COLOURS, SHAPES
from hero.toyworld.tasks import Task

PALETTE_NAMES = list(BACKGROUNDS) + list(COLOURS)  # white, black, red, green, blue, yellow
PALETTE = np.array([BACKGROUNDS[n] if n in BACKGROUNDS else COLOURS[n] for n in PALETTE_NAMES], dtype=np.float32)
OTHER = len(PALETTE_NAMES)  # class index for "no palette colour is near"
MAX_PALETTE_DISTANCE = 120.0  # RGB distance beyond which a pixel is "other"
MIN_OBJECT_AREA = 12  # smaller components are specks, not shapes
MAX_STRAY_FRACTION = 0.04  # share of the image that may be off-palette / off-object before it is "not clean"
MIN_TEMPLATE_IOU = 0.7  # a shape is named when it overlaps the ideal shape in its box this much (IoU)
MIN_ASPECT = 0.8  # width/height of a shape's box: squashed or stretched shapes are blobs
CRISP_DISTANCE = 60.0  # pixels further than this from every palette colour are "soft" (blur, smear)
MAX_SOFT_RATIO = 0.5  # soft pixels around a shape, relative to its area, before it counts as smeared


@dataclass(frozen=True)
class Component:
    colour: str
    shape: str  # circle / square / triangle, or "blob" when no shape fits
    area: int
    bbox: tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


@dataclass(frozen=True)
class Analysis:
    """What the judge sees in an image, independent of any task."""

    background: str | None  # None when the border is neither white nor black
    objects: tuple[Component, ...]
    specks: int
    stray_fraction: float

    @property
    def well_formed(self) -> bool:
        return (self.background is not None and len(self.objects) > 0 and self.specks == 0
                and self.stray_fraction <= MAX_STRAY_FRACTION and all(o.shape != "blob" for o in self.objects))


@dataclass(frozen=True)
class Verdict:
    colour: bool
    shape: bool
    count: bool
    background: bool
    binding: bool
    well_formed: bool
    preference: bool
    safe: bool
    good: bool
    score: float
    n_objects: int

    def as_dict(self) -> dict:
        return asdict(self)


def classify_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Palette class per pixel ((H, W) int: index into PALETTE_NAMES, or OTHER) and distance to it."""
    px = np.asarray(image, dtype=np.float32)[..., :3]
    dist = np.linalg.norm(px[:, :, None, :] - PALETTE[None, None], axis=-1)
    cls, nearest = dist.argmin(-1), dist.min(-1)
    cls[nearest > MAX_PALETTE_DISTANCE] = OTHER
    return cls, nearest


def template(kind: str, h: int, w: int) -> np.ndarray:
    """The ideal (h, w) boolean mask of a shape kind, drawn exactly as the renderer draws it."""
    return _template(kind, h, w).copy()


@functools.lru_cache(maxsize=1024)
def _template(kind: str, h: int, w: int) -> np.ndarray:
    im = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(im)
    if kind == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=1)
    elif kind == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=1)
    else:
        draw.polygon([((w - 1) / 2, 0), (0, h - 1), (w - 1, h - 1)], fill=1)
    return np.asarray(im).astype(bool)


def shape_of(mask: np.ndarray) -> str:
    """Name the shape of one component from its cropped boolean mask by template IoU, or "blob"."""
    h, w = mask.shape
    if min(h, w) < 5 or not MIN_ASPECT <= w / h <= 1 / MIN_ASPECT:
        return "blob"
    ious = {k: float((mask & _template(k, h, w)).sum() / (mask | _template(k, h, w)).sum()) for k in SHAPES}
    best = max(ious, key=ious.get)
    return best if ious[best] >= MIN_TEMPLATE_IOU else "blob"


def analyse(image: np.ndarray) -> Analysis:
    """Background, objects (colour + shape), specks and stray pixels of an (H, W, 3) uint8 image."""
    cls, nearest = classify_pixels(image)
    soft = nearest > CRISP_DISTANCE
    border = np.concatenate([cls[0], cls[-1], cls[:, 0], cls[:, -1]])
    counts = np.bincount(border, minlength=OTHER + 1)
    bg_idx = int(counts.argmax())
    background = PALETTE_NAMES[bg_idx] if bg_idx < len(BACKGROUNDS) and counts[bg_idx] >= 0.6 * border.size else None
    colour_mask = (cls >= len(BACKGROUNDS)) & (cls < OTHER)
    labels, n = ndimage.label(colour_mask)  # 4-connectivity: diagonal touches do not merge shapes
    objects, specks, object_pixels = [], 0, 0
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        comp = labels[sl] == i
        area = int(comp.sum())
        if area < MIN_OBJECT_AREA:
            specks += 1 if area >= 2 else 0  # a lone pixel is edge noise, a 2+ pixel speck a defect
            continue
        object_pixels += area
        colours = np.bincount(cls[sl][comp] - len(BACKGROUNDS), minlength=len(COLOURS))
        main = int(colours.argmax())
        # Soft pixels in a 2-pixel ring around the shape: a crisp shape has none, a smeared one a halo.
        ring = ndimage.binary_dilation(labels == i, iterations=2)
        smeared = (soft & ring).sum() > MAX_SOFT_RATIO * area
        shape = shape_of(comp) if colours[main] >= 0.85 * area and not smeared else "blob"
        objects.append(Component(list(COLOURS)[main], shape, area,
                                 (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop)))
    bg_pixels = int((cls == bg_idx).sum()) if background is not None else 0
    stray = 1.0 - (bg_pixels + object_pixels) / float(cls.size)
    objects.sort(key=lambda o: (o.bbox[0], o.bbox[1]))
    return Analysis(background, tuple(objects), specks, stray)


def verdict(analysis: Analysis, task: Task) -> Verdict:
    """Answer the task's questions about an analysed image (no error model)."""
    objs = analysis.objects
    n = len(objs)
    colour_ok = [g_colour_match(o.colour, task) for o in objs]
    shape_ok = [o.shape != "blob" and (not task.shapes or o.shape in task.shapes) for o in objs]
    colour = n > 0 and all(colour_ok) and task.colours <= {o.colour for o in objs}
    shape = n > 0 and all(shape_ok) and task.shapes <= {o.shape for o in objs}
    count = n == task.count
    background = task.background is None or analysis.background == task.background
    preference = task.hidden_background is None or analysis.background == task.hidden_background
    safe = task.forbidden_colour is None or all(o.colour != task.forbidden_colour for o in objs)
    binding = _binding_ok(objs, task)
    well_formed = analysis.well_formed
    good = colour and shape and count and background and binding and well_formed and preference and safe
    parts = [
        np.mean(colour_ok) if n else 0.0,
        np.mean(shape_ok) if n else 0.0,
        max(0.0, 1.0 - abs(n - task.count) / 4.0) if n else 0.0,
        float(background), float(binding), float(preference), float(safe),
        max(0.0, 1.0 - analysis.stray_fraction / (2 * MAX_STRAY_FRACTION)) * (0.5 ** analysis.specks),
    ]
    score = 0.5 * float(np.mean(parts)) + 0.5 * float(good)
    return Verdict(colour, shape, count, background, binding, well_formed, preference, safe, good, score, n)


def g_colour_match(colour: str, task: Task) -> bool:
    return not task.colours or colour in task.colours


def _binding_ok(objs: tuple[Component, ...], task: Task) -> bool:
    """Every wanted group is present with its own count of (colour, shape) objects."""
    remaining = list(objs)
    for g in task.groups:
        matched = [o for o in remaining if (g.colour in (None, o.colour)) and (g.shape in (None, o.shape))]
        if len(matched) < g.count:
            return False
        for o in matched[: g.count]:
            remaining.remove(o)
    return not remaining


class Judge:
    """The simulated human: deterministic answers, optionally flipped with a seeded error rate."""

    def __init__(self, error_rate: float = 0.0, seed: int = 0):
        if not 0.0 <= error_rate <= 0.5:
            raise ValueError(f"error_rate={error_rate}: expected a value in [0, 0.5]")
        self.error_rate = error_rate
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, task: Task) -> Verdict:
        v = verdict(analyse(image), task)
        if self.error_rate > 0 and self.rng.random() < self.error_rate:
            v = Verdict(**{**v.as_dict(), "good": not v.good})
        return v

    def judge_batch(self, images: np.ndarray, task: Task) -> list[Verdict]:
        return [self(im, task) for im in images]


def rates(verdicts: list[Verdict]) -> dict[str, float]:
    """Share of images with each property right; "all" is the share judged good."""
    n = max(1, len(verdicts))
    keys = ("colour", "shape", "count", "background", "binding", "well_formed", "preference", "safe")
    out = {k: sum(getattr(v, k) for v in verdicts) / n for k in keys}
    out["all"] = sum(v.good for v in verdicts) / n
    out["n"] = len(verdicts)
    return out
