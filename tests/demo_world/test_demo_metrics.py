"""UnlearnCanvas metrics against hand-computed cases."""
import pytest

from demo_world.dataset import OBJECTS, STYLES
from demo_world.metrics import Record, concept_accuracy, erasure_metrics, generation_set, per_concept_accuracy


def test_generation_set_covers_every_pair_per_seed():
    items = generation_set(seeds=(0, 1))
    assert len(items) == 2 * len(OBJECTS) * len(STYLES)
    assert {(i.object, i.style, i.seed) for i in items} == {(o, s, k) for o in OBJECTS for s in STYLES for k in (0, 1)}
    assert items[0].prompt == f"An {items[0].object} image in {items[0].style} style."
    assert generation_set(seeds=(5,), template=1)[0].prompt.startswith("A ")


# Two styles (A, B) x two objects (x, y), one image each, judged as follows:
#   prompted (x, A) -> (x, A)   style right, object right
#   prompted (y, A) -> (x, B)   style wrong, object wrong
#   prompted (x, B) -> (x, B)   style right, object right
#   prompted (y, B) -> (y, A)   style wrong, object right
RECS = [Record("x", "A", "x", "A"), Record("y", "A", "x", "B"), Record("x", "B", "x", "B"), Record("y", "B", "y", "A")]


def test_concept_accuracy():
    assert concept_accuracy(RECS, "style", "A") == 0.5
    assert concept_accuracy(RECS, "style", "B") == 0.5
    assert concept_accuracy(RECS, "object", "x") == 1.0
    assert concept_accuracy(RECS, "object", "y") == 0.5
    with pytest.raises(ValueError):
        concept_accuracy(RECS, "style", "C")


def test_style_erasure():
    m = erasure_metrics(RECS, "style", "A")
    assert m["UA"] == pytest.approx(0.5)     # one of the two A-prompted images is not called A
    assert m["IRA"] == pytest.approx(0.5)    # style accuracy on B-prompted images
    assert m["CRA"] == pytest.approx(0.75)   # mean object accuracy over all images: (1.0 + 0.5) / 2


def test_object_erasure_and_macro_averages():
    recs = RECS + [Record("x", "A", "y", "A")]  # x now 2/3 right: macro, not micro, averaging matters
    m = erasure_metrics(recs, "object", ["y"])
    assert m["UA"] == pytest.approx(0.5)
    assert m["IRA"] == pytest.approx(2 / 3)
    # style accuracy per style: A 2/3, B 1/2 -> macro mean 7/12 (micro would be 3/5)
    assert m["CRA"] == pytest.approx(7 / 12)
    assert per_concept_accuracy(recs, "style") == pytest.approx({"A": 2 / 3, "B": 0.5})


def test_perfect_erasure_of_several_targets():
    recs = [Record(o, s, "z", s) if o in ("x", "y") else Record(o, s, o, s) for o in "xyz" for s in "AB"]
    m = erasure_metrics(recs, "object", ["x", "y"])
    assert m == pytest.approx({"UA": 1.0, "IRA": 1.0, "CRA": 1.0})
