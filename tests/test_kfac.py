"""Tests of deephedge_tf.optimizers (DHKFAC): blocks, factor values, exactness, damping, trust region,
Newton step, checkpointing, XLA, non-finite guards, and the recurrent policy's capture contract.

Everything is float64 and tiny (the suite runs on 2 shared cores).  Exact GGN blocks are computed by
brute force: Jacobians of the network outputs with tf.GradientTape.  "Exact pseudo-gradients" for a
squared error (H = I) enumerate z = sqrt(K) e_k over the K outputs of each data point, so the mean
over the N*K pseudo-samples of vec(M) vec(M)^T is exactly the GGN (1/N) sum_n J_n^T J_n.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.optimizers import DHKFAC as _DHKFAC
from deephedge_tf.optimizers import Recorder, estimator, find_blocks, layer_path, steps, with_bias_column
from deephedge_tf.policies import RecurrentPolicy


def DHKFAC(**kwargs):  # noqa: N802 (stands in for the class in these tests)
    """The paper's Kronecker preconditioner: what this file tests (the library default is Gauss-Newton)."""
    return _DHKFAC(preconditioner="kronecker", **kwargs)


F64 = tf.float64


def mlp(sizes, activation=None, use_bias=True, name="net", seed=0):
    """float64 Sequential of Dense layers ``d0, d1, ...`` (no activation on the last)."""
    keras.utils.set_random_seed(seed)
    layers = [
        keras.layers.Dense(d, activation=activation if i < len(sizes) - 2 else None, use_bias=use_bias,
                           name=f"d{i}", dtype="float64")
        for i, d in enumerate(sizes[1:])
    ]
    model = keras.Sequential(layers, name=name)
    model.build((None, sizes[0]))
    return model


def forward(model, x, probes=None):
    """Manual forward pass of an ``mlp`` with optional probes on the pre-activations; returns (f, inputs)."""
    h, inputs = x, []
    for i, layer in enumerate(model.layers):
        inputs.append(h)
        z = tf.matmul(h, layer.kernel) + (layer.bias if layer.use_bias else 0.0)
        if probes is not None:
            z = z + probes[i]
        h = layer.activation(z)
    return h, inputs


def exact_statistics(model, x):
    """``{block: (a [1, N*K, dim_a], g [1, N*K, d_out])}`` with exact per-point pseudo-gradients (H = I)."""
    n = int(x.shape[0])
    probes = [tf.zeros((n, layer.units), F64) for layer in model.layers]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(probes)
        f, inputs = forward(model, x, probes)
    k = int(f.shape[1])
    stats = {}
    for i, layer in enumerate(model.layers):
        jac = tape.jacobian(f, probes[i], experimental_use_pfor=False).numpy()  # [N, K, N, d]
        g = np.sqrt(k) * np.stack([jac[p, :, p, :] for p in range(n)])  # [N, K, d]
        a = inputs[i].numpy()
        a = with_bias_column(a).numpy() if layer.use_bias else a
        stats[layer_path(layer.kernel)] = (np.repeat(a, k, axis=0)[None], g.reshape(n * k, -1)[None])
    return stats


def exact_ggn_blocks(model, x):
    """``{block: (1/N) sum_n J_n^T J_n}`` over the stacked weights [kernel; bias] (row-major vec)."""
    with tf.GradientTape(persistent=True) as tape:
        f, _ = forward(model, x)
    n, k = f.shape
    out = {}
    for layer in model.layers:
        jk = tape.jacobian(f, layer.kernel, experimental_use_pfor=False).numpy()  # [N, K, din, dout]
        jb = tape.jacobian(f, layer.bias, experimental_use_pfor=False).numpy()[:, :, None, :]
        jac = np.concatenate([jk, jb], axis=2).reshape(n * k, -1)
        out[layer_path(layer.kernel)] = jac.T @ jac / n
    return out


def eigenbasis_diagonal(c, u_a, u_g):
    """diag(Q^T C Q) as [dim_a, d_out] with Q = kron(U_A, U_G)."""
    q = np.kron(u_a, u_g)
    return np.diag(q.T @ c @ q).reshape(u_a.shape[0], u_g.shape[0])


def per_path_curvature(a, g):
    """C = (1/B) sum_b vec(M_b) vec(M_b)^T with M_b = sum_t a_tb g_tb^T (numpy, [T, B, .] inputs)."""
    m = np.einsum("tbi,tbj->bij", a, g).reshape(a.shape[1], -1)
    return m.T @ m / a.shape[1]


def identity_statistics(name, dim_a, d_out):
    """Statistics with ``A = I``, ``G = I`` and EKFAC diagonal ``s = 1`` (one path per pair (i, j) with
    ``a = sqrt(dim_a) e_i``, ``g = sqrt(d_out) e_j``): the block preconditions with the identity."""
    pairs = [(i, j) for i in range(dim_a) for j in range(d_out)]
    a = np.stack([np.sqrt(dim_a) * np.eye(dim_a)[i] for i, _ in pairs])[None]
    g = np.stack([np.sqrt(d_out) * np.eye(d_out)[j] for _, j in pairs])[None]
    return {name: (a, g)}


def weights(model):
    return [v.numpy().copy() for v in model.trainable_variables]


# --------------------------------------------------------------------------- blocks


