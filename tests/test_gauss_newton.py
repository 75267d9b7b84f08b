"""The Gauss-Newton preconditioner (sample-space Woodbury step, Levenberg-Marquardt damping) against
dense float64 references: the rows' R^T R against a brute-force GGN J^T H J (H by differentiating the
loss twice), the direction against a dense solve, the damping rule and the undo of a rejected step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.objectives import EntropicRisk, ExpectedShortfall, VarianceCurvature
from deephedge_tf.optimizers import DHKFAC, Recorder, with_curvature
from deephedge_tf.optimizers.losses import MeanSquaredErrorCurvature
from deephedge_tf.hedger import CostMajorizerCurvature
from deephedge_tf.optimizers.train_step import CurvatureTerm, sample_space_factor
from deephedge_tf.optimizers.blocks import stack
from deephedge_tf.optimizers.woodbury import factorise, gauss_newton_direction, levenberg_marquardt, solve
from test_loss_curvature import output_hessian, shortfall_surrogate_hessian  # tests/ is on sys.path

B = 6


def tiny_net(seed=0, dtype="float64"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,), dtype=dtype),
                             keras.layers.Dense(4, activation="tanh", dtype=dtype),
                             keras.layers.Dense(1, dtype=dtype)])


def flat_rows(rows, net):
    """Rows ``{block: [n, da, dg]}`` as ``[n, P]`` in the variable order kernel, bias per layer."""
    parts = []
    for layer in net.layers:
        r = rows[layer.kernel.path.rsplit("/", 1)[0]].numpy()
        d_in = layer.kernel.shape[0]
        parts += [r[:, :d_in].reshape(r.shape[0], -1), r[:, d_in]]
    return np.concatenate(parts, axis=1)


def brute_force_ggn(net, x, loss_of_pnl):
    with tf.GradientTape(persistent=True) as tape:
        pnl = net(x)[:, 0]
    jac = tape.jacobian(pnl, net.trainable_variables, experimental_use_pfor=False)
    jac = np.concatenate([j.numpy().reshape(B, -1) for j in jac], axis=1)
    return jac.T @ output_hessian(loss_of_pnl, tf.identity(pnl)) @ jac


def sample_rows(net, x, curvature, cap=None):
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(net, tape) as recorder:
            pnl = net(x)[:, 0]
    term = CurvatureTerm(pnl, curvature)
    return sample_space_factor([term], tape, recorder, cap or B, tf.constant([0, 1], tf.int64))[0]


CASES = [
    ("variance_fixed_mean", VarianceCurvature(3.0), None),
    ("variance_centred", VarianceCurvature(3.0, centred=True), lambda p: 3.0 * tf.math.reduce_variance(p)),
    ("entropic", EntropicRisk(a=2.0).output_curvature(), EntropicRisk(a=2.0)),
    ("mse", MeanSquaredErrorCurvature(), lambda p: tf.reduce_mean(tf.square(p - 0.3))),
]


@pytest.mark.parametrize("case", range(len(CASES)), ids=[c[0] for c in CASES])
def test_rows_reproduce_the_brute_force_ggn(case):
    name, curvature, loss = CASES[case]
    net = tiny_net()
    x = tf.constant(np.random.default_rng(1).normal(size=(B, 3)))
    if loss is None:  # the paper's surrogate: the batch mean held fixed
        m = float(tf.reduce_mean(net(x)))
        loss = lambda p: 3.0 * tf.reduce_mean(tf.square(p - m))  # noqa: E731
    ggn = brute_force_ggn(net, x, loss)
    r = flat_rows(sample_rows(net, x, curvature), net)
    np.testing.assert_allclose(r.T @ r, ggn, rtol=1e-9, atol=1e-12 * np.abs(ggn).max())
    assert np.abs(ggn).max() > 1e-3


def test_shortfall_rows_reproduce_the_surrogate_ggn():
    """Expected shortfall: the centred rows give J^T H J with H the surrogate's Hessian after the
    intercept is minimised out (a brute-force Schur complement of the joint Hessian in pnl and w)."""
    net = tiny_net()
    x = tf.constant(np.random.default_rng(1).normal(size=(B, 3)))
    es = ExpectedShortfall(alpha=0.5)
    with tf.GradientTape(persistent=True) as tape:
        pnl = net(x)[:, 0]
    jac = tape.jacobian(pnl, net.trainable_variables, experimental_use_pfor=False)
    jac = np.concatenate([j.numpy().reshape(B, -1) for j in jac], axis=1)
    tau = tf.constant(0.5 * float(tf.math.reduce_std(pnl)), tf.float64)
    ggn = jac.T @ shortfall_surrogate_hessian(es, tau, pnl) @ jac
    r = flat_rows(sample_rows(net, x, es.output_curvature()), net)
    np.testing.assert_allclose(r.T @ r, ggn, rtol=1e-9, atol=1e-12 * np.abs(ggn).max())
    assert np.abs(ggn).max() > 1e-3


def test_rows_of_a_sub_batch_stand_for_the_whole_batch():
    """With the first n of B paths, sum_n r r^T is (B / n) x that sub-batch's own share: rows built from
    two identical halves give the whole batch's GGN."""
    net = tiny_net()
    half = np.random.default_rng(2).normal(size=(B // 2, 3))
    x = tf.constant(np.concatenate([half, half]))
    curvature = VarianceCurvature(2.0, centred=True)
    full = flat_rows(sample_rows(net, x, curvature), net)
    cut = flat_rows(sample_rows(net, x, curvature, cap=B // 2), net)
    np.testing.assert_allclose(cut.T @ cut, full.T @ full, rtol=1e-9, atol=1e-14)


def two_output_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((3,), dtype="float64"),
                             keras.layers.Dense(4, activation="tanh", dtype="float64"),
                             keras.layers.Dense(2, dtype="float64")])


def per_path_jacobian(net, x, column):
    with tf.GradientTape(persistent=True) as tape:
        y = net(x)[:, column]
    jac = tape.jacobian(y, net.trainable_variables, experimental_use_pfor=False)
    return np.concatenate([j.numpy().reshape(B, -1) for j in jac], axis=1)


def test_one_backward_pass_sums_the_terms_rows():
    """An exact centred term (the variance of output 0) and a sampled one (the cost majorizer on output 1,
    random signs) share one row per path.  E[R^T R] over the signs, computed exactly: with P = I - S w^T
    the centring (S the centred term's scale, w its weights / S), R = P (M_exact + N), N's rows z_b k_b and
    E[N^T Q N] = sum_b Q_bb k_b k_b^T, so E[R^T R] = C_variance + sum_b (P^T P)_bb k_b k_b^T: the sampled
    term's GGN up to the O(1/n) centring factors.  The Monte Carlo mean over 400 sign draws is checked
    within 5 standard errors; the exact part alone (signs averaged out) is the brute-force GGN."""
    net = two_output_net()
    x = tf.constant(np.random.default_rng(5).normal(size=(B, 3)))
    gamma = 2.0
    variance = VarianceCurvature(gamma, centred=True)
    majorizer = CostMajorizerCurvature(floor=1.0)
    cost_weight = tf.constant(np.random.default_rng(6).uniform(0.5, 1.5, size=(1, B, 1)))

    def rows_for(seed):
        with tf.GradientTape(persistent=True) as tape:
            with Recorder(net, tape) as recorder:
                y = net(x)
            terms = [CurvatureTerm(y[:, 0], variance), CurvatureTerm(y[None, :, 1:2], majorizer, cost_weight)]
        rows, stats = sample_space_factor(terms, tape, recorder, B, tf.constant([seed, 1], tf.int64))
        return flat_rows(rows, net), terms

    j0, j1 = per_path_jacobian(net, x, 0), per_path_jacobian(net, x, 1)
    pnl = net(x)[:, 0]
    c_variance = j0.T @ output_hessian(lambda p: gamma * tf.math.reduce_variance(p), tf.identity(pnl)) @ j0
    _, terms = rows_for(0)
    h = majorizer.weights(terms[1].output, cost_weight).numpy()[0, :, 0]  # c P / a per path
    k = np.sqrt(h / B)[:, None] * j1  # the sampled term's row of path b is z_b k_b
    s = np.full(B, np.sqrt(2.0 * gamma / B))  # the centred term's folded scale, weights 1 / B
    p = np.eye(B) - np.outer(s, (1.0 / B) / s)
    q = p.T @ p
    expected = c_variance + sum(q[b, b] * np.outer(k[b], k[b]) for b in range(B))
    draws = np.stack([(lambda r: r.T @ r)(rows_for(seed)[0]) for seed in range(400)])
    mean, se = draws.mean(0), draws.std(0) / np.sqrt(len(draws))
    assert np.all(np.abs(mean - expected) <= 5 * se + 1e-12 * np.abs(expected).max())
    # The sampled term is a sizeable part of the curvature (the test can fail), and its centring factor
    # is within O(1 / n) of one.
    c_sampled = k.T @ k
    assert np.abs(c_sampled).max() > 0.1 * np.abs(c_variance).max()
    np.testing.assert_allclose(np.diag(q), 1.0 - 1.0 / B, rtol=1e-12)


def test_two_centred_terms_are_refused():
    """One backward pass can centre one term only: two centred terms raise, naming them."""
    net = two_output_net()
    x = tf.constant(np.random.default_rng(5).normal(size=(B, 3)))
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(net, tape) as recorder:
            y = net(x)
            terms = [CurvatureTerm(y[:, 0], VarianceCurvature(1.0, centred=True)),
                     CurvatureTerm(y[:, 1], VarianceCurvature(1.0, centred=True))]
    with pytest.raises(ValueError, match=r"at most one curvature term may be centred; terms \[0, 1\]"):
        sample_space_factor(terms, tape, recorder, B, tf.constant([0, 1], tf.int64))


def test_rows_statistics_and_exact_diagonal_feed_the_kronecker_metric():
    """The statistics handed over with the rows: for a Dense layer used once (T = 1), a_b g_b^T / sqrt(n)
    is path b's row of an uncentred term (its bias row is g_b / sqrt(n)); update_curvature with the rows
    sets the EKFAC diagonal to the rows' exact diagonal in the eigenbasis, s = sum_n (U_A^T r_n U_G)^2."""
    net = tiny_net()
    x = tf.constant(np.random.default_rng(7).normal(size=(B, 3)))
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(net, tape) as recorder:
            pnl = net(x)[:, 0]
    rows, stats = sample_space_factor([CurvatureTerm(pnl, MeanSquaredErrorCurvature(), tf.zeros_like(pnl))],
                                      tape, recorder, B, tf.constant([0, 1], tf.int64))
    for name, (a, g) in stats.items():
        np.testing.assert_allclose(np.einsum("tba,tbg->bag", a, g) / np.sqrt(B), rows[name].numpy(), rtol=1e-12)
    opt = DHKFAC(preconditioner="gauss_newton", inverse_period=1)
    opt.build(net.trainable_variables)
    opt.update_curvature(stats, rows=rows)
    for name, r in rows.items():
        st = {key: v.numpy() for key, v in opt.block_state(name).items()}
        projected = np.einsum("ai,naj,jg->nig", st["U_A"], r.numpy(), st["U_G"])
        np.testing.assert_allclose(st["s"], (projected ** 2).sum(0), rtol=1e-10)
        np.testing.assert_allclose(st["s"].sum(), (r.numpy() ** 2).sum(), rtol=1e-10)
        # The bases come from A and G of these statistics, not the identity they start from.
        assert not np.allclose(np.abs(st["U_A"]), np.eye(len(st["U_A"])))
    # The solve reuses the rows update_curvature turned into the eigenbases (the same tensors handed
    # over): the same direction as turning them again.
    opt.set_jacobian_rows(rows)
    assert opt._basis_rows is not None
    grads = [tf.ones_like(v) for v in net.trainable_variables]
    reused, _ = opt.step_directions(grads)
    opt._basis_rows, opt._factor = None, None
    turned_again, _ = opt.step_directions(grads)
    for a, b in zip(reused, turned_again):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12)
    # A second update blends the fresh exact diagonal into s (same statistics: s is unchanged).
    before = {name: opt.block_state(name)["s"].numpy() for name in rows}
    opt.update_curvature(stats, rows=rows)
    for name in rows:
        np.testing.assert_allclose(opt.block_state(name)["s"].numpy(), before[name], rtol=1e-8)


def test_woodbury_direction_is_the_dense_damped_solve():
    rng = np.random.default_rng(3)
    rows = {"a": tf.constant(rng.normal(size=(5, 3, 2))), "b": tf.constant(rng.normal(size=(5, 4, 1)))}
    grads = {"a": tf.constant(rng.normal(size=(3, 2))), "b": tf.constant(rng.normal(size=(4, 1)))}
    lam = 0.37
    d = gauss_newton_direction(rows, grads, tf.constant(lam, tf.float64))
    r = np.concatenate([rows[k].numpy().reshape(5, -1) for k in ("a", "b")], axis=1)
    g = np.concatenate([grads[k].numpy().ravel() for k in ("a", "b")])
    dense = np.linalg.solve(r.T @ r + lam * np.eye(r.shape[1]), g)
    got = np.concatenate([d[k].numpy().ravel() for k in ("a", "b")])
    np.testing.assert_allclose(got, dense, rtol=1e-10)


def test_woodbury_direction_with_a_diagonal_metric_is_the_dense_solve():
    """(R^T R + lambda M) d = g with a positive diagonal metric M handed over per block."""
    rng = np.random.default_rng(4)
    shapes = {"a": (3, 2), "b": (4, 1)}
    rows = {k: tf.constant(rng.normal(size=(5, *s))) for k, s in shapes.items()}
    grads = {k: tf.constant(rng.normal(size=s)) for k, s in shapes.items()}
    metric = {k: tf.constant(rng.uniform(0.1, 3.0, size=s)) for k, s in shapes.items()}
    lam = 0.37
    d = gauss_newton_direction(rows, grads, tf.constant(lam, tf.float64), metric)
    again, rows_d = solve(factorise(rows, tf.constant(lam, tf.float64), metric), grads, tf.constant(lam, tf.float64))
    r = np.concatenate([rows[k].numpy().reshape(5, -1) for k in ("a", "b")], axis=1)
    g = np.concatenate([grads[k].numpy().ravel() for k in ("a", "b")])
    big_m = np.diag(np.concatenate([metric[k].numpy().ravel() for k in ("a", "b")]))
    dense = np.linalg.solve(r.T @ r + lam * big_m, g)
    for got in (d, again):
        np.testing.assert_allclose(np.concatenate([got[k].numpy().ravel() for k in ("a", "b")]), dense, rtol=1e-9)
    # The solve's second output is R d (the step model's |R d|^2 without a pass over the rows).
    np.testing.assert_allclose(rows_d.numpy(), r @ dense, rtol=1e-9)


def test_the_gram_matrix_runs_on_the_host_blas_on_cpu_and_in_tensorflow_under_xla():
    """Outside XLA on a CPU-only machine the float64 Gram R M^-1 R^T is one numpy call (TensorFlow's CPU
    float64 product is ~5x slower); under jit_compile it stays a TensorFlow op.  Same numbers."""
    from deephedge_tf.optimizers import woodbury

    rng = np.random.default_rng(9)
    rows = {"a": tf.constant(rng.normal(size=(7, 3, 2))), "b": tf.constant(rng.normal(size=(7, 4, 1)))}
    metric = {k: tf.constant(rng.uniform(0.5, 2.0, size=r.shape[1:])) for k, r in rows.items()}
    dense = sum(np.einsum("nij,mij->nm", r.numpy() / np.sqrt(metric[k].numpy()), r.numpy() / np.sqrt(metric[k].numpy()))
                for k, r in rows.items())
    plain = tf.function(lambda: woodbury.gram(rows, metric))
    xla = tf.function(lambda: woodbury.gram(rows, metric), jit_compile=True)
    op_types = {op.type for op in plain.get_concrete_function().graph.get_operations()}
    on_cpu = not tf.config.list_logical_devices("GPU")
    assert ("PyFuncStateless" in op_types) == on_cpu
    assert "PyFuncStateless" not in {op.type for op in xla.get_concrete_function().graph.get_operations()}
    for k in (plain(), xla(), woodbury.gram(rows, metric)):
        np.testing.assert_allclose(k.numpy(), dense, rtol=1e-12)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_kronecker_metric_is_the_normalised_damped_ekfac_model(power):
    """The optimizer's M^-1 and d^T M d against the dense (U_A x U_G) diag(s_d^p / mean) (U_A x U_G)^T of
    its own block state, after a few fit steps (statistics and eigenbases from the train step)."""
    x, y = _regression(2)
    net = tiny_net(2)
    model = with_curvature(net)
    opt = DHKFAC(preconditioner="gauss_newton", metric="kronecker", metric_shrinkage=0.2, metric_power=power,
                 inverse_period=1)
    model.compile(optimizer=opt, loss=keras.losses.MeanSquaredError(dtype="float64"))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0, shuffle=False)
    names = [b.name for b in opt.kronecker_blocks]
    assert opt.wants_statistics and set(opt.active_blocks) == set(names)
    dense, total, size = {}, 0.0, 0
    for name in names:
        st = {k: v.numpy() for k, v in opt.block_state(name).items()}
        s_d = (0.8 * st["s"] + 0.2 * st["s"].mean()) ** power
        total, size = total + s_d.sum(), size + s_d.size
        basis = np.kron(st["U_A"], st["U_G"])
        dense[name] = (basis, s_d.ravel())
    mean = total / size
    scales = opt._metric_scales([opt._block_index[name] for name in names])
    rng = np.random.default_rng(0)
    probes, want, metrics, rows = {}, 0.0, [], {}
    for name in names:
        k = opt._block_index[name]
        block = opt.kronecker_blocks[k]
        basis, s_d = dense[name]
        m = basis @ np.diag(s_d / mean) @ basis.T
        metrics.append(m)
        probe = rng.normal(size=(block.dim_a, block.d_out))
        probes[k] = tf.constant(probe)
        want += probe.ravel() @ m @ probe.ravel()
        rows[name] = tf.constant(rng.normal(size=(3, block.dim_a, block.d_out)))
    np.testing.assert_allclose(float(opt._metric_norm2(probes, scales)), want, rtol=1e-8)
    # The direction the optimizer solves in the eigenbases is the dense (R^T R + lambda M)^-1 g.
    opt.set_jacobian_rows(rows)
    grads = [tf.constant(rng.normal(size=v.shape)) for v in net.trainable_variables]
    directions, _ = opt.step_directions(grads)
    lam = float(opt._factor[1])
    r = np.concatenate([rows[name].numpy().reshape(3, -1) for name in names], axis=1)
    g = np.concatenate([stack(opt.kronecker_blocks[opt._block_index[name]],
                              [grads[i] for i in opt.kronecker_blocks[opt._block_index[name]].indices]).numpy().ravel()
                        for name in names])
    big_m = np.zeros((r.shape[1],) * 2)
    start = 0
    for m in metrics:
        big_m[start:start + len(m), start:start + len(m)] = m
        start += len(m)
    want_d = np.linalg.solve(r.T @ r + lam * big_m, g)
    got_d = np.concatenate([stack(opt.kronecker_blocks[opt._block_index[name]],
                                  [directions[i] for i in opt.kronecker_blocks[opt._block_index[name]].indices])
                            .numpy().ravel() for name in names])
    np.testing.assert_allclose(got_d, want_d, rtol=1e-7)


