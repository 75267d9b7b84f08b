"""Evaluation metrics against independent computations (by hand, by sorting, scipy), and plots.

The risk measures are checked against formulas other than the ones the module uses: ES against
the Rockafellar-Uryasev minimisation and against replicated samples whose tail is a whole number
of outcomes; VaR against numpy's inverted-CDF quantile; the t-tests against textbook formulas.
"""

import math
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpl_image
from scipy import stats

from deephedge_tf.evaluation import (
    entropic_risk, entropic_risk_se, expected_shortfall, expected_shortfall_se, metrics_table, paired_entropic_difference,
    paired_t_test, plot_hedges_over_time, plot_learning_curves, plot_pnl_histograms, strategy_metrics, value_at_risk, welch_t_test)
from deephedge_tf.evaluation import plots as plots_module

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DEFAULT_COLUMNS = [
    "n_paths", "pnl_mean", "pnl_mean_se", "pnl_std", "pnl_skew", "pnl_kurtosis",
    "var_90", "var_95", "var_99", "es_90", "es_95", "es_99", "entropic",
    "cost_mean", "cost_mean_se", "turnover_mean", "turnover_mean_se"]


# ------------------------------------------------------------------------------------------------
# risk measures


def test_var_es_by_hand():
    rng = np.random.default_rng(0)
    losses = rng.permutation(np.arange(1.0, 101.0))  # PnL -1 ... -100, shuffled
    pnl = -losses
    # Worst 5 of 100 outcomes: -100 ... -96; the 5th worst is the 95% VaR.
    assert value_at_risk(pnl, 0.95) == 96.0
    assert expected_shortfall(pnl, 0.95) == pytest.approx(98.0, abs=1e-12)
    assert value_at_risk(pnl, 0.90) == 91.0
    assert expected_shortfall(pnl, 0.90) == pytest.approx(95.5, abs=1e-12)
    assert value_at_risk(pnl, 0.99) == 100.0
    assert expected_shortfall(pnl, 0.99) == 100.0
    # All gains: both are negative loss numbers.
    assert value_at_risk(losses, 0.95) == -5.0
    assert expected_shortfall(losses, 0.95) == pytest.approx(-3.0, abs=1e-12)
    # alpha = 0: ES is minus the mean, VaR minus the largest outcome.
    assert expected_shortfall(pnl, 0.0) == pytest.approx(50.5, abs=1e-12)
    assert value_at_risk(pnl, 0.0) == 1.0


def test_es_of_four_points_has_fractional_boundary_weight():
    pnl = -np.array([0.0, 1.0, 2.0, 3.0])
    assert expected_shortfall(pnl, 0.5) == pytest.approx(2.5, abs=1e-12)
    assert value_at_risk(pnl, 0.5) == 2.0
    # Tail of 0.8 * 4 = 3.2 outcomes: (3 + 2 + 1 + 0.2 * 0) / 3.2
    assert expected_shortfall(pnl, 0.2) == pytest.approx(6.0 / 3.2, abs=1e-12)
    # Tail of 0.3 * 4 = 1.2 outcomes: (3 + 0.2 * 2) / 1.2
    assert expected_shortfall(pnl, 0.7) == pytest.approx(3.4 / 1.2, abs=1e-12)


def test_var_matches_numpy_inverted_cdf_quantile():
    rng = np.random.default_rng(1)
    x = rng.standard_t(4, size=1003)  # 1003 (1 - alpha) is far from an integer for these levels
    for alpha in (0.5, 0.9, 0.95, 0.975, 0.99, 0.999):
        ref = -np.quantile(x, 1.0 - alpha, method="inverted_cdf")
        assert value_at_risk(x, alpha) == ref


def test_tail_size_that_is_integer_up_to_rounding_is_snapped():
    # 1000 * (1 - 0.95) = 50.000000000000043 in floating point: the tail is 50 outcomes.
    x = np.random.default_rng(2).normal(size=1000)
    xs = np.sort(x)
    assert value_at_risk(x, 0.95) == -xs[49]
    assert expected_shortfall(x, 0.95) == pytest.approx(-xs[:50].mean(), rel=1e-13)
    assert expected_shortfall(x, 0.9) == pytest.approx(-xs[:100].mean(), rel=1e-13)


