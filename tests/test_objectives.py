"""Objectives against published values (pfhedge), independent numpy/scipy computations, the OCE
representation and the axioms of convex risk measures; Keras tracking and serialisation; factory."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import optimize

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.objectives import (
    CVaR, EntropicRisk, ExpectedShortfall, ExponentialUtility, MeanVariance, Objective,
    indifference_price, make_objective, objective_from_config)

PUBLISHED_X = -np.array([0.0, 1.0, 2.0, 3.0])


def all_objectives():
    return [ExpectedShortfall(0.5), ExpectedShortfall(0.95), ExpectedShortfall(0.7),
            EntropicRisk(0.5), EntropicRisk(2.0), ExponentialUtility(1.0), MeanVariance(0.5)]


def ids(objs):
    return [o.description for o in objs]


OBJECTIVES = all_objectives()
RISK_MEASURES = [o for o in OBJECTIVES if not isinstance(o, MeanVariance)]


def np_entropic(x, a):
    # Direct float64 log-mean-exp with the maximum factored out by hand (independent of TF).
    y = -a * np.asarray(x, np.float64)
    mx = y.max()
    return (mx + np.log(np.mean(np.exp(y - mx)))) / a


def np_es_quantile_integral(x, alpha):
    """ES as (1/(1-alpha)) * integral over u in (alpha, 1] of the empirical loss quantile q(u), which
    equals the j-th smallest loss on ((j-1)/n, j/n]."""
    losses = np.sort(-np.asarray(x, np.float64))
    n = len(losses)
    lo = np.arange(n) / n
    hi = np.arange(1, n + 1) / n
    overlap = np.clip(hi - np.maximum(lo, alpha), 0.0, None)
    return float(np.sum(overlap * losses) / (1.0 - alpha))


def np_es_oce_brute(x, alpha):
    """min over w of w + mean((L - w)^+)/(1-alpha); piecewise linear and convex, so the minimum sits
    at one of the sample losses."""
    losses = -np.asarray(x, np.float64)
    vals = [w + np.mean(np.maximum(losses - w, 0.0)) / (1 - alpha) for w in losses]
    return float(min(vals))


# ---------------------------------------------------------------------------------------------
# Published values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_published_values(dtype):
    x = tf.constant(PUBLISHED_X, dtype)
    assert float(EntropicRisk(1.0).risk(x)) == pytest.approx(2.0539, abs=1e-4)
    assert float(EntropicRisk(1.0)(x)) == pytest.approx(2.0539, abs=1e-4)
    assert float(ExponentialUtility(1.0).certainty_equivalent(x)) == pytest.approx(-2.0539, abs=1e-4)
    assert float(ExpectedShortfall(0.5).risk(x)) == pytest.approx(2.5, abs=1e-6)
    assert float(CVaR(0.5).risk(x)) == pytest.approx(2.5, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Closed forms against independent computations
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a", [0.3, 1.0, 2.5])
def test_entropic_against_numpy(a):
    rng = np.random.default_rng(1)
    x = rng.normal(0.1, 1.5, 257)
    ref = np_entropic(x, a)
    assert float(EntropicRisk(a).risk(tf.constant(x))) == pytest.approx(ref, rel=1e-13, abs=1e-13)
    assert float(EntropicRisk(a)(tf.constant(x))) == pytest.approx(ref, rel=1e-13, abs=1e-13)
    assert float(EntropicRisk(a).risk(tf.constant(x, tf.float32))) == pytest.approx(ref, rel=1e-5, abs=1e-5)
    eu = ExponentialUtility(a)
    assert float(eu.expected_utility(x)) == pytest.approx(-np.mean(np.exp(-a * x)), rel=1e-12)
    assert float(eu.certainty_equivalent(x)) == pytest.approx(-ref, rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("n, alpha", [(4, 0.5), (10, 0.75), (7, 0.9), (100, 0.99), (1000, 0.95),
                                      (13, 0.33), (3, 0.99)])
def test_expected_shortfall_against_sorting(n, alpha):
    rng = np.random.default_rng(n)
    x = rng.standard_t(3, n)
    es = ExpectedShortfall(alpha)
    got = float(es.risk(tf.constant(x)))
    assert got == pytest.approx(np_es_quantile_integral(x, alpha), rel=1e-12, abs=1e-12)
    assert got == pytest.approx(np_es_oce_brute(x, alpha), rel=1e-12, abs=1e-12)
    # The VaR minimises the OCE objective: evaluating it there gives the ES.
    var = es.value_at_risk(tf.constant(x))
    assert float(es.oce_value(tf.constant(x), var)) == pytest.approx(got, rel=1e-12, abs=1e-12)
    assert float(es.risk(tf.constant(x, tf.float32))) == pytest.approx(got, rel=1e-5, abs=1e-5)


def test_expected_shortfall_tail_direction():
    # alpha = 0.9 on 10 outcomes averages only the single worst PnL, never the best.
    x = np.arange(10.0)  # worst PnL 0, best 9
    assert float(ExpectedShortfall(0.9).risk(x)) == pytest.approx(0.0, abs=1e-12)
    assert float(ExpectedShortfall(0.8).risk(x)) == pytest.approx(-0.5, abs=1e-12)


def test_mean_variance_against_numpy():
    rng = np.random.default_rng(2)
    pnl = rng.normal(0.3, 2.0, 300)
    costs = rng.uniform(0.0, 0.1, 300)
    mv = MeanVariance(0.7)
    assert float(mv(tf.constant(pnl), tf.constant(costs))) == pytest.approx(
        0.7 * np.var(pnl) + np.mean(costs), rel=1e-12)
    assert float(mv(tf.constant(pnl))) == pytest.approx(0.7 * np.var(pnl), rel=1e-12)
    assert float(mv.risk(pnl)) == pytest.approx(-np.mean(pnl) + 0.7 * np.var(pnl), rel=1e-12)
    assert float(MeanVariance(0.0).risk(pnl)) == pytest.approx(-np.mean(pnl), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# OCE representation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_es_oce_minimum_is_risk_and_var(alpha):
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, 401)
    es = ExpectedShortfall(alpha)
    f = lambda w: float(es.oce_value(x, w))  # noqa: E731
    np.testing.assert_allclose(
        f(0.4), 0.4 + np.mean(np.maximum(-x - 0.4, 0)) / (1 - alpha), rtol=1e-13)
    res = optimize.minimize_scalar(f, bracket=(-3.0, 3.0), tol=1e-12)
    risk = float(es.risk(x))
    assert res.fun == pytest.approx(risk, abs=1e-9)
    assert res.fun >= risk - 1e-12
    var_ref = np.quantile(-x, alpha, method="inverted_cdf")
    assert float(es.value_at_risk(x)) == pytest.approx(var_ref, abs=1e-12)


@pytest.mark.parametrize("a", [0.5, 2.0])
def test_entropic_oce_minimiser_is_the_risk(a):
    rng = np.random.default_rng(4)
    x = rng.normal(0.2, 0.8, 300)
    ent = EntropicRisk(a)
    f = lambda w: float(ent.oce_value(x, w))  # noqa: E731
    np.testing.assert_allclose(f(0.3), 0.3 + np.mean(np.expm1(a * (-x - 0.3))) / a, rtol=1e-13)
    res = optimize.minimize_scalar(f, bracket=(-2.0, 2.0), tol=1e-12)
    risk = float(ent.risk(x))
    assert res.fun == pytest.approx(risk, abs=1e-12)
    assert res.x == pytest.approx(risk, abs=1e-5)  # w* = (1/a) log E exp(-aX)


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_es_training_gradient_is_the_oce_gradient_at_the_value_at_risk(alpha):
    """The training loss is the exact sample ES (the OCE minimised over w on the batch): by the envelope
    theorem its gradient is the OCE's at w = VaR, -1 / ((1 - alpha) B) on every path whose loss exceeds
    the value at risk, and the fractional weight of the quantile's own path."""
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(0.0, 1.0, 403))
    es = ExpectedShortfall(alpha)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = es(x)
        oce = es.oce_value(x, es.value_at_risk(x))
    assert float(loss) == pytest.approx(float(es.risk(x)), rel=1e-14)
    grad, grad_oce = tape.gradient(loss, x).numpy(), tape.gradient(oce, x).numpy()
    m = (1.0 - alpha) * 403
    order = np.argsort(x.numpy())  # the worst losses -x first
    expected = np.zeros(403)
    expected[order[:int(m)]] = -1.0 / m
    expected[order[int(m)]] = -(m - int(m)) / m
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)
    away = np.ones(403, bool)
    away[order[int(m)]] = False  # the OCE's kink sits on the quantile's own path
    np.testing.assert_allclose(grad[away], grad_oce[away], rtol=1e-12, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Axioms on random samples
# ---------------------------------------------------------------------------------------------


def _samples(seed, n=200):
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, 1.0, n), rng.standard_t(4, n) * 0.7 + 0.2