def test_levenberg_marquardt_rule():
    lam = tf.constant(2.0, tf.float64)
    for ratio, factor, rejected in [(0.9, 2 / 3, False), (0.5, 1.0, False), (0.1, 1.5, False),
                                    (0.05, 2.0, True), (-0.2, 2.0, True), (float("nan"), 2.0, True)]:
        new, rej = levenberg_marquardt(lam, tf.constant(ratio, tf.float64))
        assert float(new) == pytest.approx(2.0 * factor) and bool(rej) == rejected
    # Rejections in a row escalate: the third one multiplies lambda by 2^3.
    new, rej = levenberg_marquardt(lam, tf.constant(-1.0, tf.float64), streak=tf.constant(2, tf.int64))
    assert float(new) == pytest.approx(16.0) and bool(rej)


def _regression(seed=0):
    rng = np.random.default_rng(seed)
    # Values exact in float32: Keras' fit hands float64 arrays over as float32.
    x = rng.normal(size=(64, 3)).astype(np.float32).astype(np.float64)
    return x, (np.sin(x[:, :1]) + 0.5 * x[:, 1:2] ** 2).astype(np.float32).astype(np.float64)


def test_first_step_is_the_damped_gauss_newton_step():
    """One fit step with the full batch as rows and no line model: W moves by eta d with
    d = (C + lambda_0 I)^{-1} g, lambda_0 = damping tr(C) / P and eta = g.d / (d^T C d + lambda |d|^2)."""
    x, y = _regression()
    net = tiny_net()
    w0 = np.concatenate([v.numpy().ravel() for v in net.trainable_variables])
    with tf.GradientTape(persistent=True) as tape:
        out = net(tf.constant(x))
        first = out[:, 0]
        loss = tf.reduce_mean(tf.square(out - y))
    grads = tape.gradient(loss, net.trainable_variables)
    g = np.concatenate([v.numpy().ravel() for v in grads])
    jac = tape.jacobian(first, net.trainable_variables, experimental_use_pfor=False)
    jac = np.concatenate([j.numpy().reshape(len(x), -1) for j in jac], axis=1)
    ggn = 2.0 / len(x) * jac.T @ jac
    lam = 0.5 * np.trace(ggn) / ggn.shape[0]
    d = np.linalg.solve(ggn + lam * np.eye(len(g)), g)
    eta = g @ d / (d @ ggn @ d + lam * d @ d)
    model = with_curvature(net)
    opt = DHKFAC(preconditioner="gauss_newton", damping=0.5, jacobian_rows=len(x), step_model="kronecker",
                 metric="identity")
    model.compile(optimizer=opt, loss=keras.losses.MeanSquaredError(dtype="float64"))
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    w1 = np.concatenate([v.numpy().ravel() for v in net.trainable_variables])
    if int(opt.rejected_steps):
        np.testing.assert_allclose(w1, w0, rtol=0, atol=1e-12)
    else:
        np.testing.assert_allclose(w0 - w1, eta * d, rtol=1e-8, atol=1e-12)
    assert float(opt.step_size) == pytest.approx(eta, rel=1e-8)


