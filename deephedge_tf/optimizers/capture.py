"""Curvature capture for any Keras model: probes on pre-activations and recorded layer inputs.

KFAC needs, for every linear map ``z = a @ W`` of the model, the map's inputs ``a`` and the
(pseudo-)gradients ``g = dL/dz`` of its pre-activations, per path and per use of the layer.  Keras has
no forward or backward hooks, so :class:`Recorder` swaps the ``call`` of every layer it understands for
the duration of one forward pass: the swapped call computes the same numbers from the layer's own
weights, adds a zero *probe* tensor (watched by the tape) to the pre-activation and records the input.
A backward pass to the probes then gives ``g``:

    with tf.GradientTape(persistent=True) as tape:
        with Recorder(model, tape) as rec:
            y = model(x, training=True)                 # any Sequential, functional, subclassed model
        loss = ...
    g = tape.gradient(y, rec.probes, output_gradients=u)     # u: pseudo-gradients at the outputs
    stats = rec.statistics(g)                                # {block name: (a [T, B, dim_a], g [T, B, d_out])}

Layers understood (:func:`register_capture` adds more):

* ``keras.layers.Dense`` (not LoRA-enabled, not quantized): ``a = [x, 1]`` (no ones column without a
  bias).  An input ``[B, ..., d]`` with extra axes counts each position as one use of the layer.
* ``deephedge_tf.layers.LSTMCell`` and ``keras.layers.LSTMCell`` (no dropout): kernel, recurrent kernel
  and bias act on ``a = [x, h_prev, 1]`` as one map with ``4 * units`` outputs.
* ``keras.layers.RNN`` / ``LSTM`` whose cell is understood, with a static number of time steps and no
  mask: the recorder unrolls the time loop in Python (same numbers as Keras' loop) so that every step
  gets its own probe.

**Shape convention.**  Statistics are time-major: ``[T, B, .]`` with ``T`` the number of uses of the
layer in one forward pass (calls, times positions per call) and ``B`` the paths (samples).  A layer
called once per time step of a hedging loop is *one* block with ``T`` uses: RNN-KFAC pooling over its
calls.  All uses of a layer must see the same ``B``.

Block names are the layer path of the kernel variable (``layer_path(layer.kernel)``), the key
:class:`deephedge_tf.optimizers.DHKFAC` derives from its variable list.  Layers with trainable weights
the recorder does not understand are reported in :attr:`Recorder.not_understood`; the optimizer gives
their variables its diagonal (Adam) step.

**Loops in the graph.**  A probe must be created outside any ``tf.while_loop`` whose body uses it
(tensors made inside a loop body are invisible to the tape outside).  The Python-unrolled loops of
this library (the hedger's decision loop, the RNN unroll above) satisfy this by construction.  A driver
that runs the time loop in the graph would create each block's probes as a ``[T, B, d_out]`` tensor
before the loop, read step ``t`` through a ``TensorArray`` (``unstack`` / ``read``: O(T) gradients,
unlike slicing one tensor per step) and write the recorded inputs into a ``TensorArray`` returned by the
loop; :meth:`Recorder.statistics` takes ``[T, B, .]`` tensors as they are.
"""

from __future__ import annotations


import keras
import tensorflow as tf
from keras import ops

from deephedge_tf.optimizers.blocks import layer_path

_CAPTURES = {}


def register_capture(layer_type, make_call):
    """Teaches the recorder a layer type: ``make_call(layer, record)`` returns a replacement for
    ``layer.call`` that computes the same output, passing each pre-activation through
    ``record(layer, inputs, z, has_bias)`` (which returns ``z`` plus a probe), or ``None`` when this
    instance cannot be captured (e.g. dropout).  Later registrations win for subclasses.

        >>> from deephedge_tf.optimizers.capture import register_capture
        >>> class Affine(keras.layers.Dense): pass
        >>> register_capture(Affine, lambda layer, record: None)   # never captured: diagonal step
    """
    _CAPTURES[layer_type] = make_call


def _capture_for(layer):
    for klass in type(layer).__mro__:
        if klass in _CAPTURES:
            return _CAPTURES[klass]
    return None


def _dense_call(layer, record):
    if getattr(layer, "lora_enabled", False) or layer.dtype_policy.quantization_mode is not None:
        return None

    def call(inputs, training=None):
        z = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        z = record(layer, inputs, z, layer.bias is not None)
        return layer.activation(z) if layer.activation is not None else z

    return call


def _our_lstm_cell_call(cell, record):
    def call(x, states):
        h, c = states
        z = record(cell, tf.concat([x, tf.cast(h, x.dtype)], axis=-1), cell.preactivation(x, h), True)
        h_new, c_new = cell.gates(z, c)
        return h_new, (h_new, c_new)

    return call


def _keras_lstm_cell_call(cell, record):
    if cell.dropout or cell.recurrent_dropout:
        return None  # the dropout masks would make the recorded input differ from the map's input

    def call(inputs, states, training=False):
        h_tm1, c_tm1 = states[0], states[1]
        z = ops.matmul(inputs, cell.kernel) + ops.matmul(h_tm1, cell.recurrent_kernel)
        if cell.use_bias:
            z = ops.add(z, cell.bias)
        z = record(cell, ops.concatenate([inputs, h_tm1], axis=-1), z, cell.use_bias)
        z_i, z_f, z_c, z_o = ops.split(z, 4, axis=-1)
        c = cell.recurrent_activation(z_f) * c_tm1 + cell.recurrent_activation(z_i) * cell.activation(z_c)
        h = cell.recurrent_activation(z_o) * cell.activation(c)
        return h, [h, c]

    return call


