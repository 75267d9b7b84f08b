"""The curvature each loss owns (deephedge_tf.optimizers.losses, the objectives' output_curvature) against
a brute-force float64 GGN J^T H J on a tiny network: J by explicit Jacobians, H by differentiating the loss
twice with respect to the network outputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.objectives import (EntropicRisk, ExpectedShortfall, ExponentialUtility, MeanVariance,
                                    VarianceCurvature)
from deephedge_tf.optimizers import loss_curvature
from deephedge_tf.optimizers.losses import CrossEntropyCurvature, MeanSquaredErrorCurvature

B = 5


def tiny_net(outputs, activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    net = keras.Sequential([keras.Input((3,), dtype="float64"),
                            keras.layers.Dense(4, activation="tanh", dtype="float64"),
                            keras.layers.Dense(outputs, activation=activation, dtype="float64")])
    return net


def jacobian_and_outputs(net, x, squeeze=False):
    """(outputs, J [B * K, P]) with P all weights flattened in variable order."""
    with tf.GradientTape(persistent=True) as tape:
        y = net(x)
        if squeeze:
            y = y[:, 0]
    jac = tape.jacobian(y, net.trainable_variables, experimental_use_pfor=False)
    flat = np.concatenate([j.numpy().reshape(int(np.prod(y.shape)), -1) for j in jac], axis=1)
    return y, flat


def output_hessian(loss_fn, y):
    """Hessian of the scalar ``loss_fn(y)`` w.r.t. ``y``, ``[B * K, B * K]``."""
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(y)
        with tf.GradientTape() as inner:
            inner.watch(y)
            loss = loss_fn(y)
        grad = inner.gradient(loss, y)
    n = int(np.prod(y.shape))
    return outer.jacobian(grad, y, experimental_use_pfor=False).numpy().reshape(n, n)


def shortfall_surrogate_hessian(objective, tau, pnl):
    """Hessian w.r.t. the PnL of the documented smooth surrogate of the sample ES, min over w of
    w + mean(tau softplus((-pnl - w) / tau)) / (1 - alpha) (tau held fixed): the joint Hessian in
    (pnl, w) at w = the value at risk, with w eliminated (Schur complement)."""
    b = int(pnl.shape[0])

    def joint(z):
        x, w = z[:b], z[b]
        return w + tf.reduce_mean(tau * tf.nn.softplus((-x - w) / tau)) / (1.0 - objective.alpha)

    z = tf.concat([pnl, objective.value_at_risk(pnl)[None]], 0)
    h = output_hessian(joint, z)
    return h[:b, :b] - np.outer(h[:b, b], h[b, :b]) / h[b, b]


def fixed_mean_variance(gamma, pnl):
    """The DH-KFAC paper's surrogate: gamma mean((p - m)^2) with the batch mean m of ``pnl`` held fixed."""
    m = tf.constant(float(tf.reduce_mean(pnl)), tf.float64)
    return lambda p: gamma * tf.reduce_mean(tf.square(p - m))


class CentredMeanVariance(MeanVariance):
    def output_curvature(self):
        return VarianceCurvature(self.gamma, centred=True)


def pnl_cases():
    es = ExpectedShortfall(alpha=0.6, dtype="float64")
    return [
        ("mean_variance", MeanVariance(gamma=3.0), "fixed_mean"),
        ("mean_variance_centred", CentredMeanVariance(gamma=3.0), lambda o: (lambda p: o(p))),
        ("entropic", EntropicRisk(a=2.0), lambda o: (lambda p: o(p))),
        ("exponential_utility", ExponentialUtility(a=0.7), lambda o: (lambda p: o(p))),
        ("expected_shortfall", es, None),
    ]


