"""Tests of deephedge_tf.policies: shapes, masking, formulas, serialisation, curvature capture."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.policies.base import policy_rollout, policy_step
from deephedge_tf.policies import (
    OBS_KEYS,
    POLICY_KINDS,
    BlackScholesDeltaPolicy,
    DeltaAnchoredBandPolicy,
    MLPPolicy,
    NoHedgePolicy,
    NoTransactionBandPolicy,
    RecurrentPolicy,
    WhalleyWilmottPolicy,
    make_policy,
)

B, F, N = 5, 3, 3
SMALL = {  # keep networks tiny: the suite must stay fast on 2 shared cores
    "recurrent": {"num_blocks": 2, "width": 8},
    "mlp": {"width": 8},
    "no_transaction_band": {"width": 8},
    "delta_band": {"width": 8},
    "no_hedge": {},
    "bs_delta": {},
    "whalley_wilmott": {},
}


def make_obs(dtype="float64", seed=0, batch=B, n=N, mask=None, holdings=None, **overrides):
    """A synthetic observation dict with the keys and shapes of policies/base.py."""
    rng = np.random.default_rng(seed)
    obs = {
        "features": rng.normal(size=(batch, F)),
        "mask": np.ones((batch, n)) if mask is None else np.asarray(mask, float),
        "holdings": rng.normal(scale=0.5, size=(batch, n)) if holdings is None else np.asarray(holdings, float),
        "spot": rng.uniform(0.8, 1.2, size=batch),
        "variance": np.full(batch, 0.04),
        "tau": np.full(batch, 0.1),
        "bs_delta": rng.uniform(0.0, 1.0, size=batch),
        "bs_gamma": rng.uniform(0.0, 3.0, size=batch),
    }
    obs.update({k: np.asarray(v, float) for k, v in overrides.items()})
    assert set(obs) == set(OBS_KEYS)
    return {k: tf.constant(v, dtype) for k, v in obs.items()}


def run(policy, obs, prev_action=None, state=None):
    batch, n = obs["mask"].shape
    dtype = obs["features"].dtype
    prev_action = tf.zeros((batch, n), dtype) if prev_action is None else prev_action
    state = policy.initial_state(batch, dtype) if state is None else state
    return policy(obs, prev_action, state)


def set_output_layer(policy, bias):
    """Zero the last Dense's kernel and set its bias: the network then outputs ``bias`` on every path."""
    out = policy.net[-1]
    out.kernel.assign(tf.zeros_like(out.kernel))
    out.bias.assign(tf.constant(bias, out.bias.dtype))