def _one_default_step(dtype):
    """``(net, optimizer, weights before)`` after one fit step of the Gauss-Newton defaults on the regression."""
    x, y = _regression()
    net = tiny_net(dtype=dtype)
    before = [v.numpy().copy() for v in net.trainable_variables]
    model = with_curvature(net)
    opt = DHKFAC(preconditioner="gauss_newton")
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    return net, opt, before


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_judge_step_undoes_a_step_that_raised_the_loss_and_adapts_the_damping(dtype):
    """A kept step leaves the weights; an undone one restores them bit for bit, in float32 too (adding the
    step back would round them; after a long step it lost the weights altogether)."""
    net, opt, w0 = _one_default_step(dtype)
    assert int(opt.rejected_steps) == 0
    w1 = [v.numpy() for v in net.trainable_variables]
    assert all(np.abs(a - b).max() > 0 for a, b in zip(w1, w0))
    lam = float(opt.lm_damping)
    opt.predicted_decrease.assign(1.0)
    assert not bool(opt.judge_step(1.0, 0.1))           # ratio 0.9: kept, lambda x 2/3
    assert float(opt.lm_damping) == pytest.approx(lam * 2 / 3)
    for v, w in zip(net.trainable_variables, w1):
        np.testing.assert_array_equal(v.numpy(), w)
    assert bool(opt.judge_step(0.0, 0.5))               # the loss rose: undone, lambda x 2
    assert float(opt.lm_damping) == pytest.approx(lam * 4 / 3)
    assert int(opt.rejected_steps) == 1
    for v, w in zip(net.trainable_variables, w0):
        np.testing.assert_array_equal(v.numpy(), w)