@pytest.mark.parametrize("case", range(5), ids=[c[0] for c in pnl_cases()])
def test_objective_curvature_against_brute_force_ggn(case):
    name, objective, loss_of = pnl_cases()[case]
    net = tiny_net(1)
    x = tf.constant(np.random.default_rng(1).normal(size=(B, 3)))
    pnl, jac = jacobian_and_outputs(net, x, squeeze=True)
    curvature = objective.output_curvature()
    if loss_of is None:  # ES: the surrogate with tau = 0.5 std(pnl), held fixed
        tau = tf.constant(0.5 * float(tf.math.reduce_std(pnl)), tf.float64)
        hess = shortfall_surrogate_hessian(objective, tau, pnl)
    else:
        loss_fn = fixed_mean_variance(objective.gamma, pnl) if loss_of == "fixed_mean" else loss_of(objective)
        hess = output_hessian(loss_fn, tf.identity(pnl))
    ggn = jac.T @ hess @ jac
    rng = np.random.default_rng(2)
    v1, v2 = rng.normal(size=(2, jac.shape[1]))
    # The exact bilinear form, cross-path terms (centring, normalisation) included.
    got = float(curvature.bilinear(pnl, tf.constant(jac @ v1), tf.constant(jac @ v2)))
    assert got == pytest.approx(v1 @ ggn @ v2, rel=1e-10, abs=1e-14)
    # Per-path pseudo-gradients: exact rank one, u_b^2 = B H_bb, so their statistics are the GGN's
    # per-path part (1/B) sum_b J_b^T (B H_bb) J_b.
    u = curvature.pseudo_gradient(pnl).numpy()
    np.testing.assert_allclose(u ** 2, B * np.diag(hess), rtol=1e-10)
    per_path = sum(np.outer(jac[b], jac[b]) * u[b] ** 2 for b in range(B)) / B
    expected = jac.T @ np.diag(np.diag(hess)) @ jac
    np.testing.assert_allclose(per_path, expected, rtol=1e-9, atol=1e-11 * np.abs(expected).max())
    assert np.abs(expected).max() > 1e-6  # a vacuous match would prove nothing


