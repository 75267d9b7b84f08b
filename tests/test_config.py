"""Config loading: defaults, overrides, and every validation error path names its key."""

import dataclasses
import textwrap
from pathlib import Path

import pytest
import yaml

from deephedge_tf.config import Config, KFACConfig, config_reference, dump_config, from_dict, load_config
from deephedge_tf.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_and_roundtrip():
    cfg = from_dict({})
    assert isinstance(cfg, Config)
    assert cfg.time.steps == 30 and cfg.market.model == "heston"
    again = from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    load_config(path)


def test_overrides_are_parsed_and_validated():
    cfg = from_dict({}, ["market.heston.rho=-0.5", "hedges.floating_grid.moneyness=[0.9, 1.1]",
                         "hedges.floating_grid.maturities=[5, 10]", "market.sampling.antithetic=true"])
    assert cfg.market.heston.rho == -0.5
    assert cfg.hedges.floating_grid.moneyness == (0.9, 1.1)
    assert cfg.market.sampling.antithetic is True
    with pytest.raises(ConfigError, match=r"market\.heston\.rho.*1\.5.*<= 1\.0"):
        from_dict({}, ["market.heston.rho=1.5"])


def test_yaml_string_numbers_are_accepted_for_floats():
    # YAML 1.1 reads 1e-4 (no dot) as a string; users write it all the time.
    cfg = from_dict({"hedges": {"spot": {"cost": "1e-4"}}})
    assert cfg.hedges.spot.cost == pytest.approx(1e-4)


ERROR_CASES = [
    # (overrides, key in message, fragment of the allowed text)
    (["market.heston.xi=-1"], "market.heston.xi", "> 0.0"),
    (["market.gbm.sigma=-0.1"], "market.gbm.sigma", ">= 0.0"),
    (["market.heston.rho=-1.01"], "market.heston.rho", ">= -1.0"),
    (["market.heston.v0=-0.01"], "market.heston.v0", ">= 0.0"),
    (["market.heston.scheme=euler"], "market.heston.scheme", "one of 'qe', 'exact'"),
    (["market.model=sabr"], "market.model", "one of 'heston', 'gbm', 'historical'"),
    (["market.heston.sigma=2"], "market.heston.sigma", "a known key"),
    (["market.hestn.v0=0.1"], "market.hestn", "did you mean 'heston'"),
    (["tme.steps=3"], "tme", "did you mean 'time'"),
    (["time.steps=2.5"], "time.steps", "integer"),
    (["time.steps=0"], "time.steps", ">= 1"),
    (["time.steps=true"], "time.steps", "integer"),
    (["time.dt=0"], "time.dt", "> 0.0"),
    (["time.dt=abc"], "time.dt", "number"),
    (["derivative.maturity=0.01"], "derivative.maturity", "whole number of steps"),
    (["derivative.maturity=1.0"], "derivative.maturity", "<= the horizon"),
    (["derivative.strike=0"], "derivative.strike", "> 0.0"),
    (["derivative.kind=call_spread", "derivative.strike_high=0.9"], "derivative.strike_high", "> strike"),
    (["derivative.kind=cliquet", "derivative.cliquet.local_cap=0"], "derivative.cliquet.local_cap", "> 0.0"),
    (["derivative.kind=cliquet", "derivative.cliquet.local_cap=-0.1"], "derivative.cliquet.local_cap", "> 0.0"),
    (["derivative.kind=cliquet", "derivative.cliquet.reset_every=7"], "derivative.cliquet.reset_every",
     "divisor"),
    (["derivative.kind=cliquet", "derivative.cliquet.local_floor=0.5"], "derivative.cliquet.local_floor",
     "< local_cap"),
    (["hedges.floating_grid.moneyness=[1.0, 0]", "hedges.floating_grid.maturities=[1, 2]"],
     "hedges.floating_grid.moneyness[1]", "> 0.0"),
    (["hedges.floating_grid.moneyness=[1.0, -0.9]", "hedges.floating_grid.maturities=[1, 2]"],
     "hedges.floating_grid.moneyness[1]", "> 0.0"),
    (["hedges.floating_grid.moneyness=[1.0]"], "hedges.floating_grid.maturities", "as long as moneyness"),
    (["hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[0]"],
     "hedges.floating_grid.maturities[0]", ">= 1"),
    (["hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[31]"],
     "hedges.floating_grid.maturities[0]", "<= time.steps"),
    (["hedges.floating_grid.moneyness=1.0"], "hedges.floating_grid.moneyness", "a list of number"),
    (["hedges.spot.cost=-0.1"], "hedges.spot.cost", ">= 0.0"),
    (["hedges.spot.cost=1.5"], "hedges.spot.cost", "< 1.0"),
    (["hedges.spot.enabled=false"], "hedges", "at least one hedging instrument"),
    (["hedges.variance_swap.enabled=true", "market.model=gbm"], "hedges.variance_swap.enabled", "heston"),
    (["hedges.fixed_grid.strikes=[1.0]", "hedges.fixed_grid.maturity=0.0041"], "hedges.fixed_grid.maturity",
     "whole number"),
    (["market.sampling.antithetic=true", "market.sampling.sobol=true"], "market.sampling.sobol", "antithetic"),
    (["market.heston.scheme=exact", "market.sampling.sobol=true"], "market.heston.scheme", "'qe'"),
    (["market.model=historical", "market.sampling.antithetic=true"], "market.sampling", "historical"),
    (["seed=-1"], "seed", ">= 0"),
    (["policy.kind=no_transaction_band", "derivative.kind=variance_swap"], "policy.kind", "Black-Scholes delta"),
    (["policy.kind=bs_delta", "derivative.kind=cliquet", "derivative.cliquet.reset_every=10"], "policy.kind",
     "Black-Scholes delta"),
    (["training.optimizer=newton"], "training.optimizer", "dhkfac"),
    (["policy.kind=bs_delta", "hedges.spot.enabled=false", "hedges.variance_swap.enabled=true"], "policy.kind",
     "hedges.spot.enabled"),
    (["training.kfac.preconditioner=kronecker", "training.kfac.damping=1.5"], "training.kfac.damping", "<= 1.0"),
    (["training.kfac.metric=kronecker", "training.kfac.preconditioner=kronecker"], "training.kfac.metric",
     "identity unless"),
    (["training.kfac.trust_radius=1e-6"], "training.kfac.trust_radius", ">= trust_radius_min"),
    (["training.kfac.preconditioner=kronecker", "training.kfac.damping_mode=levenberg_marquardt"],
     "training.kfac.damping_mode",
     "levenberg_marquardt exactly when preconditioner is gauss_newton"),
    (["training.kfac.preconditioner=gauss_newton", "training.kfac.momentum=0.5"], "training.kfac.preconditioner",
     "kronecker when momentum > 0"),
    (["training.kfac.preconditioner=gauss_newton", "training.kfac.damping=0"], "training.kfac.damping",
     "> 0 for levenberg_marquardt"),
    (["training.kfac.max_relative_change=0"], "training.kfac.max_relative_change", "> 0.0"),
    (["training.kfac.preconditioner=newton"], "training.kfac.preconditioner", "'gauss_newton'"),
    (["hedges.natural_units=2"], "hedges.natural_units", "true or false"),
    (["objective.alpha=1.0"], "objective.alpha", "< 1.0"),
    (["policy.band_anchor=delta"], "policy.band_anchor", "'none', 'bs_delta'"),
    (["dtype=float16"], "dtype", "'float32', 'float64'"),
    (["simulation.paths=0"], "simulation.paths", ">= 1"),
    (["market.heston=3"], "market.heston", "mapping"),
    (["market.s0=.inf"], "market.s0", "finite"),
]


