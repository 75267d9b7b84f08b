"""`deephedge backtest`: a trained run on rolling windows of the S&P 500 closes.  The windows are checked
against the price file itself: the unhedged PnL is minus the call's payoff on each window's closes, and
the Black-Scholes delta hedge's trading gains are recomputed in numpy from the closes and the trailing
realised volatility."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deephedge_tf.cli import main
from deephedge_tf.market.historical import load_sp500

REPO = Path(__file__).resolve().parents[1]
STEPS, DT, VOL_WINDOW, S0 = 10, 1 / 250, 20, 1.0


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bt") / "run"
    code = main(["train", str(REPO / "configs/quickstart.yaml"), "--out", str(out), "--quiet",
                 "--set", f"time.steps={STEPS}", "--set", "hedges.floating_grid.moneyness=[1.0]",
                 "--set", "hedges.floating_grid.maturities=[5]", "--set", "training.epochs=1",
                 "--set", "training.batches_per_epoch=2", "--set", "training.batch_size=256",
                 "--set", "training.validation_paths=256", "--set", "evaluation.paths=512",
                 "--set", "evaluation.plots=false"])
    assert code == 0
    return out


def _call_delta(s, k, tau, vol):
    d1 = (np.log(s / k) + 0.5 * vol * vol * tau) / (vol * np.sqrt(tau))
    return 0.5 * (1.0 + np.vectorize(math.erf)(d1 / math.sqrt(2.0)))


def test_backtest_windows_match_the_price_file(trained_run, capsys):
    assert main(["backtest", str(trained_run), "--data", str(REPO / "data/sp500.csv")]) == 0
    printed = capsys.readouterr().out
    assert "Out-of-model test" in printed
    out = trained_run / "backtest"
    report = json.loads((out / "report.json").read_text())
    assert report["note"].startswith("Out-of-model test") and report["stride_days"] == STEPS
    windows = pd.read_csv(out / "windows.csv", index_col="start", parse_dates=["start", "end"])
    prices = load_sp500()
    closes, dates = prices.to_numpy(), prices.index
    starts = np.arange(VOL_WINDOW, len(closes) - STEPS, STEPS)  # after one full volatility window
    assert len(windows) == report["windows"] == len(starts)
    assert (windows.index == dates[starts]).all() and (windows["end"] == dates[starts + STEPS]).all()

    spot = closes[starts[:, None] + np.arange(STEPS + 1)] / closes[starts][:, None] * S0  # [W, T + 1]
    payoff = np.maximum(spot[:, -1] - S0, 0.0)
    np.testing.assert_allclose(windows["pnl_unhedged"], -payoff, rtol=1e-5, atol=1e-6)

    log_returns = np.diff(np.log(closes))
    idx = starts[:, None] + np.arange(STEPS)  # price index of each decision time
    realised = np.stack([[np.mean(log_returns[i - VOL_WINDOW:i] ** 2) for i in row] for row in idx]) / DT
    tau = (STEPS - np.arange(STEPS)) * DT
    delta = _call_delta(spot[:, :-1], S0, tau[None, :], np.sqrt(realised))
    gains = np.sum(delta * np.diff(spot, axis=1), axis=1)
    bs = windows["pnl_bs_delta"] + windows["costs_bs_delta"]
    np.testing.assert_allclose(bs, gains - payoff, rtol=1e-4, atol=2e-5)

    # The seller's premium: Black-Scholes at the realised volatility of each window's first day.
    vol0, years = np.sqrt(realised[:, 0]), STEPS * DT
    d1 = (np.log(S0 / S0) + 0.5 * vol0 ** 2 * years) / (vol0 * np.sqrt(years))
    cdf = np.vectorize(lambda x: 0.5 * (1.0 + math.erf(x / math.sqrt(2.0))))
    np.testing.assert_allclose(windows["premium_bs"], S0 * cdf(d1) - S0 * cdf(d1 - vol0 * np.sqrt(years)), rtol=1e-6)

    metrics = pd.read_csv(out / "metrics.csv", index_col=0)
    assert list(metrics.index) == ["hedged", "unhedged", "bs_delta"]
    # Delta hedging removes most of the call's risk on real paths too.
    assert metrics.loc["bs_delta", "pnl_std"] < 0.5 * metrics.loc["unhedged", "pnl_std"]
    assert (out / "plots" / "cumulative_pnl.png").is_file() and (out / "plots" / "pnl_histograms.png").is_file()


def test_backtest_errors_name_the_problem(trained_run, tmp_path, capsys):
    assert main(["backtest", str(tmp_path), "--data", str(REPO / "data/sp500.csv")]) == 2
    assert "not a finished training run" in capsys.readouterr().err
    assert main(["backtest", str(trained_run), "--data", str(tmp_path / "none.csv")]) == 2
    assert "file not found" in capsys.readouterr().err
    short = tmp_path / "short.csv"
    short.write_text("date,close\n" + "".join(f"2020-01-{d:02d},{100 + d}.0\n" for d in range(1, 25)))
    assert main(["backtest", str(trained_run), "--data", str(short), "--out", str(tmp_path / "o")]) == 2
    assert "steps" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert main(["backtest", str(trained_run), "--data", str(REPO / "data/sp500.csv"), "--stride", "0"]) == 2
