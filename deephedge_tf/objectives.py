"""Hedging objectives: training losses and risk measures on terminal profit-and-loss.

Conventions
-----------
``pnl`` is the hedger's terminal profit-and-loss per simulated path, a tensor of shape ``[B]`` in
currency units: ``pnl = -payoff + trading gains - costs``.  ``costs`` (shape ``[B]``, same units) are
the transaction costs per path; they are already subtracted inside ``pnl`` and are passed separately
only because the mean-variance loss of the DH-KFAC paper charges them on their own.

A risk measure acts on the gain ``X = pnl`` with the sign conventions of Buehler, Gonon, Teichmann
and Wood (2019) and pfhedge: ``rho`` is decreasing in ``X``, cash-invariant
(``rho(X + c) = rho(X) - c``), ``rho(c) = -c`` for a sure amount ``c`` and convex.  A smaller
``rho`` is better; ``certainty_equivalent = -rho`` is the sure amount the position is worth.

Every objective is a Keras layer (a model that holds one as an attribute tracks and saves it).  Two
evaluations exist:

* ``objective(pnl, costs)`` (``call``) is the training loss of a batch;
* ``objective.risk(pnl)`` is the exact risk of the sample ``pnl``, used for evaluation, reporting and
  indifference prices.

They are the same function for the OCE risk measures (the inner minimisation over the intercept ``w``
is solved on every batch, in closed form); :class:`MeanVariance` trains on the paper's loss, which
charges the costs on their own.

Both compute in the dtype of ``pnl`` (float32 or float64; half precision is promoted to float32
because a loss summed over a batch in float16 loses the information hedging relies on) and work
inside ``tf.function`` with an unknown batch size.

References: A. Ben-Tal and M. Teboulle, "An old-new concept of convex risk measures: the optimized
certainty equivalent", Math. Finance 17 (2007); H. Buehler, L. Gonon, J. Teichmann, B. Wood, "Deep
hedging", Quant. Finance 19 (2019), sections 3 and 4.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras
import numpy as np
import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.optimizers.losses import OutputCurvature, RowFactor, scalar_rows
from deephedge_tf.validation import check_real

__all__ = [
    "Objective",
    "OCEObjective",
    "MeanVariance",
    "ExpectedShortfall",
    "CVaR",
    "EntropicRisk",
    "ExponentialUtility",
    "VarianceCurvature",
    "EntropicCurvature",
    "ShortfallCurvature",
    "indifference_price",
    "make_objective",
    "objective_from_config",
    "OBJECTIVE_KINDS",
]

_PACKAGE = "deephedge_tf"


# ----------------------------------------------------------------------------------------------
# Input handling and parameter validation
# ----------------------------------------------------------------------------------------------


def _as_pnl(x, what: str = "pnl") -> tf.Tensor:
    """``x`` as a float tensor of shape ``[B]``.

    float32 / float64 are kept as they are (no silent loss of precision and no silent upcast of a
    float32 pipeline); float16 / bfloat16 go to float32; integers and Python numbers go to float64,
    which represents them exactly.  A ``[B, 1]`` column (a typical Keras model output) is squeezed;
    any other rank raises.
    """
    if tf.is_tensor(x):
        t = tf.convert_to_tensor(x)
    else:
        arr = np.asarray(x)
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float32 if arr.dtype == np.float16 else np.float64)
        t = tf.constant(arr)
    if t.dtype in (tf.float16, tf.bfloat16):
        t = tf.cast(t, tf.float32)
    elif t.dtype not in (tf.float32, tf.float64):
        if not (t.dtype.is_integer or t.dtype.is_bool):
            raise DeepHedgeError(f"{what}: dtype {t.dtype.name} is not a real number type")
        t = tf.cast(t, tf.float64)
    rank = t.shape.rank
    if rank is None:
        # Unknown rank inside a tf.function: trust the caller and flatten.
        return tf.reshape(t, [-1])
    if rank == 2 and t.shape[1] == 1:
        return tf.squeeze(t, axis=1)
    if rank != 1:
        raise DeepHedgeError(f"{what}: expected shape [B] (or [B, 1]); got {t.shape}")
    return t


# ----------------------------------------------------------------------------------------------
# Base classes
# ----------------------------------------------------------------------------------------------


class Objective(keras.layers.Layer):
    """Base class of hedging objectives (a Keras layer mapping a PnL sample to a scalar).

    Subclasses implement ``call(pnl, costs=None)`` (the training loss) and ``risk(pnl)`` (the exact
    risk measure of a sample).  ``kind`` is the factory name (see :func:`make_objective`); the Keras
    ``name`` defaults to the snake-case class name, made unique per instance by Keras.

    Inputs are never autocast to the layer's dtype: the loss is computed in the dtype of ``pnl``, so
    a float64 PnL is not rounded to float32 by a float32 layer.

    A risk measure of one's own: the worst outcome (trainable with Adam; a second-order optimizer also
    needs :meth:`output_curvature`):

    >>> import tensorflow as tf
    >>> class WorstCase(Objective):
    ...     kind = "worst_case"
    ...     def call(self, pnl, costs=None):
    ...         return self.risk(pnl)
    ...     def risk(self, pnl):
    ...         return -tf.reduce_min(tf.convert_to_tensor(pnl))
    >>> float(WorstCase().risk([1.0, -2.0, 0.5])), float(WorstCase().certainty_equivalent([1.0, -2.0]))
    (2.0, -2.0)
    """

    kind: str = ""

    def __init__(self, **kwargs):
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)

    # -- interface ------------------------------------------------------------------------------

    def call(self, pnl, costs=None):
        """Training loss of a batch: scalar tensor in the dtype of ``pnl``.

        Args:
          pnl: terminal PnL per path, shape ``[B]``, currency units.
          costs: transaction costs per path, shape ``[B]``, currency units (already inside ``pnl``);
            ``None`` means zero.  Only :class:`MeanVariance` uses it.
        """
        raise NotImplementedError

    def risk(self, pnl) -> tf.Tensor:
        """Exact risk ``rho(pnl)`` of the empirical distribution of ``pnl`` (shape ``[B]``): scalar
        tensor in currency units, dtype of ``pnl``.  Never uses learned state."""
        raise NotImplementedError

    def certainty_equivalent(self, pnl) -> tf.Tensor:
        """``-risk(pnl)``: the sure amount (currency units) judged as good as the random ``pnl``."""
        return -self.risk(pnl)

    def output_curvature(self) -> OutputCurvature:
        """The GGN factor of the training loss w.r.t. ``pnl`` (see
        :mod:`deephedge_tf.optimizers.losses`); the costs enter the loss linearly (no curvature)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no curvature for second-order optimizers (DHKFAC): implement "
            "output_curvature() returning a deephedge_tf.optimizers.OutputCurvature (pseudo_gradient and "
            "bilinear w.r.t. the PnL), or train it with Adam")

    @property
    def description(self) -> str:
        """Human-readable kind and parameters, e.g. ``"expected_shortfall(alpha=0.99)"``."""
        params = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{self.kind}({params})"

    def factory_config(self) -> dict:
        """``{"kind": ..., <parameters>}``; :func:`objective_from_config` rebuilds an equal objective
        (without learned state: use Keras ``get_config`` / weights for that)."""
        return {"kind": self.kind, **self._params()}

    # -- Keras plumbing -------------------------------------------------------------------------

    def _params(self) -> dict:
        """The constructor parameters that define the objective (for configs and descriptions)."""
        return {}

    def get_config(self):
        config = super().get_config()
        config.update(self._params())
        return config

    def compute_output_shape(self, pnl_shape=None, costs_shape=None):
        return ()

    def __repr__(self):
        return f"<{type(self).__name__} {self.description} name={self.name!r}>"