@pytest.mark.parametrize("dtype, kept", [("float32", True), ("float64", False)])
def test_a_prediction_below_the_loss_rounding_is_not_judged(dtype, kept):
    """A predicted decrease of 1e-12 on a loss of 1 is below float32's rounding (64 eps = 8e-6): a rise of
    1e-7 there is noise, the step is kept and lambda falls as for a ratio of 1.  In float64 (64 eps =
    1.4e-14) the same rise is a real one: undone.  A rise to twice the loss is undone in both."""
    _, opt, _ = _one_default_step(dtype)
    lam = float(opt.lm_damping)
    opt.predicted_decrease.assign(1e-12)
    loss = tf.constant(1.0, dtype)
    assert bool(opt.judge_step(loss, loss + tf.constant(1e-7, dtype))) != kept
    assert float(opt.lm_damping) == pytest.approx(lam * (2 / 3 if kept else 2.0))
    # A rise beyond the rounding is judged whatever the prediction: undone in both precisions.
    lam = float(opt.lm_damping)
    assert bool(opt.judge_step(loss, 2.0 * loss))
    assert float(opt.lm_damping) == pytest.approx(lam * (2.0 if kept else 4.0))


def test_damping_stays_in_its_range_relative_to_the_rows():
    """lambda / tr(C) is clipped to DAMPING_RANGE when a step is solved: a lambda adapted down to 1e-30 (or
    up to 1e30) is used as 1e-10 (1e8) x tr(C)."""
    from deephedge_tf.optimizers.kfac import DAMPING_RANGE

    net = tiny_net()
    opt = DHKFAC(preconditioner="gauss_newton", metric="identity")
    opt.build(net.trainable_variables)
    rng = np.random.default_rng(3)
    rows = {b.name: tf.constant(rng.normal(size=(5, b.dim_a, b.d_out))) for b in opt.kronecker_blocks}
    trace = sum(float(tf.reduce_sum(tf.square(r))) for r in rows.values())
    grads = [tf.constant(rng.normal(size=v.shape)) for v in net.trainable_variables]
    for adapted, bound in [(1e-30, DAMPING_RANGE[0]), (1e30, DAMPING_RANGE[1])]:
        opt.lm_damping.assign(adapted)
        opt.set_jacobian_rows(rows)
        opt.step_directions(grads)
        assert float(opt._factor[1]) == pytest.approx(bound * trace, rel=1e-12)


