"""The train step that feeds a curvature optimizer, for any Keras model.

One step (:func:`curvature_train_step`):

1. forward pass under a tape, for the Kronecker rule also under a
   :class:`~deephedge_tf.optimizers.capture.Recorder` (probes on the pre-activations of every understood
   layer); the loss and its gradients;
2. if the loss and gradients are finite: the per-path statistics (pseudo-gradients from the loss's
   :class:`~deephedge_tf.optimizers.losses.OutputCurvature`, back-propagated to the probes) handed to
   ``optimizer.update_curvature`` (computed only when the optimizer wants them); for the Gauss-Newton
   step instead a recorded forward pass over the first ``jacobian_rows`` paths only and one backward
   pass of the terms' row cotangents through it (:func:`sample_space_factor`, ``set_jacobian_rows``),
   which give the sample-space factor and the damping metric's statistics; the exact quadratic model
   along the step direction (forward-mode passes, or one forward pass at the moved weights with
   ``jvp_method="finite_difference"``, over the first ``curvature_paths`` paths) when the
   optimizer's ``step_model`` asks for one; then ``optimizer.apply``.  Otherwise nothing is written and
   the step counts as skipped.

:func:`with_curvature` wraps a plain Keras model so that ``fit`` runs this step:

    >>> import keras, numpy as np
    >>> from deephedge_tf.optimizers import DHKFAC, with_curvature
    >>> net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])
    >>> model = with_curvature(net)
    >>> model.compile(optimizer=DHKFAC(), loss="mse")
    >>> x = np.random.default_rng(0).normal(size=(64, 3)).astype("float32")
    >>> history = model.fit(x, x[:, :1] ** 2, epochs=2, batch_size=32, verbose=0)
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from deephedge_tf.distribute import first_local_value, multi_replica_context
from deephedge_tf.optimizers.capture import Recorder, per_path_gradients
from deephedge_tf.optimizers.losses import OutputCurvature, RowFactor, loss_curvature
from deephedge_tf.optimizers.steps import all_finite


@dataclasses.dataclass
class CurvatureTerm:
    """One model output and the curvature of the loss with respect to it."""

    output: object
    curvature: OutputCurvature
    targets: object = None
    sample_weight: object = None
    path_axis: int = 0  # the axis of output, targets and sample_weight that indexes paths (1: time-major)


class AcrossReplicas(OutputCurvature):
    """A term's curvature computed on the whole global batch under several replicas.

    A loss's curvature may use statistics of the batch (the expected shortfall's quantile, the entropic
    weights' softmax, the cost majorizer's mean trade) and draws random signs for the batch's shape, so
    on a replica's share of the paths it would be another curvature.  Each call gathers every replica's
    rows along ``path_axis`` (one collective per tensor, in a fixed order), evaluates ``inner`` on the
    whole batch and keeps this replica's rows of a pseudo-gradient (``bilinear`` is a number, the same on
    every replica): the statistics and step models the replicas average are then the one-device ones.
    """

    def __init__(self, inner: OutputCurvature, path_axis: int = 0):
        self.inner, self.path_axis = inner, int(path_axis)

    def _gather(self, *tensors):
        ctx = multi_replica_context()
        out = []
        for t in tensors:
            if t is None:
                out.append(None)
                continue
            t = tf.convert_to_tensor(t)
            gathered = ctx.all_gather(t, axis=self.path_axis)
            shape = t.shape.as_list()  # all_gather drops the static shape; curvatures may read it
            if shape:
                shape[self.path_axis] = None if shape[self.path_axis] is None else \
                    shape[self.path_axis] * ctx.num_replicas_in_sync
            gathered.set_shape(shape)
            out.append(gathered)
        return out

    def _mine(self, every, outputs, axis):
        """This replica's rows of ``every`` (a whole-batch tensor with paths along ``axis``; ``None`` and a
        scalar, one value for every path, as they are), ``outputs`` its share of the batch."""
        if every is None or tf.convert_to_tensor(every).shape.rank == 0:
            return every
        size = tf.shape(outputs)[self.path_axis]
        return _along(every, axis, multi_replica_context().replica_id_in_sync_group * size, size)

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        every = self.inner.pseudo_gradient(*self._gather(outputs, targets), seed, *self._gather(sample_weight))
        return self._mine(every, outputs, self.path_axis)

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None):
        """The inner factor of the whole batch, this replica's rows of it: the cotangent along
        ``path_axis``, the per-path ``scale`` and ``centre`` (``[B]``, global weights) along their one axis."""
        factor = self.inner.jacobian_rows(*self._gather(outputs, targets), seed, *self._gather(sample_weight))
        return RowFactor(self._mine(factor.cotangent, outputs, self.path_axis), self._mine(factor.scale, outputs, 0),
                         self._mine(factor.centre, outputs, 0))

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        return self.inner.bilinear(*self._gather(outputs, u, v, targets, sample_weight))


def _along(t, axis, begin, size):
    """``t``'s entries ``[begin, begin + size)`` along ``axis`` (every entry along the other axes)."""
    t = tf.convert_to_tensor(t)
    starts = [0] * t.shape.rank
    starts[axis] = begin
    sizes = tf.unstack(tf.shape(t))
    sizes[axis] = size
    return tf.slice(t, tf.stack([tf.cast(b, tf.int32) for b in starts]), tf.stack(sizes))


