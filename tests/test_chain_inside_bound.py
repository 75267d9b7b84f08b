"""benchmarks/chain_inside_bound.py: the share of quotes a smooth smile of a given degree can put inside
their bid/ask band (the bound quoted for the calibration's "inside the spread" goal, BENCHMARKS.md)."""

from __future__ import annotations

import numpy as np
import pytest

from chain_inside_bound import best_inside_share  # benchmarks/ is on sys.path (conftest)


def test_a_smile_of_the_degree_fits_inside_every_band():
    """Bands of half-width 0.2 vol points around a quadratic smile: a degree-2 curve exists inside all
    of them, and the linear programme finds one (distance outside 0)."""
    x = np.linspace(-0.3, 0.2, 25)
    vol = 0.2 - 0.15 * x + 0.4 * x ** 2
    assert best_inside_share(x, vol - 0.002, vol + 0.002, degree=2) == 1.0


def test_a_constant_cannot_thread_an_outlier():
    """Four bands [0, 1] and one [5, 6], degree 0 (a constant c): the distance outside is 5 - c on
    [0, 1] and 3c + 1 on [1, 5], least (4) at c = 1 alone, which is inside the four low bands: 4 / 5."""
    x = np.arange(5.0)
    bid, ask = np.array([0.0, 0.0, 0.0, 0.0, 5.0]), np.array([1.0, 1.0, 1.0, 1.0, 6.0])
    assert best_inside_share(x, bid, ask, degree=0) == pytest.approx(0.8)


def test_alternating_bands_bound_a_smooth_curve():
    """Bands that alternate between [0, 0.1] and [1, 1.1] at 20 points: a quadratic changes direction
    once, so it cannot enter both kinds at neighbouring points: at most half are inside (the least
    total distance puts it between the two levels, inside a few); a degree-12 curve follows more."""
    x = np.linspace(0.0, 1.0, 20)
    low = np.where(np.arange(20) % 2 == 0, 0.0, 1.0)
    quadratic = best_inside_share(x, low, low + 0.1, degree=2)
    assert quadratic <= 0.5
    assert best_inside_share(x, low, low + 0.1, degree=12) > quadratic