def test_predicted_decrease_counts_the_diagonal_step():
    """The ratio judge_step forms compares the loss change of the whole update with the prediction, so the
    diagonal (Adam) variables' first-order decrease -g . step is part of the prediction: with the same
    block step, the prediction with a diagonal step minus the one without it is exactly that term."""
    from deephedge_tf.layers import RMSNorm

    x, y = _regression()
    predictions, moves = [], []
    for rate in (0.0, 1e-2):
        keras.utils.set_random_seed(0)
        net = keras.Sequential([keras.Input((3,), dtype="float64"),
                                keras.layers.Dense(4, activation="tanh", dtype="float64"),
                                RMSNorm(dtype="float64"), keras.layers.Dense(1, dtype="float64")])
        scale = net.layers[1].trainable_variables[0]
        before = scale.numpy().copy()
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(net(tf.constant(x)) - y))
        grad = tape.gradient(loss, scale).numpy()
        opt = DHKFAC(preconditioner="gauss_newton", jacobian_rows=len(x), step_model="kronecker",
                     diagonal_learning_rate=rate)
        model = with_curvature(net)
        model.compile(optimizer=opt, loss=keras.losses.MeanSquaredError(dtype="float64"))
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
        assert len(opt.active_blocks) == 2   # the Dense layers; the RMSNorm scale is diagonal
        predictions.append(float(opt.predicted_decrease))
        moves.append(-grad @ (scale.numpy() - before))
    assert moves[0] == 0.0 and moves[1] > 0.0
    assert predictions[1] - predictions[0] == pytest.approx(moves[1], rel=1e-9)


