"""Tests of deephedge_tf.market.historical: the shipped S&P 500 file, rolling windows, the circular
block bootstrap and the checks on bad price files.

Expected values are computed independently with numpy from the raw prices; the library computes
through cumulative sums, the tests through direct slices and means.
"""

import hashlib
import importlib.util
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from deephedge_tf.errors import DataError
from deephedge_tf.market.historical import (
    HistoricalMarket,
    load_price_series,
    load_sp500,
    sp500_path,
)
from deephedge_tf.market.paths import MarketPaths, validate_paths

REPO = Path(__file__).resolve().parents[1]
DT = 1.0 / 252


@pytest.fixture(scope="module")
def sp500():
    return load_sp500()


@pytest.fixture(scope="module")
def market(sp500):
    return HistoricalMarket(sp500, dt=DT, vol_window=20)


def trailing_variance(returns, end, window, dt=DT):
    """Annualised mean of squared returns r[end - window .. end - 1] (numpy, direct slice)."""
    return np.mean(returns[end - window : end] ** 2) / dt


# ---------------------------------------------------------------------------------------------
# Shipped data
# ---------------------------------------------------------------------------------------------
def test_shipped_file_matches_readme(sp500):
    path = sp500_path()
    assert path == REPO / "data" / "sp500.csv"
    readme = (REPO / "data" / "README.md").read_text()
    m = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", readme)
    assert m, "data/README.md must state the file's sha256"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == m.group(1)

    assert len(sp500) == 5031
    assert sp500.index[0] == pd.Timestamp("1999-01-04")
    assert sp500.index[-1] == pd.Timestamp("2018-12-31")
    assert isinstance(sp500.index, pd.DatetimeIndex) and sp500.index.is_monotonic_increasing
    assert sp500.dtype == np.float64
    assert np.all(np.isfinite(sp500.to_numpy())) and np.all(sp500.to_numpy() > 0)
    # Well-known levels: 1228.10 on the first day, 2506.85 on the last.
    assert sp500.iloc[0] == pytest.approx(1228.099976)
    assert sp500.iloc[-1] == pytest.approx(2506.850098)


