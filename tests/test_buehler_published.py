"""Buehler, Gonon, Teichmann, Wood (2019), section 5: the Heston example against its published numbers.

The small scale of ``deephedge experiment buehler_heston`` (:mod:`deephedge_tf.experiments.buehler_heston`
has the setting, the sizes and why each band is what it is): an ATM call on the paper's Heston hedged
with the spot and the variance swap, no costs, one MLP per CVaR level (50% and 99%) trained with Adam,
evaluated out of sample with the baselines on the same paths.  Published: indifference prices 1.94
(50%) and 3.49 (99%), risk-neutral 1.69; the realised CVaRs of the loss ``Z - gains - q`` of each
strategy.  Checked here: every published figure the experiment checks agrees within its stated band (prices
one-sided: at most the published value plus the band),
the two strategies order as published (each is best at its own level), and natural units beat
positions in contracts after the same steps.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from deephedge_tf.experiments.buehler_heston import heston_config

pytestmark = pytest.mark.slow
EXPERIMENT = "buehler_heston"  # the conftest fixture `experiment` runs its small scale


@pytest.fixture(scope="module")
def table(experiment):
    return pd.read_csv(experiment[0] / "strategies.csv").set_index("strategy")


def test_the_experiment_is_the_published_setting_and_writes_its_files(experiment):
    cfg = heston_config("cvar99", 0, "small")
    h = cfg.market.heston
    assert (h.kappa, h.theta, h.xi, h.rho, h.v0, cfg.market.s0) == (1.0, 0.04, 2.0, -0.7, 0.04, 100.0)
    assert cfg.time.steps == 30 and cfg.time.dt == pytest.approx(1 / 365)
    assert cfg.hedges.variance_swap.enabled and cfg.hedges.spot.cost == 0.0 and cfg.hedges.natural_units
    assert (cfg.objective.kind, cfg.objective.alpha) == ("expected_shortfall", 0.99)
    out, summary = experiment
    assert json.loads((out / "summary.json").read_text()) == summary
    assert sorted(summary["files"]) == ["loss_histograms.png", "strategies.csv"]
    assert (out / "loss_histograms.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key in ("cvar50_price", "cvar99_price", "risk_neutral_price"):
        assert key in summary["figures"]


def test_published_figures_agree_within_their_bands(experiment):
    figures = experiment[1]["figures"]
    checked = {k: f for k, f in figures.items() if f["agrees"] is not None}
    assert set(checked) == {"risk_neutral_price", "cvar50_price", "cvar99_price", "cvar50_strategy_cvar50",
                            "cvar99_strategy_cvar99"}
    disagree = {k: (f["value"], f["published"], f["band"]) for k, f in checked.items() if not f["agrees"]}
    assert not disagree
    # Prices are checked one-sided (an out-of-sample price bounds the optimum from above), the Fourier
    # price two-sided; the 50% price is close to the published one from above.
    assert {k for k, f in checked.items() if f["check"] == "at_most"} == set(checked) - {"risk_neutral_price"}
    assert figures["cvar50_price"]["value"] > 1.94 - 0.04
    # The mean loss is reported, not checked (its published definition is unknown): ours is ~0, as it
    # must be for martingale gains and the risk-neutral q.
    for strategy in ("cvar50", "cvar99"):
        f = figures[f"{strategy}_strategy_mean_loss"]
        assert f["agrees"] is None and abs(f["value"]) < 4 * f["stderr"]


def test_each_strategy_is_best_at_its_own_level_and_hedging_beats_the_baselines(table):
    assert table.loc["cvar50", "cvar50"] < table.loc["cvar99", "cvar50"]
    assert table.loc["cvar99", "cvar99"] < table.loc["cvar50", "cvar99"]
    for level in ("cvar50", "cvar99"):
        assert table.loc[level, f"{level}_price"] < table.loc["bs_delta", f"{level}_price"] - 0.3
        assert table.loc["bs_delta", f"{level}_price"] < table.loc["no_hedge", f"{level}_price"]


def test_natural_units_beat_positions_in_contracts(table):
    """Same steps, same paths: in contracts the variance swap is hardly used (its position is hundreds
    of contracts), so the price stays near the spot-only delta hedge's."""
    assert table.loc["cvar50", "cvar50_price"] < table.loc["cvar50_contracts", "cvar50_price"] - 0.2
