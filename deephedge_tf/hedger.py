"""The hedging model: a keras.Model that unrolls a policy over time and books its trades.

    hedger = Hedger(policy, objective)
    hedger.compile(optimizer=keras.optimizers.Adam(1e-3))
    hedger.fit(train_dataset, validation_data=valid_dataset, epochs=..., callbacks=[...])
    out = hedger(batch)     # {"pnl": [B], "costs": [B], "gains": [B], "turnover": [B], "actions": [T, B, N]}

Batches are the dicts of :func:`deephedge_tf.features.make_batch` (batch-major at the Keras
boundary, time-major inside the model).  The time loop is a
Python loop unrolled inside the traced step (T is static): simple, fast per step, and it leaves every
per-step tensor reachable from the tape (which the curvature optimizer needs).  Compile time grows
with T; see BENCHMARKS.md.

PnL of a path (we are short the liability and trade ``u_k`` units of each instrument at ``t_k``):

    PnL = -Z + sum_k sum_n u_k^n R_k^n - C,      C = sum_k sum_n c_k^n |u_k^n| P_k^n

with returns R, premiums P and cost rates c from the instruments (deephedge_tf.instruments.hedges).

Training never applies a non-finite update: a step whose loss or gradients are not all finite is
skipped (no variable changes, the optimizer's iteration count included) and counted in the
``skipped_steps`` metric.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

from deephedge_tf.data import PathBatches, SyncEpoch
from deephedge_tf.distribute import distributed_batches, gather_paths, is_multi_worker, multi_replica_context
from deephedge_tf.optimizers.averaging import ValidateAveragedWeights
from deephedge_tf.features import time_major
from deephedge_tf.optimizers.losses import OutputCurvature, rademacher
from deephedge_tf.optimizers.steps import all_finite
from deephedge_tf.policies.base import DEFAULT_TIME_LOOP, check_time_loop, policy_rollout
from deephedge_tf.validation import check_real

OUTPUT_KEYS = ("pnl", "costs", "gains", "turnover", "actions")
GGN_MODES = ("exact", "sampled", "majorizer")


class CostL2Curvature(OutputCurvature):
    """L2 surrogate of the transaction costs' curvature on the actions ``u`` ``[T, B, N]`` (``|u|`` has
    none): per path ``c2 sum_k sum_n (u_k^n - u_{k-1}^n)^2`` (``u_{-1} = 0``), i.e. ``H_b = 2 c2 D^T D``
    with ``D`` the time difference.  Pseudo-gradients ``sqrt(2 c2) D^T z``, ``z`` random signs
    (:func:`~deephedge_tf.optimizers.losses.rademacher`).  The Gauss-Newton step's Jacobian rows are the
    base class's: one row per path, the weight gradient of that path's ``u . (pseudo-gradient)``.  The
    batch axis of ``u`` is 1 (time-major actions), unlike the batch-first outputs
    :class:`~deephedge_tf.optimizers.losses.RowFactor` describes; that works because these rows take no
    per-path ``scale`` or ``centre`` (the per-path split is the capture's, whatever the layout)."""

    def __init__(self, cost_l2: float):
        self.cost_l2 = float(cost_l2)

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        u = tf.convert_to_tensor(outputs)
        z = rademacher(tf.shape(u), seed, u.dtype)
        # (D^T z)_k = z_k - z_{k+1} (z_T = 0).
        dt_z = z - tf.concat([z[1:], tf.zeros_like(z[:1])], axis=0)
        return tf.sqrt(tf.constant(2.0 * self.cost_l2, u.dtype)) * dt_z

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        def diff(x):
            return x - tf.concat([tf.zeros_like(x[:1]), x[:-1]], axis=0)

        u = tf.convert_to_tensor(u)
        per_path = tf.reduce_sum(diff(u) * diff(tf.cast(v, u.dtype)), axis=[0, 2])
        return tf.constant(2.0 * self.cost_l2, u.dtype) * tf.reduce_mean(per_path)


class CostMajorizerCurvature(OutputCurvature):
    """Curvature of the proportional costs ``c P |u|`` from their quadratic majorizer at the current trades.

    ``|u|`` has no curvature (zero almost everywhere, a kink at 0), so a Gauss-Newton model without a
    cost term extrapolates the costs linearly and predicts decreases the loss does not deliver: on a
    task where costs are a large part of the loss (configs/suite/cliquet_small.yaml) the damping then
    climbs until the step is a tiny gradient step.  Here each trade ``u0`` (per step, path, instrument)
    contributes the curvature of the quadratic that touches ``|u|`` at ``u0`` from above,
    ``|u| <= u^2 / (2 a) + a / 2`` with ``a = sqrt(u0^2 + eps_n^2)`` (the iteratively reweighted least
    squares bound): per path ``H_b = diag(c P / a)``.  ``eps_n = floor x mean_{t,b} |u_n|`` keeps the
    weight of trades near zero finite.  Outputs: the actions ``[T, B, N]`` (contracts, time-major);
    targets: ``c P`` ``[T, B, N]``.  Pseudo-gradients ``sqrt(c P / a) z``, ``z`` random signs
    (:func:`~deephedge_tf.optimizers.losses.rademacher`); the Jacobian rows are the base class's (one
    sampled row per path; the batch axis is 1, which works because the rows take no per-path scale or
    centre, as for :class:`CostL2Curvature`).

        >>> import tensorflow as tf
        >>> u = tf.constant([[[2.0], [0.0]]])          # [T=1, B=2, N=1]: trades 2 and 0
        >>> cp = tf.constant([[[0.3], [0.3]]])         # c P
        >>> curvature = CostMajorizerCurvature(floor=1.0)   # eps = mean |u| = 1
        >>> [round(float(x), 4) for x in curvature.weights(u, cp)[0, :, 0]]   # 0.3 / sqrt(u^2 + 1)
        [0.1342, 0.3]
        >>> round(float(curvature.bilinear(u, tf.ones_like(u), tf.ones_like(u), cp)), 4)   # mean over paths
        0.2171
    """

    def __init__(self, floor: float = 1.0):
        self.floor = check_real("CostMajorizerCurvature", "floor", floor, low=0.0, low_open=True)

    def weights(self, outputs, targets):
        """``c P / sqrt(u^2 + eps^2)`` ``[T, B, N]``, held fixed (no gradient) for the step."""
        u = tf.stop_gradient(tf.convert_to_tensor(outputs))
        cost_weight = tf.stop_gradient(tf.cast(targets, u.dtype))
        typical = tf.reduce_mean(tf.abs(u), axis=[0, 1], keepdims=True)
        # The tiny absolute term only guards an instrument that is never traded (all u = 0).
        eps = tf.constant(self.floor, u.dtype) * typical + tf.constant(1e-12, u.dtype)
        return cost_weight / tf.sqrt(tf.square(u) + tf.square(eps))

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        u = tf.convert_to_tensor(outputs)
        z = rademacher(tf.shape(u), seed, u.dtype)
        return tf.sqrt(self.weights(u, targets)) * z

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        w = self.weights(outputs, targets)
        u = tf.convert_to_tensor(u)
        return tf.reduce_mean(tf.reduce_sum(w * u * tf.cast(v, u.dtype), axis=[0, 2]))


@keras.saving.register_keras_serializable(package="deephedge_tf")
class MarketStep(keras.layers.Layer):
    """Books trades: gains ``sum_n u^n R^n``, costs ``sum_n c^n |u^n| P^n`` and traded notional.

    Inputs ``[..., N]`` each (one decision time ``[B, N]``, or all of them ``[T, B, N]``); returns
    ``(gains, costs, notional)``, each ``[...]``.
    """

    def call(self, action, returns, premiums, cost_rates):
        notional = tf.abs(action) * premiums
        return (tf.reduce_sum(action * returns, axis=-1), tf.reduce_sum(cost_rates * notional, axis=-1),
                tf.reduce_sum(notional, axis=-1))


def apply_if_finite(optimizer, grads, variables, finite) -> tf.Tensor:
    """Applies ``grads`` unless ``finite`` is False; returns 1.0 for a skipped step, else 0.0.

    Under a multi-replica strategy every replica must take the same branch, and the optimizer's update
    synchronises the replicas (``merge_call``), which cannot run inside a ``tf.cond`` branch in replica
    context: the step is skipped when any replica's gradient is not finite, and the condition runs in
    cross-replica context around the replicas' updates.
    """
    replica = multi_replica_context()
    if replica is None:
        def apply():
            optimizer.apply(grads, variables)
            return tf.constant(0.0, tf.float32)

        return tf.cond(finite, apply, lambda: tf.constant(1.0, tf.float32))
    bad = replica.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
    all_finite_now = tf.equal(bad, 0.0)

    def cross_replica(distribution, flag, grads):
        def apply():
            distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))
            return tf.constant(True)

        tf.cond(distribution.experimental_local_results(flag)[0], apply, lambda: tf.constant(False))

    replica.merge_call(cross_replica, args=(all_finite_now, list(grads)))
    return 1.0 - tf.cast(all_finite_now, tf.float32)


