"""Pieces of ``deephedge experiment price_vs_cost`` (deephedge_tf.experiments.price_vs_cost).

The experiment itself (twelve trainings) is not run here: its small scale takes ~5 minutes on two
cores (the test suite's budget has no room for it; docs/experiments.md has its result).  What is
checked: the configs are the stated setting, the reference prices ``q`` against independent values, and
the slope fit's standard error is the spread of the slope over independent noisy replications.
"""

from __future__ import annotations

import numpy as np
import pytest

from deephedge_tf.experiments.price_vs_cost import COSTS, cost_config, fit_slope, risk_neutral_price


def test_reference_prices_are_the_risk_neutral_ones():
    """q of the Black-Scholes market against the formula written out here (math.erf), q of the Heston
    market against QuantLib's 1.6918 for the paper's parameters (shared/design/REFERENCE-VALUES.md)."""
    import math

    sigma, tau = 0.2, 30 / 365
    d1 = 0.5 * sigma * math.sqrt(tau)
    n = lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))  # noqa: E731
    assert risk_neutral_price("bs") == pytest.approx(100.0 * (n(d1) - n(-d1)), rel=1e-10)
    assert risk_neutral_price("heston") == pytest.approx(1.6918, abs=1e-4)
    with pytest.raises(ValueError, match="market must be one of"):
        risk_neutral_price("sabr")


def test_configs_put_the_cost_on_every_hedging_instrument():
    bs, heston = cost_config("bs", 2e-3, 0, "small"), cost_config("heston", 2e-3, 0, "small")
    assert (bs.market.model, bs.market.gbm.sigma, bs.market.s0) == ("gbm", 0.2, 100.0)
    assert bs.hedges.spot.cost == 2e-3 and not bs.hedges.variance_swap.enabled
    assert heston.hedges.spot.cost == heston.hedges.variance_swap.cost == 2e-3
    assert (heston.market.heston.xi, heston.market.heston.rho) == (2.0, -0.7)
    assert bs.objective.kind == "entropic" and bs.objective.a == 1.0 and bs.policy.kind == "mlp"
    assert COSTS[0] == 0.0 and len(COSTS[1:]) >= 5


def test_slope_standard_error_matches_the_spread_over_replications():
    """Differences 0.5 cost^(2/3) with a 3% relative noise per cost (as the paired s.e. of a run): over
    500 replications the fitted slopes centre on 2/3 and spread by the reported s.e. (within 12%)."""
    rng = np.random.default_rng(2)
    costs = np.array(COSTS[1:])
    truth = 0.5 * costs ** (2.0 / 3.0)
    se = 0.03 * truth
    slopes, ses = [], []
    for _ in range(500):
        slope, slope_se = fit_slope(costs, truth + se * rng.standard_normal(costs.size), se)
        slopes.append(slope)
        ses.append(slope_se)
    assert np.mean(slopes) == pytest.approx(2.0 / 3.0, abs=3 * np.std(slopes) / np.sqrt(500))
    assert np.std(slopes, ddof=1) == pytest.approx(np.mean(ses), rel=0.12)


def test_a_figure_refuses_an_unknown_check():
    from deephedge_tf.errors import DeepHedgeError
    from deephedge_tf.experiments import Figure

    with pytest.raises(DeepHedgeError, match="check must be one of 'within', 'at_most'; got 'below'"):
        Figure("p", 1.0, 0.1, 1.2, 0.1, check="below")
