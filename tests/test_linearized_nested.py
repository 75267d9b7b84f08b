"""The DHLNN paper's linearised nested optimiser (deephedge_tf.optimizers.nested): its inner gradient
against brute-force Jacobians in float64, the exact gradient at the outer point, the inner-step
bookkeeping, the config and the refusal of plain Keras models."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import deephedge_tf as dh
from deephedge_tf.builders import build_optimizer
from deephedge_tf.config import from_dict
from deephedge_tf.errors import ConfigError, DeepHedgeError
from deephedge_tf.features import make_batch, time_major
from deephedge_tf.objectives import Objective
from deephedge_tf.optimizers import LinearizedNested
from deephedge_tf.optimizers.nested import LinearizedObjective
from deephedge_tf.training import build_parts, fit_hedger, make_hedger

A = 2.0  # entropic risk aversion of the tiny hedger


GAMMA = 3.0  # mean-variance risk aversion of the tiny hedger


def tiny(policy="mlp", paths=6, cost=0.01, objective="entropic", time_loop="python"):
    """(built float64 hedger with the entropic (a = A) or mean-variance (gamma = GAMMA) objective,
    batch-major batch of ``paths`` paths)."""
    risk = [f"objective.a={A}"] if objective == "entropic" else [f"objective.gamma={GAMMA}"]
    cfg = from_dict({}, ["market.model=gbm", "market.s0=1.0", "time.steps=3", "dtype=float64",
                         f"policy.kind={policy}", "policy.num_layers=1", "policy.width=4",
                         f"objective.kind={objective}", *risk, f"hedges.spot.cost={cost}",
                         f"training.time_loop={time_loop}", "training.optimizer=dhlnn"])
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts)
    batch = make_batch(parts.market.simulate(paths), parts.derivative, parts.instruments)
    hedger.build_from_batch(batch)
    return hedger, batch


def brute_force_inner_gradient(hedger, batch, delta, smoothing, floor, objective="entropic"):
    """The linearised objective's gradient at ``w_r + delta`` from the explicit Jacobian ``du/dw`` and the
    objective's derivatives in PnL and costs in closed form (numpy, float64)."""
    variables = hedger.trainable_variables
    with tf.GradientTape(persistent=True) as tape:
        out = hedger.unroll(batch, training=True)
    u = out["actions"].numpy()                                            # [T, B, N]
    jac = [j.numpy() for j in tape.jacobian(out["actions"], variables, experimental_use_pfor=False)]
    tm = time_major(batch)
    returns, cp = tm["returns"].numpy(), (tm["premiums"] * tm["cost_rates"]).numpy()
    pnl = out["pnl"].numpy()
    if objective == "entropic":
        # (1/a) log mean exp(-a V): d/dV_b = -exp(-a V_b) / sum exp(-a V); it takes no cost argument.
        weights = np.exp(-A * (pnl - pnl.min()))
        rho_v, rho_c = -weights / weights.sum(), np.zeros_like(pnl)
    else:
        # gamma Var(V) + mean(C) (biased variance): d/dV_b = 2 gamma (V_b - mean V) / B, d/dC_b = 1 / B.
        rho_v, rho_c = 2.0 * GAMMA * (pnl - pnl.mean()) / pnl.size, np.full_like(pnl, 1.0 / pnl.size)
    ju = sum(np.tensordot(j, d.numpy(), axes=d.ndim) for j, d in zip(jac, delta))
    u_hat = u + ju
    if smoothing == "majorizer":
        eps = floor * np.abs(u).mean(axis=(0, 1), keepdims=True) + 1e-12
        slope = cp / np.sqrt(u ** 2 + eps ** 2) * u_hat
    else:
        slope = 2.0 * cp * u_hat
    cot = rho_v[None, :, None] * returns - (rho_v - rho_c)[None, :, None] * slope
    return [np.tensordot(cot, j, axes=3) for j in jac]


@pytest.mark.parametrize("policy, smoothing, objective, time_loop", [
    ("mlp", "majorizer", "entropic", "python"), ("mlp", "square", "entropic", "python"),
    ("delta_band", "majorizer", "entropic", "python"), ("delta_band", "square", "entropic", "python"),
    ("mlp", "majorizer", "mean_variance", "python"),     # a cost term in the objective: rho_C != 0
    ("delta_band", "majorizer", "mean_variance", "graph")])
def test_inner_gradient_matches_brute_force_jacobian(policy, smoothing, objective, time_loop):
    hedger, batch = tiny(policy, objective=objective, time_loop=time_loop)
    rng = np.random.default_rng(3)
    delta = [tf.constant(0.05 * rng.standard_normal(v.shape)) for v in hedger.trainable_variables]
    lin = LinearizedObjective(hedger, batch, smoothing, 0.1)
    got = lin.gradient(delta)
    want = brute_force_inner_gradient(hedger, batch, delta, smoothing, 0.1, objective)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-9, atol=1e-12)
    # The Jacobian-vector product alone, against the brute-force one.
    with tf.GradientTape(persistent=True) as tape:
        u = hedger.unroll(batch, training=True)["actions"]
    jac = tape.jacobian(u, hedger.trainable_variables, experimental_use_pfor=False)
    ju = sum(np.tensordot(j.numpy(), d.numpy(), axes=d.ndim) for j, d in zip(jac, delta))
    np.testing.assert_allclose(lin.jvp(delta).numpy(), ju, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("time_loop", ["python", "graph"])
def test_gradient_at_the_outer_point_is_the_true_gradient(time_loop):
    """With a vanishing majorizer floor the smoothed costs' slope at the outer trades is c P sign(u): the
    first inner step is the exact gradient step (either time loop; the graph loop under tf.function)."""
    hedger, batch = tiny("delta_band", paths=32)
    hedger.time_loop = time_loop

    @tf.function
    def both():
        lin = LinearizedObjective(hedger, batch, "majorizer", 1e-9)
        with tf.GradientTape() as tape:
            loss = hedger._loss(hedger.unroll(batch, training=True))
        return lin.gradient(), tape.gradient(loss, hedger.trainable_variables)

    got, want = both()
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-12)


