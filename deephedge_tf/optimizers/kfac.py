"""DH-KFAC: second-order training from the loss's GGN, with two step rules.

* ``preconditioner="gauss_newton"`` (the default): the exact damped Gauss-Newton step in sample space
  (per-path Jacobian rows, a Woodbury solve, Levenberg-Marquardt damping; below).  How it compares with
  Adam and with the paper's rule, task by task: ``deephedge benchmark suite`` and BENCHMARKS.md.
* ``preconditioner="kronecker"``: the DH-KFAC paper's algorithm (Mueller, Akkari, Gonon & Wood 2024; see
  ``shared/design/DH-KFAC.md``): Kronecker-factored, eigenvalue-corrected GGN preconditioning with
  shrinkage damping and a decaying trust region, described first.

Per Kronecker block (a Dense layer, or our LSTMCell: see :mod:`deephedge_tf.optimizers.blocks`), with
the weights stacked as ``W = [kernel; recurrent_kernel; bias]`` ``[dim_a, d_out]`` and the statistics
of :mod:`deephedge_tf.optimizers.estimator`:

    A <- EMA of (1/(T B)) sum a a^T,   G <- EMA of (1/B) sum g g^T        (update_curvature)
    A = U_A diag(lam_A) U_A^T,  G = U_G diag(lam_G) U_G^T                 (every inverse_period steps)
    s <- EMA of (1/B) sum_b (U_A^T M_b U_G)^2   (ekfac=True)   or   s = lam_A lam_G^T   (ekfac=False)
    s_d = (1 - rho) s + rho mean(s)   (shrinkage)   or   s + lambda   (tikhonov)
    P = U_A^T grad U_G;   V = U_A (P / s_d) U_G^T                         (the preconditioned gradient)
    D = V + mu * D_prev                                                   (heavy-ball momentum, mu = 0 by default)
    q = sum_blocks sum s_d * (U_A^T D U_G)^2                              (= D^T C_d D in the eigenbasis)
    eta = min(eta_max, sqrt(2 delta_k / q)),  delta_k = max(delta_0 decay^k, delta_min) [x m_ref]
    W <- W - eta * D

The trust radius bounds the model's curvature term ``eta^2 q / 2``, i.e. the predicted loss decrease of
a step, so an absolute ``delta`` is in loss units and must match the loss scale.  With
``trust_radius_mode="relative"`` (the default) ``delta_k`` is a fraction of ``m_ref``, the predicted
decrease of the unconstrained model step at the first update (``(g.D)^2 / (2 D^T C D)`` along ``D``;
the subspace model's minimum with ``step_model="subspace"``): ``delta_0 = 1`` lets the first step be the
model's minimiser, ``delta_0 = 0.1`` shortens it to ``sqrt(0.1)`` of it, whatever the loss scale.

The Kronecker ``q`` underestimates the true curvature along ``V`` on recurrent policies (RNN-KFAC's
independence over time), so the model can hand over the *exact* quadratic model of the loss (its GGN
along the step, by forward-mode autodiff, or for the line model by a finite difference of the outputs,
``jvp_method``; :meth:`set_step_model`, :meth:`set_subspace_model`):

    step_model="line":  eta = min(eta_max, g.D / D^T C D, sqrt(2 delta_k / D^T C D))
    step_model="subspace" (Martens & Grosse 2015, sec. 7):  the step is
      Delta = alpha V + mu Delta_prev  with  (alpha, mu) = argmin  -x.b + x^T M x / 2,
      M = [V, Delta_prev]^T C [V, Delta_prev],  b = [g.V, g.Delta_prev],
      scaled down so that x^T M x / 2 <= delta_k and alpha <= eta_max;   W <- W - Delta

``eta_max`` is Keras' ``learning_rate`` (a float or a schedule).  The step size ``eta`` is shared by
all blocks: the trust region bounds the quadratic model's curvature term of the whole update.

``preconditioner="gauss_newton"`` replaces the Kronecker direction by the exact damped Gauss-Newton step
in sample space (:mod:`deephedge_tf.optimizers.woodbury`): the model hands over per-path Jacobian rows
``R`` (:meth:`set_jacobian_rows`: one row per path for the first ``jacobian_rows`` paths, the loss terms'
rows summed, from one recorded forward and backward pass over those paths only, its cost ``n / B`` of
the batch's; :func:`~deephedge_tf.optimizers.train_step.sample_space_factor`) and

    d = (R^T R + lambda M)^{-1} g                                         (Woodbury, n x n Cholesky)
    eta = min(eta_max, g.d / (d^T C d + lambda d^T M d))                  (d^T C d: exact line model)
    rho = (L(W) - L(W - eta d)) / (eta g.d - eta^2 d^T C d / 2 + g_diag . step_diag)   (:meth:`judge_step`)
    lambda <- lambda * 2/3 (rho > 3/4), * 3/2 (rho < 1/4); rho < 0.1: the step is undone, lambda * 2^k
              (k-th rejection in a row)

(Levenberg-Marquardt, Martens & Grosse 2015, sec. 6.5), ``lambda >= damping_floor * tr(C) / P`` (no
floor by default) and ``lambda_0 = damping * tr(C) / P`` (``P`` the weights with rows); the last term of
the prediction is the diagonal variables' first-order decrease (below).  No trust region: the damping
adapts to how well the model predicted the last step, and to how much of the step the line model took:
``eta < min_step_fraction`` (0.25) multiplies ``lambda`` by ``min_step_fraction / eta`` for the next step.
The rows are a few hundred paths of the batch; where their model misses the batch's curvature along the
step, lambda is what stands in for it.  Without this, on the 99% expected shortfall (whose curvature
lies on the few rows near the value at risk) the reduction ratio stayed near 1 while ``eta`` fell to
1e-5 and lambda to 1e-7 of its start: the step had become a line search along the batch's gradient
outside the rows' span, a noisy direction whose full line step fitted each batch and let the validation
loss drift up over hundreds of steps.  Numerical guards: ``lambda / tr(C)`` stays in
``DAMPING_RANGE`` (1e-10 .. 1e8: the ``n x n`` Cholesky keeps float64 digits, the step is not nothing),
an undone step copies the weights from before it back (subtracting a long step again would not restore
them in float32), and a step whose prediction and loss change are both below the loss's rounding (64
machine epsilons of it) is not judged: it is kept with ratio 1.  The damping metric ``M``:

* ``metric="kronecker"`` (the default): ``M`` is the Kronecker (EKFAC) model of the running statistics
  (so :meth:`update_curvature` is fed too: the train step hands over ``a`` and ``g`` of the rows' own
  backward pass, and the rows, whose exact diagonal in the eigenbasis is the EKFAC ``s``), shrunk by
  ``metric_shrinkage``, taken to the power ``metric_power`` (0.75) in its eigenbasis and normalised to
  a mean diagonal of one.  ``M`` is diagonal in each block's eigenbasis, so the solve runs there: the
  rows are turned into it once per step (the same turned rows give the EKFAC ``s``), the gradient
  turned in and the direction turned back; still one ``n x n`` Cholesky.  Outside the span of the
  rows the step is the (compressed) Kronecker step ``M^{-1} g / lambda`` instead of a gradient step: the
  rows are a few hundred paths, the GGN's curvature outside their span is what ``M`` supplies.  The power
  compresses ``M``'s spread between blocks: at power 1 the blocks behind a small output layer, whose
  ``M`` is small, take very large steps (the quickstart stalled with many rejected steps), at power 0
  (the identity) the cost-heavy cliquet task stalled; 0.75 won over 0.5 on cliquet and the Heston CVaR
  task (BENCHMARKS.md).
* ``metric="identity"``: ``M = I``, no Kronecker statistics (the outside-span step is ``g / lambda``).

The Gauss-Newton default also keeps an average of its iterates (``use_ema``: Keras' moving average,
momentum ``min(ema_momentum, k / (k + ema_warmup))`` at iteration ``k``, 0.9 and 10 by default; an undone
step is taken back out of it), which ``fit`` ends on and ``Hedger.fit`` validates
(:mod:`deephedge_tf.optimizers.averaging`).  Each step fits the Gauss-Newton model of one batch: near the
minimum the last iterate moves by that batch's noise, the average much less; the window grows with the
run, so the first, fast steps are not held back (BENCHMARKS.md, "Iterate averaging").

Late steps: from step ``late_after`` (10) on the Gauss-Newton step is capped at ``late_max_step`` (0.3) of
the damped step (``eta_max = min(learning_rate, late_max_step)``).  With fresh paths every step, once the
first steps have taken the loss near its floor the full step fits each batch's noise (the in-sample
reduction ratio stays near one while the validation loss stops falling); a shorter step averages the
batches over several steps.  The damping cannot do this: a greedy oracle that chose lambda each step
from held-out paths saved a quarter of the steps to Adam's target, where the cap saves about 40% on the
Heston CVaR task (BENCHMARKS.md, "Shorter steps once the descent is over").  ``late_max_step >= learning_rate`` keeps
``eta_max`` fixed.

Variables outside any block (RMSNorm scales, trainable weights of an objective, ...) are *diagonal*: they take
an Adam step (``diagonal_learning_rate``, ``diagonal_beta_1/2``, ``diagonal_epsilon``) of their own.
No curvature estimate exists for them, so they neither enter ``q`` nor use ``eta``: the GGN-scaled
``eta`` (~1 for a Newton step) would be far too large for a raw gradient.

The model hands the curvature statistics over each step (the optimizer never runs the model):

    optimizer.update_curvature({block_name: (a, g), ...})     # block_name = layer path of the weights
    optimizer.apply(grads, variables)

``update_curvature`` is a no-op unless ``iterations % curvature_period == 0`` (see
:meth:`DHKFAC.curvature_due`, to skip computing the statistics too).  Before any statistics arrive
the factors are identities: the update is a trust-region-limited gradient step.

Keras' ``apply`` machinery is kept: ``clipnorm`` / ``clipvalue`` / ``global_clipnorm`` act on the raw
gradients *before* preconditioning, ``weight_decay`` is decoupled (``w -= weight_decay * eta_max * w``),
``use_ema`` (see above for its window) works as for any Keras optimizer, and so does
``gradient_accumulation_steps`` with the Kronecker rule (the Gauss-Newton rule refuses it and
``ema_overwrite_frequency``: its Levenberg-Marquardt judgement needs each applied step as taken).  A step whose
gradients are not all finite writes nothing (no variable, iteration count included) and increments
``skipped_steps``.

Several replicas (``tf.distribute.MirroredStrategy``): ``update_curvature``, ``set_jacobian_rows``,
``step_directions``, ``set_step_model`` / ``set_subspace_model``, ``apply`` and ``judge_step`` may be called
in replica context.  Each synchronises the replicas once (``merge_call``) and runs a single time in
cross-replica context: statistics and step models are averaged over the replicas (each holds an equal
share of the paths), gradients are summed (Keras' convention: each replica's gradient of its loss divided
by the number of replicas), and so are the losses ``judge_step`` compares.  Gauss-Newton rows (and the
statistics that come with them) must be the same on every replica (the train step lays the replicas'
shares of the global batch's first paths side by side): the first replica's are used.
In replica context these calls must not sit inside a ``tf.cond`` branch (``merge_call`` cannot run
there); the train step of :mod:`deephedge_tf.optimizers.train_step` calls them unconditionally then, with
the loss's curvature evaluated on the whole batch (``AcrossReplicas``).  Under
``MultiWorkerMirroredStrategy`` each worker's merge combines its own replicas and then the workers' values
(an all-reduce per statistic, in the same order on every worker).
"""

from __future__ import annotations

import dataclasses
import logging

import keras
import numpy as np
import tensorflow as tf

from deephedge_tf.distribute import first_local_value, is_multi_worker, multi_replica_context
from deephedge_tf.optimizers import estimator, steps, woodbury
from deephedge_tf.optimizers.blocks import KroneckerBlock, find_blocks, layer_path, stack, unstack

