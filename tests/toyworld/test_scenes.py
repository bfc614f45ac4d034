import numpy as np
import pytest

from hero.toyworld.scenes import caption, image_grid, random_scene, render, training_example
from hero.toyworld.tasks import parse_task


def test_generator_is_deterministic():
    a = [training_example(np.random.default_rng(7)) for _ in range(3)]
    b = [training_example(np.random.default_rng(7)) for _ in range(3)]
    for (ia, ca), (ib, cb) in zip(a, b, strict=False):
        assert ca == cb
        assert np.array_equal(ia, ib)
    other = training_example(np.random.default_rng(8))
    assert not np.array_equal(a[0][0], other[0])


def test_render_shape_and_palette():
    scene = random_scene(np.random.default_rng(0), [(3, "blue", "circle")], "black")
    img = render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[0, 0]) == (0, 0, 0)
    assert len(scene.shapes) == 3 and {s.colour for s in scene.shapes} == {"blue"}


def test_shapes_never_touch():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scene = random_scene(rng)
        boxes = [(s.x, s.y, s.size) for s in scene.shapes]
        for i, (x, y, s) in enumerate(boxes):
            assert x >= 0 and x + s <= 32 and y >= 0 and y + s <= 32
            for bx, by, bs in boxes[i + 1:]:
                assert x + s + 2 <= bx or bx + bs + 2 <= x or y + s + 2 <= by or by + bs + 2 <= y


@pytest.mark.parametrize("groups,bg,text", [
    ([(3, "blue", "circle")], None, "three blue circles"),
    ([(1, "red", "square"), (2, "green", "triangle")], "black", "one red square and two green triangles on black"),
])
def test_caption_round_trips_through_the_task_parser(groups, bg, text):
    assert caption(groups, bg) == text
    task = parse_task(text)
    assert [(g.count, g.colour, g.shape) for g in task.groups] == groups
    assert task.background == bg


def test_image_grid_tiles_images():
    imgs = np.zeros((10, 32, 32, 3), dtype=np.uint8)
    grid = image_grid(imgs, ncols=4, pad=2, scale=1)
    assert grid.size == (4 * 34 + 2, 3 * 34 + 2)