def test_blocks_from_variable_paths_and_clear_errors():
    inp = keras.Input((3,), dtype="float64")
    x = keras.layers.Dense(4, name="a", dtype="float64")(inp)
    x = keras.layers.LayerNormalization(name="ln", dtype="float64")(x)
    x = keras.layers.Dense(2, use_bias=False, name="b", dtype="float64")(x)
    model = keras.Model(inp, x, name="m")
    blocks, diagonal = find_blocks(model.trainable_variables)
    # Layers created outside a parent layer have top-level paths ("a/kernel").
    assert [(b.name, b.dim_a, b.d_out, b.has_bias) for b in blocks] == [("a", 4, 4, True), ("b", 4, 2, False)]
    assert sorted(model.trainable_variables[i].path for i in diagonal) == ["ln/beta", "ln/gamma"]

    # A kernel that is no linear map of rank 2 (a convolution) is no block: the diagonal step.
    conv = keras.Sequential([keras.layers.Conv1D(2, 3, name="conv")], name="c")
    conv.build((None, 5, 1))
    blocks, diagonal = find_blocks(conv.trainable_variables)
    assert blocks == [] and len(diagonal) == 2


def test_config_round_trip():
    opt = DHKFAC(learning_rate=0.5, damping=0.2, damping_mode="tikhonov", ekfac=False, momentum=0.3,
                 step_model="kronecker", inverse_period=4, curvature_period=2, trust_radius=None)
    config = opt.get_config()
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, _DHKFAC) and again.get_config() == config
    for key in ("damping", "damping_mode", "ekfac", "momentum", "step_model", "trust_radius", "trust_radius_decay",
                "trust_radius_mode", "statistics_decay", "diagonal_learning_rate", "epsilon"):
        assert key in config
    with pytest.raises(ValueError, match="rho"):
        DHKFAC(damping=1.5)


# --------------------------------------------------------------------------- factor values


@pytest.mark.parametrize("use_bias", [True, False])
def test_input_factor_reference_values(use_bias):
    # tensorflow/kfac's reference: data [[1, 2], [3, 4]], EMA decay 0.5 starting from the identity.
    # Our first update *initialises* the EMA, so the first batch is one whose covariance is the
    # identity (rows sqrt(d) e_i); the second batch is the data.
    model = mlp([2, 3], use_bias=use_bias, name="ref")
    opt = DHKFAC(statistics_decay=0.5)
    opt.build(model.trainable_variables)
    d = 3 if use_bias else 2
    data = np.array([[1.0, 2.0], [3.0, 4.0]])
    data = with_bias_column(data).numpy() if use_bias else data
    g = np.ones((1, d, 3))
    opt.update_curvature({"ref/d0": (np.sqrt(d) * np.eye(d)[None], g)})
    opt.update_curvature({"ref/d0": (data[None], g[:, :2])})
    expected = [[3, 3.5, 1], [3.5, 5.5, 1.5], [1, 1.5, 1]] if use_bias else [[3, 3.5], [3.5, 5.5]]
    np.testing.assert_allclose(opt.block_state("ref/d0")["A"], expected, rtol=1e-14)


def test_rnn_pooling_and_ekfac_diagonal_against_numpy():
    rng = np.random.default_rng(1)
    t, b = 3, 4
    model = mlp([2, 3], name="rnn")
    opt = DHKFAC(statistics_decay=0.5, inverse_period=100)
    opt.build(model.trainable_variables)

    def batch():
        a = np.concatenate([rng.normal(size=(t, b, 2)), np.ones((t, b, 1))], axis=-1)
        return a, rng.normal(size=(t, b, 3))

    a1, g1 = batch()
    assert bool(opt.update_curvature({"rnn/d0": (a1, g1)}))
    st = {k: v.numpy() for k, v in opt.block_state("rnn/d0").items()}
    # Expand pooling: A time-averaged, G summed over time (kron(A, G) = T Abar (x) Gbar).
    a_hand = sum(a1[i].T @ a1[i] for i in range(t)) / (t * b)
    g_hand = sum(g1[i].T @ g1[i] for i in range(t)) / b
    np.testing.assert_allclose(st["A"], a_hand, rtol=1e-13)
    np.testing.assert_allclose(st["G"], g_hand, rtol=1e-13)
    # The eigenbasis was computed at this first update; s is the exact per-path diagonal in it.
    np.testing.assert_allclose(st["U_A"] @ np.diag(st["lam_A"]) @ st["U_A"].T, a_hand, atol=1e-13)
    c1 = per_path_curvature(a1, g1)
    np.testing.assert_allclose(st["s"], eigenbasis_diagonal(c1, st["U_A"], st["U_G"]), rtol=1e-11)
    np.testing.assert_allclose(st["s"].sum(), np.trace(c1), rtol=1e-12)

    # Second update: EMAs with decay 0.5; no new eigendecomposition (inverse_period = 100).
    a2, g2 = batch()
    opt.update_curvature({"rnn/d0": (a2, g2)})
    st2 = {k: v.numpy() for k, v in opt.block_state("rnn/d0").items()}
    a2_hand = sum(a2[i].T @ a2[i] for i in range(t)) / (t * b)
    np.testing.assert_allclose(st2["A"], 0.5 * a_hand + 0.5 * a2_hand, rtol=1e-13)
    np.testing.assert_allclose(st2["U_A"], st["U_A"])
    s2 = eigenbasis_diagonal(per_path_curvature(a2, g2), st["U_A"], st["U_G"])
    np.testing.assert_allclose(st2["s"], 0.5 * st["s"] + 0.5 * s2, rtol=1e-11)

    # Basis change carries the old estimate's diagonal into the new basis.
    q_a, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q_g, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    carried = estimator.carry_diagonal(tf.constant(st2["s"]), st["U_A"], st["U_G"], q_a, q_g).numpy()
    old = np.kron(st["U_A"], st["U_G"])
    c_old = old @ np.diag(st2["s"].ravel()) @ old.T
    np.testing.assert_allclose(carried, eigenbasis_diagonal(c_old, q_a, q_g), rtol=1e-11)


