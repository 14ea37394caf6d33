"""AlpacaEval win-rate arithmetic over pairwise preferences.

A preference p lies in [1, 2]: 1 = the reference wins, 2 = the model wins, 1.5 = a draw (identical outputs are
1.5). Matches alpaca_eval 0.6.6 `metrics.get_winrate` (alpaca_eval/metrics/winrate.py, helpers.py):
- `AbsoluteScoringRule.describe_head2head`: win_rate = mean(p - 1) * 100, standard_error = pandas
  `Series.sem()` (ddof=1) of (p - 1) * 100, n_wins = #(p > 1.5), n_wins_base = #(p < 1.5) (our n_losses),
  n_draws = #(p == 1.5), n_total = the valid preferences;
- `ZeroOneScoringRule`: discrete_win_rate replaces exactly 1.5 by a draw and rounds every other p to 1 or 2,
  i.e. a win (p > 1.5) scores 1, a draw 0.5, a loss 0; mean * 100.
alpaca_eval drops NaN preferences with only a log line; here they are counted as `n_unparsable`.
"""

from __future__ import annotations

import math
from typing import Sequence

from rt_lab.judges import DRAW


def _valid(preferences: Sequence[float | None]) -> tuple[list[float], int]:
    valid, unparsable = [], 0
    for index, p in enumerate(preferences):
        if p is None or math.isnan(p):
            unparsable += 1
            continue
        if not 1.0 <= p <= 2.0:
            raise ValueError(f"preference {index} is {p}; AlpacaEval preferences lie in [1, 2] (None = unparsable)")
        valid.append(float(p))
    return valid, unparsable


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else math.nan


def _sem(values: Sequence[float]) -> float:
    """pandas `Series.sem()`: sample standard deviation (ddof=1) over sqrt(n); NaN below two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = _mean(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) / math.sqrt(n)


def summarize(preferences: Sequence[float | None]) -> dict[str, float | int]:
    """AlpacaEval head-to-head metrics of the model against the reference. None or NaN preferences (judgments
    that could not be parsed) are left out of every rate and counted in `n_unparsable`."""
    valid, unparsable = _valid(preferences)
    shifted = [p - 1.0 for p in valid]
    n_wins = sum(p > DRAW for p in valid)
    n_draws = sum(p == DRAW for p in valid)
    discrete = [1.0 if p > DRAW else 0.5 if p == DRAW else 0.0 for p in valid]
    return {
        "win_rate": _mean(shifted) * 100,
        "standard_error": _sem(shifted) * 100,
        "discrete_win_rate": _mean(discrete) * 100,
        "n_wins": n_wins,
        "n_draws": n_draws,
        "n_losses": len(valid) - n_wins - n_draws,
        "n_total": len(valid),
        "n_unparsable": unparsable,
    }