def test_es_against_replicated_sample():
    # 13 * (1 - 0.75) = 3.25 outcomes; repeating every outcome 4 times makes the tail 13 whole
    # outcomes of a sample with the same distribution, where ES is a plain mean.
    x = np.random.default_rng(3).normal(size=13)
    replicated = np.sort(np.repeat(x, 4))
    assert expected_shortfall(x, 0.75) == pytest.approx(-replicated[:13].mean(), rel=1e-13)
    x = np.random.default_rng(4).normal(size=7)  # 7 * 0.3 = 2.1 -> repeat 10 times, tail 21
    replicated = np.sort(np.repeat(x, 10))
    assert expected_shortfall(x, 0.7) == pytest.approx(-replicated[:21].mean(), rel=1e-13)


def test_es_is_rockafellar_uryasev_minimum_and_at_least_var():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=600), -rng.exponential(3.0, size=397)])
    losses = -x
    for alpha in (0.5, 0.8, 0.9, 0.95, 0.99):
        # c + E[(L - c)^+] / (1 - alpha) is convex and piecewise linear in c with kinks at the
        # sample losses, so its minimum is attained at one of them.
        objective = losses + np.maximum(losses[None, :] - losses[:, None], 0.0).mean(1) / (1 - alpha)
        es = expected_shortfall(x, alpha)
        var = value_at_risk(x, alpha)
        assert es == pytest.approx(objective.min(), rel=1e-12)
        # VaR is a minimiser of the same objective.
        assert var + np.maximum(losses - var, 0.0).mean() / (1 - alpha) == pytest.approx(es, rel=1e-12)
        assert es >= var


def test_entropic_risk_values_and_overflow_safety():
    assert entropic_risk(-np.array([0.0, 1.0, 2.0, 3.0])) == pytest.approx(2.0539, abs=1e-4)
    assert entropic_risk(-np.array([0.0, 1.0, 2.0, 3.0])) == pytest.approx(
        math.log((1 + math.e + math.e**2 + math.e**3) / 4), abs=1e-14)
    # exp(1000) and exp(1e4) overflow float64; the results are still exact.
    assert entropic_risk([1000.0, 0.0]) == pytest.approx(-math.log(2.0), abs=1e-12)
    assert entropic_risk([0.0, -1000.0]) == pytest.approx(1000.0 - math.log(2.0), rel=1e-14)
    assert entropic_risk([1e4, -1e4]) == pytest.approx(1e4 - math.log(2.0), rel=1e-14)
    assert entropic_risk([1e4, 1e4]) == pytest.approx(-1e4, rel=1e-14)
    assert entropic_risk([-1e4, -1e4]) == pytest.approx(1e4, rel=1e-14)
    # Risk aversion a: (1/a) log mean exp(-a X); small a tends to -mean, large a to -min.
    x = np.array([0.5, -0.25, 1.0])
    assert entropic_risk(x, a=2.0) == pytest.approx(0.5 * math.log(np.mean(np.exp(-2.0 * x))), rel=1e-14)
    assert entropic_risk(x, a=1e-6) == pytest.approx(-x.mean(), abs=1e-6)
    assert entropic_risk(x, a=1e4) == pytest.approx(0.25, abs=1e-3)


def test_entropic_standard_errors_match_the_spread_of_repeated_estimates():
    """Monte Carlo check of the delta method: over 400 independent samples of 2,000 paths, the spread of
    the entropic risk estimates (and of the paired difference of two correlated strategies) matches the
    standard errors the functions give from one sample, within the spread's own sampling error (~3.5%)."""
    rng = np.random.default_rng(11)
    a = 5.0
    estimates, diffs, ses, diff_ses = [], [], [], []
    for _ in range(400):
        common = rng.normal(0.0, 0.1, size=2000)
        x = common + rng.normal(0.0, 0.02, size=2000)      # two strategies sharing the payoff noise
        y = 0.9 * common + rng.normal(0.0, 0.03, size=2000)
        estimates.append(entropic_risk(x, a))
        ses.append(entropic_risk_se(x, a))
        d, d_se = paired_entropic_difference(x, y, a)
        assert d == pytest.approx(entropic_risk(x, a) - entropic_risk(y, a), abs=1e-14)
        diffs.append(d)
        diff_ses.append(d_se)
    assert np.std(estimates, ddof=1) == pytest.approx(np.mean(ses), rel=0.12)
    assert np.std(diffs, ddof=1) == pytest.approx(np.mean(diff_ses), rel=0.12)
    assert np.mean(diff_ses) < 0.5 * np.mean(ses)  # pairing removes the shared noise


