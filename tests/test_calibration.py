"""Option chains and Heston calibration: the shipped SPY chain, the loader's errors, recovery of known
parameters from quotes priced by QuantLib (an independent pricer), `deephedge calibrate` and
`market.calibration`."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deephedge_tf.errors import ConfigError, DataError
from deephedge_tf.market.option_chain import COLUMNS, OptionChain, load_option_chain, load_spy_chain, spy_chain_path

REPO = Path(__file__).resolve().parents[1]
TRUE = {"v0": 0.05, "kappa": 2.5, "theta": 0.07, "xi": 0.9, "rho": -0.75}


def test_shipped_chain_matches_readme():
    path = spy_chain_path()
    assert path == REPO / "data" / "spy_chain_2022-07-15.csv"
    readme = (REPO / "data" / "README.md").read_text()
    section = readme.split("spy_chain_2022-07-15.csv", 1)[1]
    expected = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", section).group(1)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    chain = load_spy_chain()
    assert chain.expiries == ("2w", "1m", "2m", "6m")
    counts = chain.quotes.groupby("expiry", sort=False).size().tolist()
    assert counts == [61, 95, 131, 140]
    q = chain.quotes
    # Out-of-the-money quotes only: puts below the forward, calls above it.
    assert (q.strike[q.option_type == "P"] <= q.forward[q.option_type == "P"]).all()
    assert (q.strike[q.option_type == "C"] >= q.forward[q.option_type == "C"] - 1.0).all()


def test_refresh_script_parses_only_array_literals(tmp_path):
    """The refresh script evaluates the assignments of one function, and nothing that calls other names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("refresh_spy_chain", REPO / "scripts" / "refresh_spy_chain.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    source = '''
def get_spy_test_chain_data():
    ids = array(['a', 'b'])
    ttms = array([0.1, 0.2])
    forwards = array([100.0, 101.0])
    discfactors = array([0.99, 0.98])
    bid_ivs = (array([0.2]), array([0.21, 0.22]))
    ask_ivs = (array([0.21]), array([0.22, 0.23]))
    strikes_ttms = (array([95.0]), array([100.0, 105.0]))
    optiontypes_ttms = (array(['P']), array(['C', 'C']))
    ignored = something_else()
'''
    text = script.build_csv(script.chain_fields(source))
    assert text.splitlines()[0] == ",".join(COLUMNS)
    assert text.splitlines()[2] == "b,0.2,101.0,0.98,100.0,C,0.21,0.22"
    with pytest.raises(RuntimeError, match="not an array literal"):
        script.chain_fields(source.replace("array([0.1, 0.2])", "__import__('os').getcwd()"))


def _write(tmp_path, frame, name="chain.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns="ask_iv"), "missing columns \\['ask_iv'\\]"),
    (lambda f: f.assign(option_type=["C", "X"] + ["C"] * (len(f) - 2)), "'option_type', row 2: got 'X'"),
    (lambda f: f.assign(bid_iv=f.ask_iv + 0.01), "'bid_iv', row 1: bid .* above ask"),
    (lambda f: f.assign(ttm=np.r_[f.ttm.iloc[:-1], 9.0]), "'ttm' differs within expiry"),
    (lambda f: f.assign(strike=["abc"] + list(f.strike.iloc[1:])), "'strike', row 1: got 'abc'; allowed: a number > 0"),
    (lambda f: pd.concat([f, f.iloc[:1]]), "a second quote for expiry"),
])
def test_loader_names_the_bad_field(tmp_path, edit, message):
    frame = load_spy_chain().select(["2w"]).quotes.iloc[:5]
    with pytest.raises(DataError, match=message):
        load_option_chain(_write(tmp_path, edit(frame.copy())))
    with pytest.raises(DataError, match="file not found"):
        load_option_chain(tmp_path / "missing.csv")
    with pytest.raises(DataError, match="allowed: a non-empty subset of"):
        load_spy_chain().select(["3y"])


def quantlib_chain() -> OptionChain:
    """Out-of-the-money quotes priced by QuantLib's Heston engine at TRUE, as implied vols +- 0.05 points."""
    ql = pytest.importorskip("QuantLib")
    today = ql.Date(15, 7, 2022)
    ql.Settings.instance().evaluationDate = today
    flat = ql.YieldTermStructureHandle(ql.FlatForward(today, 0.0, ql.Actual365Fixed()))
    forward = 100.0
    process = ql.HestonProcess(flat, flat, ql.QuoteHandle(ql.SimpleQuote(forward)), *TRUE.values())
    engine = ql.AnalyticHestonEngine(ql.HestonModel(process), 1e-12, 100000)
    rows = []
    for days in (30, 91, 182):
        ttm = days / 365
        for strike in (85.0, 92.0, 100.0, 108.0, 118.0):
            kind = ql.Option.Call if strike >= forward else ql.Option.Put
            option = ql.VanillaOption(ql.PlainVanillaPayoff(kind, strike), ql.EuropeanExercise(today + days))
            option.setPricingEngine(engine)
            std = ql.blackFormulaImpliedStdDev(kind, strike, forward, option.NPV(), 1.0)
            iv = std / np.sqrt(ttm)
            rows.append((f"{days}d", ttm, forward, 1.0, strike, "C" if strike >= forward else "P",
                         iv - 5e-4, iv + 5e-4))
    return OptionChain(pd.DataFrame(rows, columns=list(COLUMNS)), underlying="SYN", source="quantlib")


def test_calibration_recovers_quantlib_parameters():
    from deephedge_tf.pricing.calibration import calibrate_heston

    fit = calibrate_heston(quantlib_chain())
    assert fit.converged
    assert fit.rmse_vol_points < 0.01  # 1e-4 in volatility: the quotes are the model's own
    assert fit.inside_share == 1.0
    got = fit.params.as_dict()
    for name, true in TRUE.items():
        assert got[name] == pytest.approx(true, rel=0.05, abs=0.01), name


def test_calibrate_command_and_config(tmp_path, capsys):
    """`deephedge calibrate` writes params.json; `market.calibration` builds the market from it, refuses
    a different market.heston value, a missing file and another market model."""
    from deephedge_tf import cli
    from deephedge_tf.builders import build_market
    from deephedge_tf.config import from_dict, load_config

    frame = quantlib_chain().quotes
    chain = _write(tmp_path, frame)
    out = tmp_path / "cal"
    assert cli.main(["calibrate", str(chain), "--out", str(out), "--expiries", "30d", "91d"]) == 0
    assert "quotes inside the bid/ask spread" in capsys.readouterr().out
    params = json.loads((out / "params.json").read_text())["params"]
    assert params["rho"] == pytest.approx(TRUE["rho"], abs=0.05)

    cfg = from_dict({"market": {"calibration": str(out / "params.json"), "s0": 100.0}})
    assert {k: getattr(cfg.market.heston, k) for k in params} == params
    market = build_market(cfg)
    assert market.kappa == pytest.approx(params["kappa"]) and market.rho == pytest.approx(params["rho"])
    config = tmp_path / "c.yaml"
    config.write_text(f"market: {{calibration: {out / 'params.json'}, heston: {{rho: {params['rho']!r}}}}}\n")
    assert load_config(config).market.heston.rho == params["rho"]  # equal values agree
    with pytest.raises(ConfigError, match="market.heston.rho.*as in market.calibration"):
        from_dict({"market": {"calibration": str(out / "params.json"), "heston": {"rho": -0.1}}})
    with pytest.raises(ConfigError, match="market.calibration"):
        from_dict({"market": {"calibration": str(tmp_path / "nope.json")}})
    with pytest.raises(ConfigError, match="empty unless market.model is heston"):
        from_dict({"market": {"model": "gbm", "calibration": str(out / "params.json")},
                   "hedges": {"variance_swap": {"enabled": False}}})
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"params": dict(params, xi=-1.0)}))
    with pytest.raises(DataError, match="'params.xi': got -1.0; allowed: a number > 0"):
        from_dict({"market": {"calibration": str(bad)}})
    assert cli.main(["calibrate", str(tmp_path / "none.csv"), "--out", str(out)]) == 2


def test_bad_inputs_are_named(tmp_path):
    from deephedge_tf.errors import DeepHedgeError
    from deephedge_tf.evaluation.plots import plot_cumulative_pnl, plot_implied_vol_fit
    from deephedge_tf.pricing.calibration import HestonParams, calibrate_heston, load_heston_params

    bad = tmp_path / "params.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_heston_params(bad)
    bad.write_text(json.dumps({"v0": 0.04}))
    with pytest.raises(DataError, match="field 'params': allowed: an object with"):
        load_heston_params(bad)
    bad.write_text(json.dumps({"params": dict(TRUE, rho=1.5)}))
    with pytest.raises(DataError, match=r"'params.rho': got 1.5; allowed: a number in \[-1, 1\]"):
        load_heston_params(bad)
    with pytest.raises(DeepHedgeError, match=r"initial.kappa = 50.0; allowed: inside \(0.01, 20.0\)"):
        calibrate_heston(load_spy_chain().thin(50), initial=HestonParams(**dict(TRUE, kappa=50.0)))
    with pytest.raises(DataError, match="thin step 0; allowed: an integer >= 1"):
        load_spy_chain().thin(0)
    with pytest.raises(DeepHedgeError, match=r"missing \['model_iv'\]"):
        plot_implied_vol_fit(load_spy_chain().quotes, tmp_path / "fit.png")
    with pytest.raises(DeepHedgeError, match=r"'strategies\['a'\]' must have one value per date \(3\)"):
        plot_cumulative_pnl(pd.bdate_range("2020-01-01", periods=3), {"a": [1.0, 2.0]}, tmp_path / "c.png")