# --------------------------------------------------------------------------- exactness


def test_kfac_equals_exact_ggn_for_deep_linear_network_on_one_point():
    model = mlp([3, 4, 3, 2], name="lin")
    x = tf.constant(np.random.default_rng(2).normal(size=(1, 3)))
    opt = DHKFAC()
    opt.build(model.trainable_variables)
    opt.update_curvature(exact_statistics(model, x))
    ggn = exact_ggn_blocks(model, x)
    for name, block_ggn in ggn.items():
        st = {k: v.numpy() for k, v in opt.block_state(name).items()}
        np.testing.assert_allclose(np.kron(st["A"], st["G"]), block_ggn, atol=1e-12 * np.abs(block_ggn).max())
        # EKFAC diagonal = exact diagonal of the (Kronecker) curvature in the eigenbasis.
        exact = eigenbasis_diagonal(block_ggn, st["U_A"], st["U_G"])
        np.testing.assert_allclose(st["s"], exact, atol=1e-12 * exact.max())


def test_ekfac_diagonal_equals_exact_ggn_diagonal_for_nonlinear_batch():
    # With exact per-path pseudo-gradients EKFAC's s is the exact GGN block's diagonal in the
    # Kronecker eigenbasis, even where the block itself is not Kronecker (tanh, several points).
    model = mlp([2, 3, 2], activation="tanh", name="nl")
    x = tf.constant(np.random.default_rng(3).normal(size=(3, 2)))
    opt = DHKFAC()
    opt.build(model.trainable_variables)
    opt.update_curvature(exact_statistics(model, x))
    for name, block_ggn in exact_ggn_blocks(model, x).items():
        st = {k: v.numpy() for k, v in opt.block_state(name).items()}
        exact = eigenbasis_diagonal(block_ggn, st["U_A"], st["U_G"])
        np.testing.assert_allclose(st["s"], exact, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("ekfac", [True, False])
def test_one_step_is_the_newton_step_on_a_quadratic(ekfac):
    # Linear model + squared error: GGN = Hessian, so with no damping and no cap one step solves
    # the least-squares problem.
    rng = np.random.default_rng(4)
    model = mlp([3, 2], name="quad")
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
    opt = DHKFAC(learning_rate=1.0, damping=0.0, epsilon=0.0, ekfac=ekfac, trust_radius=1e30)
    opt.build(model.trainable_variables)
    opt.update_curvature(exact_statistics(model, tf.constant(x)))
    with tf.GradientTape() as tape:
        loss = 0.5 * tf.reduce_mean(tf.reduce_sum(tf.square(forward(model, tf.constant(x))[0] - y), axis=1))
    opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
    solution = np.linalg.lstsq(with_bias_column(x).numpy(), y, rcond=None)[0]
    kernel, bias = weights(model)
    np.testing.assert_allclose(np.concatenate([kernel, bias[None]]), solution, rtol=1e-9, atol=1e-12)
    assert float(opt.step_size) == 1.0


# --------------------------------------------------------------------------- damping, trust region, momentum


def test_shrinkage_tikhonov_and_trust_region_against_hand_computation():
    rng = np.random.default_rng(5)
    a = np.concatenate([rng.normal(size=(1, 6, 3)), np.ones((1, 6, 1))], axis=-1)
    g = rng.normal(size=(1, 6, 2))
    grad_k, grad_b = rng.normal(size=(3, 2)), rng.normal(size=(2,))
    grad = np.concatenate([grad_k, grad_b[None]])

    for mode, damping in (("shrinkage", 0.3), ("tikhonov", 0.05)):
        model = mlp([3, 2], name="tr")
        w0 = np.concatenate([weights(model)[0], weights(model)[1][None]])
        opt = DHKFAC(learning_rate=1.0, damping=damping, damping_mode=mode, trust_radius=1e-4,
                     trust_radius_decay=0.5, trust_radius_min=3e-5, trust_radius_mode="absolute")
        opt.build(model.trainable_variables)
        opt.update_curvature({"tr/d0": (a, g)})
        st = {k: v.numpy() for k, v in opt.block_state("tr/d0").items()}
        s = eigenbasis_diagonal(per_path_curvature(a, g), st["U_A"], st["U_G"])
        s_d = (1 - damping) * s + damping * s.mean() if mode == "shrinkage" else s + damping
        proj = st["U_A"].T @ grad @ st["U_G"] / s_d
        v = st["U_A"] @ proj @ st["U_G"].T
        q = np.sum(s_d * proj**2)
        eta = min(1.0, np.sqrt(2 * 1e-4 / q))
        assert eta < 1.0  # the trust region is active

        (vk, vb), q_opt = opt.precondition([grad_k, grad_b])
        np.testing.assert_allclose(np.concatenate([vk, vb[None]]), v, rtol=1e-11)
        np.testing.assert_allclose(float(q_opt), q, rtol=1e-11)
        opt.apply([grad_k, grad_b], model.trainable_variables)
        np.testing.assert_allclose(float(opt.step_size), eta, rtol=1e-12)
        w1 = np.concatenate([weights(model)[0], weights(model)[1][None]])
        np.testing.assert_allclose(w1, w0 - eta * v, rtol=1e-11, atol=1e-15)

    # delta_k = max(delta_0 decay^k, delta_min)
    got = [float(steps.trust_radius(k, 1e-4, 0.5, 3e-5, F64)) for k in range(4)]
    np.testing.assert_allclose(got, [1e-4, 5e-5, 3e-5, 3e-5], rtol=1e-15)
    assert float(opt.current_trust_radius()) == pytest.approx(5e-5, rel=1e-15)  # after one step


def test_relative_trust_radius_against_hand_computation():
    """trust_radius_mode='relative': delta_k x m_ref, m_ref = the first step's unconstrained predicted
    decrease slope^2 / (2 q)."""
    rng = np.random.default_rng(12)
    stats = {"rel/d0": (with_bias_column(rng.normal(size=(5, 2))), rng.normal(size=(5, 2)))}
    g1, g2 = [[rng.normal(size=(2, 2)), rng.normal(size=(2,))] for _ in range(2)]
    model = mlp([2, 2], name="rel")
    opt = DHKFAC(step_model="line", learning_rate=10.0, trust_radius=0.25, trust_radius_decay=0.5,
                 trust_radius_min=0.0, trust_radius_mode="relative")
    opt.build(model.trainable_variables)
    opt.update_curvature(stats)
    assert float(opt.current_trust_radius()) == np.inf  # no reference before the first step
    w0 = weights(model)
    v1, _ = opt.precondition(g1)
    opt.set_step_model(curvature_along=4.0, slope=2.0)  # minimiser eta* = 0.5, m_ref = 4 / 8 = 0.5
    opt.apply(g1, model.trainable_variables)
    assert float(opt.radius_reference) == 0.5
    assert float(opt.step_size) == pytest.approx(0.25, rel=1e-15)  # sqrt(2 * 0.25 * 0.5 / 4) = sqrt(0.25) eta*
    for w, v, new in zip(w0, v1, weights(model)):
        np.testing.assert_allclose(new, w - 0.25 * v, rtol=1e-12)
    opt.set_step_model(curvature_along=1.0, slope=2.0)  # eta* = 2; delta_1 = 0.125 x 0.5
    opt.apply(g2, model.trainable_variables)
    assert float(opt.radius_reference) == 0.5  # kept from the first step
    assert float(opt.step_size) == pytest.approx(np.sqrt(2 * 0.0625), rel=1e-15)
    assert float(opt.current_trust_radius()) == pytest.approx(0.25 * 0.25 * 0.5, rel=1e-15)  # delta_2 m_ref

    # The Kronecker rule without momentum: slope = g.V = q, so m_ref = q / 2 and the first step is
    # eta = sqrt(2 delta_0 m_ref / q) = sqrt(delta_0) whatever the gradient and curvature scale.
    for scale in (1.0, 1e-6):
        model = mlp([2, 2], name="rel")
        opt = DHKFAC(step_model="kronecker", learning_rate=10.0, trust_radius=0.25, trust_radius_mode="relative")
        opt.build(model.trainable_variables)
        opt.update_curvature({"rel/d0": (stats["rel/d0"][0], np.sqrt(scale) * stats["rel/d0"][1])})
        _, q = opt.precondition([scale * g for g in g1])
        opt.apply([scale * g for g in g1], model.trainable_variables)
        assert float(opt.step_size) == pytest.approx(0.5, rel=1e-12)
        assert float(opt.radius_reference) == pytest.approx(float(q) / 2, rel=1e-12)
    with pytest.raises(ValueError, match="trust_radius_mode"):
        DHKFAC(trust_radius_mode="scaled")


@pytest.mark.parametrize("mode", ["relative", "absolute"])
def test_relative_trust_radius_makes_training_independent_of_the_loss_scale(mode):
    """Scaling the loss by c scales gradients and curvature by c: the preconditioned direction is
    unchanged, and with a relative trust radius so is every step; an absolute radius is not."""
    finals = []
    for c in (1.0, 1e-4):
        model = mlp([3, 4, 2], activation="tanh", name="scale", seed=13)
        opt = DHKFAC(step_model="kronecker", momentum=0.5, inverse_period=1, trust_radius=1e-3,
                     trust_radius_decay=0.9, trust_radius_mode=mode, learning_rate=10.0)
        opt.build(model.trainable_variables)
        for step in range(4):
            rng = np.random.default_rng(200 + step)
            x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 2))
            with tf.GradientTape() as tape:
                loss = c * tf.reduce_mean(tf.square(model(x) - y))
            opt.update_curvature({
                "scale/d0": (with_bias_column(rng.normal(size=(6, 3))), np.sqrt(c) * rng.normal(size=(6, 4))),
                "scale/d1": (with_bias_column(rng.normal(size=(6, 4))), np.sqrt(c) * rng.normal(size=(6, 2))),
            })
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        assert mode == "absolute" or float(opt.step_size) < 10.0  # the trust region binds
        finals.append(np.concatenate([w.reshape(-1) for w in weights(model)]))
    if mode == "relative":
        np.testing.assert_allclose(finals[1], finals[0], rtol=1e-9, atol=1e-12)
    else:
        assert np.max(np.abs(finals[1] - finals[0])) > 1e-3


