"""The "shapes" toy world: seeded scenes of 1-4 coloured shapes, their captions and renders.

A scene is a list of non-overlapping shapes on a white or black background. Captions group shapes by
(colour, kind): "three blue circles", "one red circle and two green squares", optionally "... on black".
Renders are crisp (no anti-aliasing) so the judge can classify every pixel against the palette.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 170, 40),
    "blue": (40, 70, 235),
    "yellow": (245, 215, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
SHAPES = ("circle", "square", "triangle")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
WORD_NUMBERS = {"one": 1, "a": 1, "an": 1, "two": 2, "three": 3, "four": 4}
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Shape:
    """One shape: its kind, colour and bounding box (top-left corner x, y and side length)."""

    kind: str
    colour: str
    x: int
    y: int
    size: int


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]
    defect: str | None = None  # None, or "merged", "smear", "speck", "noise": a drawn flaw
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def groups(self) -> list[tuple[int, str, str]]:
        """(count, colour, kind) per group, in the order groups first appear."""
        counts: dict[tuple[str, str], int] = {}
        for s in self.shapes:
            counts[(s.colour, s.kind)] = counts.get((s.colour, s.kind), 0) + 1
        return [(n, colour, kind) for (colour, kind), n in counts.items()]


def plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def caption(groups: list[tuple[int, str, str]], background: str | None = None) -> str:
    """Caption for groups of (count, colour, kind), e.g. "two red squares and one blue circle on black"."""
    parts = [f"{NUMBER_WORDS[n]} {colour} {plural(kind, n)}" for n, colour, kind in groups]
    text = " and ".join(parts)
    return f"{text} on {background}" if background else text


def _boxes_clear(box: tuple[int, int, int], boxes: list[tuple[int, int, int]], gap: int) -> bool:
    x, y, s = box
    for bx, by, bs in boxes:
        if x < bx + bs + gap and bx < x + s + gap and y < by + bs + gap and by < y + s + gap:
            return False
    return True


def place_boxes(rng: np.random.Generator, n: int, size: int = IMAGE_SIZE, gap: int = 2) -> list[tuple[int, int, int]]:
    """Place n square boxes (x, y, side) inside the image, at least `gap` pixels apart."""
    lo, hi = (8, 13) if n <= 2 else (7, 11)
    for _attempt in range(200):
        boxes: list[tuple[int, int, int]] = []
        for _ in range(n):
            for _try in range(50):
                s = int(rng.integers(lo, hi))
                x = int(rng.integers(1, size - s))
                y = int(rng.integers(1, size - s))
                if _boxes_clear((x, y, s), boxes, gap):
                    boxes.append((x, y, s))
                    break
        if len(boxes) == n:
            return boxes
        hi = max(lo + 1, hi - 1)
    raise RuntimeError(f"could not place {n} shapes")  # pragma: no cover - never seen for n <= 4


def random_scene(
    rng: np.random.Generator,
    groups: list[tuple[int, str, str]] | None = None,
    background: str | None = None,
    defect: str | None = None,
) -> Scene:
    """A random scene; fixed `groups` of (count, colour, kind) and `background` where given."""
    if groups is None:
        groups = random_groups(rng)
    if background is None:
        background = str(rng.choice(list(BACKGROUNDS)))
    n = sum(g[0] for g in groups)
    for _attempt in range(100):  # a merged defect needs room for the overlapping copy
        boxes = iter(place_boxes(rng, n))
        shapes = tuple(Shape(kind, colour, *next(boxes)) for count, colour, kind in groups for _ in range(count))
        scene = Scene(background, shapes, defect, {"seed": int(rng.integers(2**31))})
        if defect != "merged" or _merge_spot(scene) is not None:
            break
    return scene


def random_groups(rng: np.random.Generator, p_two_groups: float = 0.15) -> list[tuple[int, str, str]]:
    """One group of 1-4 like shapes, or (with probability p_two_groups) two groups of 1-2 shapes."""
    if rng.random() < p_two_groups:
        colours = rng.choice(list(COLOURS), size=2, replace=True)
        kinds = rng.choice(SHAPES, size=2, replace=True)
        if colours[0] == colours[1] and kinds[0] == kinds[1]:
            kinds[1] = SHAPES[(SHAPES.index(kinds[0]) + 1) % len(SHAPES)]
        counts = rng.integers(1, 3, size=2)
        return [(int(counts[0]), str(colours[0]), str(kinds[0])), (int(counts[1]), str(colours[1]), str(kinds[1]))]
    return [(int(rng.integers(1, 5)), str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES)))]


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, x: int, y: int, s: int, fill: tuple[int, int, int]) -> None:
    if kind == "square":
        draw.rectangle([x, y, x + s - 1, y + s - 1], fill=fill)
    elif kind == "circle":
        draw.ellipse([x, y, x + s - 1, y + s - 1], fill=fill)
    elif kind == "triangle":
        draw.polygon([(x + (s - 1) / 2, y), (x, y + s - 1), (x + s - 1, y + s - 1)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {SHAPES}")


def render(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a scene to a (size, size, 3) uint8 array."""
    img = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for s in scene.shapes:
        _draw_shape(draw, s.kind, s.x, s.y, s.size, COLOURS[s.colour])
    if scene.defect is not None:
        img = _apply_defect(img, scene)
    return np.asarray(img, dtype=np.uint8).copy()


