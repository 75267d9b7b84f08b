"""Hedging policies: Keras layers mapping one step's observations to trades.

See :mod:`deephedge_tf.policies.base` for the call contract (obs keys and shapes, masking, state).

==========================  ===============================  ========================================
kind (:func:`make_policy`)  class                            parameters (defaults)
==========================  ===============================  ========================================
``recurrent``               :class:`RecurrentPolicy`         num_blocks=4, width=32, head_scale=1e-3
``mlp``                     :class:`MLPPolicy`               num_layers=2, width=32, activation="relu"
``no_transaction_band``     :class:`NoTransactionBandPolicy` num_layers=2, width=32, anchor="none"
``delta_band``              :class:`DeltaAnchoredBandPolicy` num_layers=2, width=32
``no_hedge``                :class:`NoHedgePolicy`           (none)
``bs_delta``                :class:`BlackScholesDeltaPolicy` (none)
``whalley_wilmott``         :class:`WhalleyWilmottPolicy`    risk_aversion=1.0, cost=1e-3
==========================  ===============================  ========================================

Every kind also accepts the Keras layer keywords ``name`` and ``dtype``.

    >>> policy = make_policy("mlp", 2, width=8)
    >>> type(policy).__name__, policy.num_instruments
    ('MLPPolicy', 2)
    >>> make_policy("mlp", 2, widht=8)
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.DeepHedgeError: policy 'mlp': unknown parameter 'widht'; allowed: num_layers, width, activation, name, dtype
"""

from __future__ import annotations

import inspect

from deephedge_tf.errors import DeepHedgeError
from deephedge_tf.policies.bands import DeltaAnchoredBandPolicy, NoTransactionBandPolicy, clamp_to_band
from deephedge_tf.policies.base import OBS_KEYS, Policy, spot_only_trade
from deephedge_tf.policies.baselines import BlackScholesDeltaPolicy, NoHedgePolicy, WhalleyWilmottPolicy
from deephedge_tf.policies.mlp import MLPPolicy
from deephedge_tf.policies.recurrent import RecurrentPolicy

POLICY_KINDS = {
    "recurrent": RecurrentPolicy,
    "mlp": MLPPolicy,
    "no_transaction_band": NoTransactionBandPolicy,
    "delta_band": DeltaAnchoredBandPolicy,
    "no_hedge": NoHedgePolicy,
    "bs_delta": BlackScholesDeltaPolicy,
    "whalley_wilmott": WhalleyWilmottPolicy,
}

_LAYER_KEYWORDS = ("name", "dtype")


def policy_parameters(kind: str) -> tuple[str, ...]:
    """The keyword parameters ``kind`` accepts (besides ``num_instruments``, ``name``, ``dtype``)."""
    cls = _policy_class(kind)
    sig = inspect.signature(cls.__init__)
    return tuple(
        n
        for n, p in sig.parameters.items()
        if n not in ("self", "num_instruments") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    )


def _policy_class(kind):
    if kind not in POLICY_KINDS:
        raise DeepHedgeError(f"policy kind: got {kind!r}; allowed: {', '.join(POLICY_KINDS)}")
    return POLICY_KINDS[kind]


def make_policy(kind: str, num_instruments: int, **params) -> Policy:
    """Builds the policy ``kind`` for ``num_instruments`` instruments.

    Raises DeepHedgeError (a ValueError) naming the kind or parameter and what is allowed, for an
    unknown kind, an unknown parameter or an out-of-range value.
    """
    cls = _policy_class(kind)
    allowed = policy_parameters(kind) + _LAYER_KEYWORDS
    for key in params:
        if key not in allowed:
            raise DeepHedgeError(
                f"policy '{kind}': unknown parameter '{key}'; allowed: {', '.join(allowed) or '(none)'}"
            )
    try:
        return cls(num_instruments, **params)
    except DeepHedgeError:
        raise
    except (TypeError, ValueError) as e:
        raise DeepHedgeError(f"policy '{kind}': bad parameters {params!r}: {e}") from e


__all__ = [
    "OBS_KEYS",
    "POLICY_KINDS",
    "BlackScholesDeltaPolicy",
    "DeltaAnchoredBandPolicy",
    "MLPPolicy",
    "NoHedgePolicy",
    "NoTransactionBandPolicy",
    "Policy",
    "RecurrentPolicy",
    "WhalleyWilmottPolicy",
    "clamp_to_band",
    "make_policy",
    "policy_parameters",
    "spot_only_trade",
]