@pytest.mark.parametrize("variant", [{}, {"metric": "kronecker"}], ids=["identity-metric", "kronecker-metric"])
def test_gauss_newton_beats_a_tuned_adam_on_a_regression(variant):
    """40 full-batch steps: the Gauss-Newton step's final loss is below a quarter of the best Adam's
    (learning rates 1e-3, 1e-2, 1e-1), with either damping metric."""
    x, y = _regression(1)
    losses = {}
    gn = DHKFAC(preconditioner="gauss_newton", **variant)
    runs = [("gn", gn)] + [(f"adam {lr:g}", keras.optimizers.Adam(lr)) for lr in (1e-3, 1e-2, 1e-1)]
    for name, opt in runs:
        net = tiny_net(1)
        model = with_curvature(net)
        model.compile(optimizer=opt, loss="mse")
        losses[name] = model.fit(x, y, batch_size=len(x), epochs=40, verbose=0, shuffle=False).history["loss"][-1]
    best_adam = min(v for k, v in losses.items() if k.startswith("adam"))
    assert losses["gn"] < 0.25 * best_adam, losses


def test_configuration_errors_name_what_is_allowed():
    with pytest.raises(ValueError, match="levenberg_marquardt"):
        DHKFAC(preconditioner="kronecker", damping_mode="levenberg_marquardt")
    with pytest.raises(ValueError, match="momentum"):
        DHKFAC(preconditioner="gauss_newton", momentum=0.5)
    with pytest.raises(ValueError, match="preconditioner"):
        DHKFAC(preconditioner="newton")
    with pytest.raises(ValueError, match="jacobian_rows"):
        DHKFAC(preconditioner="gauss_newton", jacobian_rows=0)
    with pytest.raises(ValueError, match=r"metric_power must be in \(0, 1\]"):
        DHKFAC(preconditioner="gauss_newton", metric="kronecker", metric_power=0.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"min_step_fraction must be in \(0, 1\] or None; got {bad}"):
            DHKFAC(preconditioner="gauss_newton", min_step_fraction=bad)
    with pytest.raises(ValueError, match="late_max_step caps the Gauss-Newton step; it needs preconditioner"):
        DHKFAC(preconditioner="kronecker", late_max_step=0.3)
    with pytest.raises(ValueError, match="late_max_step must be > 0 or None; got 0.0"):
        DHKFAC(preconditioner="gauss_newton", late_max_step=0.0)
    with pytest.raises(ValueError, match=r"late_after must be an integer >= 0 \(steps\); got -1"):
        DHKFAC(preconditioner="gauss_newton", late_after=-1)
    from pathlib import Path

    from deephedge_tf.config import load_config
    from deephedge_tf.errors import ConfigError

    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    with pytest.raises(ConfigError, match="training.kfac.min_step_fraction"):
        load_config(quickstart, overrides=["training.kfac.min_step_fraction=0"])
    with pytest.raises(ConfigError, match="training.kfac.late_max_step.*null unless preconditioner is gauss_newton"):
        load_config(quickstart, overrides=["training.kfac.preconditioner=kronecker",
                                           "training.kfac.late_max_step=0.3"])
    assert DHKFAC(preconditioner="kronecker").late_max_step is None
    assert DHKFAC().late_max_step == 0.3 and DHKFAC().late_after == 10  # the defaults (BENCHMARKS.md)