def across_replicas(terms):
    """``terms`` whose curvature sees the whole batch (:class:`AcrossReplicas`) under several replicas;
    ``terms`` itself on one."""
    if multi_replica_context() is None:
        return terms
    return [dataclasses.replace(t, curvature=AcrossReplicas(t.curvature, t.path_axis)) for t in terms]


def tree_dot(xs, ys):
    """``sum_i <x_i, y_i>`` in float64 over aligned lists (pairs with a ``None`` are skipped)."""
    terms = [tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64))
             for x, y in zip(xs, ys) if x is not None and y is not None]
    return tf.add_n(terms) if terms else tf.zeros((), tf.float64)


def _jvps(model, forward, variables, tangents):
    """``(terms, [J V per term])``: one forward-mode pass of ``forward`` (returns CurvatureTerms)
    along ``tangents`` (one per variable, ``None`` for none), replayed as captured."""
    # Keras variables wrap a tf.Variable (.value): forward-mode autodiff watches the wrapped one.
    pairs = [(getattr(v, "value", v), tf.cast(t, v.dtype)) for v, t in zip(variables, tangents) if t is not None]
    with tf.autodiff.ForwardAccumulator([v for v, _ in pairs], [t for _, t in pairs]) as acc:
        with Recorder(model, None):
            terms = forward()
    return terms, [acc.jvp(t.output, unconnected_gradients=tf.UnconnectedGradients.ZERO) for t in terms]


def ggn_bilinear(terms, jv1, jv2):
    """``V1^T C V2`` of the exact GGN from the outputs' tangents ``J V1``, ``J V2`` (per term)."""
    total = [tf.cast(t.curvature.bilinear(t.output, a, b, t.targets, t.sample_weight), tf.float64)
             for t, a, b in zip(terms, jv1, jv2)]
    return tf.add_n(total)


def directional_curvature(model, forward, variables, tangents):
    """``V^T C V`` along ``tangents`` (one forward-mode pass of ``forward``, which runs ``model``)."""
    terms, jv = _jvps(model, forward, variables, tangents)
    return ggn_bilinear(terms, jv, jv)


def finite_difference_curvature(model, forward, variables, tangents, base_terms, relative_step=1e-3):
    """``V^T C V`` along ``tangents`` from one plain forward pass at ``w + eps V``: ``J V`` is taken as
    ``(f(w + eps V) - f(w)) / eps`` with ``f(w)`` the outputs of ``base_terms`` (this step's forward pass
    on the same paths), ``eps`` moving the weights by ``relative_step`` of their norm.  A forward pass
    costs a quarter to a half of a forward-mode one here (BENCHMARKS.md, per-step breakdown); the error
    is first order in ``eps`` (~1e-3 relative on the quickstart's policy against forward mode, tested),
    enough to size a step.  The weights are restored exactly (copied, not subtracted)."""
    pairs = [(v, tf.cast(t, v.dtype)) for v, t in zip(variables, tangents) if t is not None]
    w2 = tree_dot([v for v, _ in pairs], [v for v, _ in pairs])
    t2 = tree_dot([t for _, t in pairs], [t for _, t in pairs])
    eps = relative_step * tf.sqrt(w2 / tf.where(t2 > 0, t2, tf.ones_like(t2)))
    eps = tf.where((w2 > 0) & (t2 > 0), eps, tf.constant(relative_step, tf.float64))
    saved = [tf.identity(v) for v, _ in pairs]
    _assign([v for v, _ in pairs], [w + tf.cast(eps, v.dtype) * t for (v, t), w in zip(pairs, saved)])
    moved = forward()  # a plain pass: a time loop in the graph stays one loop (no replay needed here)
    _assign([v for v, _ in pairs], saved)
    jv = [tf.cast((tf.cast(m.output, tf.float64) - tf.cast(b.output, tf.float64)) / eps, b.output.dtype)
          for m, b in zip(moved, base_terms)]
    return ggn_bilinear(base_terms, jv, jv)


