"""The UnlearnCanvas formulas on hand-made predictions, each number worked out by hand."""

import math

import pytest

from saeuron.evaluation.metrics import average_scores, forgetting_scores, object_accuracy, sequential_scores

STYLES = ["A", "B", "C"]
OBJECTS = ["cat", "dog"]


def grid(style_wrong=(), object_wrong=(), unstyled_object_wrong=()):
    """One seed: every (style, object) styled image plus one unstyled image per object. Entries of
    the *_wrong sets are the (style, object) / object cells the judge gets wrong."""
    rows = []
    for s in STYLES:
        for o in OBJECTS:
            rows.append(
                dict(
                    style=s,
                    object=o,
                    style_pred="X" if (s, o) in style_wrong else s,
                    object_pred="X" if (s, o) in object_wrong else o,
                )
            )
    for o in OBJECTS:
        rows.append(dict(style=None, object=o, style_pred="none", object_pred="X" if o in unstyled_object_wrong else o))
    return rows


def test_style_forgetting():
    # Style A forgotten on both its images; B wrong on one of two; C intact.
    rows = grid(
        style_wrong={("A", "cat"), ("A", "dog"), ("B", "cat")}, object_wrong={("C", "dog")}, unstyled_object_wrong={"dog"}
    )
    s = forgetting_scores(rows, "style", ["A"])
    assert s.ua == 1.0
    assert s.ira == pytest.approx((0.5 + 1.0) / 2)
    assert s.cra == pytest.approx((1.0 + 0.0) / 2)  # unstyled images only: cat right, dog wrong
    assert s.cra_styled == pytest.approx((1.0 + 2 / 3) / 2)  # styled: cat 3/3, dog 2/3
    assert s.cra_forgotten == 1.0  # A's own images still show their objects
    assert s.per_concept_accuracy == {"A": 0.0, "B": 0.5, "C": 1.0}


def test_the_object_on_the_forgotten_styles_own_images():
    # Forgetting A took A's dog with it; B's and C's objects are intact (CRA over all styled images hides it).
    rows = grid(style_wrong={("A", "cat"), ("A", "dog")}, object_wrong={("A", "dog")})
    s = forgetting_scores(rows, "style", ["A"])
    assert s.cra_forgotten == pytest.approx(0.5)
    assert s.cra_styled == pytest.approx((1.0 + 2 / 3) / 2)
    both = forgetting_scores(rows, "style", ["A", "B"])
    assert both.cra_forgotten == pytest.approx((1.0 + 0.5) / 2)  # per object over A's and B's images: cat 2/2, dog 1/2
    assert average_scores([s, both])["CRA_forgotten"] == pytest.approx((0.5 + 0.75) / 2)
    assert "CRA_forgotten" not in average_scores([forgetting_scores(rows, "object", ["cat"])])


def test_forgetting_two_styles_averages_their_ua_and_retains_the_rest():
    rows = grid(style_wrong={("A", "cat"), ("A", "dog"), ("B", "cat")})
    s = forgetting_scores(rows, "style", ["A", "B"])
    assert s.ua == pytest.approx((1.0 + 0.5) / 2)
    assert s.ira == 1.0


def test_object_forgetting_counts_unstyled_images_per_image_or_as_the_paper():
    # cat: wrong on all 3 styled images, right on its unstyled one.
    rows = grid(object_wrong={("A", "cat"), ("B", "cat"), ("C", "cat")}, style_wrong={("C", "dog")})
    s = forgetting_scores(rows, "object", ["cat"])
    assert s.ua == pytest.approx(1 - 1 / 4)  # 1 right of 3 styled + 1 unstyled
    assert s.ira == 1.0
    assert s.cra == pytest.approx((1 + 1 + 0.5) / 3)
    assert s.cra_styled is None and s.cra_forgotten is None
    # Paper weighting: the unstyled image counts once per style (3×): (0 + 3) / (3 + 3) = 1/2.
    paper = forgetting_scores(rows, "object", ["cat"], unstyled_weighting="paper")
    assert paper.ua == pytest.approx(0.5)
    assert object_accuracy(rows, "unstyled") == {"cat": 1.0, "dog": 1.0}


def test_sequential_scores_use_each_steps_own_images():
    step1 = grid(style_wrong={("A", "cat"), ("A", "dog")})
    step2 = grid(style_wrong={("A", "cat"), ("B", "cat"), ("B", "dog"), ("C", "dog")})  # A partly recovered
    seq = sequential_scores([(["A"], step1), (["A", "B"], step2)], "style")
    assert seq[0].ua_per_concept == {"A": 1.0} and seq[0].ira == 1.0
    assert seq[1].ua_per_concept == {"A": 0.5, "B": 1.0}
    assert seq[1].ua == pytest.approx(0.75) and seq[1].ira == pytest.approx(0.5)


def test_average_and_bad_input():
    a = forgetting_scores(grid(style_wrong={("A", "cat"), ("A", "dog")}), "style", ["A"])
    b = forgetting_scores(grid(style_wrong={("B", "cat")}), "style", ["B"])
    avg = average_scores([a, b])
    assert avg["UA"] == pytest.approx(0.75) and avg["IRA"] == 1.0 and avg["CRA"] == 1.0
    assert math.isclose(avg["CRA_styled"], 1.0)
    with pytest.raises(ValueError, match="no style images of \\['D'\\]"):
        forgetting_scores(grid(), "style", ["D"])
    with pytest.raises(ValueError, match="unstyled images"):
        forgetting_scores([r for r in grid() if r["style"] is not None], "style", ["A"])
    with pytest.raises(ValueError, match="unstyled_weighting"):
        forgetting_scores(grid(), "object", ["cat"], unstyled_weighting="double")


def test_soft_scores_grade_hits_by_the_judges_probability():
    rows = [
        dict(style="A", object="cat", style_pred="A", object_pred="cat", style_prob=0.9, object_prob=0.6),
        dict(style="A", object="dog", style_pred="B", object_pred="dog", style_prob=0.3, object_prob=0.8),
        dict(style="B", object="cat", style_pred="B", object_pred="cat", style_prob=0.7, object_prob=1.0),
        dict(style=None, object="cat", style_pred="none", object_pred="cat", style_prob=0.0, object_prob=0.5),
        dict(style=None, object="dog", style_pred="none", object_pred="cat", style_prob=0.0, object_prob=0.2),
    ]
    hard = forgetting_scores(rows, "style", ["A"])
    soft = forgetting_scores(rows, "style", ["A"], soft=True)
    assert (hard.ua, hard.ira, hard.cra) == (0.5, 1.0, 0.5)
    assert soft.ua == pytest.approx(1 - 0.6) and soft.ira == pytest.approx(0.7) and soft.cra == pytest.approx((0.5 + 0.2) / 2)