def test_momentum_is_heavy_ball_on_the_preconditioned_direction():
    rng = np.random.default_rng(6)
    model = mlp([2, 2], name="mom")
    opt = DHKFAC(momentum=0.5, step_model="kronecker", trust_radius=None, learning_rate=0.1)
    opt.build(model.trainable_variables)
    opt.update_curvature({"mom/d0": (with_bias_column(rng.normal(size=(5, 2))), rng.normal(size=(5, 2)))})
    g1, g2 = [[rng.normal(size=(2, 2)), rng.normal(size=(2,))] for _ in range(2)]
    w0 = weights(model)
    v1, _ = opt.precondition(g1)
    v2, _ = opt.precondition(g2)
    opt.apply(g1, model.trainable_variables)
    opt.apply(g2, model.trainable_variables)
    lr = float(np.float32(0.1))  # Keras keeps a constant learning rate in a floatx (float32) variable
    for w, a1, a2, new in zip(w0, v1, v2, weights(model)):
        np.testing.assert_allclose(new, w - lr * a1 - lr * (a2 + 0.5 * a1), rtol=1e-12)


def test_subspace_step_against_hand_computation():
    m, b = np.diag([2.0, 4.0]), np.array([2.0, 4.0])  # unconstrained minimiser (1, 1); x^T M x / 2 = 3
    def step(matrix, rhs, eta_max=10.0, radius=None):
        return [float(x) for x in steps.subspace_step(tf.constant(np.asarray(matrix, float)), tf.constant(np.asarray(rhs, float)), eta_max, radius)]

    assert step(m, b) == pytest.approx([1.0, 1.0], rel=1e-15)
    assert step(m, b, radius=0.75) == pytest.approx([0.5, 0.5], rel=1e-15)  # scaled by sqrt(0.75 / 3)
    assert step(m, b, eta_max=0.4) == pytest.approx([0.4, 0.4], rel=1e-15)  # alpha capped, mu scaled with it
    full = np.array([[2.0, 1.0], [1.0, 3.0]])  # x = M^-1 b by hand: det 5, x = (3*1 - 1*2, 2*2 - 1*1) / 5
    assert step(full, [1.0, 2.0]) == pytest.approx([0.2, 0.6], rel=1e-14)
    # No usable previous step (first step, or collinear with V): the 1-D model along V.
    assert step(np.diag([4.0, 0.0]), [2.0, 0.0]) == pytest.approx([0.5, 0.0], rel=1e-15)
    assert step(np.ones((2, 2)), [2.0, 2.0]) == pytest.approx([2.0, 0.0], rel=1e-15)
    # Nearly collinear (1 - cos^2 = 5e-5): a 2-D solve in float64, the 1-D model in float32, where
    # rounding errors of M, amplified by 1 / (1 - cos^2), would make (alpha, mu) noise.
    near = np.array([[1.0, np.sqrt(1 - 5e-5)], [np.sqrt(1 - 5e-5), 1.0]])
    assert step(near, [1.0, 0.5])[1] != 0.0
    m32, b32 = tf.constant(near, tf.float32), tf.constant([1.0, 0.5], tf.float32)
    assert [float(x) for x in steps.subspace_step(m32, b32, 10.0)] == pytest.approx([1.0, 0.0], rel=1e-6)
    # No descent along V or no curvature: no step.
    assert step(np.diag([4.0, 1.0]), [-1.0, 1.0]) == [0.0, 0.0]
    assert step(np.zeros((2, 2)), [1.0, 1.0]) == [0.0, 0.0]


