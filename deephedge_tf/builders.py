"""From a validated :class:`~deephedge_tf.config.Config` to the objects of a run.

The only place that knows how config sections map onto markets, derivatives, instruments, policies,
objectives and optimizers, so the CLI, notebooks and tests build runs the same way::

    cfg = load_config("configs/quickstart.yaml")
    market = build_market(cfg)                    # GBM / Heston / HistoricalPaths: .simulate(num_paths, start, seed)
    paths = market.simulate(4096)
    liability = build_derivative(cfg)             # .payoff(paths) -> [B]
    hedges = hedge_tensors(build_hedges(cfg, market), paths)
    policy, objective = build_policy(cfg), build_objective(cfg)
    optimizer = build_optimizer(cfg)

Each ``build_*`` looks the configured kind up in its registry (:mod:`deephedge_tf.registry`); the
builders of the library's kinds are the functions below.  ``kind: python`` calls the configured
``callable`` with ``params`` (checked against its signature first).
"""

from __future__ import annotations

from pathlib import Path

from deephedge_tf import registry
from deephedge_tf.config import Config, steps_of
from deephedge_tf.errors import ConfigError, DeepHedgeError
from deephedge_tf.instruments.hedges import FixedGrid, FloatingGrid, Spot, VarianceSwapHedge, bind_instruments
from deephedge_tf.market.models import GBM, Heston, check_market

_REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_data_file(name: str, key: str) -> Path:
    """A data file named in a config: absolute, relative to the working directory, or to the repo."""
    p = Path(name)
    for candidate in ([p] if p.is_absolute() else [Path.cwd() / p, _REPO_ROOT / p]):
        if candidate.is_file():
            return candidate
    raise ConfigError(key, name, "an existing file (absolute, or relative to the working directory "
                      f"or to {_REPO_ROOT})")


def _python(section, key: str):
    return registry.load_callable(section.callable, f"{key}.callable")


def _built(component: str, obj, key: str, needs: tuple):
    """``obj`` if it has every attribute in ``needs``; else a :class:`ConfigError` for ``key``."""
    missing = [n for n in needs if not hasattr(obj, n)]
    if missing:
        raise ConfigError(key, type(obj).__name__, f"a {component} (it lacks {', '.join(missing)})")
    return obj


# -- markets ----------------------------------------------------------------------------------------

def _grid(cfg: Config) -> dict:
    return dict(steps=cfg.time.steps, dt=cfg.time.dt, s0=cfg.market.s0, seed=cfg.seed, dtype=cfg.dtype)


def build_market(cfg: Config):
    """The configured market (:mod:`deephedge_tf.market.models`): ``market.model``'s builder, or
    ``market.callable`` called with the time grid, ``s0``, ``seed``, ``dtype`` and ``market.params``."""
    m = cfg.market
    if m.model == registry.PYTHON:
        market = registry.call_configured(_python(m, "market"), m.params, "market", **_grid(cfg))
    else:
        market = registry.MARKETS.builder(m.model, "market.model")(cfg)
    check_market(market, f"market ({m.model})")
    return market


def heston_market(cfg: Config) -> Heston:
    m, h = cfg.market, cfg.market.heston
    return Heston(v0=h.v0, kappa=h.kappa, theta=h.theta, xi=h.xi, rho=h.rho, mu=h.mu, scheme=h.scheme,
                  premium_table_nodes=cfg.simulation.premium_table_nodes, antithetic=m.sampling.antithetic,
                  sobol=m.sampling.sobol, **_grid(cfg))


def gbm_market(cfg: Config) -> GBM:
    m = cfg.market
    return GBM(mu=m.gbm.mu, sigma=m.gbm.sigma, antithetic=m.sampling.antithetic, sobol=m.sampling.sobol,
               **_grid(cfg))


def historical_market(cfg: Config):
    from deephedge_tf.market.historical import HistoricalMarket, HistoricalPaths, load_price_series

    h = cfg.market.historical
    prices = load_price_series(resolve_data_file(h.file, "market.historical.file"))
    series = HistoricalMarket(prices, dt=cfg.time.dt, vol_window=h.vol_window)
    return HistoricalPaths(series, method=h.method, block_length=h.block_length, stride=h.stride, **_grid(cfg))