def _assign(variables, values):
    """``variables <- values``; under several replicas once, in cross-replica context, for every replica's
    copy (the replicas hand over the same values: moved weights of the global direction, or saved ones)."""
    replica = multi_replica_context()
    if replica is None:
        for v, x in zip(variables, values):
            v.assign(x)
        return

    def merge(strategy, per_replica):
        for v, x in zip(variables, per_replica):
            v.assign(first_local_value(strategy, x))

    replica.merge_call(merge, args=(list(values),))


def subspace_model(model, forward, variables, grads, direction, previous):
    """``(M [2, 2], b [2])`` of the exact quadratic model over ``span{V, P}``; two forward-mode passes.
    See :meth:`deephedge_tf.optimizers.DHKFAC.set_subspace_model`."""
    terms, jv = _jvps(model, forward, variables, direction)
    _, jp = _jvps(model, forward, variables, previous)
    vv, vp, pp = ggn_bilinear(terms, jv, jv), ggn_bilinear(terms, jv, jp), ggn_bilinear(terms, jp, jp)
    matrix = tf.stack([tf.stack([vv, vp]), tf.stack([vp, pp])])
    return matrix, tf.stack([tree_dot(grads, direction), tree_dot(grads, previous)])


def _hand_over_step_model(model, optimizer, grads, variables, forward, base_terms):
    mode = getattr(optimizer, "step_model", None)
    # The direction is the one apply will take, from the gradients as apply clips them; the model's slope
    # is that of the loss, the true gradient along it.
    clipped = optimizer.clipped(grads) if hasattr(optimizer, "clipped") else grads
    if mode == "subspace":
        directions, _ = optimizer.precondition(clipped)
        matrix, rhs = subspace_model(model, forward, variables, grads, directions, optimizer.previous_update())
        optimizer.set_subspace_model(matrix, rhs)
    elif mode == "line":
        directions, _ = optimizer.step_directions(clipped)
        if getattr(optimizer, "jvp_method", "forward_mode") == "finite_difference":
            # base_terms: the outputs at w on the paths forward() runs on (None: run it at w).
            base = forward() if base_terms is None else base_terms
            curvature = finite_difference_curvature(model, forward, variables, directions, base)
        else:
            curvature = directional_curvature(model, forward, variables, directions)
        optimizer.set_step_model(curvature, tree_dot(grads, directions))