def test_adaptive_momentum_with_exact_model_is_conjugate_gradients_on_a_quadratic():
    """On L(w) = w^T H w / 2 - c . w with identity preconditioning, the step minimising the exact model
    over span{gradient, previous step} is a conjugate-gradient step: the minimiser after n = 6 steps."""
    rng = np.random.default_rng(11)
    model = mlp([2, 2], name="cg")  # one block: kernel [2, 2] and bias [2], 6 weights
    variables = model.trainable_variables
    n = 6
    q = rng.normal(size=(n, n))
    hess = q @ q.T + n * np.eye(n)
    c = rng.normal(size=n)

    def flat(parts):
        return np.concatenate([np.asarray(x).reshape(-1) for x in parts])

    def split(x):
        return [tf.constant(x[:4].reshape(2, 2)), tf.constant(x[4:])]

    opt = DHKFAC(learning_rate=1e3, trust_radius=None, step_model="subspace", damping=0.0)
    opt.build(variables)
    assert opt.update_curvature(identity_statistics("cg/d0", 3, 2))  # A = G = I, s = 1: V = gradient
    for k in range(n):
        grad = hess @ flat(weights(model)) - c
        v, _ = opt.precondition(split(grad))
        np.testing.assert_allclose(flat(v), grad, rtol=1e-15)
        basis = np.stack([flat(v), flat(opt.previous_update())], axis=1)
        opt.set_subspace_model(basis.T @ hess @ basis, basis.T @ grad)
        opt.apply(split(grad), variables)
        if k == 0:
            assert float(opt.step_momentum.numpy()) == 0.0  # no previous step yet
    np.testing.assert_allclose(flat(weights(model)), np.linalg.solve(hess, c), rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="step_model"):
        DHKFAC(momentum=0.5, step_model="subspace")
    with pytest.raises(ValueError, match="step_model must be one of"):
        DHKFAC(step_model="newton")
    with pytest.raises(ValueError, match="jvp_method must be one of .*'forward_mode', 'finite_difference'"):
        DHKFAC(jvp_method="central")


