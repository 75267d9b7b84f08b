"""The hedger: trades booked into PnL and costs, the unroll, fit with any Keras optimizer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.builders import build_hedges, build_market
from deephedge_tf.config import from_dict
from deephedge_tf.data import PathBatches
from deephedge_tf.features import feature_names, make_batch, observations, time_major
from deephedge_tf.hedger import Hedger, MarketStep
from deephedge_tf.instruments.derivatives import Cliquet, derivative_from_config
from deephedge_tf.policies.base import Policy

F64 = "float64"


class ScriptedPolicy(Policy):
    """Trades a fixed [T, N] schedule (same on every path), counting calls to check the unroll."""

    def __init__(self, schedule, **kwargs):
        super().__init__(num_instruments=np.asarray(schedule).shape[1], **kwargs)
        self.schedule = np.asarray(schedule)

    def initial_state(self, batch_size, dtype=tf.float32):
        return (tf.zeros([batch_size], tf.int32),)

    def step(self, obs, prev_action, state, training=None):
        (k,) = state
        action = tf.gather(tf.constant(self.schedule, obs["mask"].dtype), k)
        return action, (k + 1,)


class LinearPolicy(Policy):
    def build(self, *args):
        self.dense = keras.layers.Dense(self.num_instruments, kernel_initializer="zeros", dtype=self.dtype_policy)

    def step(self, obs, prev_action, state, training=None):
        return self.dense(tf.concat([obs["features"], prev_action], -1)), state


class MeanVariance(keras.layers.Layer):
    def call(self, pnl, costs):
        return tf.math.reduce_variance(pnl) + tf.reduce_mean(costs)


def small_setup(model="gbm", paths=256, extra=()):
    cfg = from_dict({}, [f"market.model={model}", "dtype=float64", "time.steps=10",
                         "hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[4]",
                         *extra])
    market = build_market(cfg)
    derivative = derivative_from_config(cfg)
    hedges = build_hedges(cfg)
    batch = make_batch(market.simulate(paths), derivative, hedges)
    return cfg, market, derivative, hedges, batch


def test_dtype_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same dtype"):
        Hedger(LinearPolicy(1), MeanVariance(), dtype=F64)


def test_market_step_books_gains_and_costs():
    u = tf.constant([[1.0, -2.0]])
    g, c, n = MarketStep()(u, tf.constant([[0.5, 0.25]]), tf.constant([[10.0, 2.0]]), tf.constant([[0.01, 0.1]]))
    assert float(g[0]) == pytest.approx(1 * 0.5 - 2 * 0.25)
    assert float(c[0]) == pytest.approx(0.01 * 10 + 0.1 * 2 * 2)
    assert float(n[0]) == pytest.approx(10 + 4)


def test_pnl_equals_hand_computation():
    _, _, _, _, batch = small_setup()
    rng = np.random.default_rng(0)
    schedule = rng.normal(size=(10, 2))
    out = Hedger(ScriptedPolicy(schedule, dtype=F64), MeanVariance(dtype=F64), dtype=F64)(batch)
    tm = time_major(batch)
    mask = tm["mask"].numpy()
    u = schedule[:, None, :] * mask  # masked trades, [T, B, N]
    gains = (u * tm["returns"].numpy()).sum((0, 2))
    costs = (tm["cost_rates"].numpy() * np.abs(u) * tm["premiums"].numpy()).sum((0, 2))
    np.testing.assert_allclose(out["actions"].numpy(), u, atol=0)
    np.testing.assert_allclose(out["costs"].numpy(), costs, rtol=1e-12)
    np.testing.assert_allclose(out["pnl"].numpy(), gains - costs - tm["payoff"].numpy(), rtol=1e-12)
    # the 4-step option is unavailable in the last 3 steps: never traded there
    assert np.all(out["actions"].numpy()[7:, :, 1] == 0)


def test_holdings_are_cumulative_trades():
    seen = []

    class Recorder(ScriptedPolicy):
        def step(self, obs, prev_action, state, training=None):
            seen.append((obs["holdings"].numpy().copy(), prev_action.numpy().copy()))
            return super().step(obs, prev_action, state, training)

    _, _, _, _, batch = small_setup(paths=4)
    schedule = np.arange(20.0).reshape(10, 2) / 10
    Hedger(Recorder(schedule, dtype=F64), MeanVariance(dtype=F64), dtype=F64)(batch)
    for k, (holdings, prev) in enumerate(seen):
        tm_mask = time_major(batch)["mask"].numpy()
        expect = (schedule[:k, None, :] * tm_mask[:k]).sum(0)
        np.testing.assert_allclose(holdings, expect, atol=1e-12)
        np.testing.assert_allclose(prev, schedule[k - 1] * tm_mask[k - 1] if k else 0 * prev, atol=1e-12)


def test_batches_are_batch_major_and_invert():
    _, market, derivative, hedges, batch = small_setup(paths=8)
    assert batch["obs"]["features"].shape == (8, 10, len(feature_names(derivative)))
    assert batch["returns"].shape == (8, 10, 2) and batch["payoff"].shape == (8,)
    tm = time_major(batch)
    paths = market.simulate(8)
    np.testing.assert_array_equal(tm["obs"]["spot"].numpy(), paths.spot[:-1].numpy())


def test_observations_of_a_cliquet():
    cfg, market, *_ = small_setup()
    paths = market.simulate(5)
    c = Cliquet(reset_every=5, local_cap=0.02, global_floor=0.0)
    obs = observations(paths, c)
    s = paths.spot.numpy()
    f = obs["features"].numpy()
    assert feature_names(c) == ("time", "log_spot", "vol", "log_period", "payoff_now")
    for k in range(10):
        last = (k // 5) * 5
        np.testing.assert_allclose(f[k, :, 3], np.log(s[k] / s[last]), rtol=1e-12)
        done = sum(np.minimum(s[5 * i] / s[5 * (i - 1)] - 1, 0.02) for i in range(1, k // 5 + 1))
        np.testing.assert_allclose(f[k, :, 4], np.maximum(done + np.minimum(s[k] / s[last] - 1, 0.02), 0.0),
                                   rtol=1e-12, atol=1e-15)


def test_fit_with_adam_reduces_the_loss_and_never_applies_nan():
    _, market, derivative, hedges, _ = small_setup()
    train = PathBatches(market, derivative, hedges, batch_size=512, batches_per_epoch=4)
    valid = PathBatches(market, derivative, hedges, batch_size=512, batches_per_epoch=1, fresh=False, seed=123)
    hedger = Hedger(LinearPolicy(2, dtype=F64), MeanVariance(dtype=F64), dtype=F64)
    hedger.compile(optimizer=keras.optimizers.Adam(1e-2))
    hist = hedger.fit(train, validation_data=valid, epochs=4, verbose=0)
    assert hist.history["val_loss"][-1] < hist.history["val_loss"][0]
    assert hist.history["skipped_steps"] == [0.0] * 4


def test_non_finite_step_is_skipped():
    _, market, derivative, hedges, batch = small_setup(paths=64)
    bad = dict(batch)
    bad["payoff"] = tf.tensor_scatter_nd_update(batch["payoff"], [[0]], [np.nan])
    hedger = Hedger(LinearPolicy(2, dtype=F64), MeanVariance(dtype=F64), dtype=F64)
    hedger.compile(optimizer=keras.optimizers.Adam(1e-2))
    hedger.build_from_batch(batch)
    before = [v.numpy().copy() for v in hedger.trainable_variables]
    logs = hedger.train_step(bad)
    assert float(logs["skipped_steps"]) == 1.0
    for b, v in zip(before, hedger.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert int(hedger.optimizer.iterations.numpy()) == 0


def test_natural_units_from_a_pilot_batch(tmp_path):
    """Buehler et al.'s spot and variance swap at s0 = 100: one natural unit of the swap is sd_spot /
    sd_swap contracts of it (hundreds: the position a hedge needs is about vega / (dS2/dv)); the spot's
    unit is exactly one; the policy's natural-unit actions times the units are the booked contracts; the
    units survive a save and reload."""
    from deephedge_tf.training import build_parts, make_hedger

    cfg = from_dict({}, ["market.model=heston", "market.s0=100.0", "market.heston.xi=2.0", "market.heston.kappa=1.0",
                         "market.heston.v0=0.04", "market.heston.theta=0.04", "time.steps=10",
                         "hedges.floating_grid.moneyness=[]", "hedges.floating_grid.maturities=[]",
                         "hedges.spot.cost=0.0", "hedges.variance_swap.enabled=true", "policy.kind=mlp",
                         "policy.width=4", "objective.kind=expected_shortfall"])
    parts = build_parts(cfg)
    batch = make_batch(parts.market.simulate(4096), parts.derivative, parts.instruments)
    hedger = make_hedger(cfg, parts, compile=False)
    hedger.build_from_batch(batch)
    units = hedger.policy.instrument_units.numpy()
    sd = batch["returns"].numpy().reshape(-1, 2).std(axis=0)
    assert units[0] == 1.0
    assert units[1] == pytest.approx(sd[0] / sd[1], rel=1e-4)
    assert 50.0 < units[1] < 5000.0
    # Booked contracts = the policy's own (natural-unit) trades x units, step by step.
    small = {k: (v[:3] if not isinstance(v, dict) else {kk: vv[:3] for kk, vv in v.items()}) for k, v in batch.items()}
    contracts = hedger(small)["actions"].numpy()
    tm = time_major(small)
    holdings = np.zeros((3, 2), np.float32)
    step_obs = {key: value[0] for key, value in tm["obs"].items()}
    step_obs.update(mask=tm["mask"][0], holdings=holdings)
    natural, _ = hedger.policy(step_obs, tf.zeros([3, 2]), ())
    np.testing.assert_allclose(contracts[0], natural.numpy() * units, rtol=1e-5)
    hedger.save(tmp_path / "h.keras")
    reloaded = keras.saving.load_model(tmp_path / "h.keras")
    np.testing.assert_array_equal(reloaded.policy.instrument_units.numpy(), units)
    plain = from_dict({}, ["hedges.natural_units=false"])
    off = make_hedger(plain, build_parts(plain), compile=False)
    off.build_from_batch(make_batch(build_parts(plain).market.simulate(64), parts.derivative,
                                    build_parts(plain).instruments))
    assert off.natural_units is False and np.all(off.policy.instrument_units.numpy() == 1.0)