def curvature_train_step(model, compute, forward_on_paths, max_paths=None):
    """One training step of ``model`` with its curvature optimizer (see module doc).

    Args:
      model: a compiled Keras model whose ``optimizer`` has ``update_curvature`` (DH-KFAC).
      compute: ``() -> (loss, [CurvatureTerm, ...], aux)``; runs the forward pass.  Under a
        multi-replica strategy ``loss`` is the replica's loss divided by the number of replicas, as
        Keras' losses scale it (the replicas' gradients are summed).
      forward_on_paths: ``n -> [CurvatureTerm, ...]``, the same outputs recomputed on the first ``n``
        paths of the batch (``n`` a Python int or ``None`` for all): the step model's pass (``n =
        max_paths``) and, for the Gauss-Newton step, the recorded pass that gives the Jacobian rows
        (``n = jacobian_rows``).  It must give the outputs ``compute`` gave on those paths (no
        coupling between paths inside the model, no random layers active in training).
      max_paths: paths of the batch whose statistics are kept and the step model runs on (``None``:
        all).

    Returns:
      ``(loss, aux, skipped)``: ``skipped`` is 1.0 when nothing was written (non-finite loss or
      gradients), else 0.0.
    """
    optimizer = model.optimizer
    gauss_newton = getattr(optimizer, "gauss_newton", False)
    if gauss_newton:
        # Nothing is recorded on the whole batch: the rows and the metric's statistics come from a
        # recorded pass over the first jacobian_rows paths only (apply below), whose cost scales with
        # those paths, not the batch (the probes alone made the band network's pass 1.8x Adam's step).
        with tf.GradientTape() as tape:
            loss, terms, aux = compute()
        recorder = None
    else:
        with tf.GradientTape(persistent=True) as tape:
            with Recorder(model, tape) as recorder:
                loss, terms, aux = compute()
    terms = across_replicas(terms)
    variables = model.trainable_variables  # after the forward pass: a first call creates the weights
    if not optimizer.built:
        optimizer.build(variables)  # here, not inside the tf.cond below (no variables in a branch)
    grads = tape.gradient(loss, variables)
    seed = tf.stack([tf.cast(optimizer.iterations, tf.int64), tf.constant(7, tf.int64)])

    def statistics():
        # A second backward pass: the pseudo-gradients at the outputs, per path, back to the probes.  Run
        # only when the optimizer updates its statistics this step (the persistent tape stays alive).
        pseudo = [tf.stop_gradient(t.curvature.pseudo_gradient(
            t.output, t.targets, tf.random.experimental.stateless_fold_in(seed, i), t.sample_weight))
            for i, t in enumerate(terms)]
        probe_grads = tape.gradient([t.output for t in terms], recorder.probes, output_gradients=pseudo)
        return recorder.statistics(probe_grads, max_paths)

    finite = all_finite([loss, *grads])
    replica = multi_replica_context()
    replicated = replica is not None
    if replicated and max_paths is not None:
        raise ValueError(f"curvature_train_step: max_paths (curvature_paths) must be None under several replicas "
                         f"(the first paths of each replica are not the batch's first); got {max_paths}")
    if replicated:
        # The step model needs the global gradient (the sum of the replicas' gradients of their scaled
        # losses); apply takes the local ones and sums them itself (Keras' convention).
        present = [i for i, g in enumerate(grads) if g is not None]
        summed = replica.all_reduce(tf.distribute.ReduceOp.SUM, [tf.convert_to_tensor(grads[i]) for i in present])
        global_grads = [None] * len(grads)
        for i, g in zip(present, summed):
            global_grads[i] = g
    else:
        global_grads = grads

    def apply():
        # The optimizer skips (and counts) non-finite statistics itself.
        if gauss_newton:
            # The sample-space factor (per-path weight gradients of the first `jacobian_rows` paths,
            # scaled and centred) and the damping metric's statistics, from one recorded pass over
            # those paths and one backward pass of the cotangents computed on the whole batch.
            rows, stats = rows_pass(model, terms, forward_on_paths, optimizer.jacobian_rows, seed)
            if optimizer.wants_statistics:
                optimizer.update_curvature(lambda: stats, rows=rows)
            optimizer.set_jacobian_rows(rows)
        elif getattr(optimizer, "wants_statistics", True):
            optimizer.update_curvature(statistics)
        # With all paths kept, this step's outputs are forward_on_paths(None)'s at the current weights.
        def step_model_terms():
            return across_replicas(forward_on_paths(max_paths))

        _hand_over_step_model(model, optimizer, global_grads, variables, step_model_terms,
                              terms if max_paths is None else None)
        optimizer.apply(grads, variables)
        if gauss_newton:
            # Levenberg-Marquardt: the realised decrease on the same batch (one more forward pass).
            optimizer.judge_step(loss, compute()[0])
        return tf.constant(0.0, tf.float32)

    if replicated:
        # No tf.cond around the update: the optimizer synchronises replicas (merge_call), which cannot
        # run inside a cond branch.  It skips non-finite gradients and statistics itself.
        apply()
        skipped = 1.0 - tf.cast(finite, tf.float32)
    else:
        skipped = tf.cond(finite, apply, lambda: tf.constant(1.0, tf.float32))
    return loss, aux, skipped


def rows_pass(model, terms, forward_on_paths, cap, seed):
    """The Gauss-Newton step's ``(rows, statistics)`` (:func:`sample_space_factor`) from a pass recorded
    over the first ``cap`` paths only (``forward_on_paths(cap)``), back-propagating the cotangents computed
    from ``terms``, the whole batch's outputs: nothing is recorded on the whole batch."""
    with tf.GradientTape() as tape:
        with Recorder(model, tape) as recorder:
            rows_terms = forward_on_paths(int(cap))
    return sample_space_factor(terms, tape, recorder, cap, seed, rows_terms=rows_terms)