def test_line_model_steps_along_the_momentum_direction():
    """step_model='line' with heavy-ball momentum: the step is eta * (V + mu D_prev) with eta = slope / q of
    the model handed over for that direction (step_directions)."""
    rng = np.random.default_rng(8)
    model = mlp([2, 2], name="lm")
    opt = DHKFAC(momentum=0.5, step_model="line", trust_radius=None, learning_rate=10.0)
    opt.build(model.trainable_variables)
    opt.update_curvature({"lm/d0": (with_bias_column(rng.normal(size=(5, 2))), rng.normal(size=(5, 2)))})
    g1, g2 = [[rng.normal(size=(2, 2)), rng.normal(size=(2,))] for _ in range(2)]
    opt.set_step_model(curvature_along=4.0, slope=2.0)
    v1, _ = opt.precondition(g1)
    opt.apply(g1, model.trainable_variables)  # eta = 0.5, D = V1
    w1 = weights(model)
    d2, _ = opt.step_directions(g2)
    v2, _ = opt.precondition(g2)
    for d, a2, a1 in zip(d2, v2, v1):
        np.testing.assert_allclose(d, a2 + 0.5 * a1, rtol=1e-12)
    opt.set_step_model(curvature_along=1.0, slope=0.25)
    opt.apply(g2, model.trainable_variables)  # eta = 0.25 along D2
    for w, d, new in zip(w1, d2, weights(model)):
        np.testing.assert_allclose(new, w - 0.25 * d, rtol=1e-12)


def test_uphill_or_non_finite_model_blocks_the_step_and_a_flat_one_falls_back_to_kronecker():
    """With momentum, D = V + mu D_prev can point uphill for a batch (g . D <= 0): the exact model then
    predicts no decrease along D and the blocks do not move (the Kronecker rule would size a step
    along an ascent direction).  A non-finite model blocks the step too (the Kronecker q it corrects
    underestimates the curvature); one without curvature along D leaves the step to the Kronecker rule."""
    rng = np.random.default_rng(14)
    model = mlp([2, 2], name="up")
    opt = DHKFAC(momentum=0.5, step_model="line", trust_radius=1e-2, trust_radius_mode="absolute",
                 learning_rate=10.0)
    opt.build(model.trainable_variables)
    opt.update_curvature({"up/d0": (with_bias_column(rng.normal(size=(5, 2))), rng.normal(size=(5, 2)))})
    g = [rng.normal(size=(2, 2)), rng.normal(size=(2,))]
    opt.set_step_model(curvature_along=4.0, slope=2.0)
    opt.apply(g, model.trainable_variables)
    w1 = weights(model)
    d2, _ = opt.step_directions(g)
    opt.set_step_model(curvature_along=4.0, slope=-1.0)
    opt.apply(g, model.trainable_variables)
    assert float(opt.step_size) == 0.0 and int(opt.uphill_steps) == 1 and int(opt.iterations) == 2
    for w, new in zip(w1, weights(model)):
        np.testing.assert_array_equal(new, w)
    # The momentum buffer still holds the direction, as after any heavy-ball step: D3 = V + mu D2.
    d3, q3 = opt.step_directions(g)
    v, _ = opt.precondition(g)
    for a3, a, a2 in zip(d3, v, d2):
        np.testing.assert_allclose(a3, a + 0.5 * a2, rtol=1e-12)
    opt.set_step_model(curvature_along=np.nan, slope=1.0)
    opt.apply(g, model.trainable_variables)
    assert float(opt.step_size) == 0.0 and int(opt.uphill_steps) == 2
    for w, new in zip(w1, weights(model)):
        np.testing.assert_array_equal(new, w)
    d4, q4 = opt.step_directions(g)  # the buffer moved on once more (D4 = V + mu D3)
    opt.set_step_model(curvature_along=0.0, slope=1.0)
    opt.apply(g, model.trainable_variables)
    eta = min(10.0, np.sqrt(2 * 1e-2 * 0.999**3 / float(q4)))
    assert float(opt.step_size) == pytest.approx(eta, rel=1e-12) and int(opt.uphill_steps) == 2
    for w, d, new in zip(w1, d4, weights(model)):
        np.testing.assert_allclose(new, w - eta * d, rtol=1e-12)


