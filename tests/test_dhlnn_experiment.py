"""Experiment ``dhlnn`` (deephedge_tf.experiments.dhlnn): its configs, the claim that the paper's strike 1.2 at
sigma 0.1 never pays, the summary figures' arithmetic, and the whole pipeline at a micro size.  The small
scale itself takes minutes (docs/experiments.md has its numbers) and is not run here."""

import math

import numpy as np
import pandas as pd

from deephedge_tf.experiments import Context, dhlnn
from deephedge_tf.pricing.black_scholes import bs_price


def test_configs_are_the_papers_setting():
    cfg = dhlnn.experiment_config("dhlnn", "european", 1.0, 2e-3, 0, "small")
    assert (cfg.training.optimizer, cfg.policy.kind, cfg.policy.num_layers, cfg.policy.width) == (
        "dhlnn", "delta_band", 4, 64)
    assert (cfg.time.steps, cfg.market.gbm.sigma, cfg.market.gbm.mu, cfg.market.s0) == (30, 0.1, 0.0, 1.0)
    assert math.isclose(cfg.time.dt, 1 / 365)
    assert (cfg.objective.kind, cfg.objective.a, cfg.hedges.spot.cost) == ("entropic", 1.0, 2e-3)
    assert cfg.training.batches_per_epoch == 1 and cfg.training.learning_rate == 1e-3
    adam = dhlnn.experiment_config("band_adam", "lookback", 1.0, 8e-3, 1, "full", sigma=0.3)
    assert (adam.training.optimizer, adam.policy.kind, adam.derivative.kind, adam.market.gbm.sigma) == (
        "adam", "delta_band", "lookback", 0.3)
    assert adam.training.batch_size == 10_000 and adam.training.epochs == 50
    assert dhlnn.experiment_config("ntb", "european", 1.0, 2e-3, 0, "small").policy.band_anchor == "bs_delta"


def test_strike_1_2_at_sigma_0_1_never_pays():
    """The module doc's reason for strike 1.0 in the convergence and cost settings: the paper's 30-day call
    at strike 1.2 and sigma 0.1 is worth < 1e-9 (~7 standard deviations out of the money), at sigma 0.4 not."""
    tau = 30 / 365
    assert float(bs_price(1.0, 1.2, tau, 0.1)) < 1e-9
    assert float(bs_price(1.0, 1.2, tau, 0.4)) > 1e-3


def _cell(epoch, gaps_es, gaps_ent, seed=0):
    """Rows of one cell: DHLNN's paired gap to the best rival and its s.e. on every row."""
    rows = []
    for strategy in dhlnn.STRATEGIES:
        rows.append({"setting": "convergence", "payoff": "european", "strike": 1.0, "cost": 2e-3,
                     "test_sigma": 0.1, "seed": seed, "epoch": epoch, "strategy": strategy,
                     "es": 1.0 + 0.1 * (strategy == "band_adam"), "es_se": 0.01, "entropic": 0.5, "entropic_se": 0.01,
                     "train_wall_s": {"dhlnn": 30.0, "band_adam": 10.0}.get(strategy, 5.0),
                     "dhlnn_gap_es": gaps_es[0], "dhlnn_gap_es_se": gaps_es[1],
                     "dhlnn_gap_entropic": gaps_ent[0], "dhlnn_gap_entropic_se": gaps_ent[1],
                     "dhlnn_minus_band_adam": -1e-4 * epoch, "dhlnn_minus_band_adam_se": 1e-5})
    return rows


def test_figures_count_cells_within_two_paired_standard_errors():
    # Cell 1: DHLNN best on both; cell 2: 1.5 s.e. behind on ES (counts), 3 s.e. behind on entropic (does not).
    table = pd.DataFrame(_cell(5, (-0.01, 0.01), (-0.02, 0.01)) + _cell(10, (0.015, 0.01), (0.03, 0.01)))
    figures = {f.key: f for f in dhlnn.figures(table, (5, 10))}
    assert figures["dhlnn_best_share_es"].value == 1.0
    assert figures["dhlnn_best_share_entropic"].value == 0.5
    assert math.isclose(figures["dhlnn_minus_band_adam_first"].value, -5e-4)
    assert math.isclose(figures["dhlnn_minus_band_adam_last"].value, -1e-3)
    assert math.isclose(figures["dhlnn_wall_per_epoch_ratio"].value, 3.0)
    assert all(f.published is None for f in figures.values())  # the paper has no numbers


def test_paired_gap_is_dhlnn_minus_the_best_rival():
    rng = np.random.default_rng(0)
    base = rng.standard_normal(4096) * 0.01
    pnls = {"dhlnn": base + 0.002, "band_adam": base, "ntb": base - 0.001, "mlp": base - 0.0005,
            "bs_delta": base - 0.003}
    rows = dhlnn._rows("convergence", "european", 1.0, 2e-3, 0.1, 0, pnls, 5, {})
    # A shift of the PnL by c moves ES and the entropic loss by -c: the best rival is band_adam (the highest
    # PnL after DHLNN's), 0.002 behind.
    assert math.isclose(rows[0]["dhlnn_gap_es"], -0.002, abs_tol=1e-12)
    assert math.isclose(rows[0]["dhlnn_gap_entropic"], -0.002, abs_tol=1e-9)
    assert rows[0]["dhlnn_gap_es_se"] < 1e-9  # pure shifts: every resample gives the same gap
    assert math.isclose(rows[0]["dhlnn_minus_band_adam"], -0.002, abs_tol=1e-9)


def test_pipeline_at_a_micro_size(tmp_path, monkeypatch):
    """DHLNN and the band with Adam trained and scored at a micro size (the other networks train the same
    way): the rows, the checkpoints and the baseline."""
    monkeypatch.setitem(dhlnn.SIZES, "small", {"epochs": 2, "batch": 128, "checkpoints": (1, 2),
                                               "eval_paths": 2048})
    monkeypatch.setattr(dhlnn, "TRAINED", {k: ({**p, "num_layers": 1, "width": 8}, o)
                                           for k, (p, o) in dhlnn.TRAINED.items() if k in ("dhlnn", "band_adam")})
    ctx = Context(tmp_path, "small", (0,), echo=lambda _: None)
    rows = pd.DataFrame(dhlnn._run_setting(ctx, "convergence", "european", 1.0, 2e-3, 0, (0.1,)))
    assert sorted(rows.epoch.unique()) == [1, 2]
    assert set(rows.strategy) == {"dhlnn", "band_adam", "bs_delta", "no_hedge"}
    assert np.isfinite(rows[["es", "entropic", "dhlnn_gap_es", "dhlnn_minus_band_adam"]].to_numpy()).all()
    # the baselines need no training and are the same at every checkpoint; not trading costs nothing
    assert rows[rows.strategy == "bs_delta"].es.nunique() == 1
    no_hedge = rows[rows.strategy == "no_hedge"]
    assert no_hedge.es.nunique() == 1 and no_hedge.es.iloc[0] > 0