def sample_space_factor(terms, tape, recorder, cap, seed, rows_terms=None):
    """``(rows, statistics)`` of every curvature term from **one** backward pass.

    Each term's :class:`~deephedge_tf.optimizers.losses.RowFactor` cotangent is multiplied by its per-path
    scale (``n`` of ``B`` paths stand for all of them: ``x sqrt(B / n)``; no scale: ``1 / sqrt(n)``) and
    the terms' cotangents are back-propagated together, so path ``b`` gets one row, the sum of its rows
    of every term, and the Gram matrix has ``n = min(cap, B)`` rows whatever the number of terms.  Rows of
    different terms are independent given the batch when all terms but one are sampled (random signs,
    zero mean): ``E[R^T R]`` is then the sum of the terms' GGNs (cross terms vanish in expectation).
    The centring of the one centred term (``RowFactor.centre``, renormalised over the kept paths) is
    applied to the sum, ``r_b = m_b - S_b sum_c c_c m_c / S_c`` with ``S`` that term's folded scale: exact
    for the centred term, and it moves the sampled terms' rows by ``O(1 / n)`` of their size.

    The cotangents are computed from ``terms``, the whole batch's outputs (a term's row factor may
    depend on every path: an expected shortfall's quantile, an entropic measure's weights).  They are
    back-propagated through the pass ``tape`` and ``recorder`` recorded: the whole batch's (``rows_terms``
    None), or a second pass over the first ``n`` paths only, whose terms are ``rows_terms`` (the same
    outputs on those paths; its backward pass then costs ``n / B`` of the whole batch's).

    Under several replicas (terms wrapped in :class:`AcrossReplicas`) the rows and statistics are the
    *global* batch's first ``n`` paths, the one-device factor: each replica back-propagates its share of
    them (its own first paths, up to ``n``), ``B`` is the global path count, and :func:`_head_of_batch`
    lays the shares side by side before the centring, so every replica returns the same factor.

    Returns:
      rows: ``{block: R [n, dim_a, d_out]}`` with ``sum_n r_n r_n^T`` the GGN of the mean loss (exactly,
        or in expectation with sampled terms).
      statistics: ``{block: (a [T, n, dim_a], g [T, n, d_out])}`` of the same backward pass on the kept
        paths, ``g`` per path in :meth:`DHKFAC.update_curvature`'s normalisation (Kronecker factors for
        the Gauss-Newton step's damping metric, no second backward pass).

    Raises:
      ValueError: more than one term with a centre (one pass can centre one term only); ``rows_terms``
        not one per term.
    """
    if rows_terms is not None and len(rows_terms) != len(terms):
        raise ValueError(f"sample_space_factor: rows_terms must hold one term per term ({len(terms)}); "
                         f"got {len(rows_terms)}")
    local_paths = (recorder.path_count() if rows_terms is None
                   else _batch_paths(terms[0].output, rows_terms[0].output, recorder.path_count()))
    replica = multi_replica_context()
    # Under several replicas the rows are the global batch's first n paths (the one-device rows): every
    # replica computes its own first paths' share, and _head_of_batch lays them side by side below.
    paths = tf.cast(local_paths, tf.float64) * (1.0 if replica is None else float(replica.num_replicas_in_sync))
    factors = [term.curvature.jacobian_rows(term.output, term.targets,
                                            tf.random.experimental.stateless_fold_in(seed, 100 + i),
                                            term.sample_weight) for i, term in enumerate(terms)]
    centred = [i for i, f in enumerate(factors) if f.centre is not None]
    if len(centred) > 1:
        raise ValueError(f"sample_space_factor: at most one curvature term may be centred; terms {centred} are")
    kept = tf.minimum(tf.cast(cap, tf.float64), paths)
    cotangents, folded = [], []
    for term, factor in zip(terms, factors):
        out = tf.convert_to_tensor(term.output)
        cot = tf.cast(factor.cotangent, out.dtype)
        if factor.scale is None:
            scale = tf.cast(tf.sqrt(1.0 / kept), out.dtype)
            cotangents.append(cot * scale)
        else:  # per path, along the batch-first axis of the outputs
            scale = tf.cast(factor.scale, out.dtype) * tf.cast(tf.sqrt(paths / kept), out.dtype)
            cotangents.append(cot * tf.reshape(scale, [-1] + [1] * (out.shape.rank - 1)))
        folded.append(scale)
    through = terms
    if rows_terms is not None:
        # The recorded pass covers the first n paths: their cotangents only.  Outputs may be batch- or
        # time-major; only the path axis differs between the two passes, so a slice from the origin to
        # the small pass's shape cuts along it.
        through = rows_terms
        cotangents = [tf.slice(c, tf.zeros_like(tf.shape(t.output)), tf.shape(t.output))
                      for c, t in zip(cotangents, rows_terms)]
    probe_grads = tape.gradient([t.output for t in through], recorder.probes,
                                output_gradients=[tf.stop_gradient(c) for c in cotangents])
    statistics = recorder.statistics(probe_grads, cap)
    if centred:
        # The centre's weights and the centred term's folded scale S on the kept paths.
        local_kept = tf.shape(next(iter(statistics.values()))[0])[1]
        c = factors[centred[0]].centre[:local_kept]
        scale = tf.cast(folded[centred[0]], c.dtype)
        s = tf.broadcast_to(scale, [local_kept]) if scale.shape.rank == 0 else scale[:local_kept]
    if replica is not None:
        parts = [(x, 1) for pair in statistics.values() for x in pair] + ([(c, 0), (s, 0)] if centred else [])
        heads = _head_of_batch(parts, int(cap), tf.cast(kept, tf.int32), local_paths, replica)
        statistics = {name: (heads[2 * i], heads[2 * i + 1]) for i, name in enumerate(statistics)}
        if centred:
            c, s = heads[-2:]
    rows = per_path_gradients(statistics)
    if centred:
        # The same n-vectors for every block: the centre's weights renormalised over the kept paths,
        # divided by the centred term's folded scale S.
        c = c / tf.reduce_sum(c)
        weight = tf.where(s > 0, c / tf.where(s > 0, s, tf.ones_like(s)), tf.zeros_like(s))

        def centre(m):
            return m - tf.cast(s, m.dtype)[:, None, None] * tf.einsum("n,nij->ij", tf.cast(weight, m.dtype), m)[None]

        rows = {name: centre(m) for name, m in rows.items()}
    # The folded cotangents carry 1 / sqrt(n): update_curvature's g is per path, undivided.
    statistics = {name: (a, g * tf.sqrt(tf.cast(tf.shape(g)[1], g.dtype))) for name, (a, g) in statistics.items()}
    return rows, statistics