def test_rows_of_an_unknown_block_or_shape_are_refused_by_name():
    net = tiny_net()
    opt = DHKFAC(preconditioner="gauss_newton")
    opt.build(net.trainable_variables)
    block = opt.kronecker_blocks[0]
    with pytest.raises(ValueError, match=rf"set_jacobian_rows: rows of block '{block.name}' must be "
                                         rf"\[n, {block.dim_a}, {block.d_out}\]"):
        opt.set_jacobian_rows({block.name: tf.zeros([2, block.dim_a + 1, block.d_out], tf.float64)})
    a = tf.zeros([1, 4, block.dim_a], tf.float64)
    g = tf.zeros([1, 4, block.d_out], tf.float64)
    with pytest.raises(KeyError, match="update_curvature: no Kronecker block 'nowhere'"):
        opt.update_curvature({block.name: (a, g)}, rows={"nowhere": tf.zeros([2, 1, 1], tf.float64)})


def test_max_relative_change_caps_every_blocks_step():
    """With max_relative_change = 1%, one step moves no block's stacked weights by more than 1% of their
    norm, and the tightest block sits at the cap."""
    x, y = _regression()
    net = tiny_net()
    before = [np.concatenate([layer.kernel.numpy(), layer.bias.numpy()[None]]) for layer in net.layers]
    model = with_curvature(net)
    opt = DHKFAC(preconditioner="gauss_newton", max_relative_change=0.01, damping=1e-3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False)
    if int(opt.rejected_steps):
        pytest.skip("the capped step was rejected (nothing to measure)")
    after = [np.concatenate([layer.kernel.numpy(), layer.bias.numpy()[None]]) for layer in net.layers]
    changes = [np.linalg.norm(a - b) / np.linalg.norm(b) for a, b in zip(after, before)]
    assert max(changes) == pytest.approx(0.01, rel=1e-4), changes
    with pytest.raises(ValueError, match="max_relative_change"):
        DHKFAC(preconditioner="gauss_newton", max_relative_change=0.0)