def _keras_cases():
    return [
        ("mse_k1", "mse", 1, None, lambda y: keras.losses.MeanSquaredError(dtype="float64")(TARGET1, y)),
        ("mse_k3", keras.losses.MeanSquaredError(), 3, None, lambda y: tf.reduce_mean(keras.losses.mean_squared_error(TARGET3, y))),
        ("cce_probs", "categorical_crossentropy", 3, tf.nn.softmax,  # Keras' "softmax" loses digits in float64
         lambda y: keras.losses.CategoricalCrossentropy(dtype="float64")(ONEHOT, y)),
        ("cce_logits", keras.losses.CategoricalCrossentropy(from_logits=True), 3, None,
         lambda y: keras.losses.CategoricalCrossentropy(from_logits=True, dtype="float64")(ONEHOT, y)),
        ("scce_logits", keras.losses.SparseCategoricalCrossentropy(from_logits=True), 3, None,
         lambda y: keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")(LABELS, y)),
    ]


_rng = np.random.default_rng(5)
TARGET1 = tf.constant(_rng.normal(size=(B, 1)))
TARGET3 = tf.constant(_rng.normal(size=(B, 3)))
LABELS = tf.constant(_rng.integers(0, 3, size=B))
ONEHOT = tf.one_hot(LABELS, 3, dtype=tf.float64)


@pytest.mark.parametrize("case", range(5), ids=[c[0] for c in _keras_cases()])
def test_keras_loss_curvature_against_brute_force_ggn(case):
    name, loss, k, activation, loss_fn = _keras_cases()[case]
    curvature = loss_curvature(loss)
    net = tiny_net(k, activation)
    x = tf.constant(np.random.default_rng(3).normal(size=(B, 3)))
    y, jac = jacobian_and_outputs(net, x)
    if name == "cce_probs":
        # The GGN at the logits (the natural one for a softmax output); the curvature's probability-
        # space Fisher pulled back through the softmax must equal it.
        logits_net = keras.Sequential(net.layers[:-1] + [keras.layers.Dense(3, dtype="float64")])
        logits_net.layers[-1].build((None, 4))
        logits_net.layers[-1].set_weights(net.layers[-1].get_weights())
        z, jac_z = jacobian_and_outputs(logits_net, x)
        cce = keras.losses.CategoricalCrossentropy(from_logits=True, dtype="float64")
        hess = output_hessian(lambda t: cce(ONEHOT, t),
                              tf.identity(z))
        ggn = jac_z.T @ hess @ jac_z
    else:
        hess = output_hessian(loss_fn, tf.identity(y))
        ggn = jac.T @ hess @ jac
    rng = np.random.default_rng(4)
    v1, v2 = rng.normal(size=(2, jac.shape[1]))
    jv1, jv2 = (tf.constant((jac @ v).reshape(y.shape)) for v in (v1, v2))
    # Through a softmax the float64 Jacobians agree to ~1e-8 only (J_probs vs S J_logits, measured).
    rel = 1e-6 if name == "cce_probs" else 1e-10
    assert float(curvature.bilinear(y, jv1, jv2)) == pytest.approx(v1 @ ggn @ v2, rel=rel, abs=1e-14)
    # Pseudo-gradients: E[u_b u_b^T] = B H_bb (Monte Carlo over 4000 copies of the batch; the
    # per-sample blocks are independent of the batch size).
    copies = 4000
    tiled = tf.tile(y, [copies, 1])
    u = curvature.pseudo_gradient(tiled, seed=tf.constant([1, 2], tf.int64)).numpy().reshape(copies, B, k)
    if name == "cce_probs":  # pulled back to the logits: J_softmax^T u
        p = y.numpy()
        u = np.einsum("bij,cbj->cbi", np.stack([np.diag(q) - np.outer(q, q) for q in p]), u)
    second = np.einsum("cbi,cbj->bij", u, u) / copies
    for b in range(B):
        block = B * hess[b * k:(b + 1) * k, b * k:(b + 1) * k]
        scale = np.abs(block).max()
        np.testing.assert_allclose(second[b], block, atol=0.12 * scale, err_msg=f"{name} sample {b}")


def test_loss_curvature_errors_name_the_loss():
    with pytest.raises(ValueError, match="huber.*supported: mse"):
        loss_curvature("huber")
    assert isinstance(loss_curvature("mean_squared_error"), MeanSquaredErrorCurvature)
    assert isinstance(loss_curvature(keras.losses.sparse_categorical_crossentropy), CrossEntropyCurvature)
    assert loss_curvature(keras.losses.CategoricalCrossentropy(from_logits=True)).from_logits


def test_rademacher_signs_are_the_same_under_xla_balanced_and_independent_across_seeds():
    """The pseudo-gradients' signs: identical compiled with XLA and without (TensorFlow's stateless random
    ops are not), mean and neighbour / cross-seed correlations within 4 standard errors of zero."""
    from deephedge_tf.optimizers.losses import rademacher

    n = 200_000

    def draw(s1):
        return rademacher([n], tf.constant([5, s1], tf.int64), tf.float64)

    plain = tf.function(lambda: draw(1))().numpy()
    np.testing.assert_array_equal(plain, tf.function(lambda: draw(1), jit_compile=True)().numpy())
    other = draw(2).numpy()
    bound = 4.0 / np.sqrt(n)
    assert set(np.unique(plain)) == {-1.0, 1.0}
    assert abs(plain.mean()) < bound and abs(np.mean(plain[1:] * plain[:-1])) < bound
    assert abs(np.mean(plain * other)) < bound


def test_cross_entropy_pseudo_gradients_compile_with_xla_and_draw_the_same_classes():
    """The classifier's sampled pseudo-gradients: compiled with XLA (which has no categorical sampling op)
    they are the plain graph's, and the class frequencies match p within 4 standard errors."""
    curvature = CrossEntropyCurvature(from_logits=True)
    logits = tf.constant(np.tile([[0.0, 1.0, -1.0]], (20000, 1)))
    seed = tf.constant([3, 4], tf.int64)
    plain = tf.function(lambda: curvature.pseudo_gradient(logits, seed=seed))().numpy()
    compiled = tf.function(lambda: curvature.pseudo_gradient(logits, seed=seed), jit_compile=True)().numpy()
    np.testing.assert_array_equal(np.argmin(plain, axis=1), np.argmin(compiled, axis=1))  # the same draws
    np.testing.assert_allclose(plain, compiled, rtol=1e-12)   # and the softmax to rounding
    p = tf.nn.softmax(logits[0]).numpy()
    assert np.all(np.sum(plain < 0, axis=1) == 1)   # u = p - e_y: only the drawn class is negative
    frequencies = np.bincount(np.argmin(plain, axis=1), minlength=3) / len(plain)
    assert np.all(np.abs(frequencies - p) <= 4 * np.sqrt(p * (1 - p) / len(plain))), (frequencies, p)