def _rnn_call(layer, record):
    """Python-unrolled replacement of ``keras.layers.RNN.call`` (its cell is captured on its own)."""
    if layer.stateful or _capture_for(layer.cell) is None:
        return None

    def call(sequences, initial_state=None, mask=None, training=False):
        steps = sequences.shape[1]
        if mask is not None or steps is None:
            raise ValueError(
                f"curvature capture: {layer.name} needs a static number of time steps and no mask to be "
                f"unrolled (got {steps} steps, mask {'set' if mask is not None else 'none'}); give the input "
                "a fixed length, or train this model with another optimizer")
        if initial_state is None:
            initial_state = layer.get_initial_state(ops.shape(sequences)[0])
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        order = range(steps - 1, -1, -1) if layer.go_backwards else range(steps)
        outputs = []
        for t in order:
            out, states = layer.cell(sequences[:, t], states, training=training) if _takes_training(layer.cell) \
                else layer.cell(sequences[:, t], states)
            states = list(states) if isinstance(states, (list, tuple)) else [states]
            outputs.append(out)
        output = ops.stack(outputs, axis=1) if layer.return_sequences else outputs[-1]
        return (output, *states) if layer.return_state else output

    return call


def _takes_training(cell) -> bool:
    return "training" in getattr(cell, "_call_signature").parameters


def _register_defaults():
    from deephedge_tf.layers import LSTMCell

    register_capture(keras.layers.Dense, _dense_call)
    register_capture(keras.layers.LSTMCell, _keras_lstm_cell_call)
    register_capture(LSTMCell, _our_lstm_cell_call)
    register_capture(keras.layers.RNN, _rnn_call)


_register_defaults()


def _owns_weights(layer) -> bool:
    """Whether ``layer`` has trainable weights of its own (not only through sub-layers)."""
    inner = {id(v) for sub in layer._flatten_layers(include_self=False) for v in sub.trainable_weights}
    return any(id(v) not in inner for v in layer.trainable_weights)


class Recorder:
    """Context manager that records inputs and installs probes in ``model``'s understood layers.

    Args:
      model: a Keras layer or model (every nested layer is visited).
      tape: the ``tf.GradientTape`` recording the forward pass (the probes are watched by it);
        ``None`` replays the forward pass as captured (RNN loops unrolled) without probes, e.g. for
        forward-mode autodiff, which cannot differentiate through Keras' ``while_loop`` RNNs.

    Attributes (filled during the forward pass):
      probes: list of the probe tensors, in call order (the ``sources`` of the backward pass).
      not_understood: layer paths of layers with trainable weights the recorder cannot model.
    """

    def __init__(self, model, tape):
        self.model, self.tape = model, tape
        self.probes = []
        self._calls = []  # (block name, inputs [B, ..., d_in], has_bias)
        self._patched = []
        self.not_understood = []

    def __enter__(self):
        for layer in self.model._flatten_layers(include_self=True):
            make = _capture_for(layer)
            call = make(layer, self._record) if make is not None else None
            if call is not None:
                layer.call = call  # instance attribute: shadows the class's call for this pass only
                self._patched.append(layer)
            elif layer.trainable_weights and _owns_weights(layer):
                self.not_understood.append(layer.path)
        return self

    def __exit__(self, *exc):
        for layer in self._patched:
            del layer.call
        self._patched = []
        return False

    def _record(self, layer, inputs, z, has_bias):
        if self.tape is None:
            return z  # replay mode: the same computation (RNNs unrolled), nothing recorded
        probe = tf.zeros_like(z)
        self.tape.watch(probe)
        self.probes.append(probe)
        self._calls.append((layer_path(layer.kernel), inputs, has_bias))
        return z + probe

    @property
    def block_names(self) -> list:
        """Names of the blocks recorded so far, in first-call order."""
        return list(dict.fromkeys(name for name, _, _ in self._calls))

    def statistics(self, probe_gradients, max_paths=None) -> dict:
        """``{block name: (a [T, B', dim_a], g [T, B', d_out])}`` from the gradients at :attr:`probes`.

        Args:
          probe_gradients: one tensor (or ``None``: no path to the outputs, taken as zero) per probe.
          max_paths: keep the first ``B'`` paths only (``None``: all).
        """
        if len(probe_gradients) != len(self.probes):
            raise ValueError(f"Recorder.statistics: {len(probe_gradients)} gradients for {len(self.probes)} probes")
        per_block = {}
        for (name, x, has_bias), probe, grad in zip(self._calls, self.probes, probe_gradients):
            x = tf.convert_to_tensor(x)
            grad = tf.zeros_like(probe) if grad is None else tf.ensure_shape(grad, probe.shape)
            a = _uses_first(tf.cast(x, probe.dtype))
            if has_bias:
                a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
            g = _uses_first(grad)
            if max_paths is not None:
                a, g = a[:, :max_paths], g[:, :max_paths]
            per_block.setdefault(name, []).append((a, g))
        out = {}
        for name, parts in per_block.items():
            a = parts[0][0] if len(parts) == 1 else tf.concat([p[0] for p in parts], axis=0)
            g = parts[0][1] if len(parts) == 1 else tf.concat([p[1] for p in parts], axis=0)
            out[name] = (tf.stop_gradient(a), tf.stop_gradient(g))
        return out


def _uses_first(x):
    """``[B, ..., d]`` -> ``[U, B, d]``: every position of the middle axes is one use of the layer."""
    rank = x.shape.rank
    if rank == 2:
        return x[None]
    perm = list(range(1, rank - 1)) + [0, rank - 1]
    moved = tf.transpose(x, perm)
    return tf.reshape(moved, [-1, tf.shape(x)[0], x.shape[-1]])