def _merge_spot(scene: Scene) -> tuple[int, int, int] | None:
    """(shape index, x, y) for a copy that overlaps that shape by a quarter and stays clear of the rest."""
    boxes = [(t.x, t.y, t.size) for t in scene.shapes]
    for i, t in enumerate(scene.shapes):
        off = (3 * t.size) // 4
        x = t.x + (off if t.x + t.size // 2 < IMAGE_SIZE // 2 else -off)  # towards the middle: stays inside
        y = t.y + (off if t.y + t.size // 2 < IMAGE_SIZE // 2 else -off)
        if _boxes_clear((x, y, t.size), boxes[:i] + boxes[i + 1:], gap=2):
            return i, x, y
    return None


def _apply_defect(img: Image.Image, scene: Scene) -> Image.Image:
    """Draw a flaw a person would call malformed: merged shapes, a smeared shape, specks or noise."""
    rng = np.random.default_rng(scene.meta.get("seed", 0))
    draw = ImageDraw.Draw(img)
    first = scene.shapes[0]
    fill = COLOURS[first.colour]
    boxes = [(t.x, t.y, t.size) for t in scene.shapes]
    if scene.defect == "merged":  # a copy overlapping one shape: a two-lobed component, clear of the others
        i, x, y = _merge_spot(scene) or (0, scene.shapes[0].x, scene.shapes[0].y)
        t = scene.shapes[i]
        _draw_shape(draw, t.kind, x, y, t.size, COLOURS[t.colour])
    elif scene.defect == "smear":  # the first shape blurred into a blob
        crop_box = (max(0, first.x - 3), max(0, first.y - 3), min(IMAGE_SIZE, first.x + first.size + 3),
                    min(IMAGE_SIZE, first.y + first.size + 3))
        region = img.crop(crop_box).filter(ImageFilter.GaussianBlur(2.0))
        img.paste(region, crop_box[:2])
    elif scene.defect == "speck":  # small specks of colour scattered on the background
        drawn = 0
        for _ in range(200):
            x, y = (int(v) for v in rng.integers(0, IMAGE_SIZE - 2, size=2))
            if drawn < 6 and _boxes_clear((x, y, 2), boxes, gap=2):
                draw.rectangle([x, y, x + 1, y + 1], fill=fill)
                drawn += 1
    elif scene.defect == "noise":  # heavy pixel noise over the whole image
        arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 90, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    else:
        raise ValueError(f"unknown defect {scene.defect!r}")
    return img


def training_example(rng: np.random.Generator, p_background_in_caption: float = 0.5) -> tuple[np.ndarray, str]:
    """One (image, caption) pair for pretraining: a clean random scene and its caption."""
    scene = random_scene(rng)
    bg = scene.background if rng.random() < p_background_in_caption else None
    return render(scene), caption(scene.groups(), bg)


def image_grid(images: np.ndarray | list[np.ndarray], ncols: int = 8, pad: int = 2, scale: int = 3) -> Image.Image:
    """Tile (N, H, W, 3) uint8 images into one PIL grid, upscaled `scale`× with nearest neighbour."""
    images = [np.asarray(i) for i in images]
    n = len(images)
    h, w = images[0].shape[:2]
    nrows = (n + ncols - 1) // ncols
    grid = np.full((nrows * (h + pad) + pad, min(n, ncols) * (w + pad) + pad, 3), 128, dtype=np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    out = Image.fromarray(grid)
    return out.resize((out.width * scale, out.height * scale), Image.NEAREST) if scale != 1 else out


def verdict_grid(images: np.ndarray | list[np.ndarray], good: list[bool], ncols: int = 8,
                 scale: int = 3) -> Image.Image:
    """A grid with a green frame around each image judged good and a red one around the rest."""
    framed = []
    for im, ok in zip(images, good, strict=False):
        im = np.asarray(im)
        f = np.empty((im.shape[0] + 4, im.shape[1] + 4, 3), dtype=np.uint8)
        f[:] = (40, 200, 60) if ok else (220, 40, 40)
        f[2:-2, 2:-2] = im
        framed.append(f)
    return image_grid(framed, ncols=ncols, pad=2, scale=scale)