class OCEObjective(Objective):
    """Optimised certainty equivalent (Ben-Tal & Teboulle; Buehler et al. section 3).

    ``rho(X) = inf_w { w + E[l(-X - w)] }`` with a convex, increasing loss function ``l`` normalised
    so that ``l(0) = 0`` and ``l'(0) = 1`` (which makes ``rho`` a convex risk measure: decreasing,
    cash-invariant, ``rho(c) = -c``).  The minimising ``w`` is a cash amount (currency units).

    Subclasses implement ``loss_function(x)``.
    """

    def loss_function(self, x: tf.Tensor) -> tf.Tensor:
        """``l(x)`` elementwise; ``x`` is a loss in excess of the intercept (currency units)."""
        raise NotImplementedError

    def oce_value(self, pnl, w) -> tf.Tensor:
        """``w + mean(l(-pnl - w))`` for a given intercept ``w`` (scalar, currency units).

        Its minimum over ``w`` is ``risk(pnl)``; for any other ``w`` it is larger.  Computed in the
        dtype of ``pnl``.
        """
        pnl = _as_pnl(pnl)
        w = to_float(w, pnl.dtype)
        return w + tf.reduce_mean(self.loss_function(-pnl - w))


# ----------------------------------------------------------------------------------------------
# Mean-variance
# ----------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MeanVariance(Objective):
    """Mean-variance objective of the DH-KFAC paper.

    Loss (exactly the paper's): ``gamma * Var[pnl] + E[costs]``, with the biased batch variance
    (divisor ``B``).  It contains no ``-E[pnl]`` term: when the hedging instruments are martingales
    under the simulation measure the expected trading gain is zero and the expected payoff does not
    depend on the hedge, so ``-E[pnl] = E[costs] + constant`` and the loss equals :meth:`risk` up to a
    hedge-independent constant; under a drifting measure the two differ by the expected trading gain.

    Risk: ``rho(X) = -E[X] + gamma * Var[X]`` (biased variance).  Cash-invariant, ``rho(c) = -c`` and
    convex, but NOT monotone (a pathwise larger PnL can have more variance), so it is not a convex
    risk measure in the sense of Föllmer & Schied.

    Args:
      gamma: risk aversion ``>= 0``, in 1 / currency units.

    >>> mv = MeanVariance(gamma=1.0)
    >>> float(mv.risk([1.0, -1.0]))  # -mean 0 + variance 1
    1.0
    >>> import tensorflow as tf
    >>> round(float(mv(tf.constant([1.0, -1.0]), costs=tf.constant([0.5, 0.1]))), 6)  # variance 1 + mean cost 0.3
    1.3
    """

    kind = "mean_variance"

    def __init__(self, gamma: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.gamma = check_real(self.kind, "gamma", gamma, low=0.0)

    def _params(self):
        return {"gamma": self.gamma}

    def call(self, pnl, costs=None):
        pnl = _as_pnl(pnl)
        gamma = to_float(self.gamma, pnl.dtype)
        loss = gamma * tf.math.reduce_variance(pnl)
        if costs is not None:
            loss = loss + tf.reduce_mean(tf.cast(_as_pnl(costs, "costs"), pnl.dtype))
        return loss

    def risk(self, pnl):
        pnl = _as_pnl(pnl)
        gamma = to_float(self.gamma, pnl.dtype)
        return -tf.reduce_mean(pnl) + gamma * tf.math.reduce_variance(pnl)

    def output_curvature(self):
        return VarianceCurvature(self.gamma)


# ----------------------------------------------------------------------------------------------
# Expected shortfall (CVaR)
# ----------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExpectedShortfall(OCEObjective):
    """Expected shortfall (CVaR) at confidence level ``alpha``: the average loss over the worst
    ``1 - alpha`` fraction of outcomes.

    ``alpha = 0.99`` averages the worst 1% of PnL outcomes (Buehler et al.'s "99%-CVaR"); pfhedge's
    ``ExpectedShortfall(p)`` is this with ``p = 1 - alpha``.  As an OCE it has
    ``l(x) = max(x, 0) / (1 - alpha)``:

        ES_alpha(X) = inf_w { w + E[max(-X - w, 0)] / (1 - alpha) },

    and the infimum is attained at ``w = VaR_alpha(X)``, the ``alpha``-quantile of the loss ``-X``.

    Training loss (``call``) and risk (``risk``) are the same: the exact sample value, i.e. the OCE with
    its inner minimisation over ``w`` solved on every batch (``w`` = the batch's value at risk), as for
    :class:`EntropicRisk`.  By the envelope theorem its gradient is the OCE's gradient at the optimal
    ``w``: the mean over the worst ``1 - alpha`` paths.  Buehler et al. learn ``w`` jointly with the
    policy instead; a learned intercept trails the value at risk as the hedge improves (a value at risk
    of a few currency units moved by a first-order step of ~1e-3), and until it has caught up the
    gradient weights the wrong tail (BENCHMARKS.md, suite section on the Heston CVaR task).

    With losses sorted from worst, ``L_1 >= ... >= L_B``, and ``m = (1 - alpha) B``, the sample value is
    ``(1/m) [L_1 + ... + L_floor(m) + (m - floor(m)) L_{floor(m)+1}]``: the mean of the worst
    ``ceil(m)`` outcomes with the last one weighted by the fractional part, which is the OCE minimum on
    the empirical distribution.

        >>> es = ExpectedShortfall(alpha=0.5)
        >>> float(es.risk([0.0, -1.0, -2.0, -3.0]))      # worst half of the losses 3, 2
        2.5
        >>> float(es.oce_value([0.0, -1.0, -2.0, -3.0], es.value_at_risk([0.0, -1.0, -2.0, -3.0])))
        2.5

    Args:
      alpha: confidence level, ``0 < alpha < 1``.
    """

    kind = "expected_shortfall"

    def __init__(self, alpha: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.alpha = check_real(self.kind, "alpha", alpha, low=0.0, low_open=True, high=1.0, high_open=True)

    def _params(self):
        return {"alpha": self.alpha}

    def loss_function(self, x):
        # 1 / (1 - alpha) computed in float64 before conversion so that float64 runs keep full
        # precision for alpha close to 1.
        return tf.nn.relu(x) * to_float(1.0 / (1.0 - self.alpha), x.dtype)

    def call(self, pnl, costs=None):
        return self.risk(pnl)

    def output_curvature(self):
        return ShortfallCurvature(self)

    def _sorted_losses_and_m(self, pnl):
        losses = tf.sort(-pnl, direction="DESCENDING")
        n = tf.cast(tf.shape(pnl)[0], pnl.dtype)
        m = to_float(1.0 - self.alpha, pnl.dtype) * n
        return losses, m

    def risk(self, pnl):
        pnl = _as_pnl(pnl)
        losses, m = self._sorted_losses_and_m(pnl)
        # Weight of the i-th worst loss (0-based): 1 while i + 1 <= m, then the fractional part, then
        # 0; written as clip(m - i, 0, 1) it is continuous in m, so rounding of (1 - alpha) B is
        # harmless, and the weights sum to m.
        i = tf.range(tf.shape(losses)[0], dtype=pnl.dtype)
        weights = tf.clip_by_value(m - i, 0.0, 1.0)
        return tf.reduce_sum(weights * losses) / m

    def value_at_risk(self, pnl) -> tf.Tensor:
        """Sample value-at-risk: a minimiser ``w`` of the OCE objective, the ``alpha``-quantile of the
        loss ``-pnl`` (currency units).  It is the ``(floor(m)+1)``-th worst loss, ``m = (1-alpha) B``;
        when ``m`` is an integer every ``w`` between it and the ``m``-th worst loss is a minimiser too.
        """
        pnl = _as_pnl(pnl)
        losses, m = self._sorted_losses_and_m(pnl)
        idx = tf.minimum(tf.cast(tf.floor(m), tf.int32), tf.shape(losses)[0] - 1)
        return tf.gather(losses, idx)


CVaR = ExpectedShortfall


# ----------------------------------------------------------------------------------------------
# Entropic risk and exponential utility
# ----------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=_PACKAGE)
class EntropicRisk(OCEObjective):
    """Entropic risk measure ``rho(X) = (1/a) log E[exp(-a X)]``.

    It is the OCE with ``l(x) = (exp(a x) - 1) / a``, whose minimising intercept is ``rho(X)``
    itself.  The training loss uses the closed form ``(1/a) log mean(exp(-a pnl))`` rather than the
    OCE form: the inner minimisation is solved exactly, so there is no intercept to learn, and the
    log-sum-exp evaluation stays finite for PnL of any size (the OCE form evaluates ``exp(a(-X - w))``,
    which overflows float32 once ``a |X|`` exceeds ~88).  Over a batch it is a monotone transform of
    the mean exponential loss, so both forms rank hedges identically.

    Args:
      a: risk aversion ``> 0``, in 1 / currency units.

    For PnL ``+-1`` with equal weight and ``a = 1`` the risk is ``log cosh 1``; cash invariance:
    ``rho(X + c) = rho(X) - c``.

    >>> import math
    >>> er = EntropicRisk(a=1.0)
    >>> round(float(er.risk([1.0, -1.0])), 6), round(math.log(math.cosh(1.0)), 6)
    (0.433781, 0.433781)
    >>> round(float(er.risk([3.0, 1.0])), 6)
    -1.566219
    """

    kind = "entropic"

    def __init__(self, a: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.a = check_real(self.kind, "a", a, low=0.0, low_open=True)

    def _params(self):
        return {"a": self.a}

    def loss_function(self, x):
        a = to_float(self.a, x.dtype)
        return tf.math.expm1(a * x) / a

    def _entropic(self, pnl):
        a = to_float(self.a, pnl.dtype)
        n = tf.cast(tf.shape(pnl)[0], pnl.dtype)
        # logsumexp subtracts the maximum before exponentiating: finite for any finite PnL.
        return (tf.reduce_logsumexp(-a * pnl) - tf.math.log(n)) / a

    def call(self, pnl, costs=None):
        return self._entropic(_as_pnl(pnl))

    def output_curvature(self):
        return EntropicCurvature(self.a)

    def risk(self, pnl):
        return self._entropic(_as_pnl(pnl))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ExponentialUtility(EntropicRisk):
    """Exponential utility ``U(X) = -E[exp(-a X)]``, to be maximised.

    Maximising ``U`` is minimising its negated certainty equivalent
    ``-CE(X) = (1/a) log E[exp(-a X)]``, which is the entropic risk: the loss and :meth:`risk` are those
    of :class:`EntropicRisk` and ``certainty_equivalent(X) = -(1/a) log E[exp(-a X)]``.  Training on the
    certainty-equivalent scale (currency units) rather than on ``U`` keeps gradients well scaled and
    finite.

    Args:
      a: absolute risk aversion ``> 0``, in 1 / currency units.

    >>> eu = ExponentialUtility(a=2.0)
    >>> float(eu.expected_utility([0.0, 0.0])), float(eu.certainty_equivalent([0.5, 0.5]))
    (-1.0, 0.5)
    """

    kind = "exponential_utility"

    def expected_utility(self, pnl) -> tf.Tensor:
        """``-E[exp(-a pnl)]`` (dimensionless, in ``(-inf, 0)``); computed as ``-exp(a * rho)`` so it
        overflows to ``-inf`` only where the true value exceeds the dtype's range."""
        pnl = _as_pnl(pnl)
        return -tf.exp(to_float(self.a, pnl.dtype) * self.risk(pnl))


# ----------------------------------------------------------------------------------------------
# Curvature of the training losses w.r.t. the PnL (GGN factors for second-order optimizers)
# ----------------------------------------------------------------------------------------------


class VarianceCurvature(OutputCurvature):
    """Curvature of ``gamma Var[pnl]`` (biased variance).

    * ``centred=False`` (default; the DH-KFAC paper's surrogate ``gamma (pnl_b - m)^2`` with the batch
      mean ``m`` held fixed): ``H = (2 gamma / B) I``; per path ``u_b = sqrt(2 gamma)`` exactly, and
      ``bilinear = (2 gamma / B) sum_b u_b v_b``.
    * ``centred=True`` (the exact Hessian of the variance): ``H = (2 gamma / B) (I - 1 1^T / B)``; per path
      ``u_b = sqrt(2 gamma (1 - 1/B))``, ``bilinear = (2 gamma / B) sum_b (u_b - mean u)(v_b - mean v)``.

    The fixed-mean form adds ``2 gamma (mean_b u_b)(mean_b v_b)``: curvature along directions that move
    the mean PnL (for a hedge: the expected costs), which makes the exact line model's steps more
    conservative.  On configs/cliquet_small.yaml it reached Adam's target 20 steps earlier than the
    centred form in seeds 1 and 2 (BENCHMARKS.md), hence the default.

        >>> import tensorflow as tf
        >>> c = MeanVariance(gamma=2.0).output_curvature()
        >>> float(c.bilinear(tf.zeros(4), tf.constant([1., -1., 1., -1.]), tf.constant([1., -1., 1., -1.])))
        4.0
    """

    def __init__(self, gamma: float, centred: bool = False):
        self.gamma = float(gamma)
        self.centred = bool(centred)

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        pnl = tf.convert_to_tensor(outputs)
        scale = to_float(2.0 * self.gamma, pnl.dtype)
        if self.centred:
            scale = scale * (1.0 - 1.0 / tf.cast(tf.shape(pnl)[0], pnl.dtype))
        return tf.ones_like(pnl) * tf.sqrt(scale)

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None) -> RowFactor:
        pnl = tf.convert_to_tensor(outputs)
        n = tf.cast(tf.shape(pnl)[0], pnl.dtype)
        weight = tf.ones_like(pnl) * to_float(2.0 * self.gamma, pnl.dtype) / n
        return scalar_rows(pnl, weight, tf.ones_like(pnl) / n if self.centred else None)

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        u = tf.convert_to_tensor(u)
        v = tf.cast(v, u.dtype)
        if self.centred:
            u, v = u - tf.reduce_mean(u), v - tf.reduce_mean(v)
        return to_float(2.0 * self.gamma, u.dtype) * tf.reduce_mean(u * v)


class EntropicCurvature(OutputCurvature):
    """``(1/a) log mean exp(-a pnl)``: ``H = a (diag(w) - w w^T)``, ``w = softmax(-a pnl)``.

    Per path ``B H_bb = B a w_b (1 - w_b)`` (rank one, exact); ``bilinear`` is the full form
    ``a (sum w u v - (sum w u)(sum w v))``.
    """

    def __init__(self, a: float):
        self.a = float(a)

    def _weights(self, pnl):
        pnl = tf.convert_to_tensor(pnl)
        return tf.nn.softmax(-to_float(self.a, pnl.dtype) * pnl)

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        w = self._weights(outputs)
        n = tf.cast(tf.shape(w)[0], w.dtype)
        return tf.sqrt(n * to_float(self.a, w.dtype) * w * (1.0 - w))

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None) -> RowFactor:
        # a (diag(w) - w w^T) = (I - 1 w^T)^T a diag(w) (I - 1 w^T), since sum(w) = 1.
        w = self._weights(outputs)
        return scalar_rows(outputs, to_float(self.a, w.dtype) * w, w)

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        w = self._weights(outputs)
        u, v = tf.cast(u, w.dtype), tf.cast(v, w.dtype)
        a = to_float(self.a, w.dtype)
        return a * (tf.reduce_sum(w * u * v) - tf.reduce_sum(w * u) * tf.reduce_sum(w * v))


class ShortfallCurvature(OutputCurvature):
    """A smooth surrogate of the expected-shortfall loss's curvature (its Hessian is zero almost
    everywhere).

    The sample expected shortfall is ``min_w f(pnl, w)``, ``f = w + mean(relu(-pnl - w)) / (1 - alpha)``.
    The surrogate replaces ``relu(x)`` by ``tau softplus(x / tau)``, whose second derivative is
    ``s(1 - s) / tau`` with ``s = sigmoid(x / tau)``, at ``w`` = the batch's value at risk: per path
    ``h_b = s_b (1 - s_b) / (tau (1 - alpha) B)`` at ``x_b = -pnl_b - w``.  The width
    ``tau = smoothing * std(pnl)`` of the batch (default ``smoothing = 0.5``) spreads the curvature over
    the paths within about two ``tau`` of the value at risk; it is held fixed in the derivatives.
    Minimising over ``w`` removes the direction in which ``w`` follows the PnL (a shift of every path
    near the quantile moves the quantile with it): the Hessian w.r.t. the PnL is the Schur complement

        H = diag(h) - h h^T / sum(h)       (f_xx - f_xw f_ww^-1 f_wx),

    a weighted variance, so :meth:`jacobian_rows` are centred with weights ``h / sum(h)``, :meth:`bilinear`
    has the cross term, and the per-path pseudo-gradients carry ``B H_bb = B h_b (1 - h_b / sum(h))``.
    """

    def __init__(self, objective, smoothing: float = 0.5):
        self.objective = objective
        self.smoothing = float(smoothing)

    def _diagonal(self, pnl):
        """``B h_b`` per path (``[B]``)."""
        pnl = tf.convert_to_tensor(pnl)
        dt = pnl.dtype
        tau = to_float(self.smoothing, dt) * tf.math.reduce_std(pnl) + tf.constant(1e-12, dt)
        x = -pnl - tf.stop_gradient(self.objective.value_at_risk(pnl))
        s = tf.sigmoid(x / tau)
        return s * (1.0 - s) / (tau * to_float(1.0 - self.objective.alpha, dt))

    def pseudo_gradient(self, outputs, targets=None, seed=None, sample_weight=None):
        d = self._diagonal(outputs)
        return tf.sqrt(d * (1.0 - d / tf.reduce_sum(d)))

    def jacobian_rows(self, outputs, targets=None, seed=None, sample_weight=None) -> RowFactor:
        d = self._diagonal(outputs)
        return scalar_rows(outputs, d / tf.cast(tf.shape(d)[0], d.dtype), d / tf.reduce_sum(d))

    def bilinear(self, outputs, u, v, targets=None, sample_weight=None):
        d = self._diagonal(outputs)
        u, v = tf.cast(u, d.dtype), tf.cast(v, d.dtype)
        centred = tf.reduce_sum(d * u * v) - tf.reduce_sum(d * u) * tf.reduce_sum(d * v) / tf.reduce_sum(d)
        return centred / tf.cast(tf.shape(d)[0], d.dtype)


# ----------------------------------------------------------------------------------------------
# Indifference price
# ----------------------------------------------------------------------------------------------


def indifference_price(objective: Objective, pnl_with_liability, pnl_without_liability=None) -> tf.Tensor:
    """Indifference price of a liability under ``objective`` (Buehler et al., section 4).

    ``p = rho(pnl_with_liability) - rho(pnl_without_liability)``: the premium that makes selling the
    liability and hedging it as good as not selling it, because by cash invariance
    ``rho(p + pnl_with_liability) = rho(pnl_without_liability)``.

    Args:
      objective: the risk measure (its exact :meth:`Objective.risk` is used, not the training loss).
      pnl_with_liability: shape ``[B]``, PnL of the optimally hedged short liability without premium
        (``-payoff + gains - costs``), currency units.
      pnl_without_liability: shape ``[B']``, PnL of the optimal strategy without the liability (only
        trading gains minus costs); ``None`` means no trading, whose risk is ``rho(0) = 0``.  Each
        argument must come from its own optimally hedged strategy.

    Returns:
      Scalar tensor, currency units; float64 if either input is float64, else float32.

    A short liability that pays a sure 2 has price 2 under any cash-invariant measure; a risky one
    costs more than its mean:

    >>> float(indifference_price(EntropicRisk(a=1.0), [-2.0, -2.0]))
    2.0
    >>> float(indifference_price(ExpectedShortfall(alpha=0.5), [-1.0, -3.0], [0.0, 0.0]))
    3.0
    """
    x = _as_pnl(pnl_with_liability, "pnl_with_liability")
    if pnl_without_liability is None:
        return objective.risk(x)
    y = _as_pnl(pnl_without_liability, "pnl_without_liability")
    if x.dtype != y.dtype:
        # Mixed precision: compare at the higher one rather than rounding the float64 sample.
        x, y = tf.cast(x, tf.float64), tf.cast(y, tf.float64)
    return objective.risk(x) - objective.risk(y)


# ----------------------------------------------------------------------------------------------
# Factory
# ----------------------------------------------------------------------------------------------

OBJECTIVE_KINDS = {
    "mean_variance": MeanVariance,
    "expected_shortfall": ExpectedShortfall,
    "cvar": ExpectedShortfall,
    "es": ExpectedShortfall,
    "entropic": EntropicRisk,
    "entropic_risk": EntropicRisk,
    "exponential_utility": ExponentialUtility,
}

_KIND_PARAMS = {
    MeanVariance: ("gamma",),
    ExpectedShortfall: ("alpha",),
    EntropicRisk: ("a",),
    ExponentialUtility: ("a",),
}

# Keras layer arguments accepted by every kind.
_COMMON_PARAMS = ("dtype", "name")


def make_objective(kind: str, **params) -> Objective:
    """Builds an objective from its kind and parameters.

    Kinds (case-insensitive, ``-`` or spaces read as ``_``): ``"mean_variance"`` (``gamma``),
    ``"expected_shortfall"`` / ``"cvar"`` / ``"es"`` (``alpha``), ``"entropic"`` /
    ``"entropic_risk"`` (``a``), ``"exponential_utility"`` (``a``); every kind also takes the Keras
    layer arguments ``dtype`` and ``name``.

    Raises:
      DeepHedgeError (a ValueError): unknown kind, unknown parameter or a parameter out of range; the
      message names the parameter and what is allowed.
    """
    if not isinstance(kind, str):
        raise DeepHedgeError(f"objective: parameter 'kind' = {kind!r} is not allowed; "
                             f"allowed: one of {', '.join(OBJECTIVE_KINDS)}")
    key = kind.strip().lower().replace("-", "_").replace(" ", "_")
    cls = OBJECTIVE_KINDS.get(key)
    if cls is None:
        raise DeepHedgeError(f"objective: parameter 'kind' = {kind!r} is not allowed; "
                             f"allowed: one of {', '.join(OBJECTIVE_KINDS)}")
    allowed = _KIND_PARAMS[cls] + _COMMON_PARAMS
    for name in params:
        if name not in allowed:
            raise DeepHedgeError(f"{cls.kind}: unknown parameter '{name}'; allowed: {', '.join(allowed)}")
    return cls(**params)


def objective_from_config(config: Mapping | None = None, /, **kwargs) -> Objective:
    """Builds an objective from a mapping ``{"kind": ..., <parameters>}`` and/or keyword arguments
    (keywords override the mapping), e.g. ``objective_from_config({"kind": "cvar", "alpha": 0.99})``.
    See :func:`make_objective` for kinds, parameters and errors."""
    if config is not None and not isinstance(config, Mapping):
        raise DeepHedgeError(f"objective: config must be a mapping with a 'kind' key; got {config!r}")
    merged = {**(config or {}), **kwargs}
    if "kind" not in merged:
        raise DeepHedgeError("objective: parameter 'kind' is missing; "
                             f"allowed: one of {', '.join(OBJECTIVE_KINDS)}")
    kind = merged.pop("kind")
    return make_objective(kind, **merged)
