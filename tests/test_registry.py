"""Registries and ``kind: python``: a user's own market, derivative, instrument, policy, objective and
optimizer from YAML, with errors that name the key; user-registered kinds."""

import textwrap

import keras
import numpy as np
import pytest

from deephedge_tf import builders, registry
from deephedge_tf.config import from_dict
from deephedge_tf.errors import ConfigError
from deephedge_tf.run import train_job

USER_MODULE = '''
import tensorflow as tf
from deephedge_tf.instruments.derivatives import Derivative
from deephedge_tf.policies import MLPPolicy


class AsianCall(Derivative):
    """Average-price call; the policy sees the running average."""
    feature_names = ("log_average",)

    def __init__(self, strike=1.0):
        self.strike = strike

    def payoff(self, paths):
        return tf.nn.relu(tf.reduce_mean(paths.spot[1:], axis=0) - self.strike)

    def features(self, paths):
        steps = paths.num_steps
        running = tf.cumsum(paths.spot[:-1], axis=0) / tf.range(1.0, steps + 1.0, dtype=paths.spot.dtype)[:, None]
        return {"log_average": tf.math.log(running / self.strike)}


def small_mlp(width=8, dtype="float32", name="policy"):
    return MLPPolicy(num_layers=1, width=width, dtype=dtype, name=name)
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_hedging.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_hedging"


def python_cfg(*extra):
    return from_dict({
        "time": {"steps": 6},
        "market": {"model": "python", "callable": "deephedge_tf.market.models:GBM", "params": {"sigma": 0.3}},
        "derivative": {"kind": "python", "callable": "my_hedging:AsianCall", "params": {"strike": 1.0}},
        "hedges": {"spot": {"enabled": False},
                   "extra": [{"kind": "python", "callable": "deephedge_tf.instruments.hedges:Spot",
                              "params": {"cost": 1e-3}}]},
        "policy": {"kind": "python", "callable": "my_hedging:small_mlp", "params": {"width": 6}},
        "objective": {"kind": "python", "callable": "deephedge_tf.objectives:EntropicRisk", "params": {"a": 2.0}},
        "training": {"optimizer": "python", "optimizer_callable": "keras.optimizers:SGD",
                     "optimizer_params": {"learning_rate": 0.05}, "batch_size": 128, "batches_per_epoch": 2,
                     "epochs": 1, "validation_paths": 128},
        "evaluation": {"paths": 256, "plots": False},
    }, list(extra))


def test_every_component_from_a_users_callables(user_module, tmp_path):
    cfg = python_cfg()
    assert type(builders.build_derivative(cfg)).__name__ == "AsianCall"
    assert isinstance(builders.build_optimizer(cfg), keras.optimizers.SGD)
    assert builders.build_policy(cfg).width == 6
    assert builders.build_objective(cfg).a == 2.0
    (spot,) = builders.build_hedges(cfg)
    assert spot.cost == 1e-3
    report = train_job(cfg, tmp_path / "run", echo=lambda *_: None, verbose=0)
    assert report["train"]["steps"] == 2 and np.isfinite(report["strategies"]["hedged"]["pnl_mean"])
    assert report["price"]["reference"] is None  # an Asian call has no reference price: said, not faked


@pytest.mark.parametrize("override, key, allowed", [
    ("policy.params={widht: 3}", "policy.params.widht", "a parameter of 'small_mlp': width"),
    ("policy.params={dtype: float64}", "policy.params.dtype", "the library passes it"),
    ("policy.callable=my_hedging.small_mlp", "policy.callable", "'package.module:name'"),
    ("policy.callable=no_such_module:f", "policy.callable", "does not import"),
    ("policy.callable=my_hedging:nothing", "policy.callable", "has no 'nothing'"),
    ("policy.callable=math:pi", "policy.callable", "naming a class or function"),
    ("policy.callable=collections:OrderedDict", "policy.callable", "it lacks step, initial_state"),
    ("derivative.params={strike: -1}", None, None),   # the user's class accepts it: not our business
    ("objective.params={a: -1.0}", "objective.params", "values 'EntropicRisk' accepts"),
    ("training.optimizer_callable=''", "training.optimizer_callable", "when training.optimizer is python"),
    ("market.model=gbm", "market.callable", "when market.model is python, else empty"),
    ("policy.kind=lstm", "policy.kind", "one of 'recurrent', 'mlp'"),
])
def test_errors_name_the_key(user_module, override, key, allowed):
    if key is None:
        builders.build_derivative(python_cfg(override))
        return
    with pytest.raises(ConfigError) as info:
        cfg = python_cfg(override)
        builders.build_market(cfg)
        builders.build_derivative(cfg)
        builders.build_policy(cfg)
        builders.build_objective(cfg)
        builders.build_optimizer(cfg)
    assert info.value.key == key and allowed in info.value.allowed, str(info.value)


def test_a_user_registered_kind_is_a_config_kind():
    from deephedge_tf.policies import MLPPolicy

    registry.POLICIES.register("tiny_mlp", lambda cfg, n, kind, name: MLPPolicy(n, num_layers=1, width=3,
                                                                               dtype=cfg.dtype, name=name))
    try:
        cfg = from_dict({"policy": {"kind": "tiny_mlp"}})
        assert builders.build_policy(cfg, 2).width == 3
        assert "tiny_mlp" in registry.POLICIES.kinds()
        with pytest.raises(ValueError, match="registered already"):
            registry.POLICIES.register("tiny_mlp", lambda *a: None)
    finally:
        registry.POLICIES.unregister("tiny_mlp")
    with pytest.raises(ConfigError, match="'policy.kind'"):
        from_dict({"policy": {"kind": "tiny_mlp"}})
    builders.build_policy(from_dict({"policy": {"kind": "mlp"}}), 2)  # the library's kind, loaded and cached
    with pytest.raises(ValueError, match="not a user-registered kind"):
        registry.POLICIES.unregister("mlp")
    assert "mlp" in registry.POLICIES.kinds()


def test_python_derivative_in_the_simulate_job_and_a_delta_policy_without_greeks(user_module, tmp_path):
    from deephedge_tf.run import simulate_job
    from deephedge_tf.training import build_parts, make_hedger

    report = simulate_job(python_cfg("simulation.paths=256"), tmp_path / "sim", echo=lambda *_: None)
    assert report["price"]["reference"] is None and report["price"]["monte_carlo"] > 0  # the user's Asian call
    cfg = python_cfg("policy.kind=bs_delta", "policy.callable=''", "hedges.spot.enabled=true")
    with pytest.raises(ConfigError) as info:
        make_hedger(cfg, build_parts(cfg), compile=False)
    assert info.value.key == "policy.kind" and "has no greeks" in info.value.allowed


def test_registration_and_binding_errors_are_named():
    with pytest.raises(ValueError, match="kind 'my policy' must be an identifier other than 'python'"):
        registry.POLICIES.register("my policy", lambda *a: None)
    with pytest.raises(ValueError, match="must be an identifier other than 'python'"):
        registry.POLICIES.register("python", lambda *a: None)
    cfg = from_dict({"market": {"model": "rough_bergomi"}, "hedges": {"variance_swap": {"enabled": True}}})
    with pytest.raises(ConfigError) as info:
        builders.build_hedges(cfg)
    assert info.value.key == "hedges" and "has no variance_reversion" in info.value.allowed


def test_adam_averages_its_iterates_when_the_config_asks():
    """training.ema_momentum gives Adam Keras' moving average of its iterates (which Hedger.fit validates);
    with another optimizer it is refused by name (DH-KFAC averages through training.kfac)."""
    adam = builders.build_optimizer(from_dict({}, ["training.ema_momentum=0.9"]))
    assert isinstance(adam, keras.optimizers.Adam) and adam.use_ema and adam.ema_momentum == 0.9
    assert not builders.build_optimizer(from_dict({}, [])).use_ema
    with pytest.raises(ConfigError, match="training.ema_momentum"):
        from_dict({}, ["training.optimizer=dhkfac", "training.ema_momentum=0.9"])