class LearnedShortfall(Objective):
    """Expected shortfall at 50% in its OCE form with a learned intercept ``w`` (an objective with a weight)."""

    kind = "learned_shortfall"

    def build(self, *args):
        self.w = self.add_weight(shape=(), initializer="zeros", name="w", dtype=self.dtype)

    def call(self, pnl, costs=None):
        return self.w + tf.reduce_mean(tf.nn.relu(-pnl - self.w)) / 0.5

    def risk(self, pnl):
        return self.call(pnl)


def test_an_objective_with_its_own_weight_trains_with_the_gradient_of_the_outer_point():
    """The intercept keeps the true gradient of the outer pass; the policy's first step is the exact one
    (vanishing majorizer floor); training moves the intercept."""
    market = dh.GBM(s0=1.0, sigma=0.1, steps=4, dt=1 / 365, dtype="float64")
    batch = make_batch(market.simulate(64), dh.EuropeanOption(strike=1.0), [dh.Spot(cost=2e-3)])
    hedger = dh.Hedger(dh.DeltaAnchoredBandPolicy(num_layers=1, width=4, dtype="float64"),
                       LearnedShortfall(dtype="float64"), dtype="float64")
    hedger.build_from_batch(batch)
    lin = LinearizedObjective(hedger, batch, "majorizer", 1e-9)
    with tf.GradientTape() as tape:
        loss = hedger._loss(hedger.unroll(batch, training=True))
    for g, w in zip(lin.gradient(), tape.gradient(loss, hedger.trainable_variables)):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-6, atol=1e-12)
    hedger.compile(optimizer=LinearizedNested(learning_rate=1e-2, inner_steps=3))
    hedger.fit(tf.data.Dataset.from_tensors(batch).repeat(2), epochs=1, verbose=0)
    assert float(hedger.objective.w.numpy()) != 0.0 and int(hedger.optimizer.iterations.numpy()) == 6


def test_a_tolerance_no_step_can_beat_stops_the_inner_loop_after_one_step():
    """(Without a tolerance every inner step runs: the class's doctest counts them.)"""
    hedger, batch = tiny("delta_band", paths=64)
    hedger.compile(optimizer=LinearizedNested(learning_rate=1e-3, inner_steps=4, tolerance=1e9))
    hedger.fit(tf.data.Dataset.from_tensors(batch).repeat(3), epochs=1, verbose=0)
    assert int(hedger.optimizer.iterations.numpy()) == 3


def test_nested_training_lowers_the_loss_more_per_batch_than_one_adam_step():
    """Same batches, same initial weights: after 10 outer iterations of 5 inner steps the validation loss
    is below that of 10 plain Adam steps (each inner step is an Adam step on a model that stays close to
    the true objective on the batch)."""
    overrides = ["market.model=gbm", "market.s0=1.0", "market.gbm.sigma=0.1", "time.steps=5",
                         "policy.kind=delta_band", "policy.num_layers=2", "policy.width=8", "training.time_loop=graph",
                         "objective.kind=entropic", "objective.a=1.0", "hedges.spot.cost=2e-3",
                         "derivative.strike=1.0", "training.batch_size=512", "training.batches_per_epoch=10",
                         "training.epochs=1", "training.learning_rate=1e-3", "training.validation_paths=2048"]
    losses = {}
    for optimizer in ("adam", "dhlnn"):
        c = from_dict({}, overrides + [f"training.optimizer={optimizer}"])
        parts = build_parts(c)
        hedger = make_hedger(c, parts)
        history = fit_hedger(c, hedger, parts, verbose=0)
        losses[optimizer] = history.history["val_loss"][-1]
    assert losses["dhlnn"] < losses["adam"]


def test_plain_keras_model_is_refused():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=LinearizedNested(), loss="mse")
    x = np.zeros((8, 2), "float32")
    with pytest.raises(DeepHedgeError, match="Hedger"):
        model.fit(x, x[:, :1], epochs=1, verbose=0)


def test_config_builds_the_optimizer_and_names_bad_fields():
    cfg = from_dict({}, ["training.optimizer=dhlnn", "training.dhlnn.inner_steps=3",
                         "training.dhlnn.cost_smoothing=square", "training.learning_rate=2e-3"])
    opt = build_optimizer(cfg)
    assert isinstance(opt, LinearizedNested)
    assert (opt.inner_steps, opt.cost_smoothing) == (3, "square")
    with pytest.raises(ConfigError, match="training.dhlnn.cost_smoothing"):
        from_dict({}, ["training.dhlnn.cost_smoothing=cubic"])
    with pytest.raises(ConfigError, match="training.dhlnn.inner_steps"):
        from_dict({}, ["training.dhlnn.inner_steps=0"])
    with pytest.raises(DeepHedgeError, match="cost_smoothing"):
        LinearizedNested(cost_smoothing="cubic")


def test_serialises_with_its_settings():
    opt = LinearizedNested(learning_rate=2e-3, inner_steps=7, tolerance=1e-6, cost_smoothing="square")
    again = LinearizedNested.from_config(opt.get_config())
    assert (again.inner_steps, again.tolerance, again.cost_smoothing) == (7, 1e-6, "square")
