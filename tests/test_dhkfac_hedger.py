"""DH-KFAC inside the hedger: curvature capture, exact GGN pseudo-gradients, XLA on CPU, training."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf import curvature
from deephedge_tf.config import from_dict
from deephedge_tf.errors import ConfigError
from deephedge_tf.features import make_batch, time_major
from deephedge_tf.optimizers.blocks import layer_path
from deephedge_tf.training import build_parts, fit_hedger, make_hedger


def tiny_cfg(*extra):
    return from_dict({}, ["market.model=gbm", "time.steps=3", "policy.num_blocks=1", "policy.width=4",
                          "policy.head_scale=0.3", "objective.gamma=10.0", "dtype=float64",
                          "hedges.floating_grid.moneyness=[1.0]", "hedges.floating_grid.maturities=[2]",
                          "hedges.spot.cost=0.01", "training.optimizer=dhkfac", "training.kfac.curvature_paths=null",
                          *extra])


def tiny_hedger_on_three_paths():
    """(built float64 hedger, batch-major batch of 3 paths, the same batch time-major)."""
    cfg = tiny_cfg()
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts)
    batch = make_batch(parts.market.simulate(3), parts.derivative, parts.instruments)
    hedger.build_from_batch(batch)
    return hedger, batch, time_major(batch)


def test_captured_statistics_give_the_exact_per_path_ggn_factor():
    """sum_t a_t g_t^T of each path equals J_b^T sqrt(2 gamma) dPnL_b/du_b for every block, where J_b is
    the Jacobian of path b's actions w.r.t. the block's stacked weights (brute force, float64)."""
    hedger, batch, tm = tiny_hedger_on_three_paths()
    with tf.GradientTape(persistent=True) as tape:
        actions, probes, inputs = curvature.capture_rollout(hedger.policy, tm["obs"], tm["mask"], tape)
        out = hedger._book(tm, actions)
    stats, _ = curvature.curvature_statistics(tape, hedger.policy, out["pnl"], actions, probes, inputs,
                                              gamma=10.0)
    r = tape.gradient(out["pnl"], actions).numpy()  # [T, B, N]
    for name, weights, d_in, d_out in hedger.policy.linear_maps():
        a, g = (x.numpy() for x in stats[layer_path(weights[0])])
        assert a.shape == (3, 3, d_in + 1) and g.shape == (3, 3, d_out)
        for b in range(3):
            with tf.GradientTape() as jt:
                acts = hedger.unroll(batch)["actions"][:, b, :]  # [T, N]
            jac = jt.jacobian(acts, weights)  # each [T, N, *w.shape]; a bias is [T, N, d_out]
            n = acts.shape[-1]
            stacked = np.concatenate([j.numpy().reshape(3, n, -1, d_out) for j in jac], axis=2)
            expected = math.sqrt(20.0) * np.einsum("tn,tnij->ij", r[:, b, :], stacked)
            got = np.einsum("ti,tj->ij", a[:, b], g[:, b])
            np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=f"{name} path {b}")


def test_directional_curvature_equals_brute_force_ggn():
    """V^T J^T H J V from forward mode equals the brute-force value from full Jacobians (float64)."""
    hedger, batch, tm = tiny_hedger_on_three_paths()
    variables = hedger.policy.trainable_variables
    rng = np.random.default_rng(1)
    tangents = [tf.constant(rng.normal(size=v.shape)) for v in variables]
    with tf.GradientTape() as tape:
        tape.watch(tm["obs"]["features"])
        out = hedger.unroll(batch)
        pnl = out["pnl"]
    r = tape.gradient(pnl, out["actions"]).numpy()
    q = float(curvature.directional_curvature(hedger.policy, tm["obs"], tm["mask"], variables, tangents,
                                              tf.constant(r), gamma=10.0))
    expected = 0.0
    for b in range(3):
        with tf.GradientTape() as jt:
            acts = hedger.unroll(batch)["actions"][:, b, :]
        jac = jt.jacobian(acts, variables)
        jv = sum(np.tensordot(j.numpy(), t.numpy(), axes=t.shape.rank) for j, t in zip(jac, tangents))
        expected += 2 * 10.0 * float((r[:, b, :] * jv).sum()) ** 2 / 3
    assert q == pytest.approx(expected, rel=1e-9)


def test_subspace_model_equals_brute_force_ggn_and_gradient_products():
    """M = [V, P]^T J^T H J [V, P] (two forward-mode passes) and b = [g.V, g.P] against full Jacobians."""
    hedger, batch, tm = tiny_hedger_on_three_paths()
    variables = hedger.policy.trainable_variables
    rng = np.random.default_rng(2)
    v = [tf.constant(rng.normal(size=w.shape)) for w in variables]
    p = [tf.constant(rng.normal(size=w.shape)) for w in variables]
    g = [tf.constant(rng.normal(size=w.shape)) for w in variables]
    with tf.GradientTape() as tape:
        out = hedger.unroll(batch)
    r = tape.gradient(out["pnl"], out["actions"]).numpy()
    matrix, rhs = curvature.subspace_model(hedger.policy, tm["obs"], tm["mask"], variables, g, v, p,
                                           tf.constant(r), gamma=10.0)
    along = np.zeros((2, 3))
    for b in range(3):
        with tf.GradientTape() as jt:
            acts = hedger.unroll(batch)["actions"][:, b, :]
        jac = jt.jacobian(acts, variables)
        for i, tangents in enumerate((v, p)):
            jv = sum(np.tensordot(j.numpy(), t.numpy(), axes=t.shape.rank) for j, t in zip(jac, tangents))
            along[i, b] = (r[:, b, :] * jv).sum()
    np.testing.assert_allclose(matrix.numpy(), 2 * 10.0 * along @ along.T / 3, rtol=1e-9)
    dots = [sum(float(np.sum(a.numpy() * c.numpy())) for a, c in zip(g, t)) for t in (v, p)]
    np.testing.assert_allclose(rhs.numpy(), dots, rtol=1e-12)


def test_step_model_sets_the_step_to_the_quadratic_minimiser():
    from deephedge_tf.optimizers import DHKFAC

    w = keras.Variable(np.ones((2, 3)), name="kernel", dtype="float64")
    opt = DHKFAC(learning_rate=1.0, trust_radius=None)
    opt.build([w])
    g = tf.constant(np.full((2, 3), 0.5))
    opt.set_step_model(curvature_along=4.0, slope=2.0)  # quadratic minimiser along V: 2 / 4
    opt.apply([g], [w])
    assert float(opt.step_size.numpy()) == pytest.approx(0.5)
    opt.apply([g], [w])  # the model is consumed by one step; without it eta = eta_max
    assert float(opt.step_size.numpy()) == pytest.approx(1.0)
    opt.set_step_model(curvature_along=float("nan"), slope=2.0)  # invalid models are ignored
    opt.apply([g], [w])
    assert float(opt.step_size.numpy()) == pytest.approx(1.0)


def test_sampled_ggn_matches_exact_in_expectation_without_l2():
    r = tf.constant(np.random.default_rng(0).normal(size=(3, 2000, 2)))
    exact = curvature.action_pseudo_gradients(r, 2.0, "exact").numpy()
    sampled = curvature.action_pseudo_gradients(r, 2.0, "sampled", cost_l2=0.0,
                                                seed=tf.constant([1, 2], tf.int64)).numpy()
    # sampled = exact * z with z ~ N(0, 1) per path: same second moment
    ratio = (sampled ** 2).sum() / (exact ** 2).sum()
    assert 0.9 < ratio < 1.1
    with pytest.raises(ValueError, match="ggn mode"):
        curvature.action_pseudo_gradients(r, 2.0, "other")


@pytest.mark.parametrize("extra", [(), ("training.kfac.step_model=subspace", "training.kfac.curvature_period=2")],
                         ids=["line-model", "subspace-model-period-2"])
def test_dhkfac_train_step_under_xla_matches_plain(extra):
    cfg = tiny_cfg("dtype=float32", "time.steps=4", *extra)
    parts = build_parts(cfg)
    batch = make_batch(parts.market.simulate(64), parts.derivative, parts.instruments)
    results = []
    for jit in (False, True):
        hedger = make_hedger(cfg, parts)
        hedger.build_from_batch(batch)
        step = tf.function(hedger.train_step, jit_compile=jit)
        for _ in range(3):
            logs = step(batch)
        assert int(hedger.optimizer.iterations.numpy()) == 3
        results.append((float(logs["loss"]), [v.numpy() for v in hedger.trainable_variables]))
    (la, wa), (lb, wb) = results
    assert la == pytest.approx(lb, rel=1e-4)
    for a, b in zip(wa, wb):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("extra", [(), ("training.kfac.step_model=subspace",)], ids=["line-model", "subspace-model"])
def test_fit_with_dhkfac_lowers_the_validation_loss(extra):
    # gamma Var[PnL] dominates (as in the paper's setting): the GGN surrogate is the variance term.
    cfg = tiny_cfg("dtype=float32", "time.steps=10", "policy.width=8", "objective.gamma=1000.0",
                   "hedges.spot.cost=1e-4", "training.batch_size=512", "training.batches_per_epoch=5",
                   "training.epochs=3", "training.validation_paths=1024", "training.learning_rate=1.0",
                   "training.kfac.inverse_period=2", *extra)
    parts = build_parts(cfg)
    hedger = make_hedger(cfg, parts)
    history = fit_hedger(cfg, hedger, parts, verbose=0)
    assert history.history["val_loss"][-1] < 0.8 * history.history["val_loss"][0]
    assert history.history["skipped_steps"] == [0.0] * 3
    assert int(hedger.optimizer.skipped_curvature_updates.numpy()) == 0


def test_subspace_step_model_excludes_heavy_ball_momentum():
    with pytest.raises(ConfigError, match="training.kfac.momentum"):
        tiny_cfg("training.kfac.step_model=subspace", "training.kfac.momentum=0.5")
    with pytest.raises(ConfigError, match="training.kfac.step_model"):
        tiny_cfg("training.kfac.step_model=newton")


def test_dhkfac_needs_the_recurrent_policy():
    with pytest.raises(ConfigError, match="training.optimizer"):
        tiny_cfg("policy.kind=mlp")