_LOG = logging.getLogger("deephedge_tf")
_DAMPING_MODES = ("shrinkage", "tikhonov", "levenberg_marquardt")
PRECONDITIONERS = ("kronecker", "gauss_newton")
METRICS = ("identity", "kronecker")
# The average of the Gauss-Newton iterates (class doc, use_ema): chosen on the suite's seeds 0 and 1
# (BENCHMARKS.md, "Iterate averaging").
EMA_MOMENTUM = 0.9
EMA_WARMUP = 10.0
STEP_MODELS = ("kronecker", "line", "subspace")
JVP_METHODS = ("forward_mode", "finite_difference")
TRUST_RADIUS_MODES = ("relative", "absolute")
# The Gauss-Newton damping's range relative to tr(C) (the rows' squared norm): below it the n x n Gram
# matrix plus lambda has no float64 digits left for a Cholesky factor (lambda drifted to 1e-17 on the
# 99% expected shortfall and a garbage factor gave a step of 1e14 predicted decrease); above it the step
# M^-1 g / lambda is nothing (rejected steps escalate lambda geometrically).
DAMPING_RANGE = (1e-10, 1e8)
# Gauss-Newton: the fraction of the damped step below which the line model's cut raises lambda (module doc).
# Chosen on the 99% expected shortfall of buehler_heston (8,192 paths, seed 0), checked on the suite
# (BENCHMARKS.md, "The line model's cut raises the damping").
MIN_STEP_FRACTION = 0.25
# Gauss-Newton: eta_max from step LATE_AFTER on (module doc, "Late steps").  Chosen on the suite's seeds 0-3
# (BENCHMARKS.md, "Shorter steps once the descent is over"); seeds 4 and 5 held out.
LATE_MAX_STEP = 0.3
LATE_AFTER = 10
# A predicted decrease and a loss change both below this many machine epsilons of the loss are within its
# rounding: such a step is not judged (module doc).
_LOSS_ROUNDING = 64.0


@dataclasses.dataclass
class _BlockState:
    """Optimizer variables of one Kronecker block (shapes for ``dim_a = da``, ``d_out = dg``)."""

    factor_a: keras.Variable  # A [da, da], EMA
    factor_g: keras.Variable  # G [dg, dg], EMA
    basis_a: keras.Variable  # U_A [da, da], eigenvectors in columns
    basis_g: keras.Variable  # U_G [dg, dg]
    eig_a: keras.Variable  # lam_A [da]
    eig_g: keras.Variable  # lam_G [dg]
    count: keras.Variable  # int64 scalar: curvature updates received (0: the next one initialises)
    scale: keras.Variable | None  # s [da, dg], EKFAC diagonal in the eigenbasis (ekfac=True)
    # heavy ball: D_prev [da, dg]; subspace: the last step; gauss_newton: the block's weights before the last
    # step (an undo copies them back: subtracting a long step again in float32 would not restore them)
    velocity: keras.Variable | None


def _to_eigenbasis(state, x):
    """``U_A^T x U_G`` for ``x [..., dim_a, d_out]``: a block's tensor in its Kronecker eigenbasis."""
    return tf.einsum("ai,...ab,bj->...ij", tf.convert_to_tensor(state.basis_a), x,
                     tf.convert_to_tensor(state.basis_g))


def _from_eigenbasis(state, y):
    """``U_A y U_G^T``: the inverse of :func:`_to_eigenbasis` (the bases are orthogonal)."""
    return tf.einsum("ai,...ij,bj->...ab", tf.convert_to_tensor(state.basis_a), y,
                     tf.convert_to_tensor(state.basis_g))


def _local_values(strategy, value) -> list:
    """The values of ``value`` on this process's replicas (all of them, except under a multi-worker
    strategy, where :func:`_across_workers` combines the workers' means)."""
    return list(strategy.experimental_local_results(value))


def _across_workers(tensor):
    """``tensor``, one process's mean over its replicas of a statistic computed in a merge, averaged over
    the workers of a multi-worker strategy (every worker holds as many replicas); ``tensor`` itself
    otherwise.  Called in cross-replica context, by every worker in the same order."""
    strategy = tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return tensor
    tensor = tf.convert_to_tensor(tensor)
    values = strategy.experimental_distribute_values_from_function(lambda _: tensor)
    return strategy.reduce(tf.distribute.ReduceOp.MEAN, values, axis=None)


def _mean(tensors):
    """The mean of a list of equally shaped tensors (the per-replica values of a statistic)."""
    return tensors[0] if len(tensors) == 1 else tf.add_n(tensors) / float(len(tensors))


def _zeros_unless(ok, tensors: dict) -> dict:
    """``tensors`` where the scalar ``ok`` holds, else zeros of their shapes.  A branch, not ``tf.where``:
    the rows are ``[n, dim_a, d_out]`` per block (~1 MB at n = 256), and an elementwise select would
    read them and write a copy every step to guard against a case that almost never happens."""
    if not tensors:
        return {}
    keys = list(tensors)
    kept = tf.cond(ok, lambda: [tf.identity(tensors[k]) for k in keys],
                   lambda: [tf.zeros_like(tensors[k]) for k in keys])
    return dict(zip(keys, kept))


def _dense(g):
    if isinstance(g, tf.IndexedSlices):
        return g.values
    return g