def _head_of_batch(parts, cap, kept, local_paths, replica):
    """The global batch's first ``kept`` (``<= cap``) paths of per-path tensors held in shares by the
    replicas, the same on every replica: ``parts`` is ``[(tensor, path axis)]``, each tensor this
    replica's first ``k <= local_paths`` paths; replica ``r`` holds the global paths from ``r x
    local_paths`` on (equal shares, in replica order, as the batches are sharded).  Each replica zero-pads
    the part of its share that falls within the first ``cap`` paths to ``cap`` at its global offset, and
    one all-reduce (SUM) adds the shares: adding zeros is exact, and the buffer is ``cap`` paths, not
    every replica's rows (an all-gather of ``R`` shares would hold ``R x cap``)."""
    offset = tf.cast(replica.replica_id_in_sync_group, tf.int32) * tf.cast(local_paths, tf.int32)
    begin = tf.minimum(offset, cap)
    padded = []
    for t, axis in parts:
        t = tf.convert_to_tensor(t)
        take = tf.maximum(0, tf.minimum(tf.shape(t)[axis], cap - offset))
        pads = [[0, 0]] * t.shape.rank
        pads[axis] = [begin, cap - begin - take]
        padded.append(tf.pad(_along(t, axis, 0, take), tf.convert_to_tensor(pads)))
    summed = replica.all_reduce(tf.distribute.ReduceOp.SUM, padded)
    return [_along(x, axis, 0, kept) for (_, axis), x in zip(parts, summed)]


