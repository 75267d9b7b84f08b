"""European options under the Heston model, priced by Fourier inversion in TensorFlow (float64).

Model (risk-neutral, **zero interest rate and zero dividend yield**)::

    dS_t = sqrt(v_t) S_t dW1_t
    dv_t = kappa (theta - v_t) dt + xi sqrt(v_t) dW2_t,      d<W1, W2>_t = rho dt

With r = q = 0 the forward equals the spot and prices need no discounting; for non-zero rates,
price with the forward in place of ``spot`` and multiply by the discount factor.

Method
------
Lewis (2001) single-integral formula along the line Im(z) = -1/2::

    C = S - sqrt(S K) / pi * int_0^inf Re[exp(i u k) phi(u - i/2)] / (u^2 + 1/4) du,
    k = log(S / K),

with ``phi`` the characteristic function of log(S_tau / S_0) in the "little Heston trap" form
(Albrecher et al. 2007), rewritten so that nothing cancels as xi -> 0.  A Black-Scholes control
variate with the model's expected total variance ``w = E[int_0^tau v dt]`` is subtracted from the
integrand and added back in closed form: both characteristic functions equal 1 at the two poles
u = +-i/2 of 1 / (u^2 + 1/4), so the difference is smooth near the origin and small where the
model is close to log-normal.

Integration is a composite Gauss-Legendre rule (16 nodes per panel) on [0, u_max] whose nodes are
placed per option, so that a batch is evaluated as [options, nodes] complex128 blocks:

* ``u_max`` comes from probing log phi(u - i/2) on a geometric grid of u: the integrand is
  bounded by |phi(u - i/2)| / u^2, so its tail beyond U by |phi(U - i/2)| / U.  The closed-form
  decay estimates are *not* used for this because they failed in tests: the Gaussian body
  exp(-w u^2 / 2) hands over to the linear asymptotic decay exp(-c u), c = (v0 + kappa theta tau)
  sqrt(1 - rho^2) / xi (slow for large xi and short maturities), at a point and with an offset
  exp((v0 + kappa theta tau)(kappa - rho xi / 2) / xi^2) that no simple formula pins down;
* panels grow geometrically from the origin (resolving the analyticity strip near u = 0 and the
  Gaussian body) up to a width that keeps the oscillation exp(i u k) and the phase of phi resolved
  (the phase speed is measured at the same probes; the asymptotic value |rho| (v0 + kappa theta
  tau) / xi would be far too large for small xi, whose integrand dies out before the tail);
* options are sorted by the number of panels they need and processed in chunks of panels in a
  ``tf.while_loop``; an option stops costing anything once its own panels are done, and memory
  stays bounded for large batches.

Results are clamped to the no-arbitrage bounds (call in [max(S - K, 0), S], put in
[max(K - S, 0), K]).  Accuracy measured in tests/test_heston_pricer.py: within 1e-6 relative or
1e-8 absolute (spot 100) of QuantLib's adaptive analytic engine for maturities from 2 days to 3
years, strikes from 0.5 to 2 times spot, xi up to 3, Feller condition violated (observed worst
absolute difference 1.3e-11; larger differences seen elsewhere were QuantLib's, checked by adaptive
quadrature).

Known limits: when ``|rho| -> 1`` or ``v0 + kappa theta tau`` is tiny next to ``xi``, the
characteristic function decays extremely slowly; ``u_max`` is capped at ``_U_CAP`` and the panel
count at ``_MAX_PANELS`` (the integral is then cut short), so accuracy may degrade (results stay
within the no-arbitrage bounds) and such batches are slow (~seconds per thousand options).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError

__all__ = ["expected_total_variance", "heston_price", "heston_price_tf"]

# --- quadrature settings (tuned against QuantLib's adaptive engine and scipy quad) --------------
_GL_ORDER = 16  # Gauss-Legendre nodes per panel
_GL_X, _GL_W = np.polynomial.legendre.leggauss(_GL_ORDER)
# -log of the tolerated truncation error of the Lewis integral (exp(-36) ~ 2e-16).
_LOG_TOL = 36.0
# Width of the first panel at u = 0: the integrand's singularities closest to the real axis sit
# about 1/2 away (moment explosion of phi at long maturities), so the first panels stay narrower.
_H0 = 0.25
# Geometric growth of panel widths: width(u) = _H0 + _GROWTH * u until the oscillation limit.
_GROWTH = 0.25
# Radians of oscillation allowed per panel: 16-point Gauss-Legendre integrates exp(i a x) over a
# panel with a * width = 16 to 2e-16 relative (20 radians: 7e-14, 24: 2e-11).
_RADIANS_PER_PANEL = 16.0
# Caps against degenerate inputs (tiny variance next to large xi, |rho| = 1): bounded work.
_U_CAP = 1.0e7
_MAX_PANELS = 8192
# Probe points for the truncation search: ratio 1.25 between neighbours, up to _U_CAP.
_N_PROBES = 81
_PROBES = np.geomspace(0.16, _U_CAP, _N_PROBES)
_CHUNK_PANELS = 8  # panels per while_loop step (memory: active options x 8 x 16 nodes)

_ARG_NAMES = ("spot", "strike", "tau", "v0", "kappa", "theta", "xi", "rho")
# (test on the values that must hold, human-readable allowed range)
_RANGES = {
    "spot": (lambda x: x > 0, "spot > 0"),
    "strike": (lambda x: x > 0, "strike > 0"),
    "tau": (lambda x: x >= 0, "tau >= 0 (years)"),
    "v0": (lambda x: x >= 0, "v0 >= 0"),
    "kappa": (lambda x: x >= 0, "kappa >= 0"),
    "theta": (lambda x: x >= 0, "theta >= 0"),
    "xi": (lambda x: x > 0, "xi > 0"),
    "rho": (lambda x: np.abs(x) <= 1, "-1 <= rho <= 1"),
}


def _check_values(name: str, x: tf.Tensor) -> list:
    """Checks one float64 argument: raises now if its value is known, else returns graph asserts."""
    test, allowed = _RANGES[name]
    value = tf.get_static_value(x)
    if value is None and tf.executing_eagerly():
        value = x.numpy()
    if value is not None:
        value = np.asarray(value, dtype=np.float64)
        bad = ~(np.isfinite(value) & test(value))
        if np.any(bad):
            first = value[bad].flat[0] if value.ndim else float(value)
            raise DeepHedgeError(
                f"heston_price: argument '{name}' out of range: got {first!r}; allowed: {allowed} "
                "(finite)"
            )
        return []
    ok = tf.reduce_all(tf.math.is_finite(x))
    if name == "rho":
        ok = tf.logical_and(ok, tf.reduce_all(tf.abs(x) <= 1.0))
    elif name in ("spot", "strike", "xi"):
        ok = tf.logical_and(ok, tf.reduce_all(x > 0.0))
    else:
        ok = tf.logical_and(ok, tf.reduce_all(x >= 0.0))
    # No quotes around the name: TF escapes them in the error text.
    msg = f"heston_price: argument {name} out of range; allowed: {allowed} (finite)"
    return [tf.debugging.Assert(ok, [msg])]


def _normal_cdf(x: tf.Tensor) -> tf.Tensor:
    # erfc keeps full relative accuracy in the far left tail (deep out-of-the-money legs).
    return 0.5 * tf.math.erfc(-x / math.sqrt(2.0))


def _black_scholes_call_total_var(spot, strike, w):
    """Zero-rate Black-Scholes call for total variance ``w`` > 0 (all [B] float64)."""
    sw = tf.sqrt(w)
    d1 = (tf.math.log(spot / strike) + 0.5 * w) / sw
    return spot * _normal_cdf(d1) - strike * _normal_cdf(d1 - sw)


def _heston_log_cf_lewis(u, tau, v0, kappa, theta, xi, rho):
    """log phi(u - i/2) of log(S_tau / S_0) for real ``u`` [B, n]; parameters [B, 1].

    Returns complex128 [B, n]; its imaginary part is the phase without 2 pi wrapping (the little
    trap form is continuous in u).

    Little-trap form with g = (b - d) / (b + d) and (b - d) = -xi^2 s / (b + d), which avoids the
    cancellation in b - d (needed as xi -> 0).  On the Lewis line, s = iz + z^2 = u^2 + 1/4 is real.
    """
    c = lambda re, im=None: tf.complex(re, tf.zeros_like(re) if im is None else im)  # noqa: E731
    s = c(u * u + 0.25)
    b = c(kappa - 0.5 * rho * xi + tf.zeros_like(u), -rho * xi * u)
    xi2 = c(xi * xi)
    d = tf.sqrt(b * b + xi2 * s)
    bpd = b + d
    beta = -s / bpd  # (b - d) / xi^2
    g = xi2 * beta / bpd  # (b - d) / (b + d)
    dtau = d * c(tau)
    one_minus_e = -tf.math.expm1(-dtau)
    e = tf.exp(-dtau)
    dcoef = beta * one_minus_e / (1.0 - g * e)
    # log((1 - g e) / (1 - g)) written as log1p of a quantity of order xi^2 (accurate as xi -> 0).
    logterm = tf.math.log1p(g * one_minus_e / (1.0 - g))
    ccoef = c(kappa * theta) * (beta * c(tau) - 2.0 * logterm / xi2)
    return ccoef + dcoef * c(v0)


def expected_total_variance(tau, v0, kappa, theta):
    """E[int_0^tau v_t dt] = theta tau + (v0 - theta) (1 - exp(-kappa tau)) / kappa (a tensor; the limit
    v0 tau as kappa tau -> 0).

        >>> round(float(expected_total_variance(2.0, 0.04, 0.0, 0.09)), 6)     # no reversion: v0 tau
        0.08
        >>> round(float(expected_total_variance(100.0, 0.04, 5.0, 0.09)) / 100.0, 4)   # long run: ~theta
        0.0899
    """
    x = kappa * tau
    safe_x = tf.where(x > 1e-8, x, tf.ones_like(x))
    ratio = tf.where(x > 1e-8, -tf.math.expm1(-safe_x) / safe_x, 1.0 - 0.5 * x)
    return theta * tau + (v0 - theta) * tau * ratio


def _panel_count(u_max, h_max):
    """Panels needed on [0, u_max] with widths min(_H0 + _GROWTH u, h_max) (all [B])."""
    u_star = tf.maximum((h_max - _H0) / _GROWTH, 0.0)
    n_star = tf.math.log1p(_GROWTH * u_star / _H0) / _GROWTH
    geometric = tf.math.log1p(_GROWTH * u_max / _H0) / _GROWTH
    return tf.where(u_max <= u_star, geometric, n_star + (u_max - u_star) / h_max), u_star, n_star


def _panel_edge(n, u_star, n_star, h_max):
    """Inverse of the panel count: position of (fractional) panel edge ``n``; shapes broadcast."""
    geometric = (_H0 / _GROWTH) * tf.math.expm1(_GROWTH * tf.minimum(n, n_star))
    return tf.where(n <= n_star, geometric, u_star + (n - n_star) * h_max)


def _lewis_correction(k, w_cv, needed, u_star, n_star, h_max, params):
    """int_0^u_max Re[e^{iuk} (phi_H - phi_BS)(u - i/2)] / (u^2 + 1/4) du for [B] options -> [B].

    ``needed`` (fractional panel count whose last edge is u_max), ``u_star``, ``n_star`` and
    ``h_max`` describe the panel layout (see :func:`_panel_count`); ``params`` are the [B]
    tensors (tau, v0, kappa, theta, xi, rho).  Option i gets ceil(needed_i) panels spread
    evenly (in panel-count space) over its own [0, u_max_i].  Options are sorted by panel count
    so that the ones still integrating after chunk c form a prefix of the batch: each
    while_loop step evaluates an [active, chunk, 16] block, and cheap options stop costing
    anything once their panels are done.
    """
    panels = tf.clip_by_value(tf.math.ceil(needed), 1.0, float(_MAX_PANELS))
    step = needed / panels  # <= 1: panels at most as wide as planned
    order = tf.argsort(panels, direction="DESCENDING", stable=True)
    sort = lambda x: tf.gather(x, order)  # noqa: E731
    cols = [sort(x) for x in (k, w_cv, step, u_star, n_star, h_max, panels) + tuple(params)]
    chunks = tf.cast(tf.math.ceil(cols[6] / _CHUNK_PANELS), tf.int32)  # descending
    n_chunks = tf.reduce_max(tf.concat([chunks, [0]], axis=0))  # 0 for an empty batch
    batch = tf.shape(k)[0]
    gl_x = tf.constant(0.5 * (_GL_X + 1.0), tf.float64)
    gl_w = tf.constant(0.5 * _GL_W, tf.float64)

    def body(c, acc):
        n_active = tf.reduce_sum(tf.cast(chunks > c, tf.int32))
        k_a, w_a, step_a, us_a, ns_a, hm_a, p_a, *prm = [x[:n_active, None] for x in cols]
        j = tf.cast(c * _CHUNK_PANELS + tf.range(_CHUNK_PANELS), tf.float64)[None, :]
        # Panels past an option's own count collapse onto u_max (zero width, zero weight).
        lo = _panel_edge(tf.minimum(j, p_a) * step_a, us_a, ns_a, hm_a)
        hi = _panel_edge(tf.minimum(j + 1.0, p_a) * step_a, us_a, ns_a, hm_a)
        width = (hi - lo)[:, :, None]
        u = lo[:, :, None] + width * gl_x  # [A, chunk, Q]
        n_nodes = _CHUNK_PANELS * _GL_ORDER
        u_flat = tf.reshape(u, [n_active, n_nodes])
        phi = tf.exp(_heston_log_cf_lewis(u_flat, *prm))
        ku = k_a * u_flat
        u2 = u_flat * u_flat + 0.25
        heston_part = tf.math.real(phi) * tf.cos(ku) - tf.math.imag(phi) * tf.sin(ku)
        bs_part = tf.cos(ku) * tf.exp(-0.5 * w_a * u2)
        weights = tf.reshape(width * gl_w, [n_active, n_nodes])
        part = tf.reduce_sum((heston_part - bs_part) / u2 * weights, axis=1)
        return c + 1, acc + tf.pad(part, [[0, batch - n_active]])

    _, integral = tf.while_loop(
        lambda c, acc: c < n_chunks,
        body,
        (tf.constant(0, tf.int32), tf.zeros_like(k)),
    )
    return tf.scatter_nd(order[:, None], integral, tf.shape(integral))


def _probe(w, params):
    """Per-option truncation point u_max and phase speed of phi on [0, u_max] (both [B]).

    Evaluates log phi(u - i/2) on a geometric grid of u shared by all options ([B, _N_PROBES],
    ratio 1.25).  Truncation: |phi(u - i/2)| <= 1 and, beyond its body, decreases in u, so the
    tail of |integrand| <= |phi(u)| / u^2 integrates to at most |phi(U)| / U; u_max is the first
    probe after the last one where that bound (or the control variate's exp(-w u^2 / 2) / u)
    exceeds exp(-_LOG_TOL).  Phase speed: the largest secant slope of the unwrapped phase
    Im log phi between neighbouring probes below u_max.

    Probing replaces closed-form estimates, which failed in tests.  The Gaussian decay
    exp(-w u^2 / 2) is far too optimistic once the linear tail exp(-c u), c = (v0 + kappa theta
    tau) sqrt(1 - rho^2) / xi, takes over (large xi), and the asymptote of that tail carries a
    factor exp((v0 + kappa theta tau)(kappa - rho xi / 2) / xi^2) that makes it useless for small
    xi.  Likewise the tail phase speed |rho| (v0 + kappa theta tau) / xi is huge for small xi,
    where the integrand has died out long before the tail regime.
    """
    probes = tf.constant(_PROBES[None, :], tf.float64)
    expo = _heston_log_cf_lewis(probes + tf.zeros_like(w)[:, None], *[x[:, None] for x in params])
    log_env = tf.maximum(tf.math.real(expo), -0.5 * w[:, None] * probes * probes) - tf.math.log(
        probes)
    exceeds = tf.cast(log_env > -_LOG_TOL, tf.int32)
    last = tf.reduce_max(exceeds * tf.range(1, _N_PROBES + 1)[None, :], axis=1)  # 0 if none
    last = tf.minimum(last, _N_PROBES - 1)
    u_max = tf.gather(tf.constant(_PROBES, tf.float64), last)
    phase = tf.math.imag(expo)
    slopes = tf.abs(phase[:, 1:] - phase[:, :-1]) / (probes[:, 1:] - probes[:, :-1])
    below = tf.range(_N_PROBES - 1)[None, :] < last[:, None]  # interval starts below u_max
    speed = tf.reduce_max(tf.where(below, slopes, 0.0), axis=1)
    return u_max, speed


def _call_prices(spot, strike, tau, v0, kappa, theta, xi, rho):
    """Heston calls for flattened [B] float64 inputs with tau > 0 and some variance."""
    k = tf.math.log(spot / strike)
    w = expected_total_variance(tau, v0, kappa, theta)
    u_max, phase_speed = _probe(w, (tau, v0, kappa, theta, xi, rho))
    # Panel widths: at most _RADIANS_PER_PANEL of phase, that of exp(i u k) plus that of phi
    # (with a margin for the secant estimate).  Decay needs no cap of its own: with geometric
    # growth a panel at u spans at most ~_GROWTH * _LOG_TOL e-folds where the integrand matters.
    k_eff = tf.abs(k) + 1.5 * phase_speed + 1e-3
    h_max = _RADIANS_PER_PANEL / k_eff
    needed, u_star, n_star = _panel_count(u_max, h_max)
    # Over budget: keep the panel widths (accuracy per panel) and stop earlier; the neglected tail
    # of an oscillating integrand is small (about |phi(U - i/2)| / (|k| U^2)).
    over = needed > _MAX_PANELS
    u_max = tf.where(over, _panel_edge(tf.constant(float(_MAX_PANELS), tf.float64), u_star, n_star,
                                       h_max), u_max)
    needed = tf.minimum(needed, float(_MAX_PANELS))
    # Where u_max was cut short, widen the control variate so that its own tail is negligible.
    w_cv = tf.maximum(w, 2.0 * _LOG_TOL / (u_max * u_max))
    corr = _lewis_correction(k, w_cv, needed, u_star, n_star, h_max,
                             (tau, v0, kappa, theta, xi, rho))
    bs_call = _black_scholes_call_total_var(spot, strike, w_cv)
    return bs_call - tf.sqrt(spot * strike) / math.pi * corr


# One graph for all batch sizes: eager execution of the chunk loop costs ~10x the arithmetic.
_call_prices_graph = tf.function(
    _call_prices, input_signature=[tf.TensorSpec([None], tf.float64)] * 8, autograph=False
)


def heston_price_tf(spot, strike, tau, v0, kappa, theta, xi, rho, is_call=True) -> tf.Tensor:
    """Heston European option prices as a float64 tensor (zero interest rate and dividends).

    Args:
      spot: underlying price S_0 > 0.
      strike: strike K > 0.
      tau: time to maturity in years, >= 0 (tau = 0 gives the intrinsic value).
      v0: initial variance >= 0 (annualised, e.g. 0.04 for 20% volatility).
      kappa: mean-reversion speed >= 0 (1 / years).
      theta: long-run variance >= 0.
      xi: volatility of variance > 0.
      rho: correlation of the Brownian motions, in [-1, 1].
      is_call: bool or boolean array; False prices a put.

    All arguments are scalars, numpy arrays or tensors that broadcast together to a shape
    ``[...]``; the result has that shape, dtype float64, in the currency of ``spot``.  Usable
    inside ``tf.function``.  Out-of-range values raise ``DeepHedgeError`` (a ``ValueError``)
    naming the argument when they are known at trace time; otherwise a graph assertion fails
    at run time with the same message.
    """
    # dtype_hint: Python floats must become float64 directly (converting to the default float32
    # first would cost 1e-8 relative accuracy in every parameter).
    args = [
        tf.cast(tf.convert_to_tensor(a, dtype_hint=tf.float64), tf.float64)
        for a in (spot, strike, tau, v0, kappa, theta, xi, rho)
    ]
    is_call = tf.convert_to_tensor(is_call)
    if is_call.dtype != tf.bool:
        raise DeepHedgeError(
            f"heston_price: 'is_call' must be boolean; got dtype {is_call.dtype.name}")
    asserts = []
    for name, x in zip(_ARG_NAMES, args):
        asserts += _check_values(name, x)

    shape = tf.shape(is_call)
    static = is_call.shape
    for x in args:
        shape = tf.broadcast_dynamic_shape(shape, tf.shape(x))
        static = tf.broadcast_static_shape(static, x.shape)
    with tf.control_dependencies(asserts):
        flat = [tf.reshape(tf.broadcast_to(x, shape), [-1]) for x in args]
    call_flag = tf.reshape(tf.broadcast_to(is_call, shape), [-1])
    spot_f, strike_f, tau_f, v0_f, kappa_f, theta_f, xi_f, rho_f = flat

    # Options with no time value to compute: expired, or variance identically zero
    # (v0 = 0 and kappa theta = 0), where the price is the intrinsic value.
    live = (tau_f > 0.0) & (v0_f + kappa_f * theta_f * tau_f > 0.0)
    # Give dead options harmless stand-in parameters instead of gathering live ones (keeps one
    # static batch shape; their results are discarded below).
    tau_s = tf.where(live, tau_f, 1.0)
    v0_s = tf.where(live, v0_f, 0.04)
    call = _call_prices_graph(spot_f, strike_f, tau_s, v0_s, kappa_f, theta_f, xi_f, rho_f)
    put = call - spot_f + strike_f  # put-call parity at zero rates
    call_intrinsic = tf.maximum(spot_f - strike_f, 0.0)
    put_intrinsic = tf.maximum(strike_f - spot_f, 0.0)
    call = tf.clip_by_value(call, call_intrinsic, spot_f)
    put = tf.clip_by_value(put, put_intrinsic, strike_f)
    price = tf.where(call_flag, call, put)
    price = tf.where(live, price, tf.where(call_flag, call_intrinsic, put_intrinsic))
    price = tf.reshape(price, shape)
    price.set_shape(static)
    return price


def heston_price(spot, strike, tau, v0, kappa, theta, xi, rho, is_call=True) -> np.ndarray:
    """Numpy wrapper of :func:`heston_price_tf`: same arguments, returns a float64 ``np.ndarray``.

    Zero interest rate and dividends; prices in the currency of ``spot``; the output shape is the
    broadcast shape of all arguments (a 0-d array for scalar inputs).

        >>> round(float(heston_price(100.0, 100.0, 30 / 365, 0.04, 1.0, 0.04, 2.0, -0.7)), 4)  # Buehler et al.: 1.69
        1.6918
        >>> heston_price(100.0, [95.0, 105.0], 30 / 365, 0.04, 1.0, 0.04, 2.0, -0.7, is_call=[False, True]).shape
        (2,)
    """
    price = heston_price_tf(spot, strike, tau, v0, kappa, theta, xi, rho, is_call)
    return np.asarray(price.numpy(), dtype=np.float64)
