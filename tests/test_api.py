"""The composable Python API: the README's example runs as written, every public name is importable
from the top level, and the protocols' capabilities are used (or refused by name) as documented."""

import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import deephedge_tf as dh
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.features import feature_names, make_batch
from deephedge_tf.run import reference_price

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The README block that starts with ``import deephedge_tf as dh`` and trains with DHKFAC."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if "import deephedge_tf as dh" in b and "dh.DHKFAC()" in b]
    return block


def test_readme_example_runs_as_written_and_hedges():
    namespace = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)  # noqa: S102 - our own README
    report = namespace["report"]
    assert list(report.index) == ["hedged", "unhedged"]  # no delta baseline: an Asian has no greeks
    assert report.loc["hedged", "n_paths"] == 50_000
    # 30 DH-KFAC steps must beat not hedging by far more than the evaluation noise (ES-50% of the
    # unhedged short Asian ~2.2, its s.e. on 50k paths ~0.01).
    assert report.loc["hedged", "objective"] < 0.9 * report.loc["unhedged", "objective"]


def test_every_public_name_is_importable_from_the_top_level():
    for name in dh.__all__:
        assert getattr(dh, name) is not None, name
    for name in ("GBM", "Heston", "PathDerivative", "Spot", "VarianceSwapHedge", "FloatingGrid", "Hedger",
                 "RecurrentPolicy", "MLPPolicy", "NoTransactionBandPolicy", "EntropicRisk", "MeanVariance",
                 "ExpectedShortfall", "Cliquet", "DHKFAC", "PathBatches", "evaluate"):
        assert name in dh.__all__ and name in dir(dh)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dh.Nope  # noqa: B018


def test_markets_refuse_bad_parameters_where_they_are_made():
    with pytest.raises(DeepHedgeError, match="GBM: sigma must be >= 0"):
        dh.GBM(sigma=-0.1)
    with pytest.raises(DeepHedgeError, match="Heston: rho must be >= -1.0 and <= 1.0"):
        dh.Heston(rho=1.5)
    with pytest.raises(DeepHedgeError, match="steps must be an integer >= 1"):
        dh.Heston(steps=0)
    with pytest.raises(TypeError):
        dh.GBM(100.0)  # keyword-only: a positional s0 could be taken for another field


def test_reference_prices_come_from_the_market_or_say_why_not():
    from deephedge_tf.pricing import bs_price, heston_price

    gbm = dh.GBM(s0=100.0, sigma=0.25, steps=20, dt=1 / 365)
    years = 20 / 365
    price, method = reference_price(gbm, dh.EuropeanOption(strike=95.0, is_call=False))
    assert method == "Black-Scholes" and price == pytest.approx(float(bs_price(100.0, 95.0, years, 0.25,
                                                                             is_call=False)), rel=1e-12)
    spread, _ = reference_price(gbm, dh.CallSpread(100.0, 110.0, maturity_steps=10))
    expected = float(bs_price(100.0, 100.0, 10 / 365, 0.25) - bs_price(100.0, 110.0, 10 / 365, 0.25))
    assert spread == pytest.approx(expected, rel=1e-12)
    heston = dh.Heston(s0=100.0, v0=0.04, kappa=1.0, theta=0.04, xi=2.0, rho=-0.7, steps=30, dt=1 / 365)
    price, method = reference_price(heston, dh.EuropeanOption(strike=100.0))
    assert method == "Heston Fourier"
    assert price == pytest.approx(float(heston_price(100.0, 100.0, 30 / 365, 0.04, 1.0, 0.04, 2.0, -0.7)), rel=1e-10)
    assert reference_price(gbm, dh.LookbackCall(100.0)) == (None, "none (no closed form for this payoff; "
                                                                  "Monte Carlo only)")
    assert reference_price(gbm, dh.PathDerivative(lambda p: p.spot[-1]))[0] is None
    assert reference_price(dh.GBM(mu=0.05), dh.EuropeanOption(1.0))[1].startswith("none (the market has a drift")

    class OwnMarket:  # a user's market: simulation only
        steps, dt, s0 = 5, 1 / 365, 1.0

        def simulate(self, num_paths, start=0, seed=None):
            return dh.GBM(steps=5).simulate(num_paths, start, seed)

    assert reference_price(OwnMarket(), dh.EuropeanOption(1.0)) == (None, "none (OwnMarket has no pricing model)")


def test_instruments_take_what_they_need_from_the_market_or_name_what_is_missing():
    heston = dh.Heston(kappa=1.5, theta=0.05, steps=10)
    bound = dh.bind_instruments([dh.Spot(), dh.VarianceSwapHedge(), dh.FloatingGrid((1.0,), (5,))], heston)
    assert (bound[1].kappa, bound[1].theta) == (1.5, 0.05)
    assert bound[2].premium_over_spot is not None
    with pytest.raises(DeepHedgeError, match="VarianceSwapHedge: the market GBM has no variance_reversion"):
        dh.bind_instruments([dh.VarianceSwapHedge()], dh.GBM())
    with pytest.raises(DeepHedgeError, match="kappa, theta not set"):
        dh.VarianceSwapHedge().tensors(heston.simulate(4))


