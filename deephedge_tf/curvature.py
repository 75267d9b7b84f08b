"""Curvature statistics for DH-KFAC, captured in the hedger's train step.

The hedger (not the optimizer) runs the model: it unrolls the policy with zero *probe* tensors added
to the pre-activation of every linear map at every step, records each map's input, and back-propagates
GGN pseudo-gradients to the probes.  The optimizer then receives, per Kronecker block,
``(a [T, B, d_in + 1], g [T, B, d_out])`` (inputs with a ones column, per-path pseudo-gradients) through
``optimizer.update_curvature`` (see :class:`deephedge_tf.optimizers.DHKFAC`).

GGN pseudo-gradients.  The preconditioner is ``C = E[J^T H J]`` with ``J`` the Jacobian of all actions
of a path (``T * N`` values) w.r.t. the weights and ``H`` the Hessian of a per-path surrogate loss
w.r.t. those actions.  With ``H = B B^T``, back-propagating ``B z`` (``z ~ N(0, I)``) through the
unrolled policy gives pseudo-gradients whose outer products average to ``C``.  Surrogate:

    l(u) = gamma (PnL(u) - mean PnL)^2  +  c2 * sum_k sum_n (u_k^n - u_{k-1}^n)^2

* ``mode="exact"`` (default): the variance term alone, ``H = 2 gamma r r^T`` with ``r = dPnL/du`` (the
  returns, net of the cost sign terms, by autodiff): rank one per path, so ``B = sqrt(2 gamma) r`` is
  back-propagated once, exactly, with no sampling.
* ``mode="sampled"``: adds the L2 surrogate of the costs (``|u|`` has no curvature), ``H = 2 gamma r r^T
  + 2 c2 D^T D`` with ``D`` the time difference; ``B z = sqrt(2 gamma) r z_0 + sqrt(2 c2) D^T z_1``.

Only policies exposing ``step_with_capture`` and ``linear_maps`` (the recurrent policy) can be
preconditioned this way.
"""

from __future__ import annotations

import math

import tensorflow as tf

from deephedge_tf.dtypes import to_float
from deephedge_tf.optimizers.blocks import layer_path

GGN_MODES = ("exact", "sampled")


def supports_capture(policy) -> bool:
    return hasattr(policy, "step_with_capture") and hasattr(policy, "linear_maps")


def capture_rollout(policy, obs, mask, tape, training=None):
    """The decision loop of :func:`deephedge_tf.policies.base.policy_rollout` with probes.

    Must run inside ``tape``'s context.  Returns ``(actions [T, B, N], probes, inputs)`` where
    ``probes[name]`` and ``inputs[name]`` are per-step lists of ``[B, d_out]`` / ``[B, d_in]`` tensors.
    """
    steps = int(mask.shape[0])
    batch = tf.shape(mask)[1]
    dtype = mask.dtype
    maps = policy.linear_maps()
    holdings = tf.zeros_like(mask[0])
    prev_action = tf.zeros_like(mask[0])
    state = policy.initial_state(batch, dtype)
    probes = {name: [] for name, *_ in maps}
    inputs = {name: [] for name, *_ in maps}
    actions = []
    for k in range(steps):
        step_probes = {}
        for name, _, _, d_out in maps:
            # One [B, d_out] probe per step: slicing a single [T, B, d] probe made the backward O(T^2).
            p = tf.zeros([batch, d_out], dtype)
            tape.watch(p)
            step_probes[name] = p
            probes[name].append(p)
        step_obs = {key: value[k] for key, value in obs.items()}
        step_obs["mask"] = mask[k]
        step_obs["holdings"] = holdings
        action, state, step_inputs = policy.step_with_capture(step_obs, prev_action, state, step_probes)
        for name in inputs:
            inputs[name].append(step_inputs[name])
        holdings = holdings + action
        prev_action = action
        actions.append(action)
    return tf.stack(actions, axis=0), probes, inputs


def action_pseudo_gradients(returns_wrt_actions, gamma: float, mode: str = "exact", cost_l2: float = 0.0,
                            seed=None):
    """``B z`` at the actions, ``[T, B, N]``, from ``r = dPnL/du`` (``[T, B, N]``); see module doc."""
    if mode not in GGN_MODES:
        raise ValueError(f"ggn mode must be one of {GGN_MODES}; got {mode!r}")
    r = returns_wrt_actions
    scale = to_float(math.sqrt(2.0 * gamma), r.dtype)
    if mode == "exact":
        return scale * r
    seed = tf.constant([0, 0], tf.int64) if seed is None else seed
    z0 = tf.random.stateless_normal(tf.shape(r)[1:2], seed, dtype=r.dtype)  # one per path
    z1 = tf.random.stateless_normal(tf.shape(r), tf.random.experimental.stateless_fold_in(seed, 1), dtype=r.dtype)
    # D^T z: (D u)_k = u_k - u_{k-1} (u_{-1} = 0), so (D^T z)_k = z_k - z_{k+1} (z_T = 0).
    dt_z = z1 - tf.concat([z1[1:], tf.zeros_like(z1[:1])], axis=0)
    return scale * r * z0[None, :, None] + to_float(math.sqrt(2.0 * cost_l2), r.dtype) * dt_z


def curvature_statistics(tape, policy, pnl, actions, probes, inputs, gamma: float, mode: str = "exact",
                         cost_l2: float = 0.0, seed=None, max_paths=None):
    """``({block name: (a [T, B', d_in + 1], g [T, B', d_out])}, r)`` for ``optimizer.update_curvature``,
    with ``r = dPnL/du`` ``[T, B, N]`` (the returns net of cost sign terms, reused by
    :func:`directional_curvature`).

    ``g`` is per path (not divided by the batch size).  ``max_paths`` keeps the statistics of the first
    ``B'`` paths only (cheaper factors; the pseudo-gradient pass itself covers the batch).
    """
    r = tape.gradient(pnl, actions)  # per path: PnL_b depends on path b's actions only
    return pseudo_gradient_statistics(tape, policy, r, actions, probes, inputs, gamma, mode, cost_l2, seed,
                                      max_paths), r