def _replicas() -> float:
    """Replicas in sync under the current tf.distribute strategy (1 without one)."""
    return float(tf.distribute.get_strategy().num_replicas_in_sync)


def _fit_arguments(method, x, args, kwargs) -> dict:
    """``method(self, x, *args, **kwargs)``'s arguments by name (to find and replace the data)."""
    bound = inspect.signature(method).bind(None, x, *args, **kwargs)
    named = dict(bound.arguments)
    named.pop("self")
    named.update(named.pop("kwargs", {}))
    return named


def _first_batch(x):
    """The first batch of a PyDataset, a tf.data.Dataset or an in-memory dict of arrays."""
    if isinstance(x, keras.utils.PyDataset):
        return x[0]
    if isinstance(x, tf.data.Dataset):
        return next(iter(x))
    if isinstance(x, dict):
        return x
    raise TypeError(f"Hedger.fit: unsupported data {type(x).__name__}; pass a PyDataset "
                    "(deephedge_tf.data.PathBatches), a tf.data.Dataset or a dict of batch-major arrays")


@keras.saving.register_keras_serializable(package="deephedge_tf")
class Hedger(keras.Model):
    """Unrolls ``policy`` over the batch's time steps and scores the PnL with ``objective``.

    Args:
      policy: a :class:`deephedge_tf.policies.base.Policy`.
      objective: a :class:`deephedge_tf.objectives.Objective` layer: ``objective(pnl, costs)`` is the
        training loss (trainable weights of its own, if any, train with the policy).
      ggn_mode, ggn_cost_l2, ggn_cost_floor: curvature for second-order optimizers: the objective's GGN
        factor in the PnL ("exact"), plus an L2 surrogate of the costs on the actions of weight
        ggn_cost_l2 ("sampled"; :class:`CostL2Curvature`) or the costs' quadratic majorizer at the current
        trades ("majorizer"; :class:`CostMajorizerCurvature` with ``floor=ggn_cost_floor``; left out when
        the first batch has no costs).
      curvature_paths: statistics and step model from the first this-many paths of each batch
        (None: all).  The Gauss-Newton step takes its statistics from its ``jacobian_rows`` paths.
      natural_units: measure the policy's trades in natural units of each instrument (set from the
        first batch by :meth:`set_instrument_units` when the hedger is built); ``False``: contracts.
      time_loop: ``"graph"`` (the default: the decision loop as one ``tf.while_loop``, compile time
        independent of ``T``) or ``"python"`` (unrolled when traced: compile time grows with ``T``); see
        :func:`deephedge_tf.policies.base.policy_rollout`.

    With an optimizer that takes curvature statistics (:class:`deephedge_tf.optimizers.DHKFAC`) the train
    step is :func:`deephedge_tf.optimizers.train_step.curvature_train_step`: every Dense and LSTM layer of
    the policy is captured (:mod:`deephedge_tf.optimizers.capture`), whatever the policy.

    >>> import deephedge_tf as dh
    >>> from deephedge_tf.features import make_batch
    >>> market = dh.GBM(s0=100.0, sigma=0.2, steps=10, dt=1 / 365)
    >>> call = dh.EuropeanOption(strike=100.0)
    >>> batch = make_batch(market.simulate(256), call, [dh.Spot(cost=1e-3)])
    >>> hedger = Hedger(dh.BlackScholesDeltaPolicy(), dh.MeanVariance(gamma=1.0))
    >>> out = hedger(batch)
    >>> tuple(out["actions"].shape), tuple(out["pnl"].shape)          # time-major actions, [B] per path
    ((10, 256, 1), (256,))
    >>> bool(out["pnl"].numpy().std() < 0.3 * batch["payoff"].numpy().std())   # the delta hedge works
    True
    """

    def __init__(self, policy, objective, ggn_mode: str = "majorizer", ggn_cost_l2: float = 0.0,
                 curvature_paths: int | None = None, natural_units: bool = True, ggn_cost_floor: float = 1.0,
                 time_loop: str = DEFAULT_TIME_LOOP, **kwargs):
        super().__init__(**kwargs)
        self.time_loop = check_time_loop(time_loop, "Hedger")
        self.natural_units = bool(natural_units)
        self.policy = policy
        self.objective = objective
        if ggn_mode not in GGN_MODES:
            raise ValueError(f"Hedger: ggn_mode must be one of {GGN_MODES}; got {ggn_mode!r}")
        self.ggn_mode, self.ggn_cost_l2 = ggn_mode, float(ggn_cost_l2)
        # Made (and its floor checked) once here; used by the train step when the batches charge costs.
        self._cost_majorizer = CostMajorizerCurvature(ggn_cost_floor)
        # Whether the batches charge costs (set from the first batch by build_from_batch): without any,
        # the majorizer's rows would all be zero and cost a Jacobian pass for nothing.
        self._batches_have_costs = True
        self.curvature_paths = curvature_paths
        # Keras layers cast floating inputs to their compute dtype: the booking layer must compute in
        # the model's dtype (float64 runs stay float64), and so must the policy and objective.
        self.market_step = MarketStep(name="market_step", dtype=self.dtype_policy)
        for part in (policy, objective):
            if part.compute_dtype != self.compute_dtype:
                raise ValueError(f"Hedger: {part.name} computes in {part.compute_dtype} but the hedger in "
                                 f"{self.compute_dtype}; create all three with the same dtype=")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.pnl_mean = keras.metrics.Mean(name="pnl_mean")
        self.cost_mean = keras.metrics.Mean(name="cost_mean")
        self.skipped = keras.metrics.Sum(name="skipped_steps")

    @property
    def metrics(self):
        return [self.loss_tracker, self.pnl_mean, self.cost_mean, self.skipped]

    # -- forward ---------------------------------------------------------------------------
    def unroll(self, batch, training=None):
        """Runs the policy over time on a batch-major batch; returns the outputs dict (actions
        time-major ``[T, B, N]``, see module docstring)."""
        tm = time_major(batch)
        return self._book(tm, policy_rollout(self.policy, tm["obs"], tm["mask"], training=training,
                                             time_loop=self.time_loop))

    def _book(self, tm: dict, actions) -> dict:
        """Outputs dict from time-major batch ``tm`` and actions ``[T, B, N]``."""
        gains, costs, turnover = (tf.reduce_sum(x, axis=0) for x in self.market_step(
            actions, tm["returns"], tm["premiums"], tm["cost_rates"]))
        pnl = gains - costs - tm["payoff"]
        return {"pnl": pnl, "costs": costs, "gains": gains, "turnover": turnover, "actions": actions}

    def call(self, batch, training=None):
        return self.unroll(batch, training=training)

    # -- building --------------------------------------------------------------------------
    def build(self, input_shape=None):
        # Sub-layers build themselves on their first call (their input sizes are only known per
        # step); nothing to create here.  Defined so Keras does not try to trace a symbolic call.
        self.built = True

    def build_from_batch(self, batch) -> None:
        """Creates every weight (policy, objective, optimizer state) with one eager call on two paths.

        ``fit`` does this itself on its first batch: Keras would otherwise build the optimizer
        before the policy's weights exist.
        """
        # Under a tf.distribute strategy, weights and optimizer slots must be created in its scope (as
        # mirrored variables); fit may be called outside the `with strategy.scope()` the model was built in.
        with self.distribute_strategy.scope():
            if self.natural_units:
                self.set_instrument_units(batch)
            self._batches_have_costs = bool(tf.reduce_any(tf.convert_to_tensor(batch["cost_rates"]) > 0))
            small = tf.nest.map_structure(lambda x: tf.convert_to_tensor(x)[:2], batch)
            self._loss(self.unroll(small))
            self.build()
            if getattr(self, "optimizer", None) is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)

    def set_instrument_units(self, batch) -> None:
        """Sets the policy's ``instrument_units`` from a pilot batch (batch-major): one natural unit of
        instrument ``n`` is ``sd_0 / sd_n`` contracts, ``sd_n`` the standard deviation of its per-step
        price change (``returns``) where it is tradable, so every unit moves about as much per step as one
        contract of the first instrument (the spot when it is hedged: its unit stays exactly one, which
        the Black-Scholes-delta baselines and anchors rely on).  An instrument that never moves keeps 1.

        Stored with the weights and the export, so a trained or exported policy keeps the units it was
        trained with (the exported policy's inputs and outputs are contracts).
        """
        returns = tf.convert_to_tensor(batch["returns"])
        self.policy.set_num_instruments(int(returns.shape[-1]))
        tradable = tf.cast(tf.convert_to_tensor(batch["mask"]) > 0, returns.dtype)
        count = tf.maximum(tf.reduce_sum(tradable, axis=[0, 1]), 1.0)
        mean = tf.reduce_sum(returns * tradable, axis=[0, 1]) / count
        sd = tf.sqrt(tf.reduce_sum(tradable * tf.square(returns - mean), axis=[0, 1]) / count)
        units = tf.where(sd > 0, sd[0] / tf.where(sd > 0, sd, tf.ones_like(sd)), tf.ones_like(sd))
        units = tf.concat([tf.ones_like(units[:1]), units[1:]], axis=0)
        if tuple(self.policy.instrument_units.shape) != tuple(units.shape):
            raise ValueError(f"Hedger: the batch has {units.shape[0]} instruments, the policy "
                             f"{self.policy.num_instruments}")
        self.policy.instrument_units.assign(tf.cast(units, self.policy.instrument_units.dtype))

    def fit(self, x=None, *args, **kwargs):
        kwargs = _fit_arguments(keras.Model.fit, x, args, kwargs)
        # Keras shuffles the order of a dataset's batches by default, from an unseeded generator: a
        # resumed run would then see the batches in another order.  Batches of fresh paths need no
        # shuffling, so the default here is off.
        kwargs.setdefault("shuffle", False)
        if not self.policy.built:
            self.build_from_batch(_first_batch(kwargs.get("x")))
        # PathBatches train through their tf.data pipeline (deephedge_tf.data); SyncEpoch does what Keras
        # did for a PyDataset it iterates itself: a new epoch draws new paths.
        synced = [data for data in (kwargs.get("x"), kwargs.get("validation_data"))
                  if isinstance(data, PathBatches) and data.fresh]
        kwargs["callbacks"] = [SyncEpoch(data) for data in synced] + list(kwargs.get("callbacks") or [])
        averaging = getattr(self.optimizer, "use_ema", False)
        if averaging and not any(isinstance(c, ValidateAveragedWeights) for c in kwargs["callbacks"]):
            kwargs["callbacks"].insert(0, ValidateAveragedWeights())  # validate the weights fit ends on
        for key, steps in (("x", "steps_per_epoch"), ("validation_data", "validation_steps")):
            if isinstance(kwargs.get(key), PathBatches):
                kwargs[key] = self._dataset_of(kwargs[key], kwargs, steps)
        return super().fit(**kwargs)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Under a strategy Keras builds the model from the replicas' first batches averaged, which
        # MultiWorkerMirroredStrategy cannot reduce for a dict of tensors; build_from_batch has built the
        # weights and the optimizer already.
        if self.built and getattr(self, "optimizer", None) is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def evaluate(self, x=None, *args, **kwargs):
        kwargs = _fit_arguments(keras.Model.evaluate, x, args, kwargs)
        if isinstance(kwargs.get("x"), PathBatches):
            kwargs["x"] = self._dataset_of(kwargs["x"], kwargs, "steps")
        return super().evaluate(**kwargs)

    def _dataset_of(self, batches: PathBatches, kwargs: dict, steps_key: str):
        """The tf.data pipeline of ``batches``; under several replicas sharded by path index, without end,
        with its steps per epoch set in ``kwargs[steps_key]``."""
        strategy = self.distribute_strategy
        if strategy.num_replicas_in_sync == 1:
            return batches.dataset()
        kwargs[steps_key] = kwargs.get(steps_key) or len(batches)
        first_epoch = kwargs.get("initial_epoch", 0) if steps_key == "steps_per_epoch" else 0
        return distributed_batches(batches, strategy, first_epoch)

    # -- training --------------------------------------------------------------------------
    def _loss(self, out):
        # Under several replicas the objective sees every replica's paths (deephedge_tf.distribute).
        loss = self.objective(*gather_paths(out["pnl"], out["costs"]))
        if self.losses:
            loss = loss + tf.add_n(self.losses)
        return loss

    def _update_metrics(self, loss, out):
        self.loss_tracker.update_state(loss)
        self.pnl_mean.update_state(tf.reduce_mean(out["pnl"]))
        self.cost_mean.update_state(tf.reduce_mean(out["costs"]))
        logs = {m.name: m.result() for m in self.metrics}
        if is_multi_worker(self.distribute_strategy):
            # Keras reduces a multi-worker step's logs with strategy.reduce(MEAN, axis=0), which needs an
            # axis: scalars fail there.  Each entry becomes one row (the same on every worker).
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def _uses_curvature(self) -> bool:
        return hasattr(getattr(self, "optimizer", None), "update_curvature")

    def _uses_linearized_nested(self) -> bool:
        from deephedge_tf.optimizers.nested import LinearizedNested

        return isinstance(getattr(self, "optimizer", None), LinearizedNested)

    def _curvature_terms(self, out, batch) -> list:
        """The outputs whose loss curvature a second-order optimizer uses: the PnL with the objective's
        GGN factor and, by ``ggn_mode``, the actions with a cost curvature (``batch``: batch-major, as
        ``out`` was made from)."""
        from deephedge_tf.optimizers.train_step import CurvatureTerm

        terms = [CurvatureTerm(out["pnl"], self.objective.output_curvature())]
        if self.ggn_mode == "sampled" and self.ggn_cost_l2 > 0.0:
            terms.append(CurvatureTerm(out["actions"], CostL2Curvature(self.ggn_cost_l2), path_axis=1))
        if self.ggn_mode == "majorizer" and self._batches_have_costs:
            cost_weight = tf.transpose(tf.convert_to_tensor(batch["cost_rates"]) * batch["premiums"], [1, 0, 2])
            terms.append(CurvatureTerm(out["actions"], self._cost_majorizer,
                                       targets=tf.cast(cost_weight, out["actions"].dtype), path_axis=1))
        return terms

    def _terms_of(self, batch) -> list:
        """:meth:`_curvature_terms` of a training-mode pass over ``batch``."""
        return self._curvature_terms(self.unroll(batch, training=True), batch)

    def _curvature_train_step(self, batch):
        from deephedge_tf.optimizers.train_step import curvature_train_step, first_paths

        def compute():
            out = self.unroll(batch, training=True)
            return self._loss(out) / _replicas(), self._curvature_terms(out, batch), out

        def forward_on_paths(n):
            return self._terms_of(first_paths(batch, n))

        loss, out, skipped = curvature_train_step(self, compute, forward_on_paths, self.curvature_paths)
        return loss * _replicas(), out, skipped

    def train_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        if self._uses_curvature():
            loss, out, skipped = self._curvature_train_step(batch)
        elif self._uses_linearized_nested():
            from deephedge_tf.optimizers.nested import linearized_nested_step

            loss, out, skipped = linearized_nested_step(self, batch, scale=1.0 / _replicas())
        else:
            variables = self.trainable_variables
            with tf.GradientTape() as tape:
                out = self.unroll(batch, training=True)
                loss = self._loss(out)
                # Under a multi-replica strategy the replicas' gradients are summed: each scaled by 1 / replicas.
                scaled = loss / _replicas()
            grads = tape.gradient(scaled, variables)
            skipped = apply_if_finite(self.optimizer, grads, variables, all_finite([loss, *grads]))
        self.skipped.update_state(skipped)
        return self._update_metrics(loss, out)

    def test_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        out = self.unroll(batch, training=False)
        return self._update_metrics(self._loss(out), out)

    def predict_step(self, data):
        batch = data[0] if isinstance(data, tuple) else data
        return self.unroll(batch, training=False)

    # -- serialisation ---------------------------------------------------------------------
    def get_config(self):
        return {**super().get_config(),
                "ggn_mode": self.ggn_mode, "ggn_cost_l2": self.ggn_cost_l2, "ggn_cost_floor": self._cost_majorizer.floor,
                "curvature_paths": self.curvature_paths, "natural_units": self.natural_units,
                "time_loop": self.time_loop,
                "policy": keras.saving.serialize_keras_object(self.policy),
                "objective": keras.saving.serialize_keras_object(self.objective)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        policy = keras.saving.deserialize_keras_object(config.pop("policy"))
        objective = keras.saving.deserialize_keras_object(config.pop("objective"))
        return cls(policy, objective, **config)