@keras.saving.register_keras_serializable(package="deephedge_tf")
class DHKFAC(keras.optimizers.Optimizer):
    """DH-KFAC optimizer (see the module docstring for the update).

    On any Keras model whose loss has a known curvature (:func:`deephedge_tf.optimizers.with_curvature`),
    here a least-squares fit that a few Gauss-Newton steps solve:

        >>> import keras, numpy as np
        >>> from deephedge_tf.optimizers import with_curvature
        >>> keras.utils.set_random_seed(0)
        >>> x = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        >>> y = np.tanh(x @ np.array([[1.0], [-0.5]], "float32"))
        >>> net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)])
        >>> model = with_curvature(net)
        >>> model.compile(optimizer=DHKFAC(), loss="mse")
        >>> first = model.evaluate(x, y, verbose=0)
        >>> _ = model.fit(x, y, batch_size=256, epochs=10, verbose=0)
        >>> bool(model.evaluate(x, y, verbose=0) < 0.1 * first)
        True

    Args:
      learning_rate: ``eta_max``, the cap on the step size (float or LearningRateSchedule).  1.0 is
        the (damped) Newton step.
      damping: ``rho`` in [0, 1] for ``damping_mode="shrinkage"``, ``lambda >= 0`` for ``"tikhonov"``,
        ``lambda_0 / (tr(C) / P) > 0`` for ``"levenberg_marquardt"``.  ``None``: 0.1 (shrinkage and
        tikhonov), 1.0 (levenberg_marquardt).
      damping_mode: ``"shrinkage"`` (paper eq. 11: ``s <- (1 - rho) s + rho mean(s)`` per block),
        ``"tikhonov"`` (``s <- s + lambda``) or ``"levenberg_marquardt"`` (adapted from the reduction
        ratio; the Gauss-Newton preconditioner's damping).  ``None``: ``"shrinkage"`` for the Kronecker
        preconditioner, ``"levenberg_marquardt"`` for Gauss-Newton.
      preconditioner: ``"gauss_newton"`` (default: the exact damped Gauss-Newton step in sample space,
        see the module doc) or ``"kronecker"`` (the DH-KFAC paper's algorithm: KFAC / EKFAC blocks,
        shrinkage damping, trust region).  The trust-region, momentum and Kronecker-statistics arguments
        act on the Kronecker rule only (and on ``metric="kronecker"``'s statistics).
      jacobian_rows: Gauss-Newton: the first this many paths of a batch give the Jacobian rows (one per
        path, the loss terms summed) and the Kronecker metric's statistics.  Memory: the rows are
        ``rows x P`` floats (``P`` the weights in blocks), kept again as ``M^-1 R`` with the Kronecker
        metric and cast to float64 for the ``n x n`` Gram matrix; measured with the default metric,
        about 0.35 GB + 36 bytes per row and weight above Adam's step (a policy of 1e6 weights: 10.7 GB
        peak at 256 rows, 3.9 GB at 64, Adam 1.3 GB; BENCHMARKS.md); lower it for larger policies.
      damping_floor: Gauss-Newton: ``lambda >= damping_floor * tr(C) / P`` (default 0: none; a floor
        kept lambda from falling as far as cliquet_small needed).
      min_step_fraction: Gauss-Newton: when the line model takes less than this fraction of the damped step
        (``eta`` below it), ``lambda`` is raised by ``min_step_fraction / eta`` (at most 1e3) for the next
        step; ``None``: never (see the module doc).
      late_max_step: Gauss-Newton: ``eta`` is at most this from step ``late_after`` on (``None``: 0.3 for
        Gauss-Newton; the Kronecker rule takes none, its trust region decays instead).  See the module doc.
      late_after: Gauss-Newton: the steps taken at ``learning_rate`` before ``late_max_step`` applies.
      max_relative_change: Gauss-Newton: ``eta`` is capped so that no block's weights change by more
        than this fraction of their norm in one step (``None``: no cap).  A quadratic model is only
        trusted near the weights it was taken at; an accepted long step can still leave ReLU layers
        dead or LSTM gates saturated.
      metric: Gauss-Newton: the damping metric ``M`` of ``(C + lambda M) d = g``: ``"kronecker"`` (the
        EKFAC model of the running statistics; see the module doc) or ``"identity"``.  ``None``:
        ``"kronecker"`` for Gauss-Newton (the Kronecker rule takes no metric).
      metric_shrinkage: Gauss-Newton with ``metric="kronecker"``: shrinkage ``rho`` in (0, 1] of ``M``
        towards its mean diagonal (keeps ``M^{-1}`` bounded where the statistics see no curvature).
      metric_power: Gauss-Newton with ``metric="kronecker"``: the metric is ``M^p`` for ``p`` in (0, 1]
        (default 0.75; in ``M``'s eigenbasis; renormalised to mean one).  ``p < 1`` keeps the Kronecker
        model's shape but compresses its spread between blocks: behind a small output layer ``M`` is
        small, and ``M^{-1} g`` there is a large step.
      ekfac: re-estimate the eigenbasis diagonal from per-path pseudo-gradients (George et al. 2018);
        ``False`` uses ``lam_A lam_G^T`` (plain KFAC in the eigenbasis).
      statistics_decay: EMA decay of ``A``, ``G`` and ``s`` (``new = decay * old + (1 - decay) * batch``;
        a block's first update sets the batch value).
      curvature_period: update the statistics when ``iterations % curvature_period == 0``.
      inverse_period: recompute the eigenbases at a curvature update once ``inverse_period`` iterations
        have passed since the last recomputation (and at the first update).  With ``curvature_period``
        dividing ``inverse_period`` and no skipped updates this is ``iterations % inverse_period == 0``.
      trust_radius: ``delta_0`` of the trust region; ``None`` disables it (``eta = eta_max``).
      trust_radius_decay: ``delta_k = max(delta_0 * decay**k, trust_radius_min)``, ``k = iterations``.
      trust_radius_min: the floor ``delta_min`` of the decaying radius.
      trust_radius_mode: ``"relative"`` (default): ``delta_k`` times ``m_ref``, the predicted loss
        decrease of the unconstrained model step at the first update (kept in ``radius_reference``), so
        the settings do not depend on the loss scale; ``"absolute"``: ``delta_k`` in loss units.
      momentum: heavy-ball coefficient ``mu`` on the preconditioned direction, in [0, 1).
      step_model: what sizes the step (the hedger supplies the exact models when training with
        this optimizer; a step without its model falls back to ``"kronecker"``):

        * ``"kronecker"``: ``eta = min(eta_max, sqrt(2 delta_k / q))`` with the Kronecker ``q`` (the
          paper's rule; no extra model passes).
        * ``"line"`` (default): the exact quadratic model along the step direction ``D`` (``V`` plus
          heavy-ball momentum; :meth:`set_step_model`, one extra pass of the model per step, see
          ``jvp_method``).
        * ``"subspace"``: step size and momentum coefficient of every step from the exact quadratic
          model over ``span{V, previous step}`` (:meth:`set_subspace_model`, two forward-mode passes).
      jvp_method: how the train step computes the outputs' tangent ``J V`` of the ``"line"`` model:
        ``"finite_difference"`` (default: one plain forward pass at ``w + eps V``, relative error ~1e-3,
        0.25-1.2x an Adam step cheaper per step on the suite's tasks, BENCHMARKS.md; see
        :func:`deephedge_tf.optimizers.train_step.finite_difference_curvature`) or ``"forward_mode"``
        (exact, forward-mode autodiff).  Under a multi-replica strategy the line model is always forward
        mode (weights cannot be moved per replica).
      diagonal_learning_rate, diagonal_beta_1, diagonal_beta_2, diagonal_epsilon: the Adam step of
        the variables outside Kronecker blocks.
      epsilon: relative floor of the damped diagonal, ``s_d >= epsilon * mean(s)`` (only matters with
        ``damping = 0``).
      use_ema: keep a moving average of the iterates (Keras' ``use_ema``), which ``fit`` copies into the
        model at its end (``finalize_variable_values``) and ``Hedger.fit`` validates
        (:mod:`deephedge_tf.optimizers.averaging`).  ``None`` (default): on for ``"gauss_newton"``, off for
        the paper's ``"kronecker"`` rule.
      ema_momentum, ema_warmup: the average's momentum at iteration ``k`` (0 for the first step) is
        ``min(ema_momentum, k / (k + ema_warmup))``: the first step's iterate, then a window that grows
        with the run (about the last ``k / ema_warmup`` steps) up to ``1 / (1 - ema_momentum)`` steps, so
        the average does not lag the fast first steps.  ``ema_warmup=0`` is Keras' fixed momentum.
      **kwargs: Keras optimizer arguments (``name``, ``clipnorm``, ``weight_decay``, ...).

    State (all Keras optimizer variables, so checkpoints hold them): per block ``A``, ``G``, ``U_A``,
    ``U_G``, ``lam_A``, ``lam_G``, an update count, ``s`` (ekfac) and the momentum buffer (momentum);
    Adam moments of the diagonal variables; the counters ``skipped_curvature_updates``,
    ``skipped_steps`` and ``uphill_steps`` (see :meth:`set_subspace_model`), the iteration of the last
    eigendecomposition, and ``step_size`` (the last eta).  Gauss-Newton: ``lm_damping`` (lambda),
    ``predicted_decrease`` and ``reduction_ratio`` of the last step, ``rejected_steps`` and
    ``rejection_streak`` (rejections in a row, which escalate the damping).
    """

    def __init__(
        self,
        learning_rate=1.0,
        damping=None,
        damping_mode=None,
        ekfac=True,
        statistics_decay=0.95,
        curvature_period=1,
        inverse_period=10,
        trust_radius=0.1,
        trust_radius_decay=0.999,
        trust_radius_min=1e-5,
        trust_radius_mode="relative",
        momentum=0.0,
        step_model="line",
        jvp_method="finite_difference",
        diagonal_learning_rate=1e-3,
        diagonal_beta_1=0.9,
        diagonal_beta_2=0.999,
        diagonal_epsilon=1e-8,
        epsilon=1e-12,
        preconditioner="gauss_newton",
        jacobian_rows=256,
        damping_floor=0.0,
        min_step_fraction=MIN_STEP_FRACTION,
        late_max_step=None,
        late_after=LATE_AFTER,
        max_relative_change=None,
        metric=None,
        metric_shrinkage=0.1,
        metric_power=0.75,
        use_ema=None,
        ema_momentum=EMA_MOMENTUM,
        ema_warmup=EMA_WARMUP,
        name="dhkfac",
        **kwargs,
    ):
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)  # Keras accepts only float constants
        if preconditioner not in PRECONDITIONERS:
            raise ValueError(f"DHKFAC: preconditioner must be one of {PRECONDITIONERS}; got {preconditioner!r}")
        gauss_newton = preconditioner == "gauss_newton"
        if use_ema is None:  # the Gauss-Newton default averages its iterates; the paper's rule does not
            use_ema = gauss_newton
        for key in ("gradient_accumulation_steps", "ema_overwrite_frequency"):
            # judge_step compares the loss before and after the step apply just took: a micro-step that
            # applies nothing, or weights overwritten by their average inside apply, would be judged wrongly.
            if gauss_newton and kwargs.get(key):
                raise ValueError(f"DHKFAC: {key} is not supported with preconditioner='gauss_newton' (its "
                                 f"Levenberg-Marquardt judgement needs each applied step as taken); got {kwargs[key]}")
        if not float(ema_warmup) >= 0.0:
            raise ValueError(f"DHKFAC: ema_warmup must be >= 0 (steps); got {ema_warmup}")
        super().__init__(learning_rate=learning_rate, name=name, use_ema=bool(use_ema), ema_momentum=ema_momentum,
                         **kwargs)
        self.ema_warmup = float(ema_warmup)
        if damping_mode is None:
            damping_mode = "levenberg_marquardt" if gauss_newton else "shrinkage"
        if damping_mode not in _DAMPING_MODES:
            raise ValueError(f"DHKFAC: damping_mode must be one of {_DAMPING_MODES}; got {damping_mode!r}")
        if gauss_newton != (damping_mode == "levenberg_marquardt"):
            raise ValueError("DHKFAC: damping_mode='levenberg_marquardt' goes with preconditioner='gauss_newton' "
                             f"and only with it; got damping_mode={damping_mode!r}, preconditioner={preconditioner!r}")
        if gauss_newton and (float(momentum) or step_model == "subspace"):
            # No momentum: d already minimises the damped model (rows and line model see the same GGN),
            # so the exact model over span{d, previous step} chooses mu ~ 0 (measured: 1e-15).
            raise ValueError("DHKFAC: preconditioner='gauss_newton' takes no momentum and no subspace step model; "
                             f"got momentum={momentum}, step_model={step_model!r}")
        if int(jacobian_rows) != jacobian_rows or int(jacobian_rows) < 1:
            raise ValueError(f"DHKFAC: jacobian_rows must be an integer >= 1; got {jacobian_rows}")
        if not float(damping_floor) >= 0.0:
            raise ValueError(f"DHKFAC: damping_floor must be >= 0; got {damping_floor}")
        if min_step_fraction is not None and not 0.0 < float(min_step_fraction) <= 1.0:
            raise ValueError(f"DHKFAC: min_step_fraction must be in (0, 1] or None; got {min_step_fraction}")
        if max_relative_change is not None and not float(max_relative_change) > 0.0:
            raise ValueError(f"DHKFAC: max_relative_change must be > 0 or None; got {max_relative_change}")
        if late_max_step is not None and not gauss_newton:
            raise ValueError(f"DHKFAC: late_max_step caps the Gauss-Newton step; it needs "
                             f"preconditioner='gauss_newton' (got {preconditioner!r})")
        if late_max_step is None and gauss_newton:
            late_max_step = LATE_MAX_STEP
        if late_max_step is not None and not float(late_max_step) > 0.0:
            raise ValueError(f"DHKFAC: late_max_step must be > 0 or None; got {late_max_step}")
        if int(late_after) != late_after or int(late_after) < 0:
            raise ValueError(f"DHKFAC: late_after must be an integer >= 0 (steps); got {late_after}")
        if metric is None:  # the Gauss-Newton default; the Kronecker rule has no damping metric
            metric = "kronecker" if gauss_newton else "identity"
        if metric not in METRICS:
            raise ValueError(f"DHKFAC: metric must be one of {METRICS} or None; got {metric!r}")
        if metric != "identity" and not gauss_newton:
            raise ValueError(f"DHKFAC: metric={metric!r} is the Gauss-Newton step's damping metric; it needs "
                             f"preconditioner='gauss_newton' (got {preconditioner!r})")
        if not 0.0 < float(metric_shrinkage) <= 1.0:
            raise ValueError(f"DHKFAC: metric_shrinkage must be in (0, 1]; got {metric_shrinkage}")
        if not 0.0 < float(metric_power) <= 1.0:
            raise ValueError(f"DHKFAC: metric_power must be in (0, 1]; got {metric_power}")
        if damping is None:  # lambda_0 = the GGN's mean diagonal (Levenberg-Marquardt adapts it from there)
            damping = 1.0 if damping_mode == "levenberg_marquardt" else 0.1
        damping = float(damping)
        if damping_mode == "levenberg_marquardt" and not damping > 0.0:
            raise ValueError(f"DHKFAC: levenberg_marquardt damping (lambda_0 / mean diagonal) must be > 0; got {damping}")
        if damping_mode == "shrinkage" and not 0.0 <= damping <= 1.0:
            raise ValueError(f"DHKFAC: shrinkage damping (rho) must be in [0, 1]; got {damping}")
        if damping_mode == "tikhonov" and not damping >= 0.0:
            raise ValueError(f"DHKFAC: tikhonov damping (lambda) must be >= 0; got {damping}")
        if not 0.0 <= float(statistics_decay) < 1.0:
            raise ValueError(f"DHKFAC: statistics_decay must be in [0, 1); got {statistics_decay}")
        for key, value in (("curvature_period", curvature_period), ("inverse_period", inverse_period)):
            if int(value) != value or int(value) < 1:
                raise ValueError(f"DHKFAC: {key} must be an integer >= 1; got {value}")
        if trust_radius is not None:
            if not float(trust_radius) > 0.0:
                raise ValueError(f"DHKFAC: trust_radius must be > 0 or None; got {trust_radius}")
            if not 0.0 < float(trust_radius_decay) <= 1.0:
                raise ValueError(f"DHKFAC: trust_radius_decay must be in (0, 1]; got {trust_radius_decay}")
            if not float(trust_radius_min) >= 0.0:
                raise ValueError(f"DHKFAC: trust_radius_min must be >= 0; got {trust_radius_min}")
        if trust_radius_mode not in TRUST_RADIUS_MODES:
            raise ValueError(f"DHKFAC: trust_radius_mode must be one of {TRUST_RADIUS_MODES}; "
                             f"got {trust_radius_mode!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"DHKFAC: momentum must be in [0, 1); got {momentum}")
        if jvp_method not in JVP_METHODS:
            raise ValueError(f"DHKFAC: jvp_method must be one of {JVP_METHODS}; got {jvp_method!r}")
        if step_model not in STEP_MODELS:
            raise ValueError(f"DHKFAC: step_model must be one of {STEP_MODELS}; got {step_model!r}")
        if float(momentum) and step_model == "subspace":
            raise ValueError("DHKFAC: step_model='subspace' chooses the momentum itself; set momentum=0")
        if not float(diagonal_learning_rate) >= 0.0:
            raise ValueError(f"DHKFAC: diagonal_learning_rate must be >= 0; got {diagonal_learning_rate}")
        for key, value in (("diagonal_beta_1", diagonal_beta_1), ("diagonal_beta_2", diagonal_beta_2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"DHKFAC: {key} must be in [0, 1); got {value}")
        if not float(diagonal_epsilon) > 0.0 or not float(epsilon) >= 0.0:
            raise ValueError("DHKFAC: diagonal_epsilon must be > 0 and epsilon >= 0")
        self.damping = damping
        self.damping_mode = damping_mode
        self.ekfac = bool(ekfac)
        self.statistics_decay = float(statistics_decay)
        self.curvature_period = int(curvature_period)
        self.inverse_period = int(inverse_period)
        self.trust_radius = None if trust_radius is None else float(trust_radius)
        self.trust_radius_decay = float(trust_radius_decay)
        self.trust_radius_min = float(trust_radius_min)
        self.trust_radius_mode = trust_radius_mode
        self.momentum = float(momentum)
        self.step_model = step_model
        self.jvp_method = jvp_method
        self.diagonal_learning_rate = float(diagonal_learning_rate)
        self.diagonal_beta_1 = float(diagonal_beta_1)
        self.diagonal_beta_2 = float(diagonal_beta_2)
        self.diagonal_epsilon = float(diagonal_epsilon)
        self.epsilon = float(epsilon)
        self.preconditioner = preconditioner
        self.jacobian_rows = int(jacobian_rows)
        self.damping_floor = float(damping_floor)
        self.min_step_fraction = None if min_step_fraction is None else float(min_step_fraction)
        self.max_relative_change = None if max_relative_change is None else float(max_relative_change)
        self.late_max_step = None if late_max_step is None else float(late_max_step)
        self.late_after = int(late_after)
        self.metric = metric
        self.metric_shrinkage = float(metric_shrinkage)
        self.metric_power = float(metric_power)
        self._rows = None  # Gauss-Newton: {block index: rows [n, da, dg]} of this step (trace-time Python)
        # Gauss-Newton with the Kronecker metric: update_curvature turns the rows into the blocks' (updated)
        # eigenbases for the EKFAC diagonal and leaves ({k: rows}, {k: turned rows}) here; set_jacobian_rows
        # keeps the turned rows ({k: ...}, for the solve) when it is handed the same tensors.
        self._turned_rows = None
        self._basis_rows = None
        self._prepared_blocks = ()
        self._stepped_blocks = ()  # Gauss-Newton: the blocks the traced update moved (judge_step undoes them)
        # Gauss-Newton: (blocks, lambda, woodbury.Factor, metric scales) of the current rows and statistics;
        # cleared when either changes (set_jacobian_rows, update_curvature) and after a step.
        self._factor = None
        # Python state, set when statistics are handed over (at trace time inside a train step): which
        # blocks have curvature, and whether any statistics source exists at all.
        self._fed_blocks = set()
        self._statistics_source = False
        self._reported = False

    # ------------------------------------------------------------------ building

    def build(self, var_list):
        """Derives the blocks from ``var_list`` (paths and shapes only) and creates all state.

        Raises ValueError for a layer with a kernel that cannot form a block (see
        :func:`~deephedge_tf.optimizers.blocks.find_blocks`), NotImplementedError under a
        multi-replica strategy.
        """
        if self.built:
            return
        super().build(var_list)
        blocks, diagonal = find_blocks(var_list)
        float_dtypes = {b.dtype for b in blocks} | {tf.as_dtype(var_list[i].dtype) for i in diagonal}
        self._scalar_dtype = tf.float64 if tf.float64 in float_dtypes else tf.float32
        self._kfac_blocks = tuple(blocks)
        self._block_index = {b.name: k for k, b in enumerate(blocks)}
        states = []
        for block in blocks:
            prefix = block.name.replace("/", "_")
            da, dg, dt = block.dim_a, block.d_out, block.dtype.name

            def var(suffix, shape, init, dtype=dt):
                return self.add_variable(shape=shape, initializer=init, dtype=dtype, name=f"{prefix}_{suffix}")

            eye = keras.initializers.Identity()
            states.append(
                _BlockState(
                    factor_a=var("A", (da, da), eye),
                    factor_g=var("G", (dg, dg), eye),
                    basis_a=var("U_A", (da, da), eye),
                    basis_g=var("U_G", (dg, dg), eye),
                    eig_a=var("lam_A", (da,), "ones"),
                    eig_g=var("lam_G", (dg,), "ones"),
                    count=var("count", (), "zeros", "int64"),
                    scale=var("s", (da, dg), "ones") if self.ekfac else None,
                    velocity=var("momentum", (da, dg), "zeros")
                    if self.momentum or self.adaptive_momentum or self.gauss_newton else None,
                )
            )
        self._kfac_states = tuple(states)
        self._diagonal_indices = tuple(diagonal)
        # Adam moments for every variable: a block whose layer sends no statistics (the capture did not
        # understand it) takes the diagonal step too, and which blocks do is only known when the train
        # step is traced.
        self._adam_m = tuple(self.add_variable_from_reference(v, "m") for v in var_list)
        self._adam_v = tuple(self.add_variable_from_reference(v, "v") for v in var_list)
        self.skipped_curvature_updates = self.add_variable((), "zeros", "int64", name="skipped_curvature_updates")
        self.skipped_steps = self.add_variable((), "zeros", "int64", name="skipped_steps")
        self.uphill_steps = self.add_variable((), "zeros", "int64", name="uphill_steps")
        self.last_inverse_iteration = self.add_variable(
            (), keras.initializers.Constant(-1), "int64", name="last_inverse_iteration"
        )
        scalar = self._scalar_dtype.name
        self.step_size = self.add_variable((), "zeros", scalar, name="step_size")  # alpha (eta) of the last step
        self.step_momentum = self.add_variable((), "zeros", scalar, name="step_momentum")  # its mu
        # Exact quadratic model over [V, previous step] (2 x 2 curvature, 2 slopes), optionally supplied
        # by the model (set_step_model / set_subspace_model); consumed and cleared by the next update.
        self.model_matrix = self.add_variable((2, 2), "zeros", scalar, name="model_matrix")
        self.model_rhs = self.add_variable((2,), "zeros", scalar, name="model_rhs")
        self.model_valid = self.add_variable((), "zeros", scalar, name="model_valid")
        # m_ref of trust_radius_mode="relative": set by the first update with a usable model (0: unset).
        self.radius_reference = self.add_variable((), "zeros", scalar, name="radius_reference")
        # Gauss-Newton: lambda (0: not yet set), the last step's predicted decrease and reduction ratio.
        self.lm_damping = self.add_variable((), "zeros", "float64", name="lm_damping")
        self.predicted_decrease = self.add_variable((), "zeros", "float64", name="predicted_decrease")
        self.reduction_ratio = self.add_variable((), "zeros", "float64", name="reduction_ratio")
        self.rejected_steps = self.add_variable((), "zeros", "int64", name="rejected_steps")
        self.rejection_streak = self.add_variable((), "zeros", "int64", name="rejection_streak")

    # ------------------------------------------------------------------ introspection

    def diagnostics(self) -> dict:
        """The optimizer's own state after the last step, as Python floats: what a training log or
        TensorBoard shows next to the loss (:class:`deephedge_tf.training.OptimizerDiagnostics`).

        Every rule: ``step_size`` (the last ``eta``), ``skipped_steps`` and ``skipped_curvature_updates``
        (non-finite values, counted since the start).  Gauss-Newton: ``damping`` (``lambda``),
        ``reduction_ratio`` and ``predicted_decrease`` of the last step, ``rejected_steps``.  Kronecker:
        ``trust_radius`` (``delta_k`` in loss units; absent without a trust region) and ``uphill_steps``.
        Empty before the optimizer is built.

            >>> opt = DHKFAC()
            >>> opt.diagnostics()
            {}
            >>> opt.build([keras.Variable(tf.zeros((2, 1)))])
            >>> report = opt.diagnostics()
            >>> report["damping"], report["rejected_steps"], "trust_radius" in report
            (0.0, 0.0, False)
        """
        if not self.built:
            return {}
        values = {"step_size": self.step_size, "skipped_steps": self.skipped_steps,
                  "skipped_curvature_updates": self.skipped_curvature_updates}
        if self.gauss_newton:
            values.update(damping=self.lm_damping, reduction_ratio=self.reduction_ratio,
                          predicted_decrease=self.predicted_decrease, rejected_steps=self.rejected_steps)
        else:
            values["uphill_steps"] = self.uphill_steps
            radius = self.current_trust_radius()
            if radius is not None:
                values["trust_radius"] = radius
        return {name: float(keras.ops.convert_to_numpy(v)) for name, v in values.items()}

    @property
    def gauss_newton(self) -> bool:
        """Whether the direction is the sample-space Gauss-Newton step (``preconditioner="gauss_newton"``)."""
        return self.preconditioner == "gauss_newton"

    @property
    def wants_statistics(self) -> bool:
        """Whether the train step should hand over Kronecker statistics (:meth:`update_curvature`): the
        Kronecker preconditioner's curvature, or the Gauss-Newton step's Kronecker metric."""
        return not self.gauss_newton or self.metric == "kronecker"

    @property
    def adaptive_momentum(self) -> bool:
        """Whether the momentum coefficient comes from the exact subspace model (``step_model="subspace"``)."""
        return self.step_model == "subspace"

    @property
    def kronecker_blocks(self) -> tuple[KroneckerBlock, ...]:
        """The blocks found by :meth:`build` (static descriptions; see :class:`KroneckerBlock`)."""
        self._require_built()
        return self._kfac_blocks

    def block_variables(self, name: str) -> list:
        """The variables of block ``name`` in stacking order (kernel, recurrent kernel, bias)."""
        return self._members(self._block_index[name])

    def _members(self, k) -> list:
        return [self._trainable_variables[i] for i in self._kfac_blocks[k].indices]

    def _block_parts(self, k, stacked):
        """``(variable, its part of stacked)`` for block ``k``'s variables (``stacked`` ``[da, dg]``)."""
        members = self._members(k)
        return zip(members, unstack(self._kfac_blocks[k], stacked, [v.shape for v in members]))

    def _block_weights(self, k):
        """Block ``k``'s variables stacked (``[da, dg]``)."""
        return stack(self._kfac_blocks[k], [tf.convert_to_tensor(v) for v in self._members(k)])

    def _move_block(self, k, stacked, sign=-1.0):
        """``W_k <- W_k + sign * stacked`` for block ``k``'s variables (``stacked`` ``[da, dg]``)."""
        for variable, part in self._block_parts(k, stacked):
            if sign < 0:
                self.assign_sub(variable, part)
            else:
                self.assign_add(variable, part)

    @property
    def diagonal_variables(self) -> list:
        """The variables that take the diagonal (Adam) step: those outside any Kronecker block, and
        those of blocks that have received no statistics (see :attr:`active_blocks`)."""
        self._require_built()
        return [self._trainable_variables[i] for i in self._diagonal_step_indices()]

    @property
    def active_blocks(self) -> tuple:
        """Names of the blocks preconditioned with curvature: those :meth:`update_curvature` has
        received statistics for (Python state, fixed when the train step is traced)."""
        return tuple(b.name for b in self._kfac_blocks if b.name in self._fed_blocks)

    def _diagonal_step_indices(self):
        inactive = [i for b in self._kfac_blocks if b.name not in self._fed_blocks for i in b.indices]
        return tuple(sorted(set(self._diagonal_indices) | set(inactive)))

    def block_state(self, name: str) -> dict:
        """Current values of block ``name``'s statistics: ``A``, ``G``, ``U_A``, ``U_G``, ``lam_A``,
        ``lam_G``, ``count`` and (ekfac) ``s`` = the undamped diagonal in the eigenbasis."""
        state = self._kfac_states[self._block_index[name]]
        out = {
            "A": state.factor_a, "G": state.factor_g, "U_A": state.basis_a, "U_G": state.basis_g,
            "lam_A": state.eig_a, "lam_G": state.eig_g, "count": state.count,
        }
        out = {k: tf.convert_to_tensor(v) for k, v in out.items()}
        out["s"] = self._scale(state)
        return out

    def _require_built(self):
        if not self.built:
            raise RuntimeError("DHKFAC: build the optimizer first (optimizer.build(model.trainable_variables))")

    # ------------------------------------------------------------------ curvature

    def curvature_due(self):
        """Bool tensor: whether :meth:`update_curvature` updates the statistics at this iteration."""
        return tf.equal(tf.math.floormod(tf.cast(self.iterations, tf.int64), self.curvature_period), 0)

    def update_curvature(self, captured, rows=None):
        """Folds one batch of curvature statistics into the factors (in-graph; returns a bool tensor).

        Args:
          captured: dict ``block name -> (a, g)``, or a function returning one (called only when an
            update is due, so that the statistics are not computed at other iterations).  The name is
            the layer path of the block's weights (``"recurrent_policy/block0_lstm"``, see
            :attr:`kronecker_blocks`).  Blocks left out keep their statistics.

            * ``a``: ``[T, B, dim_a]`` extended layer inputs, ones column last when the layer has a
              bias (``with_bias_column``); LSTM: ``[x, h_prev, 1]``.  ``[B, dim_a]`` means ``T = 1``.
            * ``g``: ``[T, B, d_out]`` pseudo-gradients w.r.t. the pre-activation, **per path, not
              divided by B or sqrt(B)**: path ``b``'s ``M_b = sum_t a_tb g_tb^T`` must satisfy
              ``E_z[vec(M_b) vec(M_b)^T] = J_b^T H_b J_b`` for its own surrogate loss ``l_b``, so that
              the curvature is ``C = (1/B) sum_b J_b^T H_b J_b``: the GGN of the *mean* loss
              ``(1/B) sum_b l_b``, the same normalisation as the gradient given to :meth:`apply`
              (then ``learning_rate = 1`` is the Newton step).  E.g. for ``gamma * Var[PnL]``
              back-propagate ``sqrt(2 gamma) * dPnL_b/du`` per path (``output_gradients`` of the
              actions); a tape gradient of a batch-*mean* quantity w.r.t. the probes is ``g / B``.
              ``B`` may be a sub-batch of the gradient's batch: only its own mean is taken.

            Derive the names from the live variables, ``layer_path(kernel)`` (what
            :class:`deephedge_tf.optimizers.capture.Recorder` does for every layer it captures); do
            not hard-code them: e.g. a Sequential reloaded from ``.keras`` has paths without its own
            name.  Blocks that never receive statistics take the diagonal (Adam) step.
          rows: optional ``{block name: R [n, dim_a, d_out]}``, a sample-space factor of the same
            curvature (``sum_n r_n r_n^T = C``, as for :meth:`set_jacobian_rows`): the EKFAC diagonal of
            those blocks is then its exact diagonal in the eigenbasis, ``s = sum_n (U_A^T r_n U_G)^2``,
            instead of the estimate from ``a`` and ``g`` (the Gauss-Newton train step hands both over from
            one backward pass; the rows are centred where the loss is, ``a g^T`` is not).

        The update runs when :meth:`curvature_due`.  If any ``a``, ``g`` or resulting factor is not
        finite nothing changes and ``skipped_curvature_updates`` is incremented.  The eigenbases are
        recomputed here (see ``inverse_period``); a non-finite decomposition keeps the last basis.

        Returns:
          bool tensor: whether the statistics were updated.
        """
        self._require_built()
        self._statistics_source = True
        self._factor = None  # the Kronecker metric's eigenbases and scales may change
        ctx = multi_replica_context()
        if ctx is not None:
            # Several replicas: each hands its own paths' statistics; the update runs once, in
            # cross-replica context, on the factors averaged over the replicas (equal local batches).
            stats = captured() if callable(captured) else captured

            if rows is not None:
                # The Gauss-Newton train step hands every replica the same statistics and rows (the global
                # batch's first jacobian_rows paths): the update runs once on the first replica's.
                def merge_rows(strategy, per_replica, per_replica_rows):
                    first = {name: (first_local_value(strategy, a), first_local_value(strategy, g))
                             for name, (a, g) in per_replica.items()}
                    first_rows = {name: first_local_value(strategy, r) for name, r in per_replica_rows.items()}
                    return self._update_with_rows(first, first_rows)

                return ctx.merge_call(merge_rows, args=(stats, rows))

            def merge(strategy, per_replica):
                by_name = {name: list(zip(_local_values(strategy, a), _local_values(strategy, g)))
                           for name, (a, g) in per_replica.items()}
                local = [dict(zip(by_name, replica)) for replica in zip(*by_name.values())]
                prepared = self._prepare(local)
                if not prepared:
                    return tf.constant(False)
                return tf.cond(self.curvature_due(), lambda: self._update_prepared(prepared),
                               lambda: tf.constant(False))

            return ctx.merge_call(merge, args=(stats,))
        return self._update_with_rows(captured, rows)

    def _update_with_rows(self, captured, rows):
        """:meth:`update_curvature` on one replica (``captured`` a dict or a function returning one)."""
        by_index = self._rows_by_index(rows, "DHKFAC.update_curvature")
        self._turned_rows = None
        if callable(captured):
            # Computed only inside the branch where an update is due (curvature_period > 1 skips it).
            def update():
                return self._update_prepared(self._prepare([captured()]), by_index)

            updated = tf.cond(self.curvature_due(), update, lambda: tf.constant(False))
        else:
            prepared = self._prepare([captured])
            if not prepared:
                return tf.constant(False)
            updated = tf.cond(self.curvature_due(), lambda: self._update_prepared(prepared, by_index),
                              lambda: tf.constant(False))
        if by_index and self.ekfac:
            self._fold_rows_diagonal(by_index, updated)
        return updated

    def _rows_by_index(self, rows, caller):
        """``{block index: R}`` from ``{block name: R [n, dim_a, d_out]}`` (``None``: ``{}``), cast to the
        blocks' dtype; an unknown block or a wrong shape raises, naming ``caller``."""
        out = {}
        for name, r in (rows or {}).items():
            if name not in self._block_index:
                raise KeyError(f"{caller}: no Kronecker block {name!r}; blocks: {sorted(self._block_index)}")
            k = self._block_index[name]
            block = self._kfac_blocks[k]
            r = tf.cast(tf.convert_to_tensor(r), block.dtype)
            if r.shape.rank != 3 or tuple(r.shape[1:]) != (block.dim_a, block.d_out):
                raise ValueError(f"{caller}: rows of block {name!r} must be [n, {block.dim_a}, {block.d_out}]; "
                                 f"got {tuple(r.shape)}")
            out[k] = r
        return out

    def _prepare(self, captured):
        """``[(block index, [a per replica], [g per replica])]`` from one statistics dict per replica."""
        prepared = []
        for name in captured[0]:
            if name not in self._block_index:
                raise KeyError(
                    f"DHKFAC.update_curvature: no Kronecker block {name!r}; blocks: {sorted(self._block_index)}"
                )
            k = self._block_index[name]
            self._fed_blocks.add(name)
            block = self._kfac_blocks[k]
            a = [self._time_major(c[name][0], block, block.dim_a, "a", name) for c in captured]
            g = [self._time_major(c[name][1], block, block.d_out, "g", name) for c in captured]
            prepared.append((k, a, g))
        return prepared

    def _update_prepared(self, prepared, rows=None):
        if not prepared:
            return tf.constant(False)
        self._prepared_blocks = tuple(k for k, _, _ in prepared)  # trace time: the blocks this update feeds
        rows = rows or {}
        stats = []
        for k, a, g in prepared:
            factors = [estimator.pooled_factors(x, y) for x, y in zip(a, g)]
            stats.append((k, a, g, _across_workers(_mean([f[0] for f in factors])),
                          _across_workers(_mean([f[1] for f in factors]))))
        finite = steps.all_finite([t for _, a, g, fa, fg in stats for t in a + g + [fa, fg]] + list(rows.values()))

        def skip():
            self.assign_add(self.skipped_curvature_updates, tf.constant(1, tf.int64))
            return tf.constant(False)

        return tf.cond(finite, lambda: self._fold_statistics(stats, rows), skip)

    @staticmethod
    def _time_major(x, block, width, what, name):
        x = tf.convert_to_tensor(x) if not isinstance(x, (list, tuple)) else tf.stack(list(x), axis=0)
        x = tf.cast(x, block.dtype)
        if x.shape.rank == 2:
            x = x[None]
        if x.shape.rank != 3 or x.shape[-1] != width:
            hint = " (did you append the ones column?)" if what == "a" and block.has_bias else ""
            raise ValueError(
                f"DHKFAC.update_curvature: {what} for block {name!r} must be [T, B, {width}]; "
                f"got shape {tuple(x.shape)}{hint}"
            )
        return x

    def _fold_statistics(self, stats, rows):
        """Assigns the EMAs, eigenbases (when due) and EKFAC diagonals; the stats (and ``rows``, ``{block
        index: R}``, whose exact diagonal replaces the EKFAC estimate) are finite."""
        decay = self.statistics_decay
        iteration = tf.cast(self.iterations, tf.int64)
        first = {}
        for k, _, _, new_a, new_g in stats:
            state = self._kfac_states[k]
            first[k] = tf.equal(state.count, 0)
            weight = tf.where(first[k], tf.constant(1.0, new_a.dtype), tf.constant(1.0 - decay, new_a.dtype))
            self.assign(state.factor_a, (1.0 - weight) * state.factor_a + weight * new_a)
            self.assign(state.factor_g, (1.0 - weight) * state.factor_g + weight * new_g)

        last = tf.convert_to_tensor(self.last_inverse_iteration)
        inverse_due = tf.logical_or(last < 0, iteration - last >= self.inverse_period)

        def recompute():
            self._recompute_bases()
            self.assign(self.last_inverse_iteration, iteration)
            return tf.constant(True)

        # tf.cond keeps the eigendecompositions out of the steps where they are not due.
        tf.cond(inverse_due, recompute, lambda: tf.constant(False))

        for k, a, g, _, _ in stats:
            state = self._kfac_states[k]
            if self.ekfac and k not in rows:  # blocks with rows: _fold_rows_diagonal, after this update
                fresh = _across_workers(
                    _mean([estimator.ekfac_diagonal(x, y, state.basis_a, state.basis_g) for x, y in zip(a, g)]))
                blended = decay * state.scale + (1.0 - decay) * fresh
                updated = tf.where(first[k], fresh, blended)
                # Overflow in the per-path squares is the one way finite inputs give a non-finite s.
                ok = tf.reduce_all(tf.math.is_finite(updated))
                self.assign(state.scale, tf.where(ok, updated, state.scale))
            self.assign_add(state.count, tf.constant(1, tf.int64))
        return tf.constant(True)

    def _fold_rows_diagonal(self, rows, updated):
        """The EKFAC diagonal of the blocks with ``rows`` (``{block index: R}``) from their exact diagonal
        in the eigenbasis, ``s = sum_n (U_A^T r_n U_G)^2``, when ``updated`` (the statistics were folded
        in and the bases recomputed if due).  The turned rows are computed here, outside the update's
        branches, so that the Gauss-Newton solve can reuse them (``_turned_rows``): one change of basis
        of the ``n`` rows per step instead of two."""
        fed = [k for k in rows if k in self._prepared_blocks]
        turned = {k: _to_eigenbasis(self._kfac_states[k], r) for k, r in rows.items()}
        decay = self.statistics_decay

        def fold():
            for k in fed:
                state = self._kfac_states[k]
                fresh = tf.reduce_sum(tf.square(turned[k]), axis=0)
                first = tf.equal(state.count, 1)  # the update just counted was this block's first
                updated_scale = tf.where(first, fresh, decay * state.scale + (1.0 - decay) * fresh)
                # Overflow in the per-path squares is the one way finite inputs give a non-finite s.
                ok = tf.reduce_all(tf.math.is_finite(updated_scale))
                self.assign(state.scale, tf.where(ok, updated_scale, state.scale))
            return tf.constant(True)

        tf.cond(updated, fold, lambda: tf.constant(False))
        self._turned_rows = (rows, turned)

    def _recompute_bases(self):
        """Eigendecomposes every block's ``A`` and ``G``; carries ``s`` into the new basis (ekfac)."""
        for state in self._kfac_states:
            lam_a, u_a, ok_a = estimator.eigenbasis(tf.convert_to_tensor(state.factor_a))
            lam_g, u_g, ok_g = estimator.eigenbasis(tf.convert_to_tensor(state.factor_g))
            u_a = tf.where(ok_a, u_a, state.basis_a)
            u_g = tf.where(ok_g, u_g, state.basis_g)
            if self.ekfac:
                self.assign(
                    state.scale, estimator.carry_diagonal(state.scale, state.basis_a, state.basis_g, u_a, u_g)
                )
            self.assign(state.basis_a, u_a)
            self.assign(state.basis_g, u_g)
            self.assign(state.eig_a, tf.where(ok_a, lam_a, state.eig_a))
            self.assign(state.eig_g, tf.where(ok_g, lam_g, state.eig_g))

    def _scale(self, state):
        """Undamped diagonal ``s`` ``[da, dg]`` in the eigenbasis (EKFAC or ``lam_A lam_G^T``)."""
        if self.ekfac:
            return tf.convert_to_tensor(state.scale)
        lam_a = tf.maximum(tf.convert_to_tensor(state.eig_a), 0.0)
        lam_g = tf.maximum(tf.convert_to_tensor(state.eig_g), 0.0)
        return lam_a[:, None] * lam_g[None, :]

    # ------------------------------------------------------------------ preconditioning

    def _block_directions(self, grad_by_index, with_momentum):
        """``{block k: (D [da, dg], D in the eigenbasis, damped s, stacked gradient [da, dg])}`` for
        blocks with a gradient."""
        out = {}
        for k, (block, state) in enumerate(zip(self._kfac_blocks, self._kfac_states)):
            members = [grad_by_index.get(i) for i in block.indices]
            if all(m is None for m in members) or block.name not in self._fed_blocks:
                continue
            grad = stack(block, members)
            s_d = estimator.damp(self._scale(state), self.damping_mode, self.damping, self.epsilon)
            proj = _to_eigenbasis(state, grad) / s_d
            direction = _from_eigenbasis(state, proj)
            if with_momentum and self.momentum:  # heavy ball (the subspace model keeps its own step)
                velocity = tf.convert_to_tensor(state.velocity)
                mu = tf.constant(self.momentum, block.dtype)
                direction = direction + mu * velocity
                proj = proj + mu * _to_eigenbasis(state, velocity)
            out[k] = (direction, proj, s_d, grad)
        return out

    def _slope(self, directions):
        """``g . D`` summed over the blocks of ``directions`` (the model's slope along the step)."""
        terms = []
        for direction, _, _, grad in directions.values():
            terms.append(tf.cast(tf.reduce_sum(grad * direction), self._scalar_dtype))
        return tf.add_n(terms) if terms else tf.zeros((), self._scalar_dtype)

    def _quadratic(self, directions):
        """``q = sum_blocks sum s_d * D_eig^2`` in the scalar dtype."""
        terms = [
            tf.cast(tf.reduce_sum(s_d * tf.square(proj)), self._scalar_dtype) for _, proj, s_d, _ in directions.values()
        ]
        return tf.add_n(terms) if terms else tf.zeros((), self._scalar_dtype)

    def precondition(self, grads):
        """Preconditioned directions without any state change (no momentum, no step size).

        Args:
          grads: one gradient (or ``None``) per variable, aligned with the variable list the optimizer
            was built with.

        Returns:
          ``(directions, q)``: per variable its slice of ``V = U_A (U_A^T grad U_G / s_d) U_G^T``
          (``None`` for diagonal variables and blocks without a gradient), and
          ``q = sum_blocks V^T C_d V`` (the damped curvature along ``V``).
        """
        self._require_built()
        return self._directions(list(grads), with_momentum=False)

    def step_directions(self, grads):
        """Like :meth:`precondition`, with heavy-ball momentum: the direction ``D = V + mu D_prev`` the
        next update steps along (``V`` when ``momentum = 0``), and ``D^T C_d D``.  No state change."""
        self._require_built()
        return self._directions(list(grads), with_momentum=True)

    def _directions(self, grads, with_momentum):
        if len(grads) != len(self._trainable_variables):
            raise ValueError(
                f"DHKFAC: got {len(grads)} gradients for {len(self._trainable_variables)} variables"
            )
        if self.gauss_newton:
            ctx = multi_replica_context()
            if ctx is not None:
                return self._gauss_newton_directions_in_merge(ctx, grads)
            return self._gauss_newton_per_variable(grads)
        directions = self._block_directions({i: g for i, g in enumerate(grads) if g is not None}, with_momentum)
        return self._per_variable({k: d for k, (d, _, _, _) in directions.items()}), self._quadratic(directions)

    def _gauss_newton_per_variable(self, grads):
        """The Gauss-Newton direction per variable (``None`` for the diagonal ones) and ``|R d|^2``."""
        d, _, _, _, _, rows_d = self._gauss_newton_directions({i: g for i, g in enumerate(grads) if g is not None})
        return self._per_variable(d), tf.cast(tf.reduce_sum(tf.square(rows_d)), self._scalar_dtype)

    def _gauss_newton_directions_in_merge(self, ctx, grads):
        """:meth:`_gauss_newton_per_variable` under several replicas: the rows live in cross-replica context
        (:meth:`set_jacobian_rows`), so the direction of the replicas' common gradients (the global ones)
        is solved there, once, and handed back to every replica."""
        present = [i for i, g in enumerate(grads) if g is not None]
        # The variables that get a direction: those of the blocks with rows and a gradient (as in
        # _gauss_newton_directions).  Each replica derives them itself (only one replica's merge_fn runs).
        solved = [i for k in self._rows if any(i in present for i in self._kfac_blocks[k].indices)
                  for i in self._kfac_blocks[k].indices]

        def merge(strategy, per_replica):
            first = [None] * len(grads)
            for i, g in zip(present, per_replica):
                first[i] = first_local_value(strategy, g)
            directions, quad = self._gauss_newton_per_variable(first)
            return [directions[i] for i in solved], quad

        parts, quad = ctx.merge_call(merge, args=([grads[i] for i in present],))
        directions = [None] * len(grads)
        for i, d in zip(solved, parts):
            directions[i] = d
        return directions, quad

    def _per_variable(self, by_block):
        """``{block k: stacked [da, dg] tensor}`` split into one slice per variable (``None`` elsewhere),
        aligned with the built variable list."""
        out = [None] * len(self._trainable_variables)
        for k, stacked in by_block.items():
            block = self._kfac_blocks[k]
            shapes = [self._trainable_variables[i].shape for i in block.indices]
            for i, part in zip(block.indices, unstack(block, stacked, shapes)):
                out[i] = part
        return out

    def clipped(self, grads):
        """``grads`` clipped as :meth:`apply` clips them (``clipnorm`` / ``global_clipnorm`` /
        ``clipvalue``): the gradients a step model must use to describe the step that is taken."""
        return self._clip_gradients(list(grads))

    def set_jacobian_rows(self, rows):
        """Hands over this step's sample-space GGN factor (``preconditioner="gauss_newton"``).

        Args:
          rows: dict ``block name -> R [n, dim_a, d_out]``: ``n`` rows with ``sum_n r_n r_n^T = C``, the
            GGN of the mean loss (exactly or in expectation), each stacked like the block's weights
            (kernel, recurrent kernel, bias).  Blocks left out take the diagonal (Adam) step.

        Valid for the next :meth:`step_directions` / :meth:`apply` of the same traced step.  Non-finite
        rows are replaced by zeros (counted in ``skipped_curvature_updates``).
        """
        self._require_built()
        if not self.gauss_newton:
            raise RuntimeError("DHKFAC.set_jacobian_rows: only with preconditioner='gauss_newton'")
        self._statistics_source = True
        ctx = multi_replica_context()
        if ctx is not None:
            # Every replica hands over the same rows (the global batch's first paths, see train_step): kept
            # once, from the first replica, in cross-replica context where apply's update runs.
            def merge(strategy, per_replica):
                self._set_rows({name: first_local_value(strategy, r) for name, r in per_replica.items()})

            ctx.merge_call(merge, args=(rows,))
            return
        self._set_rows(rows)

    def _set_rows(self, rows):
        prepared = self._rows_by_index(rows, "DHKFAC.set_jacobian_rows")
        self._fed_blocks.update(rows)
        finite = steps.all_finite(list(prepared.values()))
        self.assign_add(self.skipped_curvature_updates, tf.cast(~finite, tf.int64))
        self._rows = _zeros_unless(finite, prepared)
        turned, self._turned_rows, self._basis_rows = self._turned_rows, None, None
        if self.metric == "kronecker" and turned is not None and set(turned[0]) == set(prepared) and all(
                turned[0][k] is r for k, r in prepared.items()):
            # The tensors update_curvature turned into the eigenbases (after any basis update): reused.
            self._basis_rows = _zeros_unless(finite, turned[1])
        self._factor = None

    def _gauss_newton_directions(self, grad_by_index):
        """``({k: d}, {k: stacked g}, {k: rows}, lambda, {k: metric scales} or None, R d [n])`` for the blocks
        with rows and a gradient (``R d`` float64, see :func:`woodbury.solve`)."""
        if self._rows is None:
            raise RuntimeError("DHKFAC: preconditioner='gauss_newton' needs set_jacobian_rows(...) before each "
                               "step (with_curvature / the Hedger's train step do this)")
        rows, grads = {}, {}
        for k, r in self._rows.items():
            block = self._kfac_blocks[k]
            members = [grad_by_index.get(i) for i in block.indices]
            if all(m is None for m in members):
                continue
            rows[k], grads[k] = r, stack(block, members)
        if not rows:
            return {}, {}, {}, tf.ones((), tf.float64), None, tf.zeros([1], tf.float64)
        # lambda, the metric and the Cholesky factor depend on the rows only: computed once per step,
        # shared by the step model's direction (step_directions) and the update (cleared after it).
        key = tuple(sorted(rows))
        if self._factor is None or self._factor[0] != key:
            lam = self._current_damping(rows)
            if self.metric == "kronecker":
                # The metric is diagonal in each block's Kronecker eigenbasis: the solve runs there (the
                # rows turned once, or taken from update_curvature; the direction turned back).
                scales = self._metric_scales(rows)
                turned = self._basis_rows or {}
                basis_rows = {k: turned[k] if k in turned else _to_eigenbasis(self._kfac_states[k], r)
                              for k, r in rows.items()}
            else:
                scales, basis_rows = None, rows
            self._factor = (key, lam, woodbury.factorise(basis_rows, lam, scales), scales)
        _, lam, factor, scales = self._factor
        if scales is None:
            directions, rows_d = woodbury.solve(factor, grads, lam)
            return directions, grads, rows, lam, None, rows_d
        basis_grads = {k: _to_eigenbasis(self._kfac_states[k], g) for k, g in grads.items()}
        basis_directions, rows_d = woodbury.solve(factor, basis_grads, lam)
        directions = {k: _from_eigenbasis(self._kfac_states[k], d) for k, d in basis_directions.items()}
        return directions, grads, rows, lam, scales, rows_d

    def _metric_scales(self, blocks):
        """``{k: damped EKFAC diagonal ^ metric_power / mean}`` for ``blocks``: the Kronecker metric ``M`` of the
        Gauss-Newton step in each block's eigenbasis, normalised to a mean diagonal of one over all
        active blocks so that ``lambda`` keeps its meaning (``lambda_0 = damping x tr(C) / P``)."""
        active = sorted(set(blocks) | {self._block_index[name] for name in self._fed_blocks})
        damped = {k: estimator.damp(self._scale(self._kfac_states[k]), "shrinkage", self.metric_shrinkage,
                                    self.epsilon) for k in active}
        if self.metric_power != 1.0:
            damped = {k: tf.pow(s, self.metric_power) for k, s in damped.items()}
        total = tf.add_n([tf.reduce_sum(tf.cast(s, tf.float64)) for s in damped.values()])
        size = float(sum(self._kfac_blocks[k].dim_a * self._kfac_blocks[k].d_out for k in active))
        mean = total / size
        return {k: damped[k] / tf.cast(mean, damped[k].dtype) for k in blocks}

    def _metric_norm2(self, directions, scales):
        """``sum_k d_k^T M_k d_k`` (float64): the damping term of the step model; ``|d|^2`` for the
        identity metric (``scales`` None), else ``scales`` from :meth:`_metric_scales`."""
        if scales is None:
            return tf.add_n([tf.reduce_sum(tf.square(tf.cast(d, tf.float64))) for d in directions.values()])
        return tf.add_n([tf.reduce_sum(tf.cast(scales[k] * tf.square(_to_eigenbasis(self._kfac_states[k], d)),
                                               tf.float64)) for k, d in directions.items()])

    def _current_damping(self, rows):
        """``lambda`` for this step: the adapted one (``damping x tr(C) / P`` at first), floored at
        ``damping_floor x tr(C) / P``; 1 when the rows are all zero."""
        size = sum(self._kfac_blocks[k].dim_a * self._kfac_blocks[k].d_out for k in rows)
        trace = woodbury.row_norms_squared(rows)  # tr(C)
        mean = trace / float(size)
        lam = tf.convert_to_tensor(self.lm_damping)
        lam = tf.where(lam > 0, lam, self.damping * mean)
        lam = tf.maximum(lam, self.damping_floor * mean)
        lam = tf.clip_by_value(lam, DAMPING_RANGE[0] * trace, DAMPING_RANGE[1] * trace)
        return tf.where(lam > 0, lam, tf.ones_like(lam))

    def judge_step(self, loss_before, loss_after):
        """Gauss-Newton: adapts ``lambda`` from the reduction ratio of the step just applied (same batch,
        loss before and after it; see the module doc) and undoes the step if the ratio is below 0.1 or not
        finite (counted in ``rejected_steps``): the block weights from before it are copied back.  The
        diagonal (Adam) variables keep their step."""
        self._require_built()
        if not self.gauss_newton:
            raise RuntimeError("DHKFAC.judge_step: only with preconditioner='gauss_newton'")
        ctx = multi_replica_context()
        if ctx is not None:
            # Each replica's losses are its share (Keras' 1 / replicas scaling): their sum is the global
            # batch's loss; the judgement (and an undo) runs once, in cross-replica context.
            def merge(strategy, before, after):
                total = tf.distribute.ReduceOp.SUM
                return self._judge(strategy.reduce(total, before, axis=None), strategy.reduce(total, after, axis=None))

            return ctx.merge_call(merge, args=(tf.convert_to_tensor(loss_before), tf.convert_to_tensor(loss_after)))
        return self._judge(loss_before, loss_after)

    def _judge(self, loss_before, loss_after):
        pred = tf.convert_to_tensor(self.predicted_decrease)
        taken = pred > 0
        actual = tf.cast(loss_before, tf.float64) - tf.cast(loss_after, tf.float64)
        ratio = actual / tf.where(taken, pred, tf.ones_like(pred))
        # A predicted decrease and a change of the loss both below the loss's rounding cannot be judged: their
        # ratio is rounding noise, which rejects and raises lambda, making the next prediction smaller still
        # (seen: lambda at 1e49 and every step rejected or empty).  Such a step is kept with ratio 1.  A
        # change beyond the rounding is judged whatever was predicted.
        eps = np.finfo(tf.convert_to_tensor(loss_before).dtype.as_numpy_dtype).eps
        noise = _LOSS_ROUNDING * float(eps) * tf.abs(tf.cast(loss_before, tf.float64))
        ratio = tf.where(taken & (pred < noise) & (tf.abs(actual) < noise), tf.ones_like(ratio), ratio)
        lam = tf.convert_to_tensor(self.lm_damping)
        streak = tf.convert_to_tensor(self.rejection_streak)
        new_lam, rejected = woodbury.levenberg_marquardt(lam, ratio, streak=streak)
        rejected = rejected & taken
        self.assign(self.rejection_streak, tf.where(rejected, streak + 1, tf.where(taken, tf.zeros_like(streak),
                                                                                    streak)))
        # The average of the iterates took in the step being undone (Keras updates it in apply): it gets the
        # restored weights' share instead, (1 - m) x the undo at the momentum m of that step.
        momentum = self._average_momentum(self.iterations - 1)
        for k in self._stepped_blocks:
            state = self._kfac_states[k]
            before = tf.convert_to_tensor(state.velocity)  # the weights before the step
            undo = tf.where(rejected, before - self._block_weights(k), tf.zeros_like(before))
            for variable, part in self._block_parts(k, before):
                self.assign(variable, tf.where(rejected, part, tf.convert_to_tensor(variable)))
            if self.use_ema:
                for variable, part in self._block_parts(k, undo):
                    average = self._model_variables_moving_average[self._get_variable_index(variable)]
                    average.assign_add((1.0 - tf.cast(momentum, part.dtype)) * part)
        self.assign(self.lm_damping, tf.where(taken, new_lam, lam))
        self.assign(self.reduction_ratio, tf.where(taken, ratio, tf.zeros_like(ratio)))
        self.assign_add(self.rejected_steps, tf.cast(rejected, tf.int64))
        return rejected

    def previous_update(self):
        """The last applied step of every block variable (``W_new = W_old - step``; ``None`` for the
        diagonal variables), aligned with the built variable list.  Needs ``step_model="subspace"``."""
        self._require_built()
        if not self.adaptive_momentum:
            raise RuntimeError("DHKFAC.previous_update: only kept with step_model='subspace'")
        return self._per_variable({k: tf.convert_to_tensor(state.velocity)
                                   for k, state in enumerate(self._kfac_states)})

    def set_subspace_model(self, matrix, rhs):
        """Exact quadratic model of the loss over ``span{V, previous step}`` for the next update.

        ``matrix = [V, P]^T C [V, P]`` (2 x 2, ``C`` the model's exact GGN, ``P`` from
        :meth:`previous_update`), ``rhs = [grad . V, grad . P]``.  The next update takes
        ``W <- W - (alpha V + mu P)`` with ``(alpha, mu)`` minimising ``-x.rhs + x^T matrix x / 2``
        within the trust region and ``alpha <= eta_max`` (see
        :func:`deephedge_tf.optimizers.steps.subspace_step`).  A model without curvature along ``V`` is
        ignored (the Kronecker rule sizes the step).  A model that predicts no decrease along ``V``
        (``grad . V <= 0``: with heavy-ball momentum the direction can point uphill for this batch), or
        one that is not finite, blocks the step: the Kronecker blocks do not move this iteration
        (counted in ``uphill_steps``), since any step along ``V`` would raise the model loss, and the
        Kronecker ``q`` the model corrects underestimates the curvature (its step can reach ``eta_max``).
        """
        self._require_built()
        ctx = multi_replica_context()
        if ctx is not None:  # each replica's model is on its own paths: their mean, set once
            def merge(strategy, m, b):
                mean = tf.distribute.ReduceOp.MEAN  # over every replica, of every worker
                self._set_model(strategy.reduce(mean, m, axis=None), strategy.reduce(mean, b, axis=None))

            ctx.merge_call(merge, args=(tf.convert_to_tensor(matrix), tf.convert_to_tensor(rhs)))
            return
        self._set_model(matrix, rhs)

    def _set_model(self, matrix, rhs):
        m = tf.reshape(tf.cast(matrix, self._scalar_dtype), (2, 2))
        b = tf.reshape(tf.cast(rhs, self._scalar_dtype), (2,))
        finite = steps.all_finite([m, b])
        usable = finite & (m[0, 0] > 0) & (m[1, 1] >= 0)
        ok = usable & (b[0] > 0)
        one = tf.ones((), self._scalar_dtype)
        self.assign(self.model_matrix, tf.where(ok, m, tf.zeros_like(m)))
        self.assign(self.model_rhs, tf.where(ok, b, tf.zeros_like(b)))
        # 1: size the step with the model; -1: no step (uphill, or a model that is not finite: the
        # Kronecker rule it was meant to correct is not safe either); 0: no curvature along V (the
        # Kronecker rule within the trust region).
        blocked = (usable | ~finite) & ~ok
        self.assign(self.model_valid, tf.where(ok, one, tf.where(blocked, -one, tf.zeros_like(one))))

    def set_step_model(self, curvature_along, slope):
        """Exact quadratic model of the loss along this step's preconditioned direction ``V``.

        ``curvature_along = V^T C V`` with the model's exact GGN (a Jacobian-vector product, which
        only the model can compute) and ``slope = grad . V``.  The next update then takes
        ``eta = min(eta_max, slope / curvature_along, sqrt(2 delta_k / curvature_along))``: the
        minimiser of the quadratic model along ``V``, within the trust region.  This is the safeguard
        the Kronecker estimate of ``q`` needs: RNN-KFAC pooling underestimates the curvature scale, so
        a step sized from it alone overshoots.  ``V`` here is the step direction of
        :meth:`step_directions` (momentum included).
        """
        zero = tf.zeros((), self._scalar_dtype)
        q = tf.cast(curvature_along, self._scalar_dtype)
        self.set_subspace_model([[q, zero], [zero, zero]], [tf.cast(slope, self._scalar_dtype), zero])

    def current_trust_radius(self):
        """``delta_k`` at the current iteration in loss units (``None`` without a trust region).
        Relative mode: ``delta_k x m_ref``, ``+inf`` until the first update has set ``m_ref``."""
        if self.trust_radius is None:
            return None
        radius = steps.trust_radius(
            self.iterations, self.trust_radius, self.trust_radius_decay, self.trust_radius_min, self._scalar_dtype
        )
        if self.trust_radius_mode == "absolute":
            return radius
        ref = tf.convert_to_tensor(self.radius_reference)
        return tf.where(ref > 0, radius * ref, tf.constant(float("inf"), self._scalar_dtype))

    def _update_radius_reference(self, predicted_decrease):
        """Relative mode: the first finite, positive ``predicted_decrease`` becomes ``m_ref``."""
        ref = tf.convert_to_tensor(self.radius_reference)
        usable = tf.math.is_finite(predicted_decrease) & (predicted_decrease > 0)
        self.assign(self.radius_reference, tf.where((ref > 0) | ~usable, ref, predicted_decrease))

    # ------------------------------------------------------------------ applying

    def apply(self, grads, trainable_variables=None):
        """Keras' ``apply``, skipped as a whole (nothing written) when a gradient is not finite."""
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if not self.built:
                # Built here, outside the tf.cond below: variables cannot be created inside a branch.
                self.build(trainable_variables)
        if not self._statistics_source:
            raise RuntimeError(
                "DHKFAC: no curvature statistics were handed over before this step, so the update would "
                "be a plain damped gradient step.  Wrap the model before compiling: "
                "`model = deephedge_tf.optimizers.with_curvature(model)` (the Hedger does this itself), or "
                "in a custom loop call `optimizer.update_curvature(...)` (preconditioner 'kronecker') or "
                "`optimizer.set_jacobian_rows(...)` (preconditioner 'gauss_newton') before `optimizer.apply(...)` "
                "(see deephedge_tf.optimizers.capture.Recorder and train_step).")
        self._report_blocks()
        ctx = multi_replica_context()
        if ctx is not None:
            # Keras' convention: each replica's gradient of its (1 / replicas)-scaled loss, summed.  The
            # whole update then runs once in cross-replica context, writing every replica's copy.
            def merge(strategy, per_replica):
                summed = [None if g is None else strategy.reduce(tf.distribute.ReduceOp.SUM, g, axis=None)
                          for g in per_replica]
                return self._apply_once(summed, trainable_variables)

            return ctx.merge_call(merge, args=(list(grads),))
        return self._apply_once(list(grads), trainable_variables)

    def _apply_once(self, grads, trainable_variables):
        finite = steps.all_finite([_dense(g) for g in grads if g is not None])
        parent = super(DHKFAC, self)

        def run():
            parent.apply(grads, trainable_variables)
            return tf.constant(True)

        def skip():
            self.assign_add(self.skipped_steps, tf.constant(1, tf.int64))
            if self.gauss_newton:  # nothing taken: judge_step (which runs under replicas) has nothing to judge
                self.assign(self.predicted_decrease, tf.zeros((), tf.float64))
            return tf.constant(False)

        return tf.cond(finite, run, skip)

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # Replaces the per-variable loop: a block's kernel(s) and bias are preconditioned together.
        grad_by_index = {self._get_variable_index(v): g for g, v in zip(grads, trainable_variables)}
        if self.gauss_newton:
            self._gauss_newton_update(grad_by_index, learning_rate)
            return
        directions = self._block_directions(grad_by_index, True)
        eta_max = tf.cast(learning_rate, self._scalar_dtype)
        valid = self.model_valid > 0
        uphill = self.model_valid < 0
        quad = self._quadratic(directions)
        if self.trust_radius is not None and self.trust_radius_mode == "relative":
            # m_ref from this step's model: the exact one where supplied, else the Kronecker q along D.
            exact = steps.model_decrease(self.model_matrix, self.model_rhs)
            slope = self._slope(directions)
            kron = tf.square(slope) / (2.0 * tf.where(quad > 0, quad, tf.ones_like(quad)))
            kron = tf.where((quad > 0) & (slope > 0), kron, tf.zeros_like(kron))
            self._update_radius_reference(tf.where(valid, exact, kron))
        radius = self.current_trust_radius()
        if radius is None:
            kron_eta = eta_max
        else:
            kron_eta = steps.trust_region_step(quad, eta_max, radius)
        exact_eta, exact_mu = steps.subspace_step(self.model_matrix, self.model_rhs, eta_max, radius)
        eta = tf.where(valid, exact_eta, tf.where(uphill, tf.zeros_like(kron_eta), kron_eta))
        self.assign_add(self.uphill_steps, tf.cast(uphill, tf.int64))
        mu = tf.where(valid, exact_mu, tf.zeros_like(exact_mu)) if self.adaptive_momentum else None
        self.assign(self.model_valid, tf.zeros_like(self.model_valid))
        for k, (direction, _, _, _) in directions.items():
            block, state = self._kfac_blocks[k], self._kfac_states[k]
            step = tf.cast(eta, block.dtype) * direction
            if mu is not None:
                step = step + tf.cast(mu, block.dtype) * state.velocity
            self._move_block(k, step)
            if state.velocity is not None:
                self.assign(state.velocity, step if self.adaptive_momentum else direction)
        self._diagonal_step(grad_by_index)
        self.assign(self.step_size, eta)
        if mu is not None:
            self.assign(self.step_momentum, mu)

    def _gauss_newton_update(self, grad_by_index, learning_rate):
        """``W <- W - eta d`` with the Woodbury direction and the damped line model (module doc)."""
        directions, grads, rows, lam, scales, rows_d = self._gauss_newton_directions(grad_by_index)
        f64 = tf.float64
        eta = tf.zeros((), f64)
        # The loss judge_step sees also moved by the diagonal (Adam) step: its first-order decrease
        # belongs in the prediction.  Without it, once lambda has made the block step small, the ratio
        # compares the diagonal step's effect with a vanishing prediction, rejects, raises lambda further,
        # and the damping runs away (seen at 1e21 on the quickstart).
        diagonal_gain = self._diagonal_step(grad_by_index)
        if directions:
            # Slope with the gradients apply hands over (clipped, if clipping is set; the train step's
            # line model uses the true gradient, which is what counts where a model is handed over).
            valid = self.model_valid > 0
            slope = tf.add_n([tf.reduce_sum(tf.cast(grads[k] * d, f64)) for k, d in directions.items()])
            slope = tf.where(valid, tf.cast(self.model_rhs[0], f64), slope)
            norm2 = self._metric_norm2(directions, scales)
            sample = tf.reduce_sum(tf.square(rows_d))  # |R d|^2
            quad = tf.where(valid, tf.cast(self.model_matrix[0, 0], f64), sample)
            denom = quad + lam * norm2
            ok = (slope > 0) & (denom > 0) & tf.math.is_finite(slope) & tf.math.is_finite(denom)
            # The line model's fraction of the damped step (min_step_fraction reads it), then capped at eta_max.
            fraction = tf.where(ok, slope / tf.where(ok, denom, tf.ones_like(denom)), tf.zeros_like(slope))
            eta = tf.minimum(fraction, self._eta_max(learning_rate))
            quad = eta * eta * quad
            gain = eta * slope
            if self.max_relative_change is not None:
                shrink = tf.minimum(tf.ones((), f64), self._relative_change_cap(directions) / tf.where(
                    eta > 0, eta, tf.ones_like(eta)))
                eta, gain, quad = eta * shrink, gain * shrink, quad * shrink * shrink
            self.assign(self.predicted_decrease, tf.where(ok, gain - 0.5 * quad + diagonal_gain, 0.0))
            # No step without a decrease to take (counted in uphill_steps).  A solve or model that is not
            # finite also raises lambda, as a rejected step does: with the same lambda the next step
            # would fail the same way.
            finite = tf.math.is_finite(slope) & tf.math.is_finite(denom)
            if self.min_step_fraction is not None:
                lam = lam * self._cut_factor(fraction, ok)
            self.assign(self.lm_damping, tf.where(finite, lam, 2.0 * lam))
            self.assign_add(self.uphill_steps, tf.cast(~ok, tf.int64))
            eta = tf.where(ok, eta, tf.zeros_like(eta))
            for k, direction in directions.items():
                block, state = self._kfac_blocks[k], self._kfac_states[k]
                direction = tf.where(ok, direction, tf.zeros_like(direction))  # 0 x NaN is NaN
                self.assign(state.velocity, self._block_weights(k))
                self._move_block(k, tf.cast(eta, block.dtype) * direction)
        else:
            self.assign(self.predicted_decrease, tf.zeros((), f64))
        self._stepped_blocks = tuple(directions)
        self._factor = None  # lambda changes after this step: the next one factorises again
        self.assign(self.model_valid, tf.zeros_like(self.model_valid))
        self.assign(self.step_size, tf.cast(eta, self._scalar_dtype))

    def _eta_max(self, learning_rate):
        """Gauss-Newton: the cap on this step's ``eta`` (float64): ``learning_rate``, and from step
        ``late_after`` on (``iterations`` counts the steps before this one) at most ``late_max_step``."""
        cap = tf.cast(learning_rate, tf.float64)
        if self.late_max_step is None:
            return cap
        late = tf.minimum(cap, tf.constant(self.late_max_step, tf.float64))
        return tf.where(self.iterations >= self.late_after, late, cap)

    def _cut_factor(self, fraction, ok):
        """``min_step_fraction / fraction`` within [1, 1e3] (1 where no step is taken), ``fraction`` the line
        model's fraction of the damped step before ``eta_max`` caps it (float64)."""
        return tf.clip_by_value(self.min_step_fraction / tf.where(ok, fraction, tf.ones_like(fraction)), 1.0, 1e3)

    def _relative_change_cap(self, directions):
        """``min_k max_relative_change * |W_k| / |d_k|`` over the blocks (float64; +inf without any)."""
        caps = []
        for k, direction in directions.items():
            weights = self._block_weights(k)
            w_norm = tf.norm(tf.cast(weights, tf.float64))
            d_norm = tf.norm(tf.cast(direction, tf.float64))
            cap = self.max_relative_change * w_norm / tf.where(d_norm > 0, d_norm, tf.ones_like(d_norm))
            caps.append(tf.where((d_norm > 0) & (w_norm > 0), cap, tf.constant(float("inf"), tf.float64)))
        return tf.reduce_min(tf.stack(caps)) if caps else tf.constant(float("inf"), tf.float64)

    def _report_blocks(self):
        """Logs once which layers get curvature and which take the diagonal step."""
        if self._reported:
            return
        self._reported = True
        unfed = [b.name for b in self._kfac_blocks if b.name not in self._fed_blocks]
        diagonal = sorted({layer_path(self._trainable_variables[i]) for i in self._diagonal_indices})
        _LOG.info("DHKFAC: curvature blocks %s; diagonal (Adam) step for %s", list(self.active_blocks),
                  diagonal + unfed)
        if unfed:
            _LOG.warning("DHKFAC: no curvature statistics for layers %s (the capture does not understand them): "
                         "they take the diagonal (Adam) step", unfed)

    def _diagonal_step(self, grad_by_index):
        """Adam on the variables outside active blocks (bias-corrected with ``t = iterations + 1``).
        Returns the step's first-order decrease ``-g . step`` (float64; 0 without diagonal variables)."""
        indices = self._diagonal_step_indices()
        gain = tf.zeros((), tf.float64)
        if not indices:
            return gain
        t = tf.cast(self.iterations + 1, tf.float64)
        b1, b2 = self.diagonal_beta_1, self.diagonal_beta_2
        # Bias correction folded into the step size, computed in float64 then cast per variable.
        lr_t = self.diagonal_learning_rate * tf.sqrt(1.0 - tf.pow(tf.constant(b2, tf.float64), t)) / (
            1.0 - tf.pow(tf.constant(b1, tf.float64), t)
        )
        for i in indices:
            m, v = self._adam_m[i], self._adam_v[i]
            g = grad_by_index.get(i)
            if g is None:
                continue
            variable = self._trainable_variables[i]
            g = tf.cast(tf.convert_to_tensor(g), variable.dtype)
            self.assign(m, b1 * m + (1.0 - b1) * g)
            self.assign(v, b2 * v + (1.0 - b2) * tf.square(g))
            lr = tf.cast(lr_t, variable.dtype)
            step = lr * m / (tf.sqrt(v) + self.diagonal_epsilon)
            self.assign_sub(variable, step)
            gain += tf.reduce_sum(tf.cast(g * step, tf.float64))
        return gain

    def update_step(self, gradient, variable, learning_rate):
        raise NotImplementedError("DHKFAC updates whole blocks in _backend_update_step")

    # ------------------------------------------------------------------ config

    def _average_momentum(self, iteration):
        """``min(ema_momentum, k / (k + ema_warmup))`` at iteration ``k`` (0 at the first step), float32."""
        k = tf.cast(iteration, tf.float32)
        return tf.minimum(tf.constant(self.ema_momentum, tf.float32), k / tf.maximum(k + self.ema_warmup, 1.0))

    def _update_model_variables_moving_average(self, trainable_variables):
        # Keras' hook (called after each applied update, before the iteration count moves on), with the
        # momentum growing from 0 (see ema_warmup in the class doc) instead of fixed from the second step.
        if not self.use_ema:
            return
        momentum = self._average_momentum(self.iterations)
        for var, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is not None:
                m = tf.cast(momentum, var.dtype)
                average.assign(m * average + (1.0 - m) * var)

    def get_config(self):
        return {
            **super().get_config(),
            "damping": self.damping,
            "damping_mode": self.damping_mode,
            "ekfac": self.ekfac,
            "statistics_decay": self.statistics_decay,
            "curvature_period": self.curvature_period,
            "inverse_period": self.inverse_period,
            "trust_radius": self.trust_radius,
            "trust_radius_decay": self.trust_radius_decay,
            "trust_radius_min": self.trust_radius_min,
            "trust_radius_mode": self.trust_radius_mode,
            "momentum": self.momentum,
            "step_model": self.step_model,
            "jvp_method": self.jvp_method,
            "diagonal_learning_rate": self.diagonal_learning_rate,
            "diagonal_beta_1": self.diagonal_beta_1,
            "diagonal_beta_2": self.diagonal_beta_2,
            "diagonal_epsilon": self.diagonal_epsilon,
            "epsilon": self.epsilon,
            "preconditioner": self.preconditioner,
            "jacobian_rows": self.jacobian_rows,
            "damping_floor": self.damping_floor,
            "min_step_fraction": self.min_step_fraction,
            "max_relative_change": self.max_relative_change,
            "late_max_step": self.late_max_step,
            "late_after": self.late_after,
            "metric": self.metric,
            "metric_shrinkage": self.metric_shrinkage,
            "metric_power": self.metric_power,
            "ema_warmup": self.ema_warmup,
        }