@pytest.mark.parametrize("alpha", [0.5, 0.99])
def test_shortfall_standard_error_matches_the_spread_of_repeated_estimates(alpha):
    """Monte Carlo check of the influence-function standard error of the expected shortfall on a skewed
    (lognormal-tailed) loss, at the two levels of Buehler et al.'s experiment: over 400 samples of 4,000
    paths the spread of the estimates matches the mean standard error within 12% (the spread's own
    sampling error is ~3.5%; at 99% the 40-path tail adds a small-sample bias)."""
    rng = np.random.default_rng(5)
    estimates, ses = [], []
    for _ in range(400):
        pnl = -np.exp(rng.normal(0.0, 0.5, size=4000))
        estimates.append(expected_shortfall(pnl, alpha))
        ses.append(expected_shortfall_se(pnl, alpha))
    assert np.std(estimates, ddof=1) == pytest.approx(np.mean(ses), rel=0.12)


def test_accepts_lists_and_array_likes():
    class Tensorish:  # stands in for an eager tf.Tensor, which numpy converts the same way
        def __array__(self, dtype=None, copy=None):
            return np.array([0.0, -1.0, -2.0, -3.0], dtype=dtype)

    assert expected_shortfall(Tensorish(), 0.5) == pytest.approx(2.5)
    assert value_at_risk([0, -1, -2, -3], 0.5) == 2.0
    assert strategy_metrics(np.float32([1, 2, 3]))["pnl_mean"] == 2.0


def test_accepts_tensorflow_tensors(tmp_path):
    tf = pytest.importorskip("tensorflow")
    pnl = tf.constant([0.0, -1.0, -2.0, -3.0], dtype=tf.float32)
    assert expected_shortfall(pnl, 0.5) == pytest.approx(2.5)
    assert strategy_metrics(pnl, costs=tf.zeros([4]))["cost_mean"] == 0.0
    read_png(plot_hedges_over_time(tf.reshape(tf.range(24.0), [4, 3, 2]), tmp_path / "tf.png"))


# ------------------------------------------------------------------------------------------------
# summaries


def test_strategy_metrics_against_direct_computation():
    rng = np.random.default_rng(6)
    pnl = rng.gamma(2.0, size=2000) - 2.0  # skewed
    costs = rng.uniform(0.0, 0.1, size=2000)
    turnover = rng.uniform(0.0, 5.0, size=2000)
    m = strategy_metrics(pnl, costs=costs, turnover=turnover, entropic_a=0.5)
    assert list(m) == DEFAULT_COLUMNS
    assert m["n_paths"] == 2000
    assert m["pnl_mean"] == pytest.approx(pnl.mean(), rel=1e-13)
    assert m["pnl_std"] == pytest.approx(np.std(pnl, ddof=1), rel=1e-13)
    assert m["pnl_mean_se"] == pytest.approx(np.std(pnl, ddof=1) / math.sqrt(2000), rel=1e-13)
    assert m["pnl_skew"] == pytest.approx(stats.skew(pnl), rel=1e-12)
    assert m["pnl_skew"] > 1.0  # Gamma(2) has skewness sqrt(2)
    assert m["pnl_kurtosis"] == pytest.approx(stats.kurtosis(pnl), rel=1e-12)
    xs = np.sort(pnl)
    assert m["var_95"] == -xs[99] and m["es_95"] == pytest.approx(-xs[:100].mean(), rel=1e-13)
    assert m["var_99"] == -xs[19] and m["es_99"] == pytest.approx(-xs[:20].mean(), rel=1e-13)
    assert m["es_90"] >= m["var_90"] and m["es_99"] >= m["es_95"] >= m["es_90"]
    assert m["entropic"] == pytest.approx(2.0 * math.log(np.mean(np.exp(-0.5 * pnl))), rel=1e-12)
    assert m["cost_mean"] == pytest.approx(costs.mean(), rel=1e-13)
    assert m["cost_mean_se"] == pytest.approx(np.std(costs, ddof=1) / math.sqrt(2000), rel=1e-13)
    assert m["turnover_mean"] == pytest.approx(turnover.mean(), rel=1e-13)