def test_lookback_observes_its_running_maximum_and_can_be_told_not_to():
    market = dh.GBM(s0=100.0, sigma=0.3, steps=12, dt=1 / 52, dtype="float64")
    paths = market.simulate(64)
    lookback = dh.LookbackCall(strike=105.0)
    assert feature_names(lookback) == ("time", "log_moneyness", "vol", "log_running_max")
    features = make_batch(paths, lookback, [dh.Spot()])["obs"]["features"].numpy()  # [B, T, F]
    expected = np.log(np.maximum.accumulate(paths.spot.numpy()[:-1], axis=0) / 105.0).T
    np.testing.assert_allclose(features[..., 3], expected, rtol=1e-12)
    blind = dh.LookbackCall(strike=105.0, path_features=False)
    assert feature_names(blind) == ("time", "log_moneyness", "vol")
    assert make_batch(paths, blind, [dh.Spot()])["obs"]["features"].shape[-1] == 3


def test_path_derivative_features_are_checked():
    market = dh.GBM(steps=6)
    paths = market.simulate(5)
    good = dh.PathDerivative(lambda p: p.spot[-1], features={"drawdown": lambda p: p.spot[:-1] / p.spot[0] - 1.0})
    assert make_batch(paths, good, [dh.Spot()])["obs"]["features"].shape == (5, 6, 4)
    wrong = dh.PathDerivative(lambda p: p.spot[-1], features={"all_times": lambda p: p.spot})
    with pytest.raises(DeepHedgeError, match=r"feature 'all_times' has shape \(7, 5\); expected \[T, B\]"):
        make_batch(paths, wrong, [dh.Spot()])
    with pytest.raises(DeepHedgeError, match="features must map names to functions"):
        dh.PathDerivative(lambda p: p.spot[-1], features={"x": 1.0})


def test_path_batches_refuse_what_is_not_a_market_or_a_size():
    market = dh.GBM(steps=4)
    with pytest.raises(ValueError, match="batches_per_epoch must be an integer >= 1"):
        dh.PathBatches(market, dh.EuropeanOption(1.0), [dh.Spot()], batch_size=8, batches_per_epoch=0)
    with pytest.raises(DeepHedgeError, match="a market needs steps, dt and simulate"):
        dh.PathBatches(object(), dh.EuropeanOption(1.0), [dh.Spot()], batch_size=8, batches_per_epoch=1)


def test_evaluate_adds_the_delta_baseline_where_it_applies():
    tf.keras.utils.set_random_seed(0)
    market = dh.GBM(s0=100.0, sigma=0.2, steps=8, dt=1 / 365, seed=4)
    hedger = dh.Hedger(dh.MLPPolicy(num_layers=1, width=4), dh.MeanVariance(gamma=1.0))
    report = dh.evaluate(hedger, market, dh.EuropeanOption(100.0), [dh.Spot(cost=0.0)], paths=4000)
    assert list(report.index) == ["hedged", "unhedged", "bs_delta"]
    # the delta hedge removes most of the variance of the short call (paths of 8 daily steps)
    assert report.loc["bs_delta", "pnl_std"] < 0.5 * report.loc["unhedged", "pnl_std"]
    again = dh.evaluate(hedger, market, dh.EuropeanOption(100.0), [dh.Spot(cost=0.0)], paths=4000)
    assert again.equals(report)  # same paths (the market's seed + 2), same numbers


def test_lookback_running_maximum_feature_beats_the_same_policy_without_it():
    """configs/lookback_mlp.yaml from YAML twice, with and without the lookback's running-maximum feature,
    evaluated on the same paths: the per-path mean-variance risk -x + gamma (x - mean x)^2 is lower with
    the feature (paired t-test, one-sided)."""
    from deephedge_tf.config import load_config
    from deephedge_tf.evaluation import paired_t_test
    from deephedge_tf.run import evaluate_strategies
    from deephedge_tf.training import build_parts, fit_hedger, make_hedger

    risks = {}
    for flag in ("true", "false"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs/lookback_mlp.yaml",
                          [f"derivative.path_features={flag}"])
        parts = build_parts(cfg)
        hedger = make_hedger(cfg, parts)
        fit_hedger(cfg, hedger, parts, verbose=0)
        pnl = evaluate_strategies(cfg, hedger, parts)["hedged"]["pnl"].astype(np.float64)
        risks[flag] = -pnl + cfg.objective.gamma * (pnl - pnl.mean()) ** 2
    test = paired_t_test(risks["true"], risks["false"], alternative="less")
    assert test["p_value"] < 1e-3, test
