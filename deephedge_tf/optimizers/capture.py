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
(tensors made inside a loop body are invisible to the tape outside).  Python-unrolled loops (the
hedger's decision loop, the RNN unroll above) satisfy this by construction; their compile time grows
with ``T``.  A time loop written with :func:`scan` runs as one ``tf.while_loop`` and is captured too:
under a recorder, step 0 runs outside the loop (it finds the layer calls of one step and their shapes),
each call slot of steps ``1..T-1`` reads its probe from a ``[T - 1, B, d_out]`` tensor made before the
loop through a ``TensorArray`` (``unstack`` / ``read``: O(T) gradients, unlike slicing one tensor per
step) and writes its input into a ``TensorArray`` returned by the loop, so the statistics are
accumulated in the loop and come out ``[T, B, .]`` as for an unrolled loop.
"""

from __future__ import annotations

import threading

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
        # The probe goes on x @ W, before the bias (the same gradient): after it, a ReLU layer's recorded
        # pass in a graph loop reads MatMul -> BiasAdd -> Add -> Relu, which breaks TensorFlow 2.21's
        # remapper ("empty op name") and with it every MatMul + BiasAdd + ReLU fusion of the train step.
        z = record(layer, inputs, ops.matmul(inputs, layer.kernel), layer.bias is not None)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
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
        # (block name, inputs, has_bias, time_major): inputs [B, ..., d_in] per call, or [U, B, d_in]
        # for a call slot of a scan loop (time_major); the probe of the same index has the same layout.
        self._calls = []
        self._patched = []
        self._loop = None  # inside a scan body: the step's probes and recorded inputs
        self.not_understood = []

    def __enter__(self):
        for layer in self.model._flatten_layers(include_self=True):
            if _patch(layer):
                self._patched.append(layer)
            elif layer.trainable_weights and _owns_weights(layer):
                self.not_understood.append(layer.path)
        _ACTIVE.stack.append(self)
        return self

    def __exit__(self, *exc):
        for layer in self._patched:
            _unpatch(layer)
        self._patched = []
        _ACTIVE.stack.remove(self)
        return False

    def _record(self, layer, inputs, z, has_bias):
        if self.tape is None:
            return z  # replay mode: the same computation (RNNs unrolled), nothing recorded
        if self._loop is not None:
            return self._record_in_loop(layer, inputs, z)
        probe = tf.zeros_like(z)
        self.tape.watch(probe)
        self.probes.append(probe)
        self._calls.append((layer_path(layer.kernel), inputs, has_bias, False))
        return z + probe

    def _record_in_loop(self, layer, inputs, z):
        loop = self._loop
        slot = len(loop["inputs"])
        names = loop["names"]
        if slot >= len(names) or names[slot] != layer_path(layer.kernel) or inputs.shape.rank != 2:
            raise ValueError(
                "capture.scan: every step must call the same layers in the same order with [B, d] inputs "
                f"(step 0 called {names}); call {slot} of a later step is {layer_path(layer.kernel)!r} "
                f"with input shape {tuple(inputs.shape)}")
        loop["inputs"].append(inputs)
        return z + loop["probes"][slot].read(loop["t"])

    def _scan(self, fn, elems, initializer, steps):
        """:func:`scan` with the layer calls of ``fn`` captured (see the module doc, "Loops in the graph")."""
        start = len(self._calls)
        out0, state = fn(tf.nest.map_structure(lambda x: x[0], elems), initializer)
        slots, slot_probes = self._calls[start:], self.probes[start:]
        if any(c[1].shape.rank != 2 for c in slots):
            raise ValueError("capture.scan: captured layers inside a scan step need [B, d] inputs")
        if steps == 1:
            return tf.nest.map_structure(lambda o: o[None], out0), state
        rest = steps - 1
        loop_probes = []
        for p in slot_probes:
            lp = tf.zeros(tf.concat([[rest], tf.shape(p)], 0), p.dtype)
            lp.set_shape([rest] + p.shape.as_list())
            self.tape.watch(lp)
            loop_probes.append(lp)
        probe_arrays = [tf.TensorArray(p.dtype, size=rest, element_shape=p.shape[1:]).unstack(p) for p in loop_probes]
        names = [c[0] for c in slots]

        def record_step(t, elem, carry):
            self._loop = {"t": t, "probes": probe_arrays, "names": names, "inputs": []}
            try:
                out, carry = fn(elem, carry)
                inputs = self._loop["inputs"]
            finally:
                self._loop = None
            if len(inputs) != len(names):
                raise ValueError(f"capture.scan: step 0 called {names}, a later step only "
                                 f"{names[:len(inputs)]}")
            return out, carry, inputs

        outputs, state, recorded = _while_scan(record_step, elems, out0, state, rest,
                                               [c[1] for c in slots])
        for (name, _, has_bias, _), lp, inputs in zip(slots, loop_probes, recorded):
            self._calls.append((name, inputs, has_bias, True))
            self.probes.append(lp)
        return outputs, state

    @property
    def block_names(self) -> list:
        """Names of the blocks recorded so far, in first-call order."""
        return list(dict.fromkeys(c[0] for c in self._calls))

    def statistics(self, probe_gradients, max_paths=None) -> dict:
        """``{block name: (a [T, B', dim_a], g [T, B', d_out])}`` from the gradients at :attr:`probes`.

        Args:
          probe_gradients: one tensor (or ``None``: no path to the outputs, taken as zero) per probe.
          max_paths: keep the first ``B'`` paths only (``None``: all).
        """
        if len(probe_gradients) != len(self.probes):
            raise ValueError(f"Recorder.statistics: {len(probe_gradients)} gradients for {len(self.probes)} probes")
        per_block = {}
        for (name, x, has_bias, time_major), probe, grad in zip(self._calls, self.probes, probe_gradients):
            grad = tf.zeros_like(probe) if grad is None else tf.ensure_shape(grad, probe.shape)
            per_block.setdefault(name, ([], [], has_bias))
            x = tf.cast(x, probe.dtype)
            per_block[name][0].append(x if time_major else _uses_first(x))
            per_block[name][1].append(grad if time_major else _uses_first(grad))
        out = {}
        for name, (xs, gs, has_bias) in per_block.items():
            a, g = _time_major(xs), _time_major(gs)
            if max_paths is not None:  # cut first: the ones column and the copies only for B' paths
                a, g = a[:, :max_paths], g[:, :max_paths]
            if has_bias:
                a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
            out[name] = (tf.stop_gradient(a), tf.stop_gradient(g))
        return out

    def path_count(self):
        """The batch size ``B`` of the recorded forward pass (int32 scalar tensor)."""
        if not self._calls:
            raise ValueError("Recorder.path_count: nothing was recorded")
        _, x, _, time_major = self._calls[0]
        return tf.shape(x)[1] if time_major else tf.shape(x)[0]


def per_path_gradients(statistics) -> dict:
    """``{block name: M [B', dim_a, d_out]}``, ``M_b = sum_t a_tb g_tb^T``, from the ``{block name: (a, g)}``
    of :meth:`Recorder.statistics`: path ``b``'s share of the weight gradient of whatever was
    back-propagated to the probes (its Jacobian row when that was one output per path).

        >>> import tensorflow as tf
        >>> a, g = tf.ones([2, 3, 1]), tf.ones([2, 3, 2])      # T = 2 uses, B' = 3 paths
        >>> per_path_gradients({"dense": (a, g)})["dense"].shape.as_list()
        [3, 1, 2]
    """
    return {name: tf.einsum("tba,tbg->bag", a, g) for name, (a, g) in statistics.items()}


def _time_major(parts):
    """The calls' ``[U, B, d]`` tensors as one ``[T, B, d]`` (T: all uses, in call order)."""
    if len(parts) == 1:
        return parts[0]
    if all(p.shape[0] == 1 for p in parts):  # one use per call: one stack, not T concatenations
        return tf.stack([p[0] for p in parts], axis=0)
    return tf.concat(parts, axis=0)


class _ActiveRecorders(threading.local):
    """This thread's recorders whose forward pass is running (``stack``, innermost last).  Per thread:
    under ``tf.distribute.MirroredStrategy`` each replica traces its step in a thread of its own, with a
    recorder of its own, through the same layer objects."""

    def __init__(self):
        self.stack = []


_ACTIVE = _ActiveRecorders()
# id(layer) -> [layer, open recorders]: the layers whose ``call`` is patched.  The patch is shared by the
# threads (it is an attribute of the layer) and dispatches to the calling thread's recorder; it is removed
# when the last recorder using it closes (a replica's recorder may close while another's is open).
_PATCHES = {}
_PATCH_LOCK = threading.Lock()


def _record_in_active(layer, inputs, z, has_bias):
    """What the patched calls record through: the calling thread's innermost recorder (``z`` unchanged
    in a thread without one)."""
    stack = _ACTIVE.stack
    return stack[-1]._record(layer, inputs, z, has_bias) if stack else z


def _patch(layer) -> bool:
    """Patches ``layer.call`` with its capture (an instance attribute shadowing the class's ``call``), or
    counts one more user of the patch; False when the layer cannot be captured."""
    with _PATCH_LOCK:
        entry = _PATCHES.get(id(layer))
        if entry is None:
            make = _capture_for(layer)
            call = make(layer, _record_in_active) if make is not None else None
            if call is None:
                return False
            layer.call = call
            entry = _PATCHES[id(layer)] = [layer, 0]
        entry[1] += 1
        return True


def _unpatch(layer) -> None:
    with _PATCH_LOCK:
        entry = _PATCHES[id(layer)]
        entry[1] -= 1
        if entry[1] == 0:
            del layer.call
            del _PATCHES[id(layer)]


def scan(fn, elems, initializer):
    """``(outputs, final state)`` of ``(out_t, state) = fn(elem_t, state)`` over the leading axis of
    ``elems`` (a nest of ``[T, ...]`` tensors, ``T`` static), as one ``tf.while_loop``: the time loop
    runs in the graph, so its trace and compile time do not grow with ``T``.  ``outputs`` stacks the
    ``out_t`` (a nest) along a new leading axis.

    Under a :class:`Recorder` the layers called by ``fn`` are captured like those of an unrolled loop
    (each is one block with ``T`` uses; see the module doc).  In replay mode (``Recorder(model, None)``,
    used for forward-mode autodiff, which cannot pass a ``while_loop`` reading variables) the loop is
    unrolled in Python: the same numbers.

        >>> import tensorflow as tf
        >>> outs, last = scan(lambda x, s: (s + x, s + x), tf.ones([4, 2]), tf.zeros([2]))
        >>> outs.shape.as_list(), last.numpy().tolist()
        ([4, 2], [4.0, 4.0])
    """
    steps = tf.nest.flatten(elems)[0].shape[0]
    if steps is None or steps < 1:
        raise ValueError(f"capture.scan: the leading (time) axis of elems must be static and >= 1; got {steps}")
    recorder = _ACTIVE.stack[-1] if _ACTIVE.stack else None
    if recorder is not None and recorder.tape is None:
        outs, state = [], initializer
        for t in range(steps):
            out, state = fn(tf.nest.map_structure(lambda x: x[t], elems), state)
            outs.append(out)
        return tf.nest.map_structure(lambda *o: tf.stack(o, axis=0), *outs), state
    if recorder is not None:
        return recorder._scan(fn, elems, initializer, steps)
    out0, state = fn(tf.nest.map_structure(lambda x: x[0], elems), initializer)
    if steps == 1:
        return tf.nest.map_structure(lambda o: o[None], out0), state

    def plain_step(t, elem, carry):
        out, carry = fn(elem, carry)
        return out, carry, []

    outputs, state, _ = _while_scan(plain_step, elems, out0, state, steps - 1, [])
    return outputs, state


def _while_scan(step, elems, out0, state, rest, record_like):
    """Steps ``1..rest`` of a scan as a ``tf.while_loop`` (step 0 already done: ``out0``, ``state``).

    ``step(t, elem, state) -> (out, state, recorded)``, ``t`` counting from 0 for step 1; ``recorded``
    is a list of tensors shaped like ``record_like``, accumulated into ``[rest, ...]`` TensorArrays.
    Returns ``(outputs [1 + rest, ...] (nest), final state, [recorded [rest, ...]])``.
    """
    flat_elems = tf.nest.flatten(elems)
    elem_arrays = [tf.TensorArray(x.dtype, size=rest, element_shape=x.shape[1:]).unstack(x[1:]) for x in flat_elems]
    flat_out0 = tf.nest.flatten(out0)
    out_arrays = [tf.TensorArray(o.dtype, size=rest, element_shape=o.shape) for o in flat_out0]
    rec_arrays = [tf.TensorArray(r.dtype, size=rest, element_shape=r.shape) for r in record_like]

    def body(t, carry, outs, recs):
        elem = tf.nest.pack_sequence_as(elems, [a.read(t) for a in elem_arrays])
        out, carry, recorded = step(t, elem, carry)
        outs = [a.write(t, o) for a, o in zip(outs, tf.nest.flatten(out))]
        recs = [a.write(t, r) for a, r in zip(recs, recorded)]
        return t + 1, carry, outs, recs

    _, state, outs, recs = tf.while_loop(lambda t, *_: t < rest, body,
                                         (tf.constant(0), state, out_arrays, rec_arrays),
                                         maximum_iterations=rest)
    outputs = [tf.concat([o[None], a.stack()], axis=0) for o, a in zip(flat_out0, outs)]
    return tf.nest.pack_sequence_as(out0, outputs), state, [a.stack() for a in recs]


def _uses_first(x):
    """``[B, ..., d]`` -> ``[U, B, d]``: every position of the middle axes is one use of the layer."""
    rank = x.shape.rank
    if rank == 2:
        return x[None]
    perm = list(range(1, rank - 1)) + [0, rank - 1]
    moved = tf.transpose(x, perm)
    return tf.reshape(moved, [-1, tf.shape(x)[0], x.shape[-1]])