def test_strategy_metrics_optional_inputs_and_degenerate_samples():
    m = strategy_metrics([1.0, 1.0, 1.0], levels=(0.5, 0.975))
    assert [k for k in m if k.startswith(("var", "es"))] == ["var_50", "var_97_5", "es_50", "es_97_5"]
    assert math.isnan(m["cost_mean"]) and math.isnan(m["turnover_mean_se"])
    assert math.isnan(m["pnl_skew"]) and m["pnl_std"] == 0.0  # constant sample: no moments
    one = strategy_metrics([2.0])
    assert one["es_99"] == -2.0 and math.isnan(one["pnl_std"]) and math.isnan(one["pnl_mean_se"])


def test_metrics_table_index_and_columns():
    rng = np.random.default_rng(7)
    table = metrics_table({
        "deep hedge": {"pnl": rng.normal(0, 0.1, 300), "costs": rng.uniform(size=300),
                       "turnover": rng.uniform(size=300)},
        "delta": {"pnl": rng.normal(0, 0.2, 300)},
        "unhedged": rng.normal(0, 1.0, 500),  # a bare PnL array
    })
    assert isinstance(table, pd.DataFrame)
    assert list(table.index) == ["deep hedge", "delta", "unhedged"]
    assert table.index.name == "strategy"
    assert list(table.columns) == DEFAULT_COLUMNS
    assert table.loc["unhedged", "n_paths"] == 500
    assert table.loc["delta", "es_95"] > table.loc["deep hedge", "es_95"]
    assert math.isnan(table.loc["delta", "cost_mean"]) and table.loc["deep hedge", "cost_mean"] > 0
    custom = metrics_table({"a": [1.0, 2.0, 3.0]}, levels=(0.8,), entropic_a=2.0)
    assert list(custom.columns)[6:9] == ["var_80", "es_80", "entropic"]


# ------------------------------------------------------------------------------------------------
# t-tests


def test_paired_t_test_by_hand_and_against_scipy():
    # Five scenarios move both strategies a lot; b is consistently a little worse than a.
    scenario = np.array([-3.0, 1.5, 4.0, -0.5, 2.0])
    a = scenario + np.array([0.10, 0.30, 0.20, 0.25, 0.15])
    b = scenario
    d = a - b  # [0.1, 0.3, 0.2, 0.25, 0.15]: mean 0.2, sample sd sqrt(0.00625)
    se = math.sqrt(0.00625) / math.sqrt(5)
    t = 0.2 / se
    res = paired_t_test(a, b)
    assert res["mean_diff"] == pytest.approx(0.2, abs=1e-14)
    assert res["se"] == pytest.approx(se, rel=1e-12)
    assert res["t"] == pytest.approx(t, rel=1e-12)
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(t, df=4), rel=1e-10)
    assert res["df"] == 4 and res["n"] == 5
    ref = stats.ttest_rel(a, b)
    assert res["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert res["p_value"] < 0.01
    # Welch ignores the pairing: the common scenario noise swamps the difference.
    welch = welch_t_test(a, b)
    assert welch["mean_diff"] == pytest.approx(res["mean_diff"], abs=1e-14)
    assert welch["p_value"] > 0.5 and welch["se"] > 10 * res["se"]
    one_sided = paired_t_test(a, b, alternative="greater")
    assert one_sided["p_value"] == pytest.approx(res["p_value"] / 2, rel=1e-10)
    assert d.mean() == pytest.approx(res["mean_diff"], abs=1e-14)


def test_welch_t_test_by_hand_and_against_scipy():
    rng = np.random.default_rng(8)
    a, b = rng.normal(0.1, 1.0, 40), rng.normal(0.0, 3.0, 25)
    va, vb = a.var(ddof=1) / 40, b.var(ddof=1) / 25
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 39 + vb**2 / 24)
    t = (a.mean() - b.mean()) / se
    res = welch_t_test(a, b)
    assert res["se"] == pytest.approx(se, rel=1e-12)
    assert res["t"] == pytest.approx(t, rel=1e-12)
    assert res["df"] == pytest.approx(df, rel=1e-12)
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-10)
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert res["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert res["n"] == 65
    # On independent samples of equal size with equal variances the two tests nearly agree.
    c, e = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000)
    assert paired_t_test(c, e)["se"] == pytest.approx(welch_t_test(c, e)["se"], rel=0.1)