@pytest.mark.parametrize("obj", RISK_MEASURES, ids=ids(RISK_MEASURES))
def test_monotone(obj):
    for seed in range(3):
        x, z = _samples(seed)
        y = x + np.abs(z)  # Y >= X pathwise
        assert float(obj.risk(x)) >= float(obj.risk(y)) - 1e-12


def test_mean_variance_is_not_monotone():
    # Y >= X pathwise but Y is riskier: mean-variance is no monotone risk measure (documented).
    mv = MeanVariance(1.0)
    assert float(mv.risk([0.0, 10.0])) > float(mv.risk([0.0, 0.0]))


@pytest.mark.parametrize("obj", OBJECTIVES, ids=ids(OBJECTIVES))
def test_cash_invariance_constants_and_convexity(obj):
    for seed in range(3):
        x, y = _samples(10 + seed)
        for c in (-2.5, 0.0, 3.25):
            assert float(obj.risk(x + c)) == pytest.approx(float(obj.risk(x)) - c, abs=1e-12)
            assert float(obj.risk(np.full(17, c))) == pytest.approx(-c, abs=1e-12)
        for lam in (0.1, 0.5, 0.8):
            lhs = float(obj.risk(lam * x + (1 - lam) * y))
            assert lhs <= lam * float(obj.risk(x)) + (1 - lam) * float(obj.risk(y)) + 1e-12
    # cash invariance also holds in float32, at float32 accuracy
    x32 = tf.constant(_samples(20)[0], tf.float32)
    assert float(obj.risk(x32 + 1.5)) == pytest.approx(float(obj.risk(x32)) - 1.5, abs=1e-5)


