"""Curvature capture for any Keras model (deephedge_tf.optimizers.capture): the recorded statistics
reproduce the weight gradients (sum over uses of a^T dL/dz), the captured forward pass computes the
same numbers as the model's own, and layers the capture does not understand take the diagonal step."""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.layers import LSTMCell
from deephedge_tf.optimizers import DHKFAC, Recorder, capture, find_blocks, with_curvature

F64 = "float64"


class PerStep(keras.Model):
    """Subclassed model with a nested sub-model and one Dense applied at every time step."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = keras.Sequential([keras.layers.Dense(5, activation="tanh", dtype=F64, name="enc")],
                                        name="encoder")
        self.cell = LSTMCell(3, name="cell", dtype=F64)
        self.step_head = keras.layers.Dense(2, name="step_head", dtype=F64)

    def call(self, x):  # x [B, T, d]
        batch, steps = tf.shape(x)[0], x.shape[1]
        state = (tf.zeros((batch, 3), F64), tf.zeros((batch, 3), F64))
        outs = []
        for t in range(steps):
            h, state = self.cell(self.encoder(x[:, t]), state)
            outs.append(self.step_head(h))
        return tf.stack(outs, axis=1)


def sequential_mlp():
    return keras.Sequential([keras.Input((4,), dtype=F64), keras.layers.Dense(6, activation="relu", dtype=F64),
                             keras.layers.Dense(3, use_bias=False, dtype=F64)])


def functional_mixed():
    inp = keras.Input((4, 2), dtype=F64)
    seq = keras.layers.LSTM(3, return_sequences=True, dtype=F64)(inp)
    back = keras.layers.LSTM(2, go_backwards=True, dtype=F64)(seq)
    per_position = keras.layers.Dense(2, dtype=F64)(seq)  # rank-3 input: 4 uses per sample
    out = keras.layers.Concatenate()([back, keras.layers.Flatten()(per_position)])
    return keras.Model(inp, keras.layers.Dense(1, dtype=F64)(out))


CASES = {"sequential": (sequential_mlp, (6, 4)), "functional_lstm": (functional_mixed, (6, 4, 2)),
         "subclassed_per_step": (PerStep, (6, 4, 2))}


@pytest.mark.parametrize("case", sorted(CASES))
def test_capture_reproduces_weight_gradients_and_outputs(case):
    make, shape = CASES[case]
    keras.utils.set_random_seed(3)
    model = make()
    x = tf.constant(np.random.default_rng(0).normal(size=shape))
    plain = model(x)
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(model, tape) as recorder:
            y = model(x)
        loss = tf.reduce_sum(tf.sin(y))  # any scalar of the outputs
    np.testing.assert_allclose(y.numpy(), plain.numpy(), rtol=1e-12, atol=1e-14)  # the same numbers
    stats = recorder.statistics(tape.gradient(loss, recorder.probes))
    variables = model.trainable_variables
    blocks, diagonal = find_blocks(variables)
    assert sorted(stats) == sorted(b.name for b in blocks) and diagonal == [] and recorder.not_understood == []
    grads = tape.gradient(loss, variables)
    for block in blocks:
        a, g = (t.numpy() for t in stats[block.name])
        assert a.shape[1:] == (shape[0], block.dim_a) and g.shape[1:] == (shape[0], block.d_out)
        expected = np.concatenate([grads[i].numpy().reshape(-1, block.d_out) for i in block.indices], axis=0)
        assert np.abs(expected).max() > 1e-4, block.name
        np.testing.assert_allclose(np.einsum("tbi,tbj->ij", a, g), expected, rtol=1e-10, atol=1e-13,
                                   err_msg=block.name)
    if case == "subclassed_per_step":  # a layer called at every step is one block with T uses
        assert stats["per_step/step_head"][0].shape[0] == shape[1]


def test_unknown_layers_take_the_diagonal_step_and_are_logged(caplog):
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((6, 1)), keras.layers.Conv1D(2, 3, name="conv"), keras.layers.Flatten(),
                            keras.layers.Dense(1, name="out")], name="convnet")
    model = with_curvature(net)
    model.compile(optimizer=DHKFAC(), loss="mse")
    x = np.random.default_rng(0).normal(size=(32, 6, 1)).astype("float32")
    with caplog.at_level(logging.INFO, logger="deephedge_tf"):
        model.fit(x, x[:, :1, 0], epochs=2, batch_size=16, verbose=0)
    assert model.optimizer.active_blocks == ("convnet/out",)
    assert {v.path for v in model.optimizer.diagonal_variables} == {"convnet/conv/kernel", "convnet/conv/bias"}
    lines = [r.getMessage() for r in caplog.records if "diagonal (Adam) step" in r.getMessage()]
    assert len(lines) == 1 and "convnet/conv" in lines[0]  # listed once, not per step


def test_rnn_that_cannot_be_unrolled_is_a_clear_error():
    net = keras.Sequential([keras.Input((None, 2)), keras.layers.LSTM(3), keras.layers.Dense(1)])

    @tf.function(input_signature=[tf.TensorSpec([None, None, 2])])
    def captured_forward(x):
        with tf.GradientTape() as tape:
            with Recorder(net, tape):
                return net(x)

    with pytest.raises(ValueError, match="static number of time steps"):
        captured_forward(tf.zeros((4, 5, 2)))


class ScanModel(keras.Model):
    """A recurrent model whose time loop is a capture.scan (one tf.while_loop), or unrolled in Python."""

    def __init__(self, unrolled=False, **kwargs):
        super().__init__(**kwargs)
        self.unrolled = unrolled
        self.inp = keras.layers.Dense(4, activation="tanh", name="inp", dtype=F64)
        self.cell = LSTMCell(3, name="cell", dtype=F64)
        self.out = keras.layers.Dense(1, name="out", dtype=F64)

    def step(self, x_t, carry):
        h, state = self.cell(self.inp(x_t), carry)
        return self.out(h), state

    def call(self, x):  # x [B, T, d] -> [T, B, 1]
        carry = (tf.zeros((tf.shape(x)[0], 3), F64), tf.zeros((tf.shape(x)[0], 3), F64))
        elems = tf.transpose(x, [1, 0, 2])
        if self.unrolled:
            outs = []
            for t in range(x.shape[1]):
                o, carry = self.step(elems[t], carry)
                outs.append(o)
            return tf.stack(outs)
        return capture.scan(self.step, elems, carry)[0]


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_scan_loop_in_the_graph_is_captured_like_the_unrolled_loop(graph):
    """The same weights run as a tf.while_loop (capture.scan) and unrolled: same outputs, the same
    statistics [T, B, .] per block, and the capture contract holds for the in-graph loop."""
    x = tf.constant(np.random.default_rng(2).normal(size=(5, 6, 2)))
    results = []
    for unrolled in (True, False):
        keras.utils.set_random_seed(4)
        model = ScanModel(unrolled=unrolled, name="scan")
        model(x)

        def run():
            with tf.GradientTape(persistent=True) as tape:
                with Recorder(model, tape) as recorder:
                    y = model(x)
                loss = tf.reduce_sum(tf.sin(3.0 * y))
            stats = recorder.statistics(tape.gradient(loss, recorder.probes))
            return y, stats, tape.gradient(loss, model.trainable_variables)

        y, stats, grads = tf.function(run)() if graph else run()
        results.append((y.numpy(), {k: (a.numpy(), g.numpy()) for k, (a, g) in stats.items()},
                        [g.numpy() for g in grads], model))
    (y_u, s_u, _, _), (y_s, s_s, g_s, model) = results
    np.testing.assert_allclose(y_s, y_u, rtol=1e-12)
    assert sorted(s_s) == sorted(s_u) == ["scan/cell", "scan/inp", "scan/out"]
    for name in s_u:
        assert s_s[name][0].shape == (6, 5, s_u[name][0].shape[-1])
        for got, want in zip(s_s[name], s_u[name]):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=name)
    blocks, _ = find_blocks(model.trainable_variables)
    for block in blocks:
        a, g = s_s[block.name]
        expected = np.concatenate([g_s[i].reshape(-1, block.d_out) for i in block.indices], axis=0)
        np.testing.assert_allclose(np.einsum("tbi,tbj->ij", a, g), expected, rtol=1e-10, atol=1e-13)


def test_scan_without_a_recorder_and_in_replay_mode():
    elems = tf.constant(np.arange(12.0).reshape(4, 3))
    outs, last = capture.scan(lambda e, s: (s * 2.0 + e, s + e), elems, tf.zeros(3, tf.float64))
    np.testing.assert_allclose(last.numpy(), elems.numpy().sum(axis=0))
    np.testing.assert_allclose(outs.numpy()[2], 2 * elems.numpy()[:2].sum(axis=0) + elems.numpy()[2])
    with pytest.raises(ValueError, match="static"):
        capture.scan(lambda e, s: (e, s), tf.zeros([0, 2]), tf.zeros([2]))


def test_recorders_of_two_threads_record_their_own_passes_and_overlap_safely():
    """Under MirroredStrategy each replica traces its step in a thread of its own, through the same
    layers, and one replica's recorder can close while another's is open (the replicas take turns at
    each synchronisation): each recorder sees its own thread's pass, and the layers' own call comes back
    only when the last one closes."""
    import threading

    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    x = {name: tf.random.stateless_normal([n, 3], [n, 0]) for name, n in (("a", 5), ("b", 7))}
    recorders, order = {}, []
    a_entered, b_entered, a_exited = threading.Event(), threading.Event(), threading.Event()

    def replica(name, wait_for, signal, before_exit=None, after_exit=None):
        with tf.GradientTape() as tape:
            with Recorder(net, tape) as rec:
                recorders[name] = rec
                signal.set()
                if wait_for is not None:
                    wait_for.wait(10)
                net(x[name])
                if before_exit is not None:
                    before_exit.wait(10)
            order.append(name)
        if after_exit is not None:
            after_exit.set()

    # a enters, b enters, both run a pass, a closes first while b is still open, then b closes.
    first = threading.Thread(target=replica, args=("a", b_entered, a_entered, None, a_exited))
    second = threading.Thread(target=replica, args=("b", a_entered, b_entered, a_exited, None))
    first.start(), second.start()
    first.join(20), second.join(20)
    assert order == ["a", "b"]
    for name, n in (("a", 5), ("b", 7)):
        assert [int(p.shape[0]) for p in recorders[name].probes] == [n, n]  # its own pass, both layers
    assert all("call" not in vars(layer) for layer in net.layers)  # the class's call again
    assert capture._PATCHES == {}


def test_recorded_dense_layers_leave_grappler_its_fusions(capfd):
    """The probe is added to ``x @ W`` before the bias.  Added after it, the recorded pass of a ReLU
    network inside the graph time loop read ``MatMul -> BiasAdd -> Add(probe) -> Relu``, a pattern on
    which TensorFlow 2.21's remapper left a node without an op ("empty op name", "remapper failed" on
    stderr) and then skipped the whole train step: no fused MatMul + BiasAdd + ReLU anywhere in it, the
    band network's Gauss-Newton step 1.3x slower (BENCHMARKS.md)."""
    from deephedge_tf.config import from_dict
    from deephedge_tf.training import build_parts, fit_hedger, make_hedger

    cfg = from_dict({"time": {"steps": 5}, "market": {"model": "gbm", "s0": 1.0},
                     "derivative": {"kind": "european", "strike": 1.0},
                     "hedges": {"spot": {"enabled": True, "cost": 1.0e-3}},
                     "policy": {"kind": "mlp", "num_layers": 1, "width": 8},
                     "objective": {"kind": "expected_shortfall"},
                     "training": {"optimizer": "dhkfac", "time_loop": "graph", "batch_size": 256,
                                  "batches_per_epoch": 1, "epochs": 1, "validation_paths": 256}})
    parts = build_parts(cfg)
    capfd.readouterr()
    fit_hedger(cfg, make_hedger(cfg, parts), parts, verbose=0)
    err = capfd.readouterr().err
    assert "remapper failed" not in err and "empty op name" not in err, err[-2000:]