def test_t_tests_with_zero_standard_error_do_not_warn():
    a = np.array([1.0, 2.0, 3.0])
    with np.errstate(all="raise"):
        same = paired_t_test(a, a)
        shifted = paired_t_test(a + 0.5, a, alternative="less")
    assert math.isnan(same["t"]) and math.isnan(same["p_value"]) and same["se"] == 0.0
    assert shifted["t"] == math.inf and shifted["p_value"] == 1.0
    welch = welch_t_test([1.0, 1.0], [0.0, 0.0])
    assert welch["t"] == math.inf and welch["p_value"] == 0.0


# ------------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize("call, name", [
    (lambda: value_at_risk([], 0.95), "'pnl'"),
    (lambda: expected_shortfall([0.0, np.nan], 0.95), "'pnl'"),
    (lambda: entropic_risk([0.0, np.inf]), "'pnl'"),
    (lambda: value_at_risk(np.zeros((3, 2)), 0.95), "'pnl'"),
    (lambda: value_at_risk(["a", "b"], 0.95), "'pnl'"),
    (lambda: expected_shortfall([1.0], 1.0), "'alpha'"),
    (lambda: entropic_risk([1.0], a=0.0), "'a'"),
    (lambda: strategy_metrics(None), "'pnl'"),
    (lambda: strategy_metrics([1.0, 2.0], costs=[1.0]), "'costs'"),
    (lambda: strategy_metrics([1.0, 2.0], turnover=[1.0, np.inf]), "'turnover'"),
    (lambda: strategy_metrics([1.0, 2.0], levels=(0.9, 1.0)), "'levels'"),
    (lambda: strategy_metrics([1.0, 2.0], levels=0.9), "'levels'"),
    (lambda: strategy_metrics([1.0, 2.0], entropic_a=-1.0), "'entropic_a'"),
    (lambda: metrics_table({}), "'strategies'"),
    (lambda: metrics_table({"delta": {"pnl": [np.nan]}}), "strategies['delta']['pnl']"),
    (lambda: metrics_table({"delta": {"pnl": [1.0], "costs": [1.0, 2.0]}}),
     "strategies['delta']['costs']"),
    (lambda: metrics_table({"delta": {"pnl": [1.0], "cost": [1.0]}}), "'cost'"),
    (lambda: metrics_table({"delta": {"costs": [1.0]}}), "'pnl'"),
    (lambda: paired_t_test([1.0, 2.0], [1.0, 2.0, 3.0]), "'pnl_b'"),
    (lambda: paired_t_test([1.0], [1.0]), "'pnl_a'"),
    (lambda: paired_entropic_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "'pnl_b' must have one value per path"),
    (lambda: paired_entropic_difference([1.0, 2.0], [1.0, 2.0], a=-1.0), "'a'"),
    (lambda: entropic_risk_se([1.0]), "'pnl'"),
    (lambda: welch_t_test([1.0, 2.0], [np.nan, 1.0]), "'pnl_b'"),
    (lambda: welch_t_test([1.0, 2.0], [0.0, 1.0], alternative="bigger"), "'alternative'"),
])
def test_validation_errors_name_the_argument(call, name):
    with pytest.raises(ValueError, match=re.escape(name)):
        call()


# ------------------------------------------------------------------------------------------------
# plots


def read_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    img = mpl_image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    # Not a blank canvas: something was drawn.
    assert float(img[..., :3].std()) > 0.01
    return img


def only_png_files(directory):
    """All files under directory, asserting no temporary file was left behind."""
    names = [n for _, _, files in os.walk(directory) for n in files]
    assert not [n for n in names if n.endswith(".tmp")], names
    return sorted(names)


def test_plot_pnl_histograms(tmp_path):
    rng = np.random.default_rng(9)
    path = tmp_path / "nested" / "dir" / "pnl.png"
    out = plot_pnl_histograms({"hedged": rng.normal(0, 0.2, 3000),
                               "unhedged": rng.normal(-0.1, 1.0, 3000),
                               "delta": rng.normal(0, 0.3, 1000)},
                              path, bins=60, title="test", density=True)
    assert out == str(path)
    read_png(path)
    assert only_png_files(tmp_path) == ["pnl.png"]
    # Overwriting an existing plot works, and explicit edges are accepted.
    plot_pnl_histograms({"x": [0.0, 1.0, 1.0, 2.0]}, path, bins=[-1.0, 0.5, 1.5, 3.0])
    read_png(path)
    # A constant sample still gets bins.
    plot_pnl_histograms({"flat": np.zeros(10)}, tmp_path / "flat.png", bins=5)
    read_png(tmp_path / "flat.png")


