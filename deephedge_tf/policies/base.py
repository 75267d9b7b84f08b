"""The policy interface: one decision step at a time.

A policy is a Keras layer that, at each decision time ``t_k``, maps what the hedger can observe to
the trades ``u_k`` (units of each of the ``N`` hedging instruments bought at ``t_k``):

    action, new_state = policy(obs, prev_action, state, training=...)

``obs`` is a dict of per-step tensors (``B`` paths), built by the hedger from MarketPaths and the
derivative:

==============  ==========  ====================================================================
key             shape       meaning
==============  ==========  ====================================================================
``features``    ``[B, F]``  network inputs (scaled observables; see ``deephedge_tf.features``)
``mask``        ``[B, N]``  1 where an instrument can be traded at ``t_k``, else 0
``holdings``    ``[B, N]``  units held before trading at ``t_k``: ``sum_{j<k} u_j``
``spot``        ``[B]``     spot price ``S_k``
``variance``    ``[B]``     observed variance ``v_k``
``tau``         ``[B]``     time to the derivative's maturity, years (>= 0)
``bs_delta``    ``[B]``     Black-Scholes delta of the liability at vol ``sqrt(v_k)`` (0 if undefined)
``bs_gamma``    ``[B]``     Black-Scholes gamma of the liability (0 if undefined)
==============  ==========  ====================================================================

``prev_action`` is ``u_{k-1}`` (``[B, N]``, zeros at ``t_0``) and ``state`` a tuple of ``[B, ...]``
tensors from :meth:`Policy.initial_state` (empty for stateless policies).  The returned action is
multiplied by ``mask``: an unavailable instrument is never traded.

**Units.**  Inside the policy, trades, holdings and ``prev_action`` are in the policy's *natural
units*: one unit of instrument ``n`` is ``instrument_units[n]`` contracts (a non-trainable weight of
every policy, ones by default; the Hedger sets it from the first training batch so that one unit of
each instrument moves about as much per step as one unit of the first instrument; see
:meth:`deephedge_tf.hedger.Hedger.set_instrument_units`).  Outside it -- :func:`policy_step`,
:func:`policy_rollout`, the hedger's PnL, the exported policy -- everything is in contracts.  A policy
that needs a position of 360 variance-swap contracts then outputs about one unit, the scale its
initialisation starts from, with either optimizer.

Policies that think in positions (MLP of Buehler et al., band networks, delta baselines) produce a
target position ``delta_k`` and trade ``u_k = delta_k - holdings``; the recurrent policy of the
DH-KFAC paper produces trades directly.  Column 0 is the spot when it is hedged (the builders put it
first); baselines that hedge the spot only require it (:attr:`Policy.needs_spot`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from deephedge_tf.errors import DeepHedgeError

OBS_KEYS = ("features", "mask", "holdings", "spot", "variance", "tau", "bs_delta", "bs_gamma")


class Policy(keras.layers.Layer):
    """Base class of all policies (see module docstring for the call contract).

    A policy of one's own writes :meth:`step`; here, half the Black-Scholes delta in the spot:

    >>> class HalfDelta(Policy):
    ...     needs_spot = True
    ...     def step(self, obs, prev_action, state, training=None):
    ...         return spot_only_trade(0.5 * obs["bs_delta"], obs, self.num_instruments), state
    >>> action, state = HalfDelta()(example_observations(num_instruments=2), tf.zeros([3, 2]))
    >>> action.numpy()[0], state  # buys 0.25 spot, leaves the second instrument
    (array([0.25, 0.  ], dtype=float32), ())"""

    #: True for policies that trade the spot in column 0 only (baselines, band networks).
    needs_spot = False
    #: True for policies that produce target positions (trade = target - holdings).
    outputs_positions = False

    def __init__(self, num_instruments: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_instruments = None
        if num_instruments is not None:
            self.set_num_instruments(num_instruments)

    def set_num_instruments(self, num_instruments: int) -> None:
        """Fixes ``N``, the number of hedging instruments (action columns), and creates the weights that
        depend on it only.  A policy made without ``num_instruments`` learns it from the first
        observations (:func:`policy_rollout` calls this); a different ``N`` later is an error.

            >>> from deephedge_tf.policies import MLPPolicy
            >>> policy = MLPPolicy(num_layers=1, width=4)     # N from the first batch it sees
            >>> policy.set_num_instruments(2)
            >>> tuple(policy.instrument_units.shape)
            (2,)
        """
        bad = isinstance(num_instruments, bool) or not isinstance(num_instruments, (int, np.integer))
        if bad or int(num_instruments) < 1:
            raise ValueError(f"{type(self).__name__}: num_instruments must be an integer >= 1; got "
                             f"{num_instruments!r}")
        n = int(num_instruments)
        if self.num_instruments is not None:
            if n != self.num_instruments:
                raise ValueError(f"{type(self).__name__}: built for {self.num_instruments} instruments, given "
                                 f"{n} (one policy per set of hedging instruments)")
            return
        self.num_instruments = n
        # Contracts per natural unit of each instrument (see the module doc); saved with the weights.
        self.instrument_units = self.add_weight(shape=(n,), initializer="ones", trainable=False,
                                                name="instrument_units")

    def build(self, obs_shape):
        """Takes ``N`` from ``obs_shape["mask"]`` when it is not known yet; subclasses call this first,
        then create their weights (``obs_shape`` is the dict of observation shapes)."""
        if self.num_instruments is None:
            mask = obs_shape.get("mask") if isinstance(obs_shape, dict) else None
            if mask is None or mask[-1] is None:
                raise ValueError(f"{type(self).__name__}: the number of instruments is unknown; pass "
                                 "num_instruments= or call it with observations that have a 'mask'")
            self.set_num_instruments(int(mask[-1]))

    def initial_state(self, batch_size, dtype=tf.float32) -> tuple:
        """Recurrent state at ``t_0``: a tuple of ``[B, ...]`` tensors (empty when stateless)."""
        return ()

    def step(self, obs: dict, prev_action, state: tuple, training=None):
        """Subclasses: ``(raw action [B, N], new state)``; the mask is applied by :meth:`call`."""
        raise NotImplementedError

    def call(self, obs, prev_action, state=(), training=None):
        action, new_state = self.step(obs, prev_action, tuple(state), training=training)
        return action * tf.cast(obs["mask"], action.dtype), new_state

    def get_config(self):
        return {**super().get_config(), "num_instruments": self.num_instruments}


def example_observations(batch_size: int = 3, num_instruments: int = 2, num_features: int = 4) -> dict:
    """One step's observations for trying a policy by hand (examples, tests): features 1, all
    instruments tradable, no holdings, spot 100, variance 0.04, 0.1 years to maturity, delta 0.5,
    gamma 0.05; the shapes of the table in the module doc.

        >>> obs = example_observations()
        >>> {key: tuple(value.shape) for key, value in obs.items()}["features"], sorted(obs) == sorted(OBS_KEYS)
        ((3, 4), True)
    """
    b, n = int(batch_size), int(num_instruments)
    column = lambda value: tf.fill([b], value)  # noqa: E731
    return {"features": tf.ones([b, int(num_features)]), "mask": tf.ones([b, n]), "holdings": tf.zeros([b, n]),
            "spot": column(100.0), "variance": column(0.04), "tau": column(0.1), "bs_delta": column(0.5),
            "bs_gamma": column(0.05)}


def spot_only_trade(target_spot, obs, num_instruments: int):
    """Trades that move the spot position (column 0) to ``target_spot`` ``[B]`` and leave the rest."""
    trade = target_spot - obs["holdings"][:, 0]
    if num_instruments == 1:
        return trade[:, None]
    zeros = tf.zeros_like(obs["holdings"][:, 1:])
    return tf.concat([trade[:, None], zeros], axis=1)


def policy_step(policy, obs, holdings, prev_action, state, training=None):
    """One decision: ``(action [B, N] (masked, in contracts), new state tuple)``.

    ``obs``: per-step dict as in :mod:`deephedge_tf.policies.base` without ``holdings``
    (features ``[B, F]``, mask ``[B, N]``, the scalar observations ``[B]``); ``holdings``,
    ``prev_action``: ``[B, N]``; ``state``: tuple of ``[B, ...]``.
    """
    # The policy thinks in natural units; its inputs and outputs here are contracts.
    units = tf.cast(policy.instrument_units, holdings.dtype)
    step_obs = dict(obs)
    step_obs["holdings"] = holdings / units
    action, new_state = policy(step_obs, prev_action / units, tuple(state), training=training)
    return action * units, new_state


TIME_LOOPS = ("python", "graph")
# The default everywhere (Hedger, export, config): the graph loop compiles in a fraction of the unrolled
# loop's time (minutes at long horizons), its steps cost 1.0-1.55x (BENCHMARKS.md, "The quickstart by time loop").
DEFAULT_TIME_LOOP = "graph"


def check_time_loop(time_loop, owner: str) -> str:
    """``time_loop`` if it is one of :data:`TIME_LOOPS`, else a :class:`DeepHedgeError` naming ``owner``."""
    if time_loop not in TIME_LOOPS:
        raise DeepHedgeError(f"{owner}: time_loop must be one of {TIME_LOOPS}; got {time_loop!r}")
    return time_loop


def policy_rollout(policy, obs, mask, training=None, time_loop=DEFAULT_TIME_LOOP):
    """The decision loop shared by :meth:`Hedger.unroll` and the exported ``whole_path``: actions ``[T, B, N]`` (time-major, masked).

    ``obs``: dict of time-major observations (features ``[T, B, F]``, the others ``[T, B]``);
    ``mask``: ``[T, B, N]``, whose dtype is the state's and holdings' dtype, as in the hedger.
    ``T`` must be static.  ``time_loop``: ``"graph"`` (the default) runs the ``T`` decisions as one
    ``tf.while_loop`` (:func:`deephedge_tf.optimizers.capture.scan`, which also captures the policy's layers
    for curvature optimizers), so the compile time does not grow with ``T``; ``"python"`` unrolls them when
    the graph is traced (trace and compile time grow with ``T``: about a second per step for a train step
    with curvature).  Both give the same actions.

        >>> import tensorflow as tf
        >>> from deephedge_tf.policies import MLPPolicy
        >>> policy = MLPPolicy(num_layers=1, width=4)
        >>> obs = {"features": tf.random.stateless_normal([5, 3, 2], [0, 1]), "time_to_maturity": tf.ones([5, 3])}
        >>> mask = tf.ones([5, 3, 1])
        >>> a = policy_rollout(policy, obs, mask, time_loop="python")
        >>> b = policy_rollout(policy, obs, mask, time_loop="graph")
        >>> a.shape.as_list(), bool(tf.reduce_all(tf.abs(a - b) < 1e-6))
        ([5, 3, 1], True)
    """
    check_time_loop(time_loop, "policy_rollout")
    steps = int(mask.shape[0])
    policy.set_num_instruments(int(mask.shape[-1]))
    start = (tf.zeros_like(mask[0]), tf.zeros_like(mask[0]),  # holdings, previous action
             tuple(policy.initial_state(tf.shape(mask)[1], mask.dtype)))

    def decide(step, carry):
        step_obs, step_mask = step
        holdings, prev_action, state = carry
        step_obs = dict(step_obs, mask=step_mask)
        action, state = policy_step(policy, step_obs, holdings, prev_action, state, training=training)
        return action, (holdings + action, action, tuple(state))

    if time_loop == "graph":
        from deephedge_tf.optimizers.capture import scan  # the loop that curvature capture understands

        actions, _ = scan(decide, (obs, mask), start)
        return actions
    carry, actions = start, []
    for k in range(steps):
        action, carry = decide(({key: value[k] for key, value in obs.items()}, mask[k]), carry)
        actions.append(action)
    return tf.stack(actions, axis=0)
