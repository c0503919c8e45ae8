"""The procedural dataset: sizes, prompts and exact reproducibility from a seed."""
import numpy as np

from demo_world.dataset import OBJECTS, PROMPT_TEMPLATES, SIZE, STYLES, make_batch, make_grid_set, prompt, render


def test_concepts_and_prompts():
    assert len(OBJECTS) >= 12 and len(STYLES) >= 12
    assert len(set(OBJECTS)) == len(OBJECTS) and len(set(STYLES)) == len(STYLES)
    assert PROMPT_TEMPLATES[0] == "An {object} image in {style} style."
    assert len(PROMPT_TEMPLATES) >= 4
    assert prompt("star", "Neon") == "An star image in Neon style."
    assert all("star" in prompt("star", "Neon", t) and "Neon" in prompt("star", "Neon", t)
               for t in range(len(PROMPT_TEMPLATES)))


def test_render_is_deterministic_in_the_seed():
    a = render("heart", "Watercolor", np.random.default_rng(7))
    b = render("heart", "Watercolor", np.random.default_rng(7))
    c = render("heart", "Watercolor", np.random.default_rng(8))
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)  # position, size, tilt and background vary


def test_every_pair_renders_something_visible():
    images, objects, styles = make_grid_set(1, seed=3)
    assert images.shape == (len(OBJECTS) * len(STYLES), SIZE, SIZE, 3)
    assert sorted(zip(objects.tolist(), styles.tolist())) == [(o, s) for o in range(len(OBJECTS)) for s in range(len(STYLES))]
    assert all(img.std() > 10 for img in images)  # never a blank canvas


def test_batches_are_reproducible():
    a = make_batch(8, np.random.default_rng(1))
    b = make_batch(8, np.random.default_rng(1))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