def rough_bergomi_market(cfg: Config):
    from deephedge_tf.market.rough_bergomi import RoughBergomi

    return registry.call_configured(RoughBergomi, cfg.market.params, "market", **_grid(cfg))


# -- derivatives ------------------------------------------------------------------------------------

def build_derivative(cfg: Config):
    """The liability: ``derivative.kind``'s builder, or ``derivative.callable(**derivative.params)``."""
    d = cfg.derivative
    if d.kind == registry.PYTHON:
        obj = registry.call_configured(_python(d, "derivative"), d.params, "derivative")
    else:
        obj = registry.DERIVATIVES.builder(d.kind, "derivative.kind")(cfg)
    return _built("derivative", obj, "derivative.callable", ("payoff",))


def builtin_derivative(cfg: Config):
    from deephedge_tf.instruments.derivatives import derivative_from_config

    return derivative_from_config(cfg)


# -- hedging instruments ----------------------------------------------------------------------------

def build_hedges(cfg: Config, market=None) -> list:
    """Hedging instruments in the order spot, floating grid, fixed grid, variance swap, then
    ``hedges.extra``, bound to the market (``market``, or the configured one): premiums, pricers and
    variance reversion come from it."""
    hc, s0 = cfg.hedges, cfg.market.s0
    out = []
    if hc.spot.enabled:
        out.append(Spot(cost=hc.spot.cost))
    fg = hc.floating_grid
    if fg.moneyness:
        out.append(FloatingGrid(tuple(fg.moneyness), tuple(fg.maturities), cost=fg.cost))
    fx = hc.fixed_grid
    if fx.strikes:
        out.append(FixedGrid(tuple(k * s0 for k in fx.strikes), steps_of(fx.maturity, cfg.time), cost=fx.cost))
    if hc.variance_swap.enabled:
        out.append(VarianceSwapHedge(cost=hc.variance_swap.cost))
    for i, entry in enumerate(hc.extra):
        key = f"hedges.extra[{i}]"
        make = _python(entry, key) if entry.kind == registry.PYTHON else registry.HEDGES.builder(entry.kind,
                                                                                                  f"{key}.kind")
        obj = registry.call_configured(make, entry.params, key)
        out.append(_built("hedging instrument", obj, f"{key}.callable", ("tensors",)))
    market = build_market(cfg) if market is None else market
    try:
        return bind_instruments(out, market)
    except DeepHedgeError as e:
        raise ConfigError("hedges", type(market).__name__, str(e)) from None


# -- policies, objectives, optimizers ---------------------------------------------------------------

def build_policy(cfg: Config, num_instruments: int | None = None, kind: str | None = None, name=None):
    """The policy: ``kind`` (default ``policy.kind``; baselines pass theirs) from its builder, or
    ``policy.callable(**policy.params, dtype=, name=)``; ``num_instruments`` None: from the first batch."""
    kind = kind or cfg.policy.kind
    if kind == registry.PYTHON:
        obj = registry.call_configured(_python(cfg.policy, "policy"), cfg.policy.params, "policy",
                                       dtype=cfg.dtype, name=name or "policy")
        if num_instruments is not None and hasattr(obj, "set_num_instruments"):
            obj.set_num_instruments(num_instruments)
    else:
        obj = registry.POLICIES.builder(kind, "policy.kind")(cfg, num_instruments, kind, name)
    return _built("policy (a deephedge_tf.policies.Policy)", obj, "policy.callable", ("step", "initial_state"))


def builtin_policy(cfg: Config, num_instruments, kind: str, name=None):
    from deephedge_tf.policies import make_policy

    params = cfg.policy.builtin_params(cfg.hedges.spot.cost, kind)
    return make_policy(kind, num_instruments, dtype=cfg.dtype, name=name or kind, **params)