EXTREMES = [[1000.0, 0.0], [0.0, -1000.0], [1e4, -1e4], [-1e4, 1e4, 0.5]]


@pytest.mark.parametrize("obj", OBJECTIVES, ids=ids(OBJECTIVES))
def test_finite_values_and_gradients_at_extremes_float32(obj):
    for values in EXTREMES:
        x = tf.constant(values, tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            risk = obj.risk(x)
            loss = obj(x, tf.zeros_like(x))
        for t in (risk, loss, *tape.gradient(risk, [x]), *tape.gradient(loss, [x])):
            assert np.all(np.isfinite(t.numpy())), (values, t)
        if obj.trainable_variables:
            (gw,) = tape.gradient(loss, obj.trainable_variables)
            assert np.isfinite(gw.numpy())


@pytest.mark.parametrize("a", [1.0, 0.01])
def test_entropic_exact_at_extremes(a):
    ent = EntropicRisk(a)
    for dtype in (tf.float32, tf.float64):
        for values in ([1000.0, 0.0], [0.0, -1000.0], [1e4, -1e4]):
            x = np.array(values)
            got = float(ent.risk(tf.constant(x, dtype)))
            assert got == pytest.approx(np_entropic(x, a), rel=1e-6 if dtype == tf.float32 else 1e-14)
    assert float(EntropicRisk(1.0).risk(tf.constant([1000.0, 0.0]))) == pytest.approx(-math.log(2), abs=1e-6)
    assert float(EntropicRisk(1.0).risk(tf.constant([0.0, -1000.0]))) == pytest.approx(
        1000 - math.log(2), rel=1e-7)


# ---------------------------------------------------------------------------------------------
# dtypes, shapes, tf.function
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", OBJECTIVES, ids=ids(OBJECTIVES))
def test_dtypes_and_tf_function(obj):
    x = _samples(30, 50)[0]
    for dtype in (tf.float32, tf.float64):
        t = tf.constant(x, dtype)
        assert obj.risk(t).dtype == dtype
        assert obj(t, tf.zeros_like(t)).dtype == dtype

        @tf.function(input_signature=[tf.TensorSpec([None], dtype)])
        def both(p):
            return obj.risk(p), obj(p, tf.zeros_like(p))

        r, loss = both(t)
        assert float(r) == pytest.approx(float(obj.risk(t)), rel=1e-6)
        assert float(loss) == pytest.approx(float(obj(t)), rel=1e-6)
        # a different batch size re-uses the same trace
        r2, _ = both(t[:7])
        assert float(r2) == pytest.approx(float(obj.risk(t[:7])), rel=1e-6)
    # a float64 sample is not rounded by a float32 layer
    assert float(obj.risk(tf.constant(x))) == pytest.approx(float(obj.risk(x)), rel=1e-15)


def test_shapes():
    es = ExpectedShortfall(0.5)
    assert float(es.risk(tf.constant(PUBLISHED_X[:, None]))) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="shape"):
        es.risk(tf.zeros([3, 2]))