def test_refresh_script_reproduces_file():
    pytest.importorskip("arch")
    spec = importlib.util.spec_from_file_location(
        "refresh_sp500", REPO / "scripts" / "refresh_sp500.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build_csv() == (REPO / "data" / "sp500.csv").read_text()


# ---------------------------------------------------------------------------------------------
# Rolling windows
# ---------------------------------------------------------------------------------------------
def test_rolling_windows_match_series(market, sp500):
    steps, stride, w = 30, 7, 20
    paths = market.rolling_windows(steps, stride=stride, dtype=tf.float64)
    validate_paths(paths)
    prices = sp500.to_numpy()
    returns = np.diff(np.log(prices))
    n_windows = len(range(w, len(prices) - steps, stride))
    assert paths.spot.shape == (steps + 1, n_windows)
    assert paths.dt == DT
    assert set(paths.features) == {"realized_vol"}
    np.testing.assert_array_equal(paths.spot.numpy()[0], 1.0)

    dates = market.window_start_dates(steps, stride)
    assert len(dates) == n_windows
    for b in [0, 1, n_windows // 2, n_windows - 1]:
        k0 = sp500.index.get_loc(dates[b])
        assert k0 == w + b * stride
        expected = np.log(prices[k0 + 1 : k0 + steps + 1] / prices[k0 : k0 + steps])
        np.testing.assert_allclose(
            paths.log_returns.numpy()[:, b], expected, rtol=1e-10, atol=1e-14
        )
        var = [trailing_variance(returns, k0 + j, w) for j in range(steps + 1)]
        np.testing.assert_allclose(paths.variance.numpy()[:, b], var, rtol=1e-9)
        np.testing.assert_allclose(
            paths.features["realized_vol"].numpy()[:, b], np.sqrt(var), rtol=1e-9
        )
        iv = np.concatenate([[0.0], np.cumsum(expected**2)])
        np.testing.assert_allclose(
            paths.integrated_variance.numpy()[:, b], iv, rtol=1e-9, atol=1e-15
        )

    raw = market.rolling_windows(steps, stride=stride, normalize=False, dtype=tf.float64)
    k_last = w + (n_windows - 1) * stride
    np.testing.assert_allclose(
        raw.spot.numpy()[:, -1], prices[k_last : k_last + steps + 1], rtol=1e-14
    )
    np.testing.assert_allclose(raw.variance.numpy(), paths.variance.numpy(), rtol=1e-14)
    assert market.rolling_windows(steps, stride=stride).spot.dtype == tf.float32


def test_rolling_windows_no_look_ahead(sp500):
    steps, w = 10, 20
    base = HistoricalMarket(sp500, vol_window=w).rolling_windows(steps, dtype=tf.float64)
    # Change every price after index k: nothing observed at or before t_k may move.
    k = 2000
    changed = sp500.copy()
    changed.iloc[k + 1 :] *= np.exp(np.random.default_rng(0).normal(0, 0.05, len(sp500) - k - 1))
    after = HistoricalMarket(changed, vol_window=w).rolling_windows(steps, dtype=tf.float64)
    b0 = k - w - steps  # window whose last price is at index k
    for name in ("spot", "variance", "integrated_variance"):
        old, new = getattr(base, name).numpy(), getattr(after, name).numpy()
        np.testing.assert_array_equal(new[:, : b0 + 1], old[:, : b0 + 1], err_msg=name)
        # Window b0 + j sees index k at step steps - j: equal up to there, different after.
        for j in (1, 5, steps):
            np.testing.assert_array_equal(
                new[: steps - j + 1, b0 + j], old[: steps - j + 1, b0 + j]
            )
            assert not np.allclose(new[steps - j + 1 :, b0 + j], old[steps - j + 1 :, b0 + j])


def test_rolling_windows_longest(market):
    steps = market.max_window_steps()
    assert market.rolling_windows(steps).spot.shape == (steps + 1, 1)


# ---------------------------------------------------------------------------------------------
# Block bootstrap
# ---------------------------------------------------------------------------------------------
def _circular_blocks(returns, length):
    """[N, length] every run of ``length`` consecutive returns of the circular series."""
    n = len(returns)
    return returns[(np.arange(n)[:, None] + np.arange(length)) % n]


def test_bootstrap_paths_are_blocks_of_the_series(market):
    steps, L, B, w = 45, 20, 64, 20
    paths = market.block_bootstrap(B, steps, block_length=L, seed=3, s0=100.0, dtype=tf.float64)
    validate_paths(paths)
    assert paths.spot.shape == (steps + 1, B)
    np.testing.assert_array_equal(paths.spot.numpy()[0], 100.0)
    np.testing.assert_array_equal(paths.integrated_variance.numpy()[0], 0.0)

    r = market.log_returns
    n = len(r)
    path_r = paths.log_returns.numpy()  # [T, B]
    variance = paths.variance.numpy()
    windows = _circular_blocks(r, L)
    for b in range(B):
        starts = []
        for j0 in range(0, steps, L):
            block = path_r[j0 : j0 + L, b]  # the last block is cut to steps - j0 returns
            hits = np.flatnonzero(np.all(np.abs(windows[:, : len(block)] - block) < 1e-12, axis=1))
            assert hits.size, (
                f"path {b}: returns {j0}..{j0 + len(block) - 1} are not a block of the series"
            )
            starts.append(hits)
        # Variance at t_0 is the trailing window of the vol_window returns before the first block
        # (the first block's start is unique but for a few exactly repeated returns: any fits).
        v0 = [np.mean(r[(u - w + np.arange(w)) % n] ** 2) / DT for u in starts[0]]
        assert np.any(np.isclose(variance[0, b], v0, rtol=1e-9))
        # Later variances slide into the path's own returns: at t_w only path returns remain.
        np.testing.assert_allclose(variance[w, b], np.mean(path_r[:w, b] ** 2) / DT, rtol=1e-9)
    np.testing.assert_allclose(
        paths.integrated_variance.numpy()[1:], np.cumsum(path_r**2, axis=0), rtol=1e-9, atol=1e-15
    )
    np.testing.assert_allclose(
        paths.features["realized_vol"].numpy(), np.sqrt(variance), rtol=1e-12
    )


def test_bootstrap_iid_when_block_length_one(market):
    # L = 1 is the i.i.d. bootstrap: every return is some return of the series.
    paths = market.block_bootstrap(16, 12, block_length=1, seed=5, dtype=tf.float64)
    r = market.log_returns
    path_r = paths.log_returns.numpy().ravel()
    assert np.all(np.min(np.abs(path_r[:, None] - r[None, :]), axis=1) < 1e-12)


def test_bootstrap_split_invariant_and_deterministic(market):
    kw = dict(steps=25, block_length=10, seed=11)
    full = market.block_bootstrap(2000, start=100, **kw)
    # Pieces crossing the 1024-path group boundary, in a different order of calls.
    parts = [
        market.block_bootstrap(1500, start=600, **kw),
        market.block_bootstrap(500, start=100, **kw),
    ]
    joined = MarketPaths.concat([parts[1], parts[0]])
    for name in ("spot", "variance", "integrated_variance"):
        np.testing.assert_array_equal(getattr(joined, name).numpy(), getattr(full, name).numpy())
    single = market.block_bootstrap(1, start=1123, **kw)
    np.testing.assert_array_equal(single.spot.numpy()[:, 0], full.spot.numpy()[:, 1023])

    again = market.block_bootstrap(2000, start=100, **kw)
    np.testing.assert_array_equal(again.spot.numpy(), full.spot.numpy())
    other = market.block_bootstrap(2000, start=100, steps=25, block_length=10, seed=12)
    assert not np.allclose(other.spot.numpy(), full.spot.numpy())
    # A pair seed works too and differs from the int seed.
    pair = market.block_bootstrap(10, steps=25, block_length=10, seed=(11, 1))
    assert not np.allclose(pair.spot.numpy(), full.spot.numpy()[:, :10])


def test_bootstrap_moments_match_series(market):
    L, steps, B = 10, 40, 2000
    paths = market.block_bootstrap(B, steps, block_length=L, seed=21, dtype=tf.float64)
    r = market.log_returns
    path_r = paths.log_returns.numpy()  # [T, B]
    # Blocks are independent draws, returns within a block are not: standard errors from block
    # means.
    blocks = path_r.reshape(steps // L, L, B).transpose(0, 2, 1).reshape(-1, L)  # [blocks, L]
    se = {}
    for name, moment, target in (("mean", blocks, r.mean()), ("m2", blocks**2, np.mean(r**2))):
        means = moment.mean(axis=1)
        se[name] = means.std(ddof=1) / np.sqrt(len(means))
        assert abs(means.mean() - target) < 3 * se[name], (name, means.mean(), target, se[name])
    # std = sqrt(m2 - mean**2) and mean**2 is ~1e-4 of m2, so by the delta method
    # se(std) ~ se(m2) / (2 std).
    se_std = se["m2"] / (2 * r.std())
    assert abs(path_r.std() - r.std()) < 3 * se_std, (path_r.std(), r.std(), se_std)


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.rolling_windows(0), r"steps must be an integer in \[1, "),
        (
            lambda m: m.rolling_windows(m.max_window_steps() + 1),
            r"steps must be an integer in \[1, ",
        ),
        (lambda m: m.rolling_windows(5, stride=0), "stride must be an integer >= 1"),
        (lambda m: m.block_bootstrap(10, 0), "steps must be an integer >= 1"),
        (lambda m: m.block_bootstrap(0, 5), "num_paths must be an integer >= 1"),
        (
            lambda m: m.block_bootstrap(10, 5, block_length=0),
            r"block_length must be an integer in \[1, ",
        ),
        (lambda m: m.block_bootstrap(10, 5, block_length=10**6), r"block_length .*\[1, 5030\]"),
        (lambda m: m.block_bootstrap(10, 5, start=-1), "start must be an integer >= 0"),
        (lambda m: m.block_bootstrap(10, 5, s0=0.0), "s0 must be"),
        (lambda m: m.block_bootstrap(10, 2.5), "steps must be an integer"),
    ],
)
def test_argument_errors(market, call, match):
    with pytest.raises(ValueError, match=match):
        call(market)


