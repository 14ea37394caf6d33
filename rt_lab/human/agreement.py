"""Inter-rater agreement: Krippendorff's alpha (any number of raters per item, missing ratings allowed; nominal or
ordinal) and Fleiss' kappa (every item rated by the same number of raters)."""

from __future__ import annotations

import math
from collections import Counter
from itertools import permutations
from typing import Hashable, Sequence


def krippendorff_alpha(units: Sequence[Sequence[Hashable]], order: Sequence[Hashable] | None = None) -> float:
    """Krippendorff's alpha over `units` (each item's values, one per rater who rated it; a rater who did not is
    simply absent). Nominal without `order`; ordinal with it (the categories from one end of the scale to the
    other). Units with fewer than two values cannot be paired and are left out (Krippendorff 2011, §C). NaN when
    it is undefined: no pairable unit, or a single category in all of them (no expected disagreement)."""
    pairable = [list(values) for values in units if len(values) >= 2]
    coincidences: Counter = Counter()
    for values in pairable:
        for first, second in permutations(range(len(values)), 2):
            coincidences[values[first], values[second]] += 1 / (len(values) - 1)
    totals: Counter = Counter()
    for (value, _), weight in coincidences.items():
        totals[value] += weight
    if order is not None:
        unknown = sorted(set(totals) - set(order), key=str)
        if unknown:
            raise ValueError(f"krippendorff_alpha: values {unknown} are not on the ordinal scale {list(order)}")
    n = sum(totals.values())
    distance = _ordinal_distance(totals, order) if order is not None else (lambda c, k: float(c != k))
    observed = sum(weight * distance(c, k) for (c, k), weight in coincidences.items())
    expected = sum(totals[c] * totals[k] * distance(c, k) for c in totals for k in totals)
    if expected == 0:
        return math.nan
    return 1 - (n - 1) * observed / expected


def _ordinal_distance(totals: Counter, order: Sequence[Hashable]):
    """Krippendorff's ordinal metric: the squared count of values between c and k, each end counted half."""
    position = {category: index for index, category in enumerate(order)}
    counts = [totals.get(category, 0.0) for category in order]

    def distance(c: Hashable, k: Hashable) -> float:
        low, high = sorted((position[c], position[k]))
        return (sum(counts[low:high + 1]) - (counts[low] + counts[high]) / 2) ** 2

    return distance


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa from an items x categories table of counts (how many raters put item i in category j); every
    item must have the same number of ratings, at least two. NaN when undefined (no item, or every rating in
    one category)."""
    if not counts:
        return math.nan
    raters = sum(counts[0])
    for index, row in enumerate(counts):
        if sum(row) != raters:
            raise ValueError(f"fleiss_kappa: item {index} has {sum(row)} ratings, item 0 has {raters}; Fleiss' "
                             "kappa needs the same number of ratings per item (Krippendorff's alpha does not)")
    if raters < 2:
        raise ValueError(f"fleiss_kappa: {raters} rating per item; agreement needs at least two")
    items = len(counts)
    shares = [sum(row[j] for row in counts) / (items * raters) for j in range(len(counts[0]))]
    observed = sum((sum(c * c for c in row) - raters) / (raters * (raters - 1)) for row in counts) / items
    expected = sum(share * share for share in shares)
    if expected == 1:
        return math.nan
    return (observed - expected) / (1 - expected)
