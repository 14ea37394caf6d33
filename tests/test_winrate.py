"""AlpacaEval win-rate arithmetic (rt_lab.compare.winrate) against values computed by hand (against alpaca_eval itself:
tests/test_lc_winrate.py)."""

from __future__ import annotations

import math

import pytest

from rt_lab.compare.winrate import summarize


def test_hand_computed_mixed_preferences():
    # p - 1 = [0, 1, 0.5, 0.7, 0.2]: mean 2.4 / 5 = 0.48
    # deviations [-0.48, 0.52, 0.02, 0.22, -0.28], squares sum 0.2304 + 0.2704 + 0.0004 + 0.0484 + 0.0784 = 0.628
    # sem = sqrt(0.628 / 4) / sqrt(5) = sqrt(0.0314)
    # discrete: wins 2.0 and 1.7 -> 1 each, draw 1.5 -> 0.5, losses 1.0 and 1.2 -> 0: 2.5 / 5
    out = summarize([1.0, 2.0, 1.5, 1.7, 1.2])
    assert out["win_rate"] == pytest.approx(48.0)
    assert out["standard_error"] == pytest.approx(math.sqrt(0.0314) * 100)
    assert out["discrete_win_rate"] == pytest.approx(50.0)
    assert (out["n_wins"], out["n_draws"], out["n_losses"], out["n_total"], out["n_unparsable"]) == (2, 1, 2, 5, 0)


def test_hard_preferences():
    # p - 1 = [1, 1, 0]: mean 2/3; deviations [1/3, 1/3, -2/3], squares 6/9, var 6/9 / 2 = 1/3, sem = sqrt(1/9) = 1/3
    out = summarize([2, 2, 1])
    assert out["win_rate"] == pytest.approx(200 / 3)
    assert out["standard_error"] == pytest.approx(100 / 3)
    assert out["discrete_win_rate"] == pytest.approx(200 / 3)
    assert (out["n_wins"], out["n_draws"], out["n_losses"]) == (2, 0, 1)


def test_discrete_rounds_weighted_preferences_around_a_draw():
    # alpaca_eval's ZeroOneScoringRule: exactly 1.5 is a draw, anything above (even 1.5 + 1e-9) a win
    out = summarize([1.5 + 1e-9, 1.5 - 1e-9, 1.5, 1.9])
    assert out["discrete_win_rate"] == pytest.approx((1 + 0 + 0.5 + 1) / 4 * 100)
    assert (out["n_wins"], out["n_draws"], out["n_losses"]) == (2, 1, 1)
    assert out["win_rate"] == pytest.approx((0.5 + 0.5 + 0.5 + 0.9) / 4 * 100)


def test_all_draws():
    out = summarize([1.5, 1.5, 1.5])
    assert out["win_rate"] == 50.0
    assert out["discrete_win_rate"] == 50.0
    assert out["standard_error"] == 0.0
    assert (out["n_wins"], out["n_draws"], out["n_losses"], out["n_total"]) == (0, 3, 0, 3)


def test_one_preference_has_no_standard_error_like_pandas():
    pd = pytest.importorskip("pandas")
    out = summarize([1.8])
    assert out["win_rate"] == pytest.approx(80.0)
    assert math.isnan(out["standard_error"]) and math.isnan(pd.Series([0.8]).sem())
    assert out["n_total"] == 1


def test_standard_error_is_pandas_sem():
    pd = pytest.importorskip("pandas")
    preferences = [1.0, 1.13, 1.5, 1.77, 2.0, 1.41, 1.5, 1.05]
    expected = (pd.Series(preferences) - 1).sem() * 100
    assert summarize(preferences)["standard_error"] == pytest.approx(expected, rel=1e-12)


def test_unparsable_are_counted_not_dropped():
    # None (our judges) and NaN (alpaca_eval's encoding) are both unparsable; the rates use the other two
    out = summarize([2.0, None, 1.0, float("nan")])
    assert out["n_unparsable"] == 2
    assert out["n_total"] == 2
    assert out["win_rate"] == pytest.approx(50.0)
    assert out["standard_error"] == pytest.approx(math.sqrt(0.5 / 1) / math.sqrt(2) * 100)


def test_nothing_parsable():
    out = summarize([None, None])
    assert out["n_unparsable"] == 2 and out["n_total"] == 0
    assert math.isnan(out["win_rate"]) and math.isnan(out["discrete_win_rate"]) and math.isnan(out["standard_error"])


@pytest.mark.parametrize("bad", [0.5, 2.5, 0])
def test_out_of_range_preference_names_its_index(bad):
    with pytest.raises(ValueError, match=r"preference 1 is"):
        summarize([1.5, bad])