# ---------------------------------------------------------------------------------------------
# Keras tracking and serialisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("obj", OBJECTIVES, ids=ids(OBJECTIVES))
def test_config_round_trip(obj):
    x = _samples(40, 30)[0]
    clone = type(obj).from_config(obj.get_config())
    assert clone.get_config() == obj.get_config()
    assert float(clone.risk(x)) == float(obj.risk(x))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
    assert type(restored) is type(obj) and restored.get_config() == obj.get_config()
    again = objective_from_config(obj.factory_config())
    assert type(again) is type(obj) and again.factory_config() == obj.factory_config()
    assert isinstance(obj, (Objective, keras.layers.Layer))


def test_oce_risk_measures_train_on_their_exact_risk_without_state():
    pnl = tf.constant(np.random.default_rng(8).normal(0.1, 1.0, 257))
    for obj in (ExpectedShortfall(0.9), EntropicRisk(1.5), ExponentialUtility(0.5)):
        assert not obj.trainable_weights and not obj.weights
        assert float(obj(pnl)) == pytest.approx(float(obj.risk(pnl)), rel=1e-14)
        again = type(obj).from_config(obj.get_config())
        assert float(again(pnl)) == float(obj(pnl))


# ---------------------------------------------------------------------------------------------
# Indifference price
# ---------------------------------------------------------------------------------------------


def test_indifference_price():
    rng = np.random.default_rng(6)
    with_l = rng.normal(-1.0, 1.0, 500)
    without = rng.normal(0.0, 0.3, 400)
    for obj in OBJECTIVES:
        p = float(indifference_price(obj, with_l, without))
        assert p == pytest.approx(float(obj.risk(with_l)) - float(obj.risk(without)), abs=1e-12)
        # the premium makes the two positions equally risky
        assert float(obj.risk(with_l + p)) == pytest.approx(float(obj.risk(without)), abs=1e-10)
        assert float(indifference_price(obj, with_l)) == pytest.approx(float(obj.risk(with_l)), abs=1e-12)
    p = indifference_price(EntropicRisk(), tf.constant(with_l, tf.float32), tf.constant(without))
    assert p.dtype == tf.float64


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------


def test_factory_kinds_and_aliases():
    assert isinstance(make_objective("mean_variance", gamma=2.0), MeanVariance)
    for kind in ("expected_shortfall", "cvar", "ES", "Expected-Shortfall"):
        es = make_objective(kind, alpha=0.99)
        assert type(es) is ExpectedShortfall and es.alpha == 0.99
    assert type(make_objective("entropic", a=0.5)) is EntropicRisk
    assert type(make_objective("exponential_utility")) is ExponentialUtility
    obj = objective_from_config({"kind": "cvar", "alpha": 0.9}, dtype="float64")
    assert obj.alpha == 0.9 and obj.dtype == "float64"


@pytest.mark.parametrize("kind, params, name", [
    ("expected_shortfall", {"alpha": 0.0}, "alpha"),
    ("cvar", {"alpha": 1.0}, "alpha"),
    ("es", {"alpha": 1.5}, "alpha"),
    ("es", {"alpha": float("nan")}, "alpha"),
    ("es", {"alpha": True}, "alpha"),
    ("es", {"alpha": "0.9"}, "alpha"),
    ("es", {"w_init": 1.0}, "w_init"),   # the intercept is solved per batch, not learned
    ("entropic", {"a": 0.0}, "a"),
    ("exponential_utility", {"a": -1.0}, "a"),
    ("mean_variance", {"gamma": -0.1}, "gamma"),
    ("mean_variance", {"gama": 1.0}, "gama"),
    ("quadratic", {}, "kind"),
])
def test_factory_errors_name_the_parameter(kind, params, name):
    # a value out of range: "<kind>: <name> must be <range>; got ..." (the library's one message form);
    # an unknown name or kind: "... '<name>' ...; allowed: ..."
    with pytest.raises(ValueError, match=f"'{name}'|: {name} must be ") as info:
        make_objective(kind, **params)
    assert isinstance(info.value, DeepHedgeError)
    assert "allowed" in str(info.value) or "must be" in str(info.value)


def test_factory_config_errors():
    with pytest.raises(ValueError, match="'kind'"):
        objective_from_config({"alpha": 0.9})
    with pytest.raises(ValueError, match="mapping"):
        objective_from_config(["cvar"])
    with pytest.raises(ValueError, match="expected_shortfall: alpha must be > 0.0 and < 1.0; got 2.0"):
        ExpectedShortfall(alpha=2.0)