def test_plot_hedges_over_time(tmp_path):
    rng = np.random.default_rng(10)
    actions = np.cumsum(rng.normal(size=(20, 50, 3)), axis=0)
    path = plot_hedges_over_time(actions, tmp_path / "hedges.png",
                                 instrument_names=["spot", "call 1.0", "call 1.1"], num_paths=4,
                                 times=np.arange(20) / 250)
    read_png(path)
    # [T, B] is one instrument; num_paths larger than B draws all paths.
    read_png(plot_hedges_over_time(actions[:, :2, 0], tmp_path / "one.png", num_paths=10))
    assert only_png_files(tmp_path) == ["hedges.png", "one.png"]


class FakeHistory:
    """What keras.callbacks.History exposes to us: a .history dict."""

    def __init__(self, history):
        self.history = history


def test_plot_learning_curves(tmp_path):
    loss = list(np.exp(-np.arange(15) / 4.0) + 0.1)
    read_png(plot_learning_curves({"loss": loss, "val_loss": [v + 0.05 for v in loss]},
                                  tmp_path / "lin.png"))
    history = FakeHistory({"loss": loss, "val_loss": loss[:10] + [math.nan] * 5,
                           "learning_rate": [1e-3] * 15, "val_es": [0.5]})
    read_png(plot_learning_curves(history, tmp_path / "log.png", log_y=True))
    # Negative losses (entropic risk of a profitable strategy) on a log axis fall back to symlog.
    read_png(plot_learning_curves({"loss": [-0.5, -0.2, 0.0, 0.3]}, tmp_path / "neg.png", log_y=True))
    assert only_png_files(tmp_path) == ["lin.png", "log.png", "neg.png"]


@pytest.mark.parametrize("call, name", [
    (lambda p: plot_pnl_histograms({}, p / "a.png"), "'strategies'"),
    (lambda p: plot_pnl_histograms({"x": [np.nan]}, p / "a.png"), "strategies['x']"),
    (lambda p: plot_pnl_histograms({"x": [1.0]}, p / "a.png", bins=0), "'bins'"),
    (lambda p: plot_pnl_histograms({"x": [1.0]}, p / "a.png", bins=[2.0, 1.0]), "'bins'"),
    (lambda p: plot_pnl_histograms({"x": [1.0]}, p / "a.pdf"), "'path'"),
    (lambda p: plot_hedges_over_time(np.zeros(5), p / "a.png"), "'actions'"),
    (lambda p: plot_hedges_over_time(np.zeros((5, 2, 2)), p / "a.png", instrument_names=["s"]),
     "'instrument_names'"),
    (lambda p: plot_hedges_over_time(np.zeros((5, 2, 1)), p / "a.png", times=[0.0, 1.0]), "'times'"),
    (lambda p: plot_hedges_over_time(np.zeros((5, 2, 1)), p / "a.png", num_paths=0), "'num_paths'"),
    (lambda p: plot_learning_curves({"loss": []}, p / "a.png"), "'history'"),
    (lambda p: plot_learning_curves([1.0, 2.0], p / "a.png"), "'history'"),
    (lambda p: plot_learning_curves({"loss": ["x"]}, p / "a.png"), "history['loss']"),
])
def test_plot_validation_leaves_nothing_behind(tmp_path, call, name):
    target = tmp_path / "new_dir"
    with pytest.raises(ValueError, match=re.escape(name)):
        call(target)
    assert not target.exists()  # inputs are checked before any directory is created


def test_failed_write_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous contents")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(plots_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        plot_pnl_histograms({"x": [0.0, 1.0]}, path)
    assert path.read_bytes() == b"previous contents"
    assert os.listdir(tmp_path) == ["out.png"]


def test_plots_do_not_touch_pyplot():
    code = ("import sys, tempfile, os\n"
            "from deephedge_tf.evaluation import plot_pnl_histograms\n"
            "d = tempfile.mkdtemp()\n"
            "plot_pnl_histograms({'x': [0.0, 1.0]}, os.path.join(d, 'a.png'))\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "assert 'tensorflow' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