@pytest.mark.parametrize("overrides,key,allowed", ERROR_CASES, ids=[c[1] + ":" + c[0][-1] for c in ERROR_CASES])
def test_error_names_key_value_and_allowed(overrides, key, allowed):
    with pytest.raises(ConfigError) as info:
        from_dict({}, overrides)
    err = info.value
    assert err.key == key
    assert f"'{key}'" in str(err) and allowed in str(err)


def test_required_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        from_dict({}, ["market.heston.rho"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="existing YAML config file"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("time: [1, 2\n")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    typo = tmp_path / "typo.yaml"
    typo.write_text(textwrap.dedent("""\
        market:
          heston:
            kapa: 2.0
    """))
    with pytest.raises(ConfigError, match=r"market\.heston\.kapa.*did you mean 'kappa'"):
        load_config(typo)


def test_reference_doc_is_in_sync():
    """docs/configuration.md embeds the generated reference table; regenerate with
    `deephedge config doc --write docs/configuration.md`."""
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert config_reference() in doc


def test_kfac_section_defaults_are_the_optimizers_defaults():
    """training.kfac repeats DHKFAC's defaults (the config module imports no TensorFlow): every key that is
    also a DHKFAC argument has the same default, so a YAML run and DHKFAC() are the same optimizer."""
    import inspect

    from deephedge_tf.optimizers import DHKFAC

    arguments = inspect.signature(DHKFAC.__init__).parameters
    shared = [f for f in dataclasses.fields(KFACConfig) if f.name in arguments]
    assert len(shared) >= 20
    for field in shared:
        assert field.default == arguments[field.name].default, field.name
