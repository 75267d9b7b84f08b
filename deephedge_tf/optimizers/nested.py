"""The linearised nested optimiser of the DHLNN paper (deep hedging with a linearised-objective network).

One *outer* iteration on a batch (the paper's Algorithm 1, in the library's terms):

1. a forward pass at the current weights ``w_r``: the trades ``u_r`` ``[T, B, N]`` (contracts, time-major),
   each path's PnL ``V_b`` and costs ``C_b``, and the objective's derivatives ``rho_V = d rho / d V_b`` and
   ``rho_C = d rho / d C_b`` there, held fixed (the paper's ``rho'(V^r)``);
2. ``inner_steps`` Adam steps on the *linearised* objective

       L(w) = sum_b rho_V,b V^_b + rho_C,b C^_b,     u^ = u_r + J (w - w_r),   J = du/dw at w_r (fixed),
       V^_b = sum_{k,n} u^ R - C^_b - Z_b,          C^_b = sum_{k,n} c P s(u^)  (smoothed costs),

   whose gradient is ``J^T dL/du^``: the fixed Jacobian of the first pass, so no new forward pass at the
   moved weights.  The objective's own weights (an OCE's ``w``) and regularisation losses keep the
   gradient of step 1 (the paper's "fixed gradient").  The inner loop stops early once a step moves the
   weights by less than ``tolerance`` (Euclidean norm; 0: never).

``s`` smooths the kink of ``|u|`` (``cost_smoothing``):

* ``"majorizer"`` (default): the quadratic that touches ``|u|`` from above at the outer trades,
  ``s(u) = (u^2 + a^2) / (2 a)``, ``a = sqrt(u_r^2 + eps^2)`` (``eps`` a small multiple of the mean
  ``|u_r|`` per instrument, as :class:`~deephedge_tf.hedger.CostMajorizerCurvature`): the first inner step
  is the exact gradient step up to ``eps`` (0.05-0.5% relative at the default floor 0.1; exact as the floor
  goes to 0, tested), and the inner problem is a Gauss-Newton-like quadratic model.
* ``"square"``: the paper's eq. 13 taken literally, ``s(u) = u^2`` on each trade.  Note the paper's eq. 14
  differentiates ``(f_{i+1} - f_i)^2`` as if it were ``f_{i+1}^2 - f_i^2``; the gradient here is the exact
  one of eq. 13 (our trades ``u_k`` are its ``delta_{k+1} - delta_k``).

``J d`` for a weight change ``d`` is computed as the gradient with respect to a zero cotangent ``v`` of
``<J^T v, d>`` (a backward pass through the backward pass), which works with either time loop of the
hedger (forward-mode accumulators do not pass the graph loop's ``tf.while_loop``).  An inner step costs
two backward passes and one backward-of-backward (about 2-3 Adam steps); the outer pass one forward and one
backward.  ``iterations`` counts inner steps (Adam's bias correction sees every one), and so do a
learning-rate schedule and the step counts a training run reports.

One reading of the paper differs: its section 5.1 computes an Adam-adjusted gradient in the outer
iteration and keeps it fixed for plain steps (its eq. 15) inside; here every inner step is an Adam step on
the linearised objective's gradient, which moves with the smoothed costs.

Only :class:`~deephedge_tf.hedger.Hedger` runs the nested step (it knows the trades and the costs); a plain
Keras model compiled with this optimizer fails with a clear error at its first step.  Example: the
class's docstring.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.optimizers.steps import all_finite
from deephedge_tf.optimizers.train_step import tree_dot
from deephedge_tf.validation import check_int, check_real

__all__ = ["COST_SMOOTHINGS", "LinearizedNested", "LinearizedObjective", "linearized_nested_step"]

COST_SMOOTHINGS = ("majorizer", "square")


@keras.saving.register_keras_serializable(package="deephedge_tf")
class LinearizedNested(keras.optimizers.Adam):
    """DHLNN's nested optimiser: Adam steps on the objective linearised in the policy's trades (module doc).

    Args:
      learning_rate: Adam's learning rate of every inner step (the paper: 1e-3), a float or a schedule
        (called with the inner-step count).
      inner_steps: inner iterations per outer iteration (per batch), >= 1; 1 is a plain Adam step.
      tolerance: stop the inner loop once a step moves the weights by less than this (0: never).
      cost_smoothing: ``"majorizer"`` or ``"square"`` (module doc).
      majorizer_floor: ``eps`` of the majorizer as a multiple of the mean ``|u_r|`` per instrument (> 0).
      **kwargs: Adam's (``beta_1``, ``beta_2``, ``epsilon``, ``clipnorm``, ...; the paper's 0.9, 0.999, 1e-8
        are Keras' defaults but ``epsilon``, set here to 1e-8).

    The anchored band of the DHLNN paper trained by it inside a hedger (``iterations`` counts inner steps):

    >>> import deephedge_tf as dh
    >>> from deephedge_tf.features import make_batch
    >>> market = dh.GBM(s0=1.0, sigma=0.1, steps=5, dt=1 / 365)
    >>> batch = make_batch(market.simulate(256), dh.EuropeanOption(strike=1.0), [dh.Spot(cost=2e-3)])
    >>> hedger = dh.Hedger(dh.DeltaAnchoredBandPolicy(num_layers=1, width=8), dh.EntropicRisk(a=1.0))
    >>> hedger.compile(optimizer=LinearizedNested(learning_rate=1e-3, inner_steps=3))
    >>> history = hedger.fit(tf.data.Dataset.from_tensors(batch), epochs=2, verbose=0)
    >>> int(hedger.optimizer.iterations.numpy())      # 2 outer iterations x 3 inner steps
    6
    """

    def __init__(self, learning_rate=1e-3, inner_steps: int = 5, tolerance: float = 0.0,
                 cost_smoothing: str = "majorizer", majorizer_floor: float = 0.1, epsilon: float = 1e-8,
                 name: str = "linearized_nested", **kwargs):
        super().__init__(learning_rate=learning_rate, epsilon=epsilon, name=name, **kwargs)
        self.inner_steps = check_int("LinearizedNested", "inner_steps", inner_steps, low=1)
        self.tolerance = check_real("LinearizedNested", "tolerance", tolerance, low=0.0)
        self.cost_smoothing = _check_smoothing("LinearizedNested", cost_smoothing)
        self.majorizer_floor = check_real("LinearizedNested", "majorizer_floor", majorizer_floor, low=0.0,
                                          low_open=True)
        self._inside_nested_step = False

    def apply(self, grads, trainable_variables=None):
        # A plain train step would make this a silent Adam: refuse it (module doc).
        if not self._inside_nested_step:
            raise DeepHedgeError(
                "LinearizedNested: this optimizer linearises a hedger's trades and runs only inside "
                "deephedge_tf.Hedger's train step (a plain Keras model has no trades or costs to linearise); "
                "use keras.optimizers.Adam or deephedge_tf.optimizers.DHKFAC for other models")
        return super().apply(grads, trainable_variables)

    def inner_apply(self, grads, variables):
        """One inner Adam step (what :func:`linearized_nested_step` calls)."""
        self._inside_nested_step = True
        try:
            return super().apply(grads, variables)
        finally:
            self._inside_nested_step = False

    def get_config(self):
        return {**super().get_config(), "inner_steps": self.inner_steps, "tolerance": self.tolerance,
                "cost_smoothing": self.cost_smoothing, "majorizer_floor": self.majorizer_floor}


def _check_smoothing(owner: str, value: str) -> str:
    if value not in COST_SMOOTHINGS:
        raise DeepHedgeError(f"{owner}: cost_smoothing must be one of {', '.join(COST_SMOOTHINGS)}; got {value!r}")
    return value


def _add(xs, ys):
    return [x if y is None else (y if x is None else x + y) for x, y in zip(xs, ys)]


class LinearizedObjective:
    """The objective of one outer iteration, linearised at the hedger's current weights ``w_r`` on ``batch``
    (batch-major; module doc): the forward pass at ``w_r`` is run when this is made.

    Attributes:
      loss, outputs: the hedger's loss and outputs dict at ``w_r`` (trades ``outputs["actions"]``).
      variables: the hedger's trainable variables (the order of every gradient list).

    :meth:`gradient` is the inner iterations' gradient at ``w_r + delta``.  ``scale`` multiplies every
    gradient (1 / replicas under a multi-replica strategy, whose replicas' gradients are summed).
    """

    def __init__(self, hedger, batch, cost_smoothing: str = "majorizer", majorizer_floor: float = 0.1,
                 scale: float = 1.0):
        from deephedge_tf.features import time_major
        from deephedge_tf.hedger import CostMajorizerCurvature

        _check_smoothing("LinearizedObjective", cost_smoothing)
        self.variables = list(hedger.trainable_variables)
        self._objective_ids = {id(v) for v in hedger.objective.trainable_variables}
        # The trades depend on the policy's weights only: J^T is taken over those (asking TensorFlow for
        # zeros of unconnected Keras variables fails on their string dtype).
        self._policy_variables = [v for v in self.variables if id(v) not in self._objective_ids]
        objective_variables = [v for v in self.variables if id(v) in self._objective_ids]
        self._scale = scale
        tm = time_major(batch)
        with tf.GradientTape(persistent=True) as tape:
            self.outputs = hedger.unroll(batch, training=True)
            self.loss = hedger._loss(self.outputs)
        # ``lin`` records the backward pass J^T v for a zero cotangent v, to differentiate it in v (:meth:`jvp`).
        with tf.GradientTape(persistent=True) as lin:
            self._probe = tf.zeros_like(self.outputs["actions"])
            lin.watch(self._probe)
            self._jt_probe = self._policy_vjp(tape, self._probe)
        self._tape, self._lin = tape, lin
        u_r = self.u_r = self.outputs["actions"]
        dtype = u_r.dtype
        self._returns = tf.cast(tm["returns"], dtype)
        cost_weight = tf.cast(tm["premiums"], dtype) * tf.cast(tm["cost_rates"], dtype)   # c P, [T, B, N]

        # rho'(V^r): the objective's derivatives in each path's PnL and costs, held fixed.
        pnl, costs = tf.stop_gradient(self.outputs["pnl"]), tf.stop_gradient(self.outputs["costs"])
        with tf.GradientTape() as risk_tape:
            risk_tape.watch([pnl, costs])
            risk = hedger.objective(pnl, costs)
        rho_v, rho_c = risk_tape.gradient(risk, [pnl, costs], unconnected_gradients=tf.UnconnectedGradients.ZERO)
        self._rho_v, self._rho_c = rho_v[None, :, None], rho_c[None, :, None]   # broadcast over [T, B, N]

        # The gradient held fixed: the objective's own weights and any regularisation loss, at w_r.
        fixed = [None] * len(self.variables)
        if objective_variables:
            g_obj = iter(tape.gradient(self.loss, objective_variables))
            fixed = [next(g_obj) if id(v) in self._objective_ids else None for v in self.variables]
        if hedger.losses:
            fixed = _add(fixed, tape.gradient(tf.add_n(hedger.losses), self.variables))
        self._fixed = [None if f is None else scale * f for f in fixed]

        if cost_smoothing == "majorizer":
            # d s / du = u / a: the weights c P / a of the costs' majorizer at u_r.
            self._slope_weight = CostMajorizerCurvature(majorizer_floor).weights(u_r, cost_weight)
        else:  # "square"
            self._slope_weight = 2.0 * cost_weight

    def _policy_vjp(self, tape, cotangent) -> list:
        """``J^T cotangent`` per variable of :attr:`variables` (``None`` for the objective's own)."""
        g = iter(tape.gradient(self.outputs["actions"], self._policy_variables, output_gradients=cotangent))
        out = []
        for v in self.variables:
            if id(v) in self._objective_ids:
                out.append(None)
            else:
                gi = next(g)
                out.append(tf.zeros_like(v) if gi is None else gi)
        return out

    def jvp(self, delta) -> tf.Tensor:
        """``J delta`` ``[T, B, N]``: the trades' change to first order for weight changes ``delta``."""
        # J^T v is linear in v: its vector-Jacobian product with ``delta`` is J delta.
        pairs = [(j, tf.cast(d, j.dtype)) for j, d in zip(self._jt_probe, delta) if j is not None]
        return self._lin.gradient([j for j, _ in pairs], self._probe, output_gradients=[d for _, d in pairs],
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)

    def cotangent(self, u_hat) -> tf.Tensor:
        """``dL/du^`` at the linearised trades ``u_hat`` (times ``scale``)."""
        slope = self._rho_v * self._returns - (self._rho_v - self._rho_c) * self._slope_weight * u_hat
        return tf.stop_gradient(self._scale * slope)

    def gradient(self, delta=None) -> list:
        """The linearised objective's gradient at ``w_r + delta`` (``None``: at ``w_r``), one per variable."""
        u_hat = self.u_r if delta is None else self.u_r + self.jvp(delta)
        return _add(self._policy_vjp(self._tape, self.cotangent(u_hat)), self._fixed)


def linearized_nested_step(hedger, batch, scale: float = 1.0):
    """One outer iteration of :class:`LinearizedNested` on ``hedger`` and its batch-major ``batch``
    (module doc): ``(loss at w_r, outputs at w_r, skipped)``; ``skipped`` is 1.0 when the first pass was not
    finite (nothing changes) else 0.0.  ``scale``: see :class:`LinearizedObjective`."""
    opt = hedger.optimizer
    lin = LinearizedObjective(hedger, batch, opt.cost_smoothing, opt.majorizer_floor, scale)
    variables = lin.variables
    first = lin.gradient()
    finite = all_finite([lin.loss, *first])
    w_r = [tf.identity(v) for v in variables]

    def inner_loop():
        # Python loop: inner_steps is a small constant; each step's ops read the weights the last one wrote.
        done = tf.constant(False)
        for j in range(opt.inner_steps):
            def step(j=j):
                before = [tf.identity(v) for v in variables] if opt.tolerance > 0 else None
                if j == 0:
                    grads = first
                else:
                    grads = lin.gradient([tf.convert_to_tensor(v) - w for v, w in zip(variables, w_r)])
                # Made in this branch's graph: Keras' apply needs all its gradients from one graph.
                grads = [None if g is None else tf.identity(g) for g in grads]
                ok = all_finite(grads)

                def apply():
                    opt.inner_apply(grads, variables)
                    return tf.constant(True)

                applied = tf.cond(ok, apply, lambda: tf.constant(False))
                if opt.tolerance <= 0:
                    return tf.logical_not(applied)
                change = [tf.convert_to_tensor(v) - b for v, b in zip(variables, before)]
                moved = tf.sqrt(tree_dot(change, change))
                return tf.logical_or(tf.logical_not(applied), moved < opt.tolerance)

            done = tf.cond(done, lambda: tf.constant(True), step)
        return tf.constant(0.0, tf.float32)

    skipped = tf.cond(finite, inner_loop, lambda: tf.constant(1.0, tf.float32))
    return lin.loss, lin.outputs, skipped