def test_update_periods():
    model = mlp([2, 2], name="per")
    opt = DHKFAC(curvature_period=2, inverse_period=4)
    opt.build(model.trainable_variables)
    stats = {"per/d0": (with_bias_column(np.eye(2)), np.eye(2))}
    updated, inverted = [], []
    for _ in range(6):
        updated.append(bool(opt.update_curvature(stats)))
        inverted.append(int(opt.last_inverse_iteration))
        opt.apply([np.zeros((2, 2)), np.zeros(2)], model.trainable_variables)
    assert updated == [True, False, True, False, True, False]
    assert inverted == [0, 0, 0, 0, 4, 4]
    assert int(opt.block_state("per/d0")["count"]) == 3


# --------------------------------------------------------------------------- guards


def test_non_finite_statistics_and_gradients_write_nothing():
    rng = np.random.default_rng(7)
    model = mlp([2, 2], name="nan")
    opt = DHKFAC()
    opt.build(model.trainable_variables)
    good = (with_bias_column(rng.normal(size=(4, 2))), rng.normal(size=(4, 2)))
    opt.update_curvature({"nan/d0": good})
    before = [v.numpy().copy() for v in opt.variables]
    bad_g = good[1].copy()
    bad_g[1, 0] = np.nan
    assert not bool(opt.update_curvature({"nan/d0": (good[0], bad_g)}))
    assert int(opt.skipped_curvature_updates) == 1
    after = [v.numpy() for v in opt.variables]
    changed = [v.path for v, x, y in zip(opt.variables, before, after) if not np.array_equal(x, y)]
    assert changed == [opt.skipped_curvature_updates.path]

    step = tf.function(lambda grads: opt.apply(grads, model.trainable_variables), autograph=False)
    w0 = weights(model)
    before = [v.numpy().copy() for v in opt.variables]
    assert not bool(step([tf.constant([[1.0, np.inf], [0.0, 0.0]], F64), tf.zeros(2, F64)]))
    assert all(np.array_equal(x, y) for x, y in zip(w0, weights(model)))
    changed = [v.path for v, x in zip(opt.variables, before) if not np.array_equal(x, v.numpy())]
    assert changed == [opt.skipped_steps.path] and int(opt.iterations) == 0
    assert bool(step([tf.ones((2, 2), F64), tf.zeros(2, F64)])) and int(opt.iterations) == 1


# --------------------------------------------------------------------------- checkpointing, XLA


def _train_steps(model, opt, steps, start):
    """Deterministic steps: data and pseudo-gradients depend on the step index only.

    Block names come from the live variables: a Sequential reloaded from .keras builds its layers
    outside the model's name scope, so its paths are "d0/kernel", not "ckpt/d0/kernel".
    """
    d0, d1 = (layer_path(model.get_layer(n).kernel) for n in ("d0", "d1"))
    for step in range(start, start + steps):
        rng = np.random.default_rng(100 + step)
        x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 2))
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x) - y))
        stats = {
            name: (with_bias_column(rng.normal(size=(2, 4, dim_a - 1))), rng.normal(size=(2, 4, d_out)))
            for name, dim_a, d_out in ((d0, 4, 3), (d1, 4, 2))
        }
        opt.update_curvature(stats)
        opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)