def pseudo_gradient_statistics(tape, policy, r, actions, probes, inputs, gamma, mode="exact", cost_l2=0.0,
                               seed=None, max_paths=None):
    """The statistics dict of :func:`curvature_statistics` from a known ``r = dPnL/du``."""
    v = tf.stop_gradient(action_pseudo_gradients(r, gamma, mode, cost_l2, seed))
    names = list(probes)
    flat = [p for n in names for p in probes[n]]
    grads = tape.gradient(actions, flat, output_gradients=v)
    captured, i = {}, 0
    for name, weights, _, _ in policy.linear_maps():
        n = len(probes[name])
        # Inside a tf.cond branch the tape's gradients lose their static shape: restore the probe's.
        g = tf.stack([tf.zeros_like(p) if gr is None else tf.ensure_shape(gr, p.shape)
                      for p, gr in zip(probes[name], grads[i:i + n])])
        i += n
        a = tf.stack(inputs[name])
        a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
        if max_paths is not None:
            a, g = a[:, :max_paths], g[:, :max_paths]
        captured[layer_path(weights[0])] = (tf.stop_gradient(a), tf.stop_gradient(g))
    return captured


def action_jvp(policy, obs, mask, variables, tangents, max_paths=None):
    """``J V``: the change of every path's actions ``[T, B', N]`` along tangents ``V`` (one per
    variable, ``None`` for none), by one forward-mode pass of the decision loop on the first
    ``max_paths`` paths."""
    from deephedge_tf.policies.base import policy_rollout

    if max_paths is not None:
        obs = {k: v[:, :max_paths] for k, v in obs.items()}
        mask = mask[:, :max_paths]
    # Keras variables wrap a tf.Variable (.value): forward-mode autodiff watches the wrapped one.
    pairs = [(getattr(v, "value", v), tf.cast(t, v.dtype)) for v, t in zip(variables, tangents) if t is not None]
    with tf.autodiff.ForwardAccumulator([v for v, _ in pairs], [t for _, t in pairs]) as acc:
        actions = policy_rollout(policy, obs, mask, training=True)
    return acc.jvp(actions, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def ggn_inner(jv1, jv2, r, gamma: float, cost_l2: float = 0.0):
    """``V1^T C V2`` for the exact GGN of the surrogate, from ``J V1``, ``J V2`` ``[T, B', N]`` and
    ``r = dPnL/du`` (its first ``B'`` paths): ``mean_b [2 gamma (r_b . J_b V1)(r_b . J_b V2)
    + 2 c2 (D J_b V1) . (D J_b V2)]``."""
    r = r[:, :tf.shape(jv1)[1]]
    along1 = tf.reduce_sum(r * jv1, axis=[0, 2])  # [B']
    along2 = tf.reduce_sum(r * jv2, axis=[0, 2])
    q = 2.0 * gamma * tf.reduce_mean(along1 * along2)
    if cost_l2:
        def diff(x):
            return x - tf.concat([tf.zeros_like(x[:1]), x[:-1]], axis=0)

        q = q + 2.0 * cost_l2 * tf.reduce_mean(tf.reduce_sum(diff(jv1) * diff(jv2), axis=[0, 2]))
    return q


def directional_curvature(policy, obs, mask, variables, tangents, r, gamma: float, cost_l2: float = 0.0,
                          max_paths=None):
    """``V^T C V`` for the exact GGN of the surrogate along tangents ``V`` (one per variable).

    One forward-mode pass of the decision loop gives ``J_b V`` (the change of path b's actions); then
    ``V^T C V = mean_b [2 gamma (r_b . J_b V)^2 + 2 c2 |D J_b V|^2]``.  Runs on the first ``max_paths``
    paths (the statistics sub-batch).
    """
    jv = action_jvp(policy, obs, mask, variables, tangents, max_paths)
    return ggn_inner(jv, jv, r, gamma, cost_l2)


def subspace_model(policy, obs, mask, variables, grads, direction, previous, r, gamma: float,
                   cost_l2: float = 0.0, max_paths=None):
    """``(M [2, 2], b [2])`` of the exact quadratic model over ``span{V, P}`` (``V = direction``, ``P =
    previous`` step, per variable): ``M = [V, P]^T C [V, P]``, ``b = [g . V, g . P]``; two
    forward-mode passes.  See :meth:`deephedge_tf.optimizers.DHKFAC.set_subspace_model`."""
    jv = action_jvp(policy, obs, mask, variables, direction, max_paths)
    jp = action_jvp(policy, obs, mask, variables, previous, max_paths)
    vv, vp, pp = ggn_inner(jv, jv, r, gamma, cost_l2), ggn_inner(jv, jp, r, gamma, cost_l2), \
        ggn_inner(jp, jp, r, gamma, cost_l2)
    matrix = tf.stack([tf.stack([vv, vp]), tf.stack([vp, pp])])
    rhs = tf.stack([tree_dot(grads, direction), tree_dot(grads, previous)])
    return matrix, rhs


def tree_dot(xs, ys):
    """``sum_i <x_i, y_i>`` in float64 over aligned lists (pairs with a ``None`` are skipped)."""
    terms = [tf.reduce_sum(tf.cast(x, tf.float64) * tf.cast(y, tf.float64))
             for x, y in zip(xs, ys) if x is not None and y is not None]
    return tf.add_n(terms) if terms else tf.zeros((), tf.float64)
