"""The no-transaction band network against the published European-call premium (Imaki et al. 2021).

Published (pfnet-research/NoTransactionBandNetwork notebook, one run; shared/design/REFERENCE-VALUES.md):
GBM sigma 0.2, S0 = K = 1, T = 30/365, dt = 1/365, cost 1e-3 on the spot, entropic risk a = 1: premium
(entropic indifference price of the hedged short call) 0.022544 for the band network, 0.022771 for
the feed-forward network.

The small scale of ``deephedge experiment ntb`` (:mod:`deephedge_tf.experiments.ntb`; the full-size run
of ``benchmarks/ntb_experiment.py`` is in BENCHMARKS.md, section "No-transaction band network vs MLP
(Imaki et al.)"):

* the grid is the one the reference code actually simulates (28 daily steps, drift -sigma^2/28; see
  the benchmark's docstring): on the nominal 30-step grid every price is ~0.0009 higher, the
  no-hedge price included;
* the band network is ``configs/ntb_bs_call.yaml``: the reference code's band, anchored on the
  Black-Scholes delta (``band_anchor: bs_delta``), the network behind the published number; the MLP is
  ``configs/mlp_bs_call.yaml``;
* both train for 30 Adam steps of 4096 fresh paths (seed 0, same paths for both) and are evaluated,
  with the no-hedge and Black-Scholes-delta baselines, on the same 65,536 out-of-sample paths.

What a = 1 allows one to check.  With a = 1 the risk aversion is small against the PnL scale
(~0.03), so the optimal hedge trades little and beats not hedging by only ~1e-4: in the full-size run
the band network prices 7e-5 (this grid) to 1.2e-4 (nominal grid) below no hedge, and the published
band premium is ~1e-4 below the no-hedge price on its grid (0.022641 +- 0.000048 there), while the
complete Black-Scholes delta hedge pays ~2e-3 of costs and prices 7% higher.  So "beats the
unhedged price by a wide margin" cannot hold for any strategy here; the wide margin is against the
delta hedge, and against no hedge the test asks for a small but strict improvement.  Tolerances,
from the full run and from seeds 0, 1, 2 of this small run on the test's evaluation paths (NTB
0.022485 to 0.022539, MLP 0.022556 to 0.022565, no hedge 0.022569, delta hedge 0.024266; the test
uses seed 0):

* (a) NTB price within 2% (4.5e-4) of 0.022544: ~3.5 standard errors of a 65,536-path price
  (1.3e-4); the small runs land within 0.3%.  The delta hedge (+7.6%) fails it; so does a band
  network trained on the sign-flipped objective (0.02426) or one that ignores the current position
  and holds the band's middle (0.02408).
* (b) NTB and MLP at least 1e-3 below the delta hedge, and at or below the no-hedge price: NTB by at
  least 1e-5 (the small runs: 3.0e-5 to 8.4e-5 below, paired s.e. 4e-5 to 6e-5: a seeded check, not
  a resolved one), MLP within 5e-5 (the small runs: 4e-6 to 1.3e-5 below); the NTB must trade (a band
  that never binds is the no-hedge strategy and would pass everything else).
* (c) NTB at most MLP + 5e-5 (the published ordering).  The small runs give NTB - MLP = -2.7e-5 to
  -7.1e-5 with a paired standard error ~3e-5: the ordering is seen but only marginally resolved at
  this size, so the tolerance forbids a clearly worse band network rather than asserting the order.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from deephedge_tf.cli import main
from deephedge_tf.experiments.ntb import experiment_config

PUBLISHED_NTB = 0.022544
PUBLISHED_MLP = 0.022771

pytestmark = pytest.mark.slow
EXPERIMENT = "ntb"  # the conftest fixture `experiment` runs its small scale


@pytest.fixture(scope="module")
def results(experiment):
    table = pd.read_csv(experiment[0] / "european.csv")
    return {row.strategy: {"price": row.price, "se": row.se, "cost": row.mean_cost} for row in table.itertuples()}


def test_the_experiment_is_the_published_setting_and_writes_its_files(experiment):
    ntb_cfg, mlp_cfg = experiment_config("european", "ntb", 0, "small"), experiment_config("european", "mlp", 0, "small")
    assert (ntb_cfg.policy.kind, mlp_cfg.policy.kind) == ("no_transaction_band", "mlp")
    assert ntb_cfg.policy.band_anchor == "bs_delta"
    assert ntb_cfg.objective.kind == "entropic" and ntb_cfg.objective.a == 1.0
    assert ntb_cfg.hedges.spot.cost == 1e-3 and ntb_cfg.time.steps == 28
    out, summary = experiment
    assert {p.name for p in out.iterdir()} == {"european.csv", "european.png", "lookback.csv", "lookback.png",
                                               "summary.json"}
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    figure = summary["figures"]["ntb_european"]
    assert figure["published"] == PUBLISHED_NTB and figure["band"] == pytest.approx(0.02 * PUBLISHED_NTB)
    assert figure["agrees"] is True
    lookback_cfg = experiment_config("lookback", "ntb", 0, "small")
    assert (lookback_cfg.derivative.kind, lookback_cfg.derivative.strike) == ("lookback", 1.03)


def test_lookback_premia_are_at_most_the_published_ones(experiment):
    """The lookback rows (the experiment's docstring: the lookback's own delta anchors the band and the
    networks see the running maximum, where the reference code anchors on the European delta): each
    network's premium is at most the published one plus 2% (an out-of-sample premium bounds the optimum
    from above; ours: band 0.01846 vs 0.018293, MLP 0.01841 vs 0.018819, the published feed-forward
    premium being above the no-hedge price as in the European case), and both beat the lookback's own
    delta hedge by a wide margin."""
    out, summary = experiment
    table = pd.read_csv(out / "lookback.csv").set_index("strategy")
    for policy in ("ntb", "mlp"):
        figure = summary["figures"][f"{policy}_lookback"]
        assert figure["check"] == "at_most" and figure["agrees"] is True, figure
        assert table.loc[policy, "price"] < table.loc["bs_delta", "price"] - 1e-3


def test_the_command_refuses_an_unknown_experiment_or_scale(tmp_path, capsys):
    assert main(["experiment", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "no experiment 'nope'; one of buehler_heston, cliquet, dhlnn, kfac_lstm, ntb, ntb_cost, price_vs_cost" in capsys.readouterr().err
    assert main(["experiment", "ntb", "--out", str(tmp_path / "o"), "--scale", "huge"]) == 2
    assert "scale must be one of 'small', 'full'; got 'huge'" in capsys.readouterr().err
    assert main(["experiment", "ntb", "--out", str(tmp_path / "o"), "--seeds", "-1"]) == 2
    assert "seeds must be non-negative integers; got [-1]" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_ntb_price_is_the_published_premium(results):
    price = results["ntb"]["price"]
    assert results["ntb"]["se"] < 2e-4
    assert price == pytest.approx(PUBLISHED_NTB, rel=0.02), {k: v["price"] for k, v in results.items()}


def test_both_beat_the_delta_hedge_widely_and_no_hedge_narrowly(results):
    p = {k: v["price"] for k, v in results.items()}
    for name in ("ntb", "mlp"):
        assert p[name] < p["bs_delta"] - 1e-3, p
    assert p["ntb"] < p["no_hedge"] - 1e-5, p
    assert p["mlp"] < p["no_hedge"] + 5e-5, p
    assert results["ntb"]["cost"] > 5e-5, "the band network never trades: its band never binds"
    assert results["ntb"]["cost"] < 0.5 * results["bs_delta"]["cost"]


def test_ntb_is_no_worse_than_the_mlp(results):
    p = {k: v["price"] for k, v in results.items()}
    assert p["ntb"] <= p["mlp"] + 5e-5, p
    # The published feed-forward premium is above the published band premium by 2.3e-4; ours must not
    # be above it by more than the same tolerance as (a).
    assert p["mlp"] == pytest.approx(PUBLISHED_MLP, rel=0.02), p

def test_ntb_cost_figures_count_where_the_band_is_best():
    """``ntb_cost``'s figures (deephedge_tf.experiments.ntb): the band is 'best' at a rate unless a rival's
    paired price is lower by more than two s.e.; the top rate compares the band with no hedge."""
    from deephedge_tf.experiments.ntb import _cost_figures

    rows = []
    for cost, mlp, ww in ((1e-4, 0.001, -0.0005), (1e-3, 0.002, 0.003), (1e-2, -0.004, 0.001)):  # rivals - band
        rows += [{"cost": cost, "strategy": "ntb", "minus_ntb": 0.0, "minus_ntb_se": 0.0},
                 {"cost": cost, "strategy": "mlp", "minus_ntb": mlp, "minus_ntb_se": 0.001},
                 {"cost": cost, "strategy": "whalley_wilmott", "minus_ntb": ww, "minus_ntb_se": 0.001},
                 {"cost": cost, "strategy": "no_hedge", "minus_ntb": 0.01 if cost < 1e-2 else 0.0005,
                  "minus_ntb_se": 0.0002}]
    figures = {f.key: f for f in _cost_figures(pd.DataFrame(rows))}
    assert figures["ntb_best_share"].value == pytest.approx(2 / 3)  # WW -0.0005 is within 2 s.e.; MLP -0.004 not
    assert figures["ntb_vs_no_hedge_top_cost"].value == pytest.approx(-0.0005)
    assert figures["ntb_vs_no_hedge_top_cost"].stderr == pytest.approx(0.0002)

