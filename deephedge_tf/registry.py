"""Registries: the kinds a config may name for each component, and a user's own classes from YAML.

One :class:`Registry` per component (:data:`MARKETS`, :data:`DERIVATIVES`, :data:`HEDGES`,
:data:`POLICIES`, :data:`OBJECTIVES`, :data:`OPTIMIZERS`) maps a config ``kind`` to a builder, called by
:mod:`deephedge_tf.builders` as ``builder(cfg)`` (markets, derivatives, objectives, optimizers),
``builder(cfg, num_instruments, kind, name)`` (policies) or ``builder(**params)`` (a ``hedges.extra``
entry: the instrument class itself).  The library's kinds are given as ``"module:name"`` strings, so
this module (and config validation, which lists the kinds) imports no TensorFlow.  A user registers more
from Python::

    from deephedge_tf.registry import POLICIES
    POLICIES.register("my_policy", lambda cfg, n, kind, name: MyPolicy(n, width=cfg.policy.width, name=name))

Every component also accepts ``kind: python`` (``model: python`` for markets, ``optimizer: python`` for
the optimizer) with ``callable: "package.module:name"`` and ``params``, its keyword arguments; the
callable is checked against them before it is called (:func:`call_configured`), with the same errors as
any other key.  The library also passes what it knows, each argument only where the callable's
signature has a parameter of that name (or ``**kwargs``), so a callable need not take them:

=====================  ===============================================================
component              passed by the library, besides ``params``
=====================  ===============================================================
market                 ``steps``, ``dt``, ``s0``, ``seed``, ``dtype``
policy                 ``dtype``, ``name``
objective              ``dtype``
derivative, optimizer  (nothing)
=====================  ===============================================================

A name in ``params`` that the library passes is an error (set it where the library reads it).

    >>> load_callable("math:sqrt", "policy.callable")(4.0)
    2.0
    >>> load_callable("math.sqrt", "policy.callable")
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.ConfigError: config key 'policy.callable': got 'math.sqrt'; allowed: 'package.module:name' (a module path, a colon, a name in it)
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable, Mapping

from deephedge_tf.errors import ConfigError, DeepHedgeError

__all__ = ["Registry", "MARKETS", "DERIVATIVES", "HEDGES", "POLICIES", "OBJECTIVES", "OPTIMIZERS",
           "PYTHON", "load_callable", "call_configured"]

#: The kind that names a user's callable instead of a registered kind.
PYTHON = "python"


class Registry:
    """The kinds of one component: ``kind -> builder`` (a function, or a ``"module:function"`` string
    imported on first use).

    Args:
      component: the component's name in messages (``"market"``, ``"policy"``, ...).
      builtins: the library's kinds, ``{kind: "module:function"}``.
    """

    def __init__(self, component: str, builtins: Mapping[str, str] | None = None):
        self.component = component
        self._builders: dict[str, object] = dict(builtins or {})
        self._builtin = frozenset(self._builders)

    def register(self, kind: str, builder: Callable | None = None):
        """Registers ``builder`` under ``kind`` (usable as a decorator).  ``kind`` must be new, and not
        ``"python"``."""
        if not isinstance(kind, str) or not kind.isidentifier() or kind == PYTHON:
            raise DeepHedgeError(f"{self.component} registry: kind {kind!r} must be an identifier other than "
                                 f"{PYTHON!r}")
        if kind in self._builders:
            raise DeepHedgeError(f"{self.component} registry: kind {kind!r} is registered already")

        def add(fn):
            if not callable(fn):
                raise DeepHedgeError(f"{self.component} registry: the builder of {kind!r} must be callable")
            self._builders[kind] = fn
            return fn

        return add if builder is None else add(builder)

    def unregister(self, kind: str) -> None:
        """Removes a kind registered with :meth:`register` (the library's own kinds stay)."""
        if kind not in self._builders or kind in self._builtin:
            raise DeepHedgeError(f"{self.component} registry: {kind!r} is not a user-registered kind")
        del self._builders[kind]

    def kinds(self) -> tuple[str, ...]:
        """The kinds a config may name: the registered ones, then ``"python"``."""
        return (*self._builders, PYTHON)

    def builder(self, kind: str, key: str) -> Callable:
        """The builder of ``kind``; a :class:`ConfigError` for ``key`` listing the kinds otherwise."""
        fn = self._builders.get(kind)
        if fn is None:
            raise ConfigError(key, kind, "one of " + ", ".join(repr(k) for k in self.kinds()))
        if isinstance(fn, str):
            fn = self._builders[kind] = load_callable(fn, key)
        return fn


def load_callable(spec, key: str):
    """The object named by ``"package.module:name"`` (``name`` may be dotted: ``module:Class.method``)."""
    allowed = "'package.module:name' (a module path, a colon, a name in it)"
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(key, spec, allowed)
    module_name, attr = spec.split(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(key, spec, f"{allowed}; the module {module_name!r} does not import ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(key, spec, f"{allowed}; {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(key, spec, f"{allowed} naming a class or function; {attr!r} is a {type(obj).__name__}")
    return obj


def call_configured(fn, params: Mapping, key: str, **given):
    """``fn(**given, **params)`` after checking ``params`` (``key.params``) against ``fn``'s signature:
    an unknown name, a name ``given`` supplies already or a missing required argument is a
    :class:`ConfigError` naming the key; an error ``fn`` raises on the values is re-raised as one too."""
    params = dict(params or {})
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have none: call and report what happens
        signature = None
    if signature is not None:
        accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
        names = [n for n, p in signature.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for name in params:
            if name in given:
                raise ConfigError(f"{key}.params.{name}", params[name], f"not set here: the library passes it "
                                  f"({', '.join(given)})")
            if not accepts_any and name not in names:
                allowed = [n for n in names if n not in given and n != "self"]
                raise ConfigError(f"{key}.params.{name}", params[name],
                                  f"a parameter of {getattr(fn, '__name__', fn)!r}: {', '.join(allowed) or '(none)'}")
        arguments = {**{k: v for k, v in given.items() if accepts_any or k in names}, **params}
        missing = [n for n, p in signature.parameters.items()
                   if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                   and n not in arguments and n != "self"]
        if missing:
            raise ConfigError(f"{key}.params", params, f"values for {', '.join(missing)} (required by "
                              f"{getattr(fn, '__name__', fn)!r})")
    else:
        arguments = {**given, **params}
    try:
        return fn(**arguments)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}.params", params, f"values {getattr(fn, '__name__', fn)!r} accepts ({e})") from e


MARKETS = Registry("market", {"heston": "deephedge_tf.builders:heston_market",
                              "gbm": "deephedge_tf.builders:gbm_market",
                              "historical": "deephedge_tf.builders:historical_market",
                              "rough_bergomi": "deephedge_tf.builders:rough_bergomi_market"})
DERIVATIVES = Registry("derivative", {kind: "deephedge_tf.builders:builtin_derivative"
                                      for kind in ("european", "call_spread", "lookback", "cliquet", "variance_swap")})
# Hedge kinds (hedges.extra) name the instrument class itself, called with the entry's params.
HEDGES = Registry("hedge", {"spot": "deephedge_tf.instruments.hedges:Spot",
                            "floating_grid": "deephedge_tf.instruments.hedges:FloatingGrid",
                            "fixed_grid": "deephedge_tf.instruments.hedges:FixedGrid",
                            "variance_swap": "deephedge_tf.instruments.hedges:VarianceSwapHedge"})
POLICIES = Registry("policy", {kind: "deephedge_tf.builders:builtin_policy"
                               for kind in ("recurrent", "mlp", "no_transaction_band", "delta_band", "no_hedge",
                                            "bs_delta", "whalley_wilmott")})
OBJECTIVES = Registry("objective", {kind: "deephedge_tf.builders:builtin_objective"
                                    for kind in ("mean_variance", "expected_shortfall", "entropic",
                                                 "exponential_utility")})
OPTIMIZERS = Registry("optimizer", {"adam": "deephedge_tf.builders:adam_optimizer",
                                    "dhkfac": "deephedge_tf.builders:dhkfac_optimizer",
                                    "dhlnn": "deephedge_tf.builders:dhlnn_optimizer"})