def build_objective(cfg: Config):
    """The objective: ``objective.kind``'s builder, or ``objective.callable(**objective.params, dtype=)``."""
    o = cfg.objective
    if o.kind == registry.PYTHON:
        obj = registry.call_configured(_python(o, "objective"), o.params, "objective", dtype=cfg.dtype)
    else:
        obj = registry.OBJECTIVES.builder(o.kind, "objective.kind")(cfg)
    return _built("objective (a deephedge_tf.objectives.Objective)", obj, "objective.callable", ("risk",))


def builtin_objective(cfg: Config):
    from deephedge_tf.objectives import make_objective

    return make_objective(cfg.objective.kind, dtype=cfg.dtype, **cfg.objective.builtin_params())


def build_optimizer(cfg: Config):
    """The optimizer: ``training.optimizer``'s builder, or ``training.optimizer_callable(**optimizer_params)``
    (a Keras optimizer)."""
    t = cfg.training
    if t.optimizer == registry.PYTHON:
        fn = registry.load_callable(t.optimizer_callable, "training.optimizer_callable")
        obj = registry.call_configured(fn, t.optimizer_params, "training.optimizer")
    else:
        obj = registry.OPTIMIZERS.builder(t.optimizer, "training.optimizer")(cfg)
    return _built("Keras optimizer", obj, "training.optimizer_callable", ("apply",))


def adam_keywords(cfg: Config) -> dict:
    """Adam's keyword arguments from ``training`` other than the learning rate: the clipping and the
    average of the iterates (``ema_momentum``, which the config allows for Adam only)."""
    t = cfg.training
    out = {} if t.clipnorm is None else {"clipnorm": t.clipnorm}
    if t.ema_momentum is not None:
        out.update(use_ema=True, ema_momentum=t.ema_momentum)
    return out


def _adam_settings(cfg: Config) -> dict:
    """Adam's keyword arguments from ``training``: the warm-up / decay schedule and :func:`adam_keywords`."""
    from deephedge_tf.training import WarmupExponentialDecay

    t = cfg.training
    lr = WarmupExponentialDecay(t.learning_rate, t.warmup_steps, t.decay_rate, t.decay_steps)
    return {"learning_rate": lr, **adam_keywords(cfg)}


def adam_optimizer(cfg: Config):
    import keras

    return keras.optimizers.Adam(**_adam_settings(cfg))


def dhlnn_optimizer(cfg: Config):
    from deephedge_tf.optimizers import LinearizedNested

    # Adam's schedule and clipping apply to every inner step (the schedule counts inner steps).
    n = cfg.training.dhlnn
    return LinearizedNested(inner_steps=n.inner_steps, tolerance=n.tolerance, cost_smoothing=n.cost_smoothing,
                            majorizer_floor=n.majorizer_floor, **_adam_settings(cfg))


def dhkfac_optimizer(cfg: Config):
    from deephedge_tf.optimizers import DHKFAC

    # Adam's schedule and clipping are for raw-gradient steps; DH-KFAC sizes its own (eta_max caps it).
    k = cfg.training.kfac
    return DHKFAC(learning_rate=k.max_step, damping=k.damping, damping_mode=k.damping_mode, ekfac=k.ekfac,
                  statistics_decay=k.statistics_decay, curvature_period=k.curvature_period,
                  inverse_period=k.inverse_period, trust_radius=k.trust_radius,
                  trust_radius_decay=k.trust_radius_decay, trust_radius_min=k.trust_radius_min,
                  trust_radius_mode=k.trust_radius_mode, momentum=k.momentum, step_model=k.step_model,
                  jvp_method=k.jvp_method, diagonal_learning_rate=k.diagonal_learning_rate,
                  preconditioner=k.preconditioner, jacobian_rows=k.jacobian_rows, damping_floor=k.damping_floor,
                  min_step_fraction=k.min_step_fraction, late_max_step=k.late_max_step, late_after=k.late_after,
                  max_relative_change=k.max_relative_change, metric=k.metric,
                  metric_shrinkage=k.metric_shrinkage, metric_power=k.metric_power, use_ema=k.use_ema,
                  ema_momentum=k.ema_momentum, ema_warmup=k.ema_warmup)