def _batch_paths(output, first_output, first_paths_count):
    """The whole batch's path count ``B`` from one output on all paths and on the first ``n`` of them
    (``n = first_paths_count``): only the path axis differs, so ``B = n x size(output) / size(first)``."""
    full = tf.size(output, out_type=tf.int64)
    first = tf.size(first_output, out_type=tf.int64)
    n = tf.cast(first_paths_count, tf.int64)
    return tf.where(first > 0, full * n // tf.maximum(first, 1), n)


def first_paths(data, max_paths):
    """``data`` (any nest of batch-first tensors) cut to its first ``max_paths`` samples."""
    if max_paths is None:
        return data
    return tf.nest.map_structure(lambda x: None if x is None else x[:max_paths], data)


@keras.saving.register_keras_serializable(package="deephedge_tf")
class CurvatureModel(keras.Model):
    """A Keras model whose ``fit`` feeds a curvature optimizer; made by :func:`with_curvature`.

    Holds the wrapped model (same weights: training one trains the other) and calls it; only the train
    step differs.  Saves and reloads like any Keras model (``.keras``, weights, SavedModel export).

    Args:
      model: the Keras model to train (one output tensor).
      curvature: the loss's :class:`OutputCurvature` (``None``: derived from the compiled loss).  Not
        saved with the model (it may be any Python object): pass it again after loading.
      curvature_paths: statistics and step model from the first this-many samples of each batch
        (``None``: all; the Gauss-Newton step's statistics come from its ``jacobian_rows`` samples).
    """

    def __init__(self, model, curvature=None, curvature_paths=None, **kwargs):
        super().__init__(**kwargs)
        self.model = model
        if curvature is not None and not isinstance(curvature, OutputCurvature):
            raise TypeError(f"with_curvature: curvature must be an OutputCurvature; got {type(curvature).__name__}")
        self.curvature = curvature
        if curvature_paths is not None and int(curvature_paths) < 1:
            raise ValueError(f"with_curvature: curvature_paths must be >= 1 or None; got {curvature_paths}")
        self.curvature_paths = None if curvature_paths is None else int(curvature_paths)

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def build(self, input_shape=None):
        if not self.model.built and input_shape is not None:
            self.model.build(input_shape)
        self.built = True

    def _output_curvature(self):
        if self.curvature is not None:
            return self.curvature
        loss = getattr(self, "loss", None)
        if loss is None:
            raise ValueError("with_curvature: compile the model with a loss first")
        if isinstance(loss, (list, tuple, dict)):
            raise ValueError("with_curvature: one loss for one output is supported; got several "
                             "(pass curvature=... for a single combined output)")
        return loss_curvature(loss)

    def train_step(self, data):
        if not hasattr(self.optimizer, "update_curvature"):
            return super().train_step(data)  # any other optimizer: Keras' own step
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        curvature = self._output_curvature()

        def terms_for(x_, y_, w_, y_pred):
            if isinstance(y_pred, (list, tuple, dict)):
                raise ValueError("with_curvature: the model must have one output tensor; got "
                                 f"{type(y_pred).__name__}")
            return [CurvatureTerm(y_pred, curvature, y_, w_)]

        def compute():
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            return loss, terms_for(x, y, sample_weight, y_pred), y_pred

        def forward_on_paths(n):
            xs, ys, ws = first_paths((x, y, sample_weight), n)
            return terms_for(xs, ys, ws, self(xs, training=True))

        loss, y_pred, _ = curvature_train_step(self, compute, forward_on_paths, self.curvature_paths)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync  # Keras' losses divide by it
        self._loss_tracker.update_state(loss * replicas, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def get_config(self):
        return {**super().get_config(), "model": keras.saving.serialize_keras_object(self.model),
                "curvature_paths": self.curvature_paths}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(config.pop("model"))
        return cls(model, **config)


def with_curvature(model, curvature=None, curvature_paths=None) -> CurvatureModel:
    """``model`` wrapped so that ``compile``/``fit`` with :class:`DHKFAC` get curvature statistics.

    Dense and LSTM layers anywhere inside ``model`` become Kronecker blocks (see
    :mod:`deephedge_tf.optimizers.capture`); the loss's curvature comes from the compiled loss
    (``"mse"``, (sparse) categorical cross-entropy) or from ``curvature``.  With any other optimizer
    the wrapper trains exactly like ``model``.

        >>> import keras
        >>> from deephedge_tf.optimizers import with_curvature
        >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> with_curvature(net).model is net
        True
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"with_curvature: expected a keras.Model; got {type(model).__name__}")
    return CurvatureModel(model, curvature=curvature, curvature_paths=curvature_paths)