# ----------------------------------------------------------------------------- all policies


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(POLICY_KINDS))
def test_shapes_dtype_and_autograph_off(kind, dtype):
    policy = make_policy(kind, N, dtype=dtype, **SMALL[kind])
    obs = make_obs(dtype)
    action, state = run(policy, obs)
    assert action.shape == (B, N) and action.dtype == tf.as_dtype(dtype)
    assert len(state) == len(policy.initial_state(B, dtype))
    for s in state:
        assert s.dtype == tf.as_dtype(dtype)
    # Keras traces train_step with autograph off: the policy must trace as it is.
    fn = tf.function(lambda o, p, s: policy(o, p, s), autograph=False)
    traced, _ = fn(obs, tf.zeros((B, N), dtype), policy.initial_state(B, dtype))
    np.testing.assert_allclose(traced.numpy(), action.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", list(POLICY_KINDS))
def test_masked_columns_are_exactly_zero(kind):
    mask = np.ones((B, N))
    mask[:, 2] = 0.0
    mask[1, 0] = 0.0
    policy = make_policy(kind, N, **SMALL[kind])
    action, _ = run(policy, make_obs(mask=mask))
    assert np.all(action.numpy()[mask == 0] == 0.0)


@pytest.mark.parametrize("kind", list(POLICY_KINDS))
def test_serialisation_roundtrip_gives_identical_actions(kind):
    params = {**SMALL[kind], "whalley_wilmott": {"risk_aversion": 2.5, "cost": 3e-3}}.get(kind, SMALL[kind])
    policy = make_policy(kind, N, **params)
    obs = make_obs(seed=3)
    prev = tf.constant(np.random.default_rng(4).normal(size=(B, N)))
    expected, expected_state = run(policy, obs, prev)
    cfg = keras.saving.serialize_keras_object(policy)
    assert cfg["registered_name"] == f"deephedge_tf>{type(policy).__name__}"
    clone = keras.saving.deserialize_keras_object(cfg)
    assert type(clone) is type(policy) and clone.get_config() == policy.get_config()
    run(clone, obs, prev)  # build
    clone.set_weights(policy.get_weights())
    action, state = run(clone, obs, prev)
    np.testing.assert_array_equal(action.numpy(), expected.numpy())
    for s, e in zip(state, expected_state):
        np.testing.assert_array_equal(s.numpy(), e.numpy())


def test_flags():
    assert not RecurrentPolicy.needs_spot and not RecurrentPolicy.outputs_positions
    assert MLPPolicy.outputs_positions and not MLPPolicy.needs_spot
    for cls in (NoTransactionBandPolicy, DeltaAnchoredBandPolicy, BlackScholesDeltaPolicy, WhalleyWilmottPolicy):
        assert cls.needs_spot and cls.outputs_positions
    for kind in ("no_hedge", "bs_delta", "whalley_wilmott"):
        policy = make_policy(kind, N)
        run(policy, make_obs())
        assert policy.trainable_weights == []


# ----------------------------------------------------------------------------- make_policy


def test_make_policy_kinds_and_errors():
    assert isinstance(make_policy("delta_band", 1), DeltaAnchoredBandPolicy)
    with pytest.raises(ValueError, match="allowed: recurrent, mlp, no_transaction_band"):
        make_policy("lstm", 2)
    with pytest.raises(ValueError, match="unknown parameter 'widht'.*allowed: num_blocks, width, head_scale"):
        make_policy("recurrent", 2, widht=8)
    with pytest.raises(ValueError, match="unknown parameter 'width'.*allowed: risk_aversion, cost"):
        make_policy("whalley_wilmott", 1, width=8)
    with pytest.raises(ValueError, match="num_blocks must be an integer >= 1"):
        make_policy("recurrent", 2, num_blocks=0)
    with pytest.raises(ValueError, match="activation must be one of relu"):
        make_policy("mlp", 2, activation="swishy")
    with pytest.raises(ValueError, match="anchor must be one of none, bs_delta"):
        make_policy("no_transaction_band", 1, anchor="delta")
    with pytest.raises(ValueError, match="risk_aversion must be > 0.0"):
        make_policy("whalley_wilmott", 1, risk_aversion=0.0)
    with pytest.raises(ValueError, match="num_instruments must be an integer >= 1"):
        make_policy("mlp", 0)
    with pytest.raises(DeepHedgeError, match="width"):
        make_policy("mlp", 2, width="wide")


# ----------------------------------------------------------------------------- recurrent


def test_recurrent_head_init_gives_small_actions():
    keras.utils.set_random_seed(0)
    policy = RecurrentPolicy(N, dtype="float64")  # default size: 4 blocks of width 32
    action, _ = run(policy, make_obs(batch=64))
    size = np.abs(action.numpy())
    assert np.all(size < 2e-2) and 1e-4 < size.mean() < 1e-2
    np.testing.assert_array_equal(policy.head.bias.numpy(), 0.0)


def test_recurrent_state_threading():
    # head_scale 1 would let prev_action -> head -> symexp feed back explosively within 3 steps.
    policy = RecurrentPolicy(N, num_blocks=2, width=6, head_scale=0.1, dtype="float64")
    state0 = policy.initial_state(B, tf.float64)
    assert len(state0) == 4 and all(s.shape == (B, 6) and np.all(s.numpy() == 0) for s in state0)
    prev, state, actions = tf.zeros((B, N), tf.float64), state0, []
    for t in range(3):
        prev, state = run(policy, make_obs(seed=t), prev, state)
        actions.append(prev)
    assert not np.allclose(state[0].numpy(), 0.0) and np.all(np.isfinite(prev.numpy()))
    # Same observations from a zero state give a different action: the state carries memory.
    again, _ = run(policy, make_obs(seed=2), actions[1], state0)
    assert np.max(np.abs(again.numpy() - actions[2].numpy())) > 1e-8
    # The previous action is an input (action recurrence).
    other, _ = run(policy, make_obs(seed=2), actions[1] + 1.0, state)
    assert np.max(np.abs(other.numpy() - run(policy, make_obs(seed=2), actions[1], state)[0].numpy())) > 1e-8


def test_recurrent_capture_matches_weight_gradients():
    """Under the curvature recorder: the same actions, and sum_t [a_t, 1]^T dL/dprobe_t equals the
    [kernel(s); bias] gradient of every linear map (two input maps, the LSTM cells, the head)."""
    from deephedge_tf.optimizers import Recorder, find_blocks

    keras.utils.set_random_seed(1)
    n, batch, steps = 2, 4, 3
    policy = RecurrentPolicy(n, num_blocks=2, width=4, head_scale=0.5, dtype="float64")
    mask = np.ones((batch, n))
    mask[0, 1] = 0.0
    obs_seq = [make_obs(seed=10 + t, batch=batch, n=n, mask=mask) for t in range(steps)]
    run(policy, obs_seq[0])  # build
    target = tf.constant(np.random.default_rng(7).normal(size=(steps, batch, n)))

    def unroll():
        prev, state = tf.zeros((batch, n), tf.float64), policy.initial_state(batch, tf.float64)
        loss, actions = 0.0, []
        for t in range(steps):  # Python-unrolled, as the hedger does
            prev, state = policy(obs_seq[t], prev, state)
            actions.append(prev)
            loss += tf.reduce_sum(tf.square(prev - target[t])) + 0.1 * tf.reduce_sum(prev)
        return loss, tf.stack(actions)

    plain_loss, plain_actions = unroll()
    with tf.GradientTape(persistent=True) as tape:
        with Recorder(policy, tape) as recorder:
            loss, actions = unroll()
    np.testing.assert_array_equal(actions.numpy(), plain_actions.numpy())  # zero probes change nothing
    stats = recorder.statistics(tape.gradient(loss, recorder.probes))
    blocks, _ = find_blocks(policy.trainable_variables)
    assert [b.name.rsplit("/", 1)[-1] for b in blocks] == ["feature_in", "action_in", "block0_lstm",
                                                           "block1_lstm", "head"]
    assert list(stats) == [b.name for b in blocks]
    variables = policy.trainable_variables
    grads = tape.gradient(loss, variables)
    for block in blocks:
        expected = np.concatenate([grads[i].numpy().reshape(-1, block.d_out) for i in block.indices], axis=0)
        a, g = (x.numpy() for x in stats[block.name])
        assert a.shape == (steps, batch, block.dim_a)
        got = np.einsum("tbi,tbj->ij", a, g)
        assert np.abs(expected).max() > 1e-3, block.name  # a vacuous match would prove nothing
        np.testing.assert_allclose(got, expected, atol=1e-10, rtol=0, err_msg=block.name)


# ----------------------------------------------------------------------------- MLP


def test_mlp_formula():
    policy = MLPPolicy(N, num_layers=1, width=4, activation="tanh", dtype="float64")
    obs = make_obs(seed=5)
    action, state = run(policy, obs)
    assert state == ()
    (w0, b0), (w1, b1) = [(layer.kernel.numpy(), layer.bias.numpy()) for layer in policy.net]
    x = np.concatenate([obs["features"].numpy(), obs["holdings"].numpy()], axis=1)
    target = np.tanh(x @ w0 + b0) @ w1 + b1
    np.testing.assert_allclose(action.numpy(), target - obs["holdings"].numpy(), rtol=1e-13, atol=1e-14)


# ----------------------------------------------------------------------------- bands


def _band_obs(prev_spot, n=2, **kw):
    holdings = np.zeros((len(prev_spot), n))
    holdings[:, 0] = prev_spot
    holdings[:, 1:] = 0.7  # non-spot holdings are never traded
    return make_obs(batch=len(prev_spot), n=n, holdings=holdings, **kw)


def _check_clamp(action, prev_spot, lower, upper):
    a = action.numpy()
    np.testing.assert_array_equal(a[:, 1:], 0.0)
    expected = np.clip(prev_spot, lower, upper) - prev_spot
    np.testing.assert_allclose(a[:, 0], expected, rtol=0, atol=1e-14)


def test_no_transaction_band_clamps_into_network_band():
    prev_spot = np.array([0.1, 0.3, 0.45, 0.6, 0.9])
    policy = NoTransactionBandPolicy(2, width=4, dtype="float64")
    run(policy, _band_obs(prev_spot))
    set_output_layer(policy, [0.6, 0.2])  # edges in the wrong order: the band is still [0.2, 0.6]
    action, _ = run(policy, _band_obs(prev_spot))
    _check_clamp(action, prev_spot, 0.2, 0.6)
    a = action.numpy()[:, 0]
    assert a[1] == a[2] == 0.0 and a[0] == pytest.approx(0.1) and a[4] == pytest.approx(-0.3)


def test_no_transaction_band_anchored_on_bs_delta():
    prev_spot = np.array([0.0, 0.5, 0.52, 0.55, 1.0])
    delta = np.full(5, 0.5)
    policy = NoTransactionBandPolicy(2, width=4, anchor="bs_delta", dtype="float64")
    run(policy, _band_obs(prev_spot, bs_delta=delta))
    set_output_layer(policy, [0.1, -0.5])  # widths leaky_relu: 0.1 below, -0.005 above
    action, _ = run(policy, _band_obs(prev_spot, bs_delta=delta))
    _check_clamp(action, prev_spot, 0.4, 0.495)


def test_delta_anchored_band():
    prev_spot = np.array([0.0, 0.3, 0.5, 0.7, 1.0])
    delta = np.array([0.5, 0.5, 0.5, 0.5, 0.2])
    policy = DeltaAnchoredBandPolicy(2, width=4, dtype="float64")
    run(policy, _band_obs(prev_spot, bs_delta=delta))
    set_output_layer(policy, [0.0])  # f = softplus(0) = log 2
    action, _ = run(policy, _band_obs(prev_spot, bs_delta=delta))
    _check_clamp(action, prev_spot, delta - np.log(2.0), delta + np.log(2.0))
    set_output_layer(policy, [-8.0])  # f = softplus(-8) ~ 3.4e-4: nearly the delta hedge
    action, _ = run(policy, _band_obs(prev_spot, bs_delta=delta))
    f = np.log1p(np.exp(-8.0))
    _check_clamp(action, prev_spot, delta - f, delta + f)
    assert np.all(np.abs(action.numpy()[[0, 1, 3, 4], 0]) > 0.1) and action.numpy()[2, 0] == 0.0


# ----------------------------------------------------------------------------- baselines


def test_no_hedge_is_zero():
    action, _ = run(NoHedgePolicy(N), make_obs())
    np.testing.assert_array_equal(action.numpy(), 0.0)


@pytest.mark.parametrize("n", [1, 3])
def test_bs_delta_trades_to_delta(n):
    obs = make_obs(n=n, seed=8)
    action, _ = run(BlackScholesDeltaPolicy(n, dtype="float64"), obs)
    np.testing.assert_allclose(action.numpy()[:, 0], obs["bs_delta"].numpy() - obs["holdings"].numpy()[:, 0], rtol=1e-15)
    np.testing.assert_array_equal(action.numpy()[:, 1:], 0.0)


def test_whalley_wilmott_band():
    lam, c = 2.0, 4e-3
    spot = np.array([1.0, 1.1, 0.9, 1.0, 1.0])
    gamma = np.array([2.0, 1.5, 3.0, 0.0, 5.0])
    delta = np.array([0.5, 0.7, 0.2, 0.4, 0.5])
    h = (3.0 * c * spot * gamma**2 / (2.0 * lam)) ** (1.0 / 3.0)
    assert h[0] == pytest.approx((3 * 4e-3 * 4 / 4) ** (1 / 3))  # 0.2289...
    prev_spot = np.array([0.5, 0.0, 0.3, 0.5, 1.5])  # inside, below, inside, outside zero-width, above
    policy = WhalleyWilmottPolicy(2, risk_aversion=lam, cost=c, dtype="float64")
    obs = _band_obs(prev_spot, spot=spot, bs_gamma=gamma, bs_delta=delta)
    np.testing.assert_allclose(policy.half_width(obs).numpy(), h, rtol=1e-14)
    action, _ = run(policy, obs)
    _check_clamp(action, prev_spot, delta - h, delta + h)
    a = action.numpy()[:, 0]
    assert a[0] == 0.0 and a[2] == 0.0  # inside the band: no trade
    assert a[3] == pytest.approx(-0.1)  # zero gamma: trade to delta


@pytest.mark.parametrize("kind", list(POLICY_KINDS))
def test_policy_without_num_instruments_takes_it_from_the_first_observations(kind):
    """A policy made without N has, once it has seen observations, the weights of one made with N and,
    with those weights, the same actions."""
    obs = make_obs()
    given = make_policy(kind, N, dtype="float64", **SMALL[kind])
    later = POLICY_KINDS[kind](dtype="float64", **SMALL[kind])
    assert later.num_instruments is None
    a_given, _ = run(given, obs)
    run(later, obs)
    assert later.num_instruments == N and tuple(later.instrument_units.shape) == (N,)
    assert [w.path for w in later.weights] == [w.path.replace(given.name, later.name, 1) for w in given.weights]
    assert [tuple(w.shape) for w in later.weights] == [tuple(w.shape) for w in given.weights]
    later.set_weights(given.get_weights())
    a_later, _ = run(later, obs)
    np.testing.assert_allclose(a_later.numpy(), a_given.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match=f"built for {N} instruments, given 2"):
        later.set_num_instruments(2)


def test_policy_without_num_instruments_or_mask_is_refused():
    obs = {k: v for k, v in make_obs().items() if k != "mask"}
    with pytest.raises(ValueError, match="number of instruments is unknown"):
        MLPPolicy(width=4, dtype="float64").build({k: tuple(v.shape) for k, v in obs.items()})


@pytest.mark.parametrize("time_loop", ["python", "graph"])
@pytest.mark.parametrize("kind", list(POLICY_KINDS))
def test_rollout_gives_the_day_by_day_actions(kind, time_loop):
    """policy_rollout (the hedger's and the exported whole_path's loop) and policy_step called day by day
    (the exported one-step signature, as a risk system calls it) give the same actions, holdings threaded
    through four steps."""
    steps = 4
    obs_t = [make_obs(seed=t) for t in range(steps)]
    obs = {k: tf.stack([o[k] for o in obs_t]) for k in OBS_KEYS if k not in ("mask", "holdings")}
    mask = tf.stack([o["mask"] for o in obs_t])
    policy = POLICY_KINDS[kind](dtype="float64", **SMALL[kind])
    rolled = policy_rollout(policy, obs, mask, time_loop=time_loop)
    holdings, prev, state = tf.zeros_like(mask[0]), tf.zeros_like(mask[0]), policy.initial_state(B, tf.float64)
    for t in range(steps):
        step_obs = {k: v[t] for k, v in obs.items()}
        step_obs["mask"] = mask[t]
        action, state = policy_step(policy, step_obs, holdings, prev, state)
        np.testing.assert_allclose(rolled[t].numpy(), action.numpy(), rtol=1e-12, atol=1e-14, err_msg=f"step {t}")
        holdings, prev = holdings + action, action
    assert np.abs(rolled.numpy()).max() > 0 or kind == "no_hedge"
