"""Inter-rater agreement (rt_lab.human.agreement) against the textbooks' own worked examples."""

from __future__ import annotations

import math

import pytest

from rt_lab.human.agreement import fleiss_kappa, krippendorff_alpha

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers, 12 units, values
# 1-5, missing values (None). Published: nominal alpha = 0.743, ordinal alpha = 0.815.
OBSERVERS = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]
UNITS = [[value for value in unit if value is not None] for unit in zip(*OBSERVERS)]

# Fleiss (1971), as in Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters, 5 categories.
# Published: P-bar = 0.378, P-bar-e = 0.213, kappa = 0.210.
FLEISS_TABLE = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
                [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]


def test_krippendorff_nominal_alpha_is_the_textbook_value_and_its_hand_computation():
    # By hand from the coincidence matrix: unit 12 (one value) drops out, n = 40 pairable values with
    # n_1..n_5 = 9, 13, 10, 5, 3 (sum of squares 384) and 8 off-diagonal coincidences:
    # alpha = 1 - (n - 1) * 8 / (n^2 - 384) = 1 - 39 * 8 / 1216 = 113 / 152.
    assert krippendorff_alpha(UNITS) == pytest.approx(113 / 152)
    assert round(krippendorff_alpha(UNITS), 3) == 0.743


def test_krippendorff_ordinal_alpha_is_the_textbook_value():
    assert round(krippendorff_alpha(UNITS, order=[1, 2, 3, 4, 5]), 3) == 0.815


def test_krippendorff_alpha_is_one_for_perfect_agreement_and_undefined_without_variation():
    assert krippendorff_alpha([["a", "a"], ["b", "b", "b"], ["a", "a"]]) == pytest.approx(1.0)
    assert math.isnan(krippendorff_alpha([["a", "a"], ["a", "a"]]))  # no expected disagreement
    assert math.isnan(krippendorff_alpha([["a"], ["b"]]))  # no unit has two values


def test_krippendorff_ordinal_alpha_names_values_off_the_scale():
    with pytest.raises(ValueError, match=r"values \['great'\] are not on the ordinal scale"):
        krippendorff_alpha([["bad", "great"], ["bad", "bad"]], order=["bad", "good"])


def test_fleiss_kappa_is_the_textbook_value():
    assert round(fleiss_kappa(FLEISS_TABLE), 3) == 0.210


def test_fleiss_kappa_by_hand_on_two_raters():
    # 4 items, 2 raters, 2 categories; agree on items 0-2 (P_i = 1), disagree on item 3 (P_i = 0):
    # P-bar = 3/4; category shares 5/8 and 3/8, P-bar-e = 34/64; kappa = (3/4 - 34/64) / (1 - 34/64) = 7/15.
    assert fleiss_kappa([[2, 0], [2, 0], [0, 2], [1, 1]]) == pytest.approx(7 / 15)


def test_fleiss_kappa_needs_the_same_number_of_ratings_per_item():
    with pytest.raises(ValueError, match="item 1 has 3 ratings, item 0 has 2"):
        fleiss_kappa([[1, 1], [2, 1]])
    with pytest.raises(ValueError, match="at least two"):
        fleiss_kappa([[1, 0], [0, 1]])
    assert math.isnan(fleiss_kappa([[3, 0], [3, 0]]))
