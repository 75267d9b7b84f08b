"""Tests of deephedge_tf.layers: RMSNorm, SymExp / symlog, LSTMCell, serialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.layers import LSTMCell, RMSNorm, ScaledHeNormal, SymExp, symexp, symlog


def _roundtrip(layer):
    """Serialise by registered name and rebuild an unbuilt copy (weights are not part of a config)."""
    cfg = keras.saving.serialize_keras_object(layer)
    assert cfg["registered_name"] == f"deephedge_tf>{type(layer).__name__}"
    return keras.saving.deserialize_keras_object(cfg)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rmsnorm_matches_numpy(dtype):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5)).astype(dtype)
    layer = RMSNorm(epsilon=1e-3, dtype=dtype)
    layer.build(x.shape)
    scale = rng.uniform(0.5, 2.0, size=5)
    layer.scale.assign(scale.astype(dtype))
    y = layer(tf.constant(x)).numpy()
    expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-3) * scale
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y, expected, rtol=1e-6 if dtype == "float32" else 1e-13)


def test_rmsnorm_scale_initialised_to_one_and_unit_rms():
    x = tf.constant(np.random.default_rng(2).normal(size=(3, 8)) * 7.0)
    y = RMSNorm(epsilon=0.0, dtype="float64")(x).numpy()
    np.testing.assert_allclose(np.mean(y**2, axis=-1), 1.0, rtol=1e-12)


def test_symexp_values_and_symlog_inverse():
    x = tf.constant([-2.0, -1e-9, 0.0, 1.0, 3.5], tf.float64)
    e = np.e
    np.testing.assert_allclose(symexp(x).numpy(), [-(e**2 - 1), -np.expm1(1e-9), 0.0, e - 1, np.expm1(3.5)], rtol=1e-14)
    np.testing.assert_allclose(SymExp(dtype="float64")(x).numpy(), symexp(x).numpy(), rtol=0)
    np.testing.assert_allclose(symlog(x).numpy(), [-np.log(3), -np.log1p(1e-9), 0.0, np.log(2), np.log(4.5)], rtol=1e-14)
    np.testing.assert_allclose(symlog(symexp(x)).numpy(), x.numpy(), rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(symexp(symlog(x)).numpy(), x.numpy(), rtol=1e-14, atol=1e-300)


def test_scaled_he_normal_std():
    w = ScaledHeNormal(1e-3, seed=3)((400, 50), dtype="float64").numpy()
    # Keras' HeNormal is a normal truncated at 2 std, whose std is 0.8796 of the nominal one.
    assert abs(w.std() / (1e-3 * np.sqrt(2.0 / 400)) - 1.0) < 0.05


def _keras_pair(d_in, units, dtype):
    ours = LSTMCell(units, dtype=dtype)
    ours.build((None, d_in))
    ref = keras.layers.LSTMCell(units, dtype=dtype)
    ref.build((None, d_in))
    return ours, ref


def test_lstm_bias_init_matches_keras_unit_forget_bias():
    # Same layout: [i, f, g(c), o] blocks, forget slice at 1.
    ours, ref = _keras_pair(3, 4, "float64")
    np.testing.assert_array_equal(ours.bias.numpy(), ref.bias.numpy())
    np.testing.assert_array_equal(ours.bias.numpy(), np.repeat([0.0, 1.0, 0.0, 0.0], 4))


def test_lstm_cell_matches_keras_with_copied_weights():
    d_in, units, batch = 3, 5, 4
    ours, ref = _keras_pair(d_in, units, "float64")
    rng = np.random.default_rng(4)
    ref.kernel.assign(rng.normal(size=(d_in, 4 * units)))
    ref.recurrent_kernel.assign(rng.normal(size=(units, 4 * units)) * 0.5)
    ref.bias.assign(rng.normal(size=(4 * units,)))
    # Keras' layout is ours (gates i, f, c, o in column blocks, one bias vector): copy as is.
    ours.kernel.assign(ref.kernel)
    ours.recurrent_kernel.assign(ref.recurrent_kernel)
    ours.bias.assign(ref.bias)
    h = c = tf.zeros((batch, units), tf.float64)
    h_ref, c_ref = h, c
    for t in range(3):
        x = tf.constant(rng.normal(size=(batch, d_in)))
        out, (h, c) = ours(x, (h, c))
        out_ref, (h_ref, c_ref) = ref(x, [h_ref, c_ref])
        np.testing.assert_allclose(out.numpy(), out_ref.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_allclose(c.numpy(), c_ref.numpy(), atol=1e-6, rtol=0)
        np.testing.assert_array_equal(out.numpy(), h.numpy())
    assert out.dtype == tf.float64


def test_lstm_preactivation_and_gates_compose_to_call():
    cell = LSTMCell(3, dtype="float64")
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 4)))
    h, c = tf.ones((2, 3), tf.float64) * 0.3, tf.ones((2, 3), tf.float64) * -0.2
    out, (h1, c1) = cell(x, (h, c))
    z = cell.preactivation(x, h)
    assert z.shape == (2, 12)
    h2, c2 = cell.gates(z, c)
    np.testing.assert_array_equal(h1.numpy(), h2.numpy())
    np.testing.assert_array_equal(c1.numpy(), c2.numpy())


def test_lstm_cell_traces_with_autograph_off():
    cell = LSTMCell(3)
    x = tf.ones((2, 4))
    state = cell.get_initial_state(2)
    eager, _ = cell(x, state)
    fn = tf.function(lambda x, s: cell(x, s), autograph=False)
    traced, _ = fn(x, state)
    np.testing.assert_allclose(traced.numpy(), eager.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "make, call",
    [
        (lambda: RMSNorm(epsilon=1e-4, dtype="float64"), lambda l, x: l(x)),
        (lambda: SymExp(dtype="float64"), lambda l, x: l(x)),
        (
            lambda: LSTMCell(3, forget_bias=0.5, dtype="float64"),
            lambda l, x: l(x, (tf.fill((2, 3), tf.constant(0.1, tf.float64)),) * 2)[0],
        ),
    ],
)
def test_layer_serialisation_roundtrip(make, call):
    x = tf.constant(np.random.default_rng(6).normal(size=(2, 4)))
    layer = make()
    y = call(layer, x)
    if layer.weights:  # perturb so a fresh init could not match by accident
        for w in layer.weights:
            w.assign(w + 0.01 * np.arange(np.prod(w.shape)).reshape(w.shape))
        y = call(layer, x)
    clone = _roundtrip(layer)
    assert clone.get_config() == layer.get_config()
    call(clone, x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(call(clone, x).numpy(), y.numpy())