def test_constructor_errors():
    s = pd.Series([100.0, 101.0, 99.0, 102.0, 103.0])
    with pytest.raises(ValueError, match="vol_window"):
        HistoricalMarket(s, vol_window=4)
    with pytest.raises(ValueError, match="vol_window"):
        HistoricalMarket(s, vol_window=0)
    with pytest.raises(ValueError, match="dt must be"):
        HistoricalMarket(s, dt=0.0, vol_window=2)
    with pytest.raises(ValueError, match="finite and > 0"):
        HistoricalMarket(pd.Series([100.0, -1.0, 99.0, 98.0]), vol_window=1)
    with pytest.raises(ValueError, match="pandas.Series"):
        HistoricalMarket(np.ones(10), vol_window=1)
    small = HistoricalMarket(s, vol_window=3)
    assert small.max_window_steps() == 1
    assert small.rolling_windows(1).spot.shape == (2, 1)


# ---------------------------------------------------------------------------------------------
# Bad price files
# ---------------------------------------------------------------------------------------------
GOOD = "date,close\n2020-01-02,100.0\n2020-01-03,101.5\n2020-01-06,99.25\n"


def _write(tmp_path, text, name="prices.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_good_file(tmp_path):
    s = load_price_series(_write(tmp_path, GOOD))
    assert list(s.to_numpy()) == [100.0, 101.5, 99.25]
    assert list(s.index.strftime("%Y-%m-%d")) == ["2020-01-02", "2020-01-03", "2020-01-06"]
    custom = load_price_series(
        _write(tmp_path, GOOD.replace("date,close", "Day,Px"), "custom.csv"),
        date_column="Day",
        price_column="Px",
    )
    np.testing.assert_array_equal(custom.to_numpy(), s.to_numpy())


@pytest.mark.parametrize(
    "text, patterns",
    [
        (
            GOOD.replace("close", "price"),
            ["no price column 'close'", "columns present: ['date', 'price']"],
        ),
        (GOOD.replace("date,", "day,"), ["no date column 'date'", "'day'"]),
        (GOOD.replace("2020-01-03", "03/01/2020"), ["unparseable date '03/01/2020'", "row 2"]),
        (GOOD.replace("2020-01-03", "yesterday"), ["unparseable date 'yesterday'", "row 2"]),
        (
            GOOD.replace("99.25", "-99.25"),
            ["price -99.25", "row 3 (date 2020-01-06)", "not positive"],
        ),
        (GOOD.replace("99.25", "0"), ["price 0", "row 3", "not positive"]),
        (
            GOOD.replace("101.5", "nan"),
            ["price 'nan'", "row 2 (date 2020-01-03)", "not a finite number"],
        ),
        (GOOD.replace("101.5", ""), ["price ''", "row 2", "missing"]),
        (GOOD.replace("101.5", "inf"), ["price 'inf'", "not a finite number"]),
        (
            GOOD.replace("2020-01-06", "2020-01-03"),
            ["duplicate date", "row 3 (date 2020-01-03)", "row 2"],
        ),
        (
            GOOD.replace("2020-01-06", "2020-01-01"),
            ["dates out of order", "row 3 (date 2020-01-01)"],
        ),
        ("date,close\n2020-01-02T16:00-05:00,1.0\n2020-01-03T16:00-05:00,2.0\n", ["time zone"]),
        ("date,close\n2020-01-02,100.0\n", ["has 1 price row(s)", "at least 2"]),
        ("date,close\n", ["has 0 price row(s)"]),
        ("", ["not a readable CSV"]),
    ],
)
def test_load_errors(tmp_path, text, patterns):
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as info:
        load_price_series(path)
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="file not found") as info:
        load_price_series(path)
    assert str(path) in str(info.value)


def test_data_error_is_value_error(tmp_path):
    # Callers that catch ValueError for bad input also catch bad files.
    with pytest.raises(ValueError):
        load_price_series(tmp_path / "nope.csv")