def test_save_and_reload_mid_training_continues_identically(tmp_path):
    keras.utils.set_random_seed(8)
    model = keras.Sequential(
        [keras.layers.Dense(3, activation="tanh", name="d0", dtype="float64"),
         keras.layers.LayerNormalization(name="ln", dtype="float64"),
         keras.layers.Dense(2, name="d1", dtype="float64")],
        name="ckpt",
    )
    model.build((None, 3))
    model.compile(optimizer=DHKFAC(momentum=0.5, step_model="kronecker", inverse_period=2, trust_radius=1e-2), loss="mse")
    model.optimizer.build(model.trainable_variables)
    assert [b.name for b in model.optimizer.kronecker_blocks] == ["ckpt/d0", "ckpt/d1"]
    _train_steps(model, model.optimizer, 3, 0)
    path = str(tmp_path / "mid.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.optimizer, _DHKFAC) and int(loaded.optimizer.iterations) == 3
    assert [b.name for b in loaded.optimizer.kronecker_blocks] == ["d0", "d1"]
    _train_steps(model, model.optimizer, 3, 3)
    _train_steps(loaded, loaded.optimizer, 3, 3)
    for a, b in zip(model.trainable_variables + model.optimizer.variables,
                    loaded.trainable_variables + loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_xla_step_matches_the_graph_and_eager_steps():
    rng = np.random.default_rng(9)
    x, y = tf.constant(rng.normal(size=(5, 3))), tf.constant(rng.normal(size=(5, 2)))
    a0 = tf.constant(with_bias_column(rng.normal(size=(2, 5, 3))))
    g0 = tf.constant(rng.normal(size=(2, 5, 4)))
    a1 = tf.constant(with_bias_column(rng.normal(size=(2, 5, 4))))
    g1 = tf.constant(rng.normal(size=(2, 5, 2)))
    results = {}
    for mode in ("eager", "graph", "xla"):
        model = mlp([3, 4, 2], activation="tanh", name="xla", seed=10)
        opt = DHKFAC(momentum=0.5, step_model="kronecker", inverse_period=1, trust_radius=1e-3)
        opt.build(model.trainable_variables)

        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x) - y))
            opt.update_curvature({"xla/d0": (a0, g0), "xla/d1": (a1, g1)})
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            return loss

        run = step if mode == "eager" else tf.function(step, autograph=False, jit_compile=mode == "xla")
        for _ in range(2):  # the second step re-decomposes and carries s into the new basis
            run()
        # The eigenvectors themselves are sign-ambiguous: left out.
        results[mode] = weights(model) + [v.numpy() for v in opt.variables if "U_" not in v.path]
    # Graph mode orders the variable reads and writes as written (automatic control dependencies).
    for eager, graph in zip(results["eager"], results["graph"]):
        np.testing.assert_allclose(graph, eager, rtol=1e-12, atol=1e-15)
    # XLA's CPU eigh (Jacobi) reconstructs a float64 matrix only to ~2e-9 (LAPACK: 5e-16), and the
    # EKFAC diagonal inherits that.
    for graph, xla in zip(results["graph"], results["xla"]):
        np.testing.assert_allclose(xla, graph, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------- recurrent policy


def test_recurrent_policy_blocks_capture_and_identity_preconditioning():
    keras.utils.set_random_seed(11)
    b, t = 5, 3
    policy = RecurrentPolicy(1, num_blocks=1, width=4, dtype="float64", name="recurrent_policy")
    rng = np.random.default_rng(11)
    obs = [{"features": tf.constant(rng.normal(size=(b, 2))), "mask": tf.ones((b, 1), F64)} for _ in range(t)]
    policy(obs[0], tf.zeros((b, 1), F64), policy.initial_state(b, F64))
    variables = policy.trainable_variables
    opt = DHKFAC(damping=1.0, learning_rate=1.0, trust_radius=1e-4, diagonal_learning_rate=1e-2,
                 trust_radius_mode="absolute")
    opt.build(variables)

    # Unroll T = 3 under the recorder; loss = mean over paths, so the per-path pseudo-gradient is
    # B * dL/dprobe.
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(policy, tape) as recorder:
            state, prev, loss = policy.initial_state(b, F64), tf.zeros((b, 1), F64), 0.0
            for k in range(t):
                prev, state = policy(obs[k], prev, state)
                loss = loss + tf.reduce_mean(tf.square(prev - 0.1 * k))
    grads = tape.gradient(loss, variables)
    captured = recorder.statistics(tape.gradient(loss, recorder.probes))
    # Every Kronecker block of the variable list is captured, each pooled over the T = 3 calls; the
    # RMSNorm scale is the only diagonal variable.
    assert sorted(captured) == sorted(blk.name for blk in opt.kronecker_blocks)
    assert "recurrent_policy/block0_lstm" in captured
    # Before statistics arrive no block is active: every variable would take the diagonal step.
    assert len(opt.diagonal_variables) == len(variables) and opt.active_blocks == ()
    index = {v.path: i for i, v in enumerate(variables)}
    for name, (a, g) in captured.items():
        block = opt.kronecker_blocks[[blk.name for blk in opt.kronecker_blocks].index(name)]
        assert tuple(a.shape) == (t, b, block.dim_a) and tuple(g.shape) == (t, b, block.d_out)
        # The capture contract: sum_t a_t^T dL/dprobe_t is the stacked weight gradient.
        ws = opt.block_variables(name)
        stacked = tf.concat([tf.reshape(grads[index[w.path]], (-1, block.d_out)) for w in ws], 0)
        np.testing.assert_allclose(tf.einsum("tbi,tbj->ij", a, g), stacked, rtol=1e-10, atol=1e-14)
    assert bool(opt.update_curvature({name: (a, b * g) for name, (a, g) in captured.items()}))
    assert [v.path for v in opt.diagonal_variables] == ["recurrent_policy/block0_norm/scale"]

    # rho = 1: every block's curvature is mean(s) * I, so V = grad / mean(s) per block.
    directions, q = opt.precondition(grads)
    q_hand = 0.0
    for name in captured:
        mean_s = float(tf.reduce_mean(opt.block_state(name)["s"]))
        for w in opt.block_variables(name):
            i = index[w.path]
            np.testing.assert_allclose(directions[i], grads[i] / mean_s, rtol=1e-10)
            q_hand += float(tf.reduce_sum(tf.square(grads[i]))) / mean_s
    np.testing.assert_allclose(float(q), q_hand, rtol=1e-10)

    w0 = [v.numpy().copy() for v in variables]
    opt.apply(grads, variables)
    eta = min(1.0, np.sqrt(2e-4 / q_hand))
    for i, v in enumerate(variables):
        if directions[i] is not None:  # Kronecker blocks: a scaled gradient step
            np.testing.assert_allclose(v.numpy(), w0[i] - eta * directions[i], rtol=1e-10, atol=1e-15)
        else:  # the RMSNorm scale: Adam's first step (Keras' epsilon convention: added to sqrt(v))
            g = grads[i].numpy()
            step = 1e-2 * g / (np.abs(g) + 1e-8 / np.sqrt(1 - 0.999))
            np.testing.assert_allclose(v.numpy(), w0[i] - step, rtol=1e-10)