@pytest.mark.parametrize("traced", [False, True])
def test_non_finite_rows_are_replaced_by_zeros(traced):
    """Rows with a NaN are dropped for the step (counted in skipped_curvature_updates): zero rows, with which
    lambda is 1 and the identity-metric direction g itself; finite rows give the Woodbury direction."""
    net = tiny_net()
    opt = DHKFAC(preconditioner="gauss_newton", metric="identity")
    opt.build(net.trainable_variables)
    rng = np.random.default_rng(11)
    rows = {b.name: rng.normal(size=(3, b.dim_a, b.d_out)) for b in opt.kronecker_blocks}
    grads = [tf.constant(rng.normal(size=v.shape)) for v in net.trainable_variables]
    bad = {k: r.copy() for k, r in rows.items()}
    first = opt.kronecker_blocks[0].name
    bad[first][1, 0, 0] = np.nan

    def directions(r):
        opt.lm_damping.assign(0.5)
        opt.set_jacobian_rows({k: tf.convert_to_tensor(x) for k, x in r.items()})
        return opt.step_directions(grads)[0]

    run = tf.function(directions, autograph=False) if traced else directions
    stacked = {b.name: stack(b, [grads[i] for i in b.indices]) for b in opt.kronecker_blocks}
    want = gauss_newton_direction({k: tf.constant(r) for k, r in rows.items()}, stacked,
                                  tf.constant(0.5, tf.float64))
    got = run(rows)
    for b in opt.kronecker_blocks:
        np.testing.assert_allclose(stack(b, [got[i] for i in b.indices]), want[b.name], rtol=1e-9, atol=1e-12)
    assert int(opt.skipped_curvature_updates) == 0
    got = run(bad)
    for d, g in zip(got, grads):  # zero rows: lambda is 1 (nothing to scale it by), d = g
        np.testing.assert_allclose(d, g.numpy(), rtol=1e-12)
    assert int(opt.skipped_curvature_updates) == 1


@pytest.mark.parametrize("learning_rate, late, want", [(1.0, 0.3, [1.0, 1.0, 0.3, 0.3]),
                                                     (0.5, 0.3, [0.5, 0.5, 0.3, 0.3]),
                                                     (0.5, 2.0, [0.5, 0.5, 0.5, 0.5])])
def test_steps_from_late_after_on_are_capped_at_late_max_step(learning_rate, late, want):
    """eta = min(line model's fraction, eta_max), eta_max = learning_rate for the first late_after steps and
    min(learning_rate, late_max_step) after them.  The line model sees no curvature along the step, so its
    fraction g.d / (lambda d^T d) = d^T (C + lambda I) d / (lambda d^T d) >= 1 and eta is the cap itself."""
    net = tiny_net()
    opt = DHKFAC(learning_rate=learning_rate, preconditioner="gauss_newton", metric="identity",
                 min_step_fraction=None, late_max_step=late, late_after=2)
    opt.build(net.trainable_variables)
    rng = np.random.default_rng(6)
    rows = {b.name: tf.constant(rng.normal(size=(4, b.dim_a, b.d_out))) for b in opt.kronecker_blocks}
    grads = [tf.constant(rng.normal(size=v.shape)) for v in net.trainable_variables]
    sizes = []
    for _ in want:
        opt.lm_damping.assign(0.1)
        opt.set_jacobian_rows(rows)
        directions, _ = opt.step_directions(grads)
        opt.set_step_model(0.0, float(sum(tf.reduce_sum(g * d) for g, d in zip(grads, directions))))
        opt.apply_gradients(zip(grads, net.trainable_variables))
        sizes.append(float(opt.step_size))
    assert sizes == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("curvature, cut", [(30.0, True), (1e5, True), (0.0, False)])
def test_a_line_model_that_cuts_the_step_raises_the_damping(curvature, cut):
    """When the exact line model takes eta < min_step_fraction of the damped step (here: a curvature along
    the step far above the rows' model), lambda is multiplied by min_step_fraction / eta for the next
    step (at most 1e3), with eta = g.d / (d^T C d + lambda d^T d) computed from the same numbers in numpy;
    without the cut (no curvature along the step: eta at eta_max = 1) lambda is kept."""
    net = tiny_net()
    opt = DHKFAC(preconditioner="gauss_newton", metric="identity", min_step_fraction=0.25)
    opt.build(net.trainable_variables)
    rng = np.random.default_rng(5)
    rows = {b.name: tf.constant(rng.normal(size=(4, b.dim_a, b.d_out))) for b in opt.kronecker_blocks}
    grads = [tf.constant(rng.normal(size=v.shape)) for v in net.trainable_variables]
    opt.lm_damping.assign(0.1)
    opt.set_jacobian_rows(rows)
    directions, _ = opt.step_directions(grads)
    lam = float(opt._factor[1])
    d = np.concatenate([x.numpy().ravel() for x in directions])
    g = np.concatenate([x.numpy().ravel() for x in grads])
    slope, quad = g @ d, curvature * (d @ d)
    opt.set_step_model(quad, slope)
    opt.apply_gradients(zip(grads, net.trainable_variables))
    eta = slope / (quad + lam * d @ d)
    assert float(opt.step_size) == pytest.approx(min(eta, 1.0), rel=1e-6)
    want = lam * min(0.25 / eta, 1e3) if cut else lam
    assert cut == (eta < 0.25)
    assert float(opt.lm_damping) == pytest.approx(want, rel=1e-6)
