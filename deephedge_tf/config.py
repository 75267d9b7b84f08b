"""Typed, validated run configuration (YAML).

One place for every user-settable number, with its default, units and allowed range: the dataclasses
below.  ``deephedge config doc`` prints them as a table (also in docs/configuration.md).

Units, once for all:
  * time: ``time.dt`` and every ``maturity`` are in **years**; grid-option maturities
    (``hedges.floating_grid.maturities``) and reset periods are in **steps** of ``time.dt``;
  * volatilities and drifts are annualised; variances are annualised variances (vol squared);
  * strikes and moneyness are **relative** to the current spot (derivative strikes to ``market.s0``);
  * transaction costs are **proportional rates**: trading ``q`` units of an instrument of price ``P``
    costs ``cost * |q| * P``.

Loading::

    cfg = load_config("configs/quickstart.yaml", overrides=["market.heston.rho=-0.5"])

Any unknown key, wrong type or out-of-range value raises :class:`ConfigError` naming the key path.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple

import yaml

from deephedge_tf import registry
from deephedge_tf.config_schema import build, describe_markdown, param, section, set_by_path, to_dict
from deephedge_tf.errors import ConfigError

# Relative tolerance when checking that a maturity (years) is a whole number of steps.
_STEP_TOL = 1e-6


def _callable_field(component: str):
    return param("", f"kind python: the {component} class or function, 'package.module:name'")


def _params_field(component: str, given: str):
    return param(None, f"kind python or a registered {component}: its keyword arguments (the library passes "
                 f"{given} itself); null: none")


def _check_python(section, kind: str, key: str, kind_key: str) -> None:
    """``callable`` exactly when the kind is python; ``params`` only for python or registered kinds."""
    if (kind == registry.PYTHON) != bool(section.callable):
        raise ConfigError(f"{key}.callable", section.callable,
                          f"'package.module:name' when {kind_key} is python, else empty")


@dataclasses.dataclass(frozen=True)
class TimeConfig:
    steps: int = param(30, "number of time steps T (the hedging horizon is steps * dt)", units="steps", ge=1)
    dt: float = param(1 / 365, "length of one time step", units="years", gt=0.0, le=1.0)

    @property
    def horizon(self) -> float:
        return self.steps * self.dt


@dataclasses.dataclass(frozen=True)
class HestonConfig:
    v0: float = param(0.04, "initial variance", units="annualised variance", ge=0.0)
    kappa: float = param(1.0, "mean-reversion speed of the variance", units="1/year", ge=0.0)
    theta: float = param(0.04, "long-run variance", units="annualised variance", ge=0.0)
    xi: float = param(2.0, "volatility of variance (vol-of-vol)", units="1/sqrt(year)", gt=0.0)
    rho: float = param(-0.7, "correlation of spot and variance Brownian motions", ge=-1.0, le=1.0)
    mu: float = param(0.0, "drift of the spot (0: the pricing measure)", units="1/year")
    scheme: Literal["qe", "exact"] = param(
        "qe", "'qe': Andersen's quadratic-exponential scheme; 'exact': Broadie-Kaya style "
        "(exact variance, trapezoid integrated variance)")


@dataclasses.dataclass(frozen=True)
class GBMConfig:
    mu: float = param(0.0, "drift of the spot (0: the pricing measure)", units="1/year")
    sigma: float = param(0.2, "volatility", units="1/sqrt(year)", ge=0.0)


@dataclasses.dataclass(frozen=True)
class HistoricalConfig:
    file: str = param("data/sp500.csv", "CSV price series (columns date, close), relative to the "
                      "working directory or absolute")
    method: Literal["bootstrap", "rolling"] = param(
        "bootstrap", "'bootstrap': block bootstrap of daily log returns; 'rolling': every window of "
        "the series")
    block_length: int = param(20, "block length of the bootstrap", units="days", ge=1)
    stride: int = param(1, "days between the starts of rolling windows", units="days", ge=1)
    vol_window: int = param(20, "trailing window of the realised-volatility feature", units="days", ge=2)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    antithetic: bool = param(False, "antithetic pairs of paths (simulators)")
    sobol: bool = param(False, "quasi-random (Sobol) normals instead of pseudo-random (simulators)")

    def check(self, key):
        if self.antithetic and self.sobol:
            raise ConfigError(f"{key}.sobol", self.sobol, "false when antithetic is true (choose one)")


@dataclasses.dataclass(frozen=True)
class MarketConfig:
    model: str = param("heston", "market model (registered kinds; python: market.callable)",
                       choices=registry.MARKETS.kinds)
    callable: str = _callable_field("market")
    params: Optional[dict] = _params_field("market", "steps, dt, s0, seed, dtype")
    s0: float = param(1.0, "initial spot (simulators; historical paths are normalised to it)", gt=0.0)
    heston: HestonConfig = section(HestonConfig, "Heston parameters (used when model = heston)")
    gbm: GBMConfig = section(GBMConfig, "GBM parameters (used when model = gbm)")
    historical: HistoricalConfig = section(HistoricalConfig, "historical data (model = historical)")
    calibration: str = param("", "model = heston: params.json written by `deephedge calibrate`; its v0, kappa, "
                             "theta, xi, rho replace market.heston's (which must then be unset or equal)")
    sampling: SamplingConfig = section(SamplingConfig, "variance reduction for simulated paths")

    def check(self, key):
        if self.model == "heston" and self.heston.scheme == "exact" and (
                self.sampling.antithetic or self.sampling.sobol):
            raise ConfigError(f"{key}.heston.scheme", "exact",
                              "'qe' when sampling.antithetic or sampling.sobol is on")
        _check_python(self, self.model, key, f"{key}.model")
        if self.calibration and self.model != "heston":
            raise ConfigError(f"{key}.calibration", self.calibration, "empty unless market.model is heston")
        if self.model == "historical" and (self.sampling.antithetic or self.sampling.sobol):
            raise ConfigError(f"{key}.sampling", to_dict(self.sampling),
                              "antithetic and sobol off for historical data")


@dataclasses.dataclass(frozen=True)
class CliquetConfig:
    reset_every: int = param(20, "steps between reset dates", units="steps", ge=1)
    local_cap: float = param(0.015, "cap on each period's return", gt=0.0)
    local_floor: Optional[float] = param(None, "floor on each period's return (null: none)")
    global_floor: float = param(0.0, "floor on the sum of capped returns")

    def check(self, key):
        if self.local_floor is not None and self.local_floor >= self.local_cap:
            raise ConfigError(f"{key}.local_floor", self.local_floor, f"< local_cap ({self.local_cap})")


@dataclasses.dataclass(frozen=True)
class DerivativeConfig:
    kind: str = param("european", "the liability hedged (we are short one unit; python: derivative.callable)",
                      choices=registry.DERIVATIVES.kinds)
    callable: str = _callable_field("derivative")
    params: Optional[dict] = _params_field("derivative", "nothing")
    is_call: bool = param(True, "call (true) or put (false); european only")
    strike: float = param(1.0, "strike relative to market.s0 (lower strike of a call spread)", gt=0.0)
    strike_high: float = param(1.1, "upper strike of a call spread, relative to market.s0", gt=0.0)
    maturity: Optional[float] = param(
        None, "maturity; a whole number of steps, at most the horizon (null: the horizon)",
        units="years", gt=0.0)
    variance_strike: float = param(0.04, "variance swap strike", units="annualised variance", ge=0.0)
    path_features: bool = param(True, "the policy observes the derivative's path state: a lookback's running "
                                "maximum, a cliquet's period return and payoff so far")
    cliquet: CliquetConfig = section(CliquetConfig, "cliquet terms (kind = cliquet)")

    def check(self, key):
        _check_python(self, self.kind, key, f"{key}.kind")
        if self.kind == "call_spread" and not self.strike_high > self.strike:
            raise ConfigError(f"{key}.strike_high", self.strike_high, f"> strike ({self.strike})")


@dataclasses.dataclass(frozen=True)
class SpotHedgeConfig:
    enabled: bool = param(True, "trade the underlying")
    cost: float = param(1e-4, "proportional transaction cost rate", units="fraction of traded notional",
                        ge=0.0, lt=1.0)


@dataclasses.dataclass(frozen=True)
class FloatingGridConfig:
    moneyness: Tuple[float, ...] = param(
        (), "strike / spot at trade time of each grid option; >= 1 call, < 1 put (ATM is a call)",
        gt=0.0)
    maturities: Tuple[int, ...] = param(
        (), "time to maturity of each grid option (same length as moneyness)", units="steps", ge=1)
    cost: float = param(1e-2, "proportional transaction cost rate on the option premium",
                        units="fraction of traded premium", ge=0.0, lt=1.0)

    def check(self, key):
        if len(self.moneyness) != len(self.maturities):
            raise ConfigError(f"{key}.maturities", list(self.maturities),
                              f"a list as long as moneyness ({len(self.moneyness)} entries)")


@dataclasses.dataclass(frozen=True)
class FixedGridConfig:
    strikes: Tuple[float, ...] = param((), "strikes relative to market.s0 of fixed options "
                                       "(calls at or above s0, puts below)", gt=0.0)
    maturity: Optional[float] = param(None, "common maturity of the fixed options (null: the horizon)",
                                      units="years", gt=0.0)
    cost: float = param(1e-2, "proportional transaction cost rate on the option price",
                        units="fraction of traded premium", ge=0.0, lt=1.0)


@dataclasses.dataclass(frozen=True)
class VarianceSwapHedgeConfig:
    enabled: bool = param(False, "trade the variance swap S2 (Heston only; Buehler et al.)")
    cost: float = param(0.0, "proportional transaction cost rate", units="fraction of traded notional",
                        ge=0.0, lt=1.0)


@dataclasses.dataclass(frozen=True)
class ExtraHedgeConfig:
    kind: str = param(registry.PYTHON, "a registered hedge kind, or python (callable)", choices=registry.HEDGES.kinds)
    callable: str = _callable_field("hedging instrument")
    params: Optional[dict] = _params_field("hedging instrument", "nothing")

    def check(self, key):
        _check_python(self, self.kind, key, f"{key}.kind")


@dataclasses.dataclass(frozen=True)
class HedgesConfig:
    spot: SpotHedgeConfig = section(SpotHedgeConfig, "the underlying")
    floating_grid: FloatingGridConfig = section(
        FloatingGridConfig, "options with fixed moneyness and time to maturity at every step")
    fixed_grid: FixedGridConfig = section(FixedGridConfig, "the same option contracts at every step")
    variance_swap: VarianceSwapHedgeConfig = section(VarianceSwapHedgeConfig, "variance swap")
    extra: Tuple[ExtraHedgeConfig, ...] = param((), "more instruments after the built-in ones: a list of "
                                                "{kind, callable, params} (a user's instrument class)")
    natural_units: bool = param(True, "the policy trades in natural units: one unit of each instrument is the "
                                "number of contracts whose per-step price change has the first instrument's "
                                "standard deviation (set from the first training batch, saved with the model and "
                                "export; exported policies still take and return contracts); false: contracts")


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
    paths: int = param(16384, "number of paths simulated by `deephedge simulate`", ge=1)
    premium_table_nodes: int = param(
        257, "variance nodes of each floating-grid premium table (Heston)", ge=8)


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    kind: str = param("recurrent", "hedging policy (python: policy.callable)", choices=registry.POLICIES.kinds)
    callable: str = _callable_field("policy")
    params: Optional[dict] = _params_field("policy", "dtype and name")
    num_blocks: int = param(4, "residual RMSNorm + LSTM blocks (recurrent)", ge=1)
    width: int = param(32, "hidden width (recurrent, mlp, band networks)", ge=1)
    head_scale: float = param(1e-3, "scale of the last layer's He-initialised weights (recurrent)", gt=0.0)
    num_layers: int = param(2, "hidden layers (mlp, band networks)", ge=1)
    activation: Literal["relu", "tanh", "gelu", "silu", "elu"] = param("relu", "hidden activation (mlp)")
    risk_aversion: float = param(1.0, "risk aversion of the Whalley-Wilmott band", gt=0.0)
    band_anchor: Literal["none", "bs_delta"] = param(
        "bs_delta", "no_transaction_band: offsets around the Black-Scholes delta ('bs_delta', the authors' "
        "reference code, which gives the published price) or the band edges themselves ('none', the "
        "paper's text; can stall at never trading, see BENCHMARKS.md)")

    def check(self, key):
        _check_python(self, self.kind, key, f"{key}.kind")

    @property
    def uses_delta(self) -> bool:
        """Whether the policy is built on the liability's Black-Scholes delta (needs its greeks)."""
        return self.kind in ("delta_band", "bs_delta", "whalley_wilmott") or (
            self.kind == "no_transaction_band" and self.band_anchor == "bs_delta")

    def builtin_params(self, spot_cost: float, kind: Optional[str] = None) -> dict:
        """Keyword parameters of :func:`deephedge_tf.policies.make_policy` for ``kind`` (default: this
        section's kind; another kind, e.g. a baseline, takes its parameters from this section too)."""
        by_kind = {
            "recurrent": dict(num_blocks=self.num_blocks, width=self.width, head_scale=self.head_scale),
            "mlp": dict(num_layers=self.num_layers, width=self.width, activation=self.activation),
            "no_transaction_band": dict(num_layers=self.num_layers, width=self.width, anchor=self.band_anchor),
            "delta_band": dict(num_layers=self.num_layers, width=self.width),
            "whalley_wilmott": dict(risk_aversion=self.risk_aversion, cost=spot_cost),
        }
        return by_kind.get(kind or self.kind, {})


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = param("mean_variance", "training objective: gamma Var[PnL] + E[costs], or an OCE risk measure of "
                      "PnL (python: objective.callable)", choices=registry.OBJECTIVES.kinds)
    callable: str = _callable_field("objective")
    params: Optional[dict] = _params_field("objective", "dtype")
    gamma: float = param(1.0, "variance weight (mean_variance)", ge=0.0)
    alpha: float = param(0.5, "expected-shortfall level: the worst (1 - alpha) of outcomes", gt=0.0, lt=1.0)
    a: float = param(1.0, "risk aversion (entropic, exponential_utility)", gt=0.0)

    def check(self, key):
        _check_python(self, self.kind, key, f"{key}.kind")

    def builtin_params(self) -> dict:
        return {"mean_variance": dict(gamma=self.gamma), "expected_shortfall": dict(alpha=self.alpha),
                "entropic": dict(a=self.a), "exponential_utility": dict(a=self.a)}[self.kind]


@dataclasses.dataclass(frozen=True)
class KFACConfig:
    preconditioner: Literal["kronecker", "gauss_newton"] = param(
        "gauss_newton", "step direction: the exact damped Gauss-Newton step in sample space (gauss_newton, the "
        "default: Woodbury solve on jacobian_rows paths, Levenberg-Marquardt damping) or the DH-KFAC paper's "
        "Kronecker-factored EKFAC blocks with shrinkage damping and a trust region (kronecker)")
    max_step: float = param(1.0, "largest step size eta_max (1: the damped Newton / Gauss-Newton step); the Adam "
                            "settings training.learning_rate, warmup, decay and clipnorm do not apply to dhkfac", gt=0.0)
    damping: Optional[float] = param(
        None, "shrinkage intensity rho of every block towards tr(C)/d I (tikhonov: lambda; levenberg_marquardt: "
        "initial lambda as a multiple of the GGN's mean diagonal; null: 0.1, levenberg_marquardt 1.0)", ge=0.0)
    damping_mode: Optional[Literal["shrinkage", "tikhonov", "levenberg_marquardt"]] = param(
        None, "damping of the curvature (null: shrinkage for kronecker, levenberg_marquardt for gauss_newton)")
    jacobian_rows: int = param(256, "gauss_newton: paths whose Jacobian rows (one per path, the loss terms "
                               "summed) enter the Woodbury solve and the Kronecker metric's statistics (memory: "
                               "rows x weights floats)", ge=1)
    damping_floor: float = param(0.0, "gauss_newton: floor of lambda as a multiple of the GGN's mean diagonal",
                                 ge=0.0)
    min_step_fraction: Optional[float] = param(
        0.25, "gauss_newton: when the exact line model takes less than this fraction of the damped step, lambda is "
        "raised by this fraction / the step's for the next step (null: never)", gt=0.0, le=1.0)
    late_max_step: Optional[float] = param(
        None, "gauss_newton: eta_max from step late_after on, the cap on the damped step once the first steps "
        "have taken the loss near its floor (null: 0.3 for gauss_newton; max_step or more: no cap; kronecker "
        "takes none)", gt=0.0)
    late_after: int = param(10, "gauss_newton: steps at max_step before late_max_step applies", units="steps", ge=0)
    max_relative_change: Optional[float] = param(
        None, "gauss_newton: cap on each block's weight change per step, as a fraction of its norm (null: none)",
        gt=0.0)
    metric: Optional[Literal["identity", "kronecker"]] = param(
        None, "gauss_newton: damping metric M of the step (C + lambda M) d = g outside the sample span: the "
        "identity, or the Kronecker (EKFAC) model of the running curvature statistics, normalised to mean one "
        "(null: kronecker for gauss_newton)")
    metric_shrinkage: float = param(0.1, "gauss_newton with metric kronecker: shrinkage of the metric towards its "
                                    "mean diagonal", gt=0.0, le=1.0)
    metric_power: float = param(0.75, "gauss_newton with metric kronecker: the metric is M^p (p < 1 compresses "
                                "its spread between blocks)", gt=0.0, le=1.0)
    use_ema: Optional[bool] = param(
        None, "keep a moving average of the iterates; fit ends on it and validates it (null: on for gauss_newton, "
        "off for kronecker)")
    ema_momentum: float = param(0.9, "the average's largest momentum (window about 1 / (1 - ema_momentum) steps)",
                                ge=0.0, lt=1.0)
    ema_warmup: float = param(10.0, "the average's momentum at step k is min(ema_momentum, k / (k + ema_warmup)): "
                              "the window grows with the run (0: fixed momentum)", units="steps", ge=0.0)
    ekfac: bool = param(True, "re-estimate the diagonal in the Kronecker eigenbasis (EKFAC)")
    statistics_decay: float = param(0.95, "EMA decay of the curvature statistics", ge=0.0, lt=1.0)
    curvature_period: int = param(1, "steps between curvature statistics updates", units="steps", ge=1)
    inverse_period: int = param(10, "steps between eigendecompositions", units="steps", ge=1)
    trust_radius: Optional[float] = param(
        0.1, "initial trust region delta_0: bound on the quadratic model's curvature term, the predicted loss "
        "decrease of a step (relative mode: as a fraction of the first step's unconstrained predicted "
        "decrease; null: no trust region)", gt=0.0)
    trust_radius_decay: float = param(0.999, "trust region decay per step", gt=0.0, le=1.0)
    trust_radius_min: float = param(1e-5, "trust region floor (same units as trust_radius)", ge=0.0)
    trust_radius_mode: Literal["relative", "absolute"] = param(
        "relative", "trust radius as a fraction of the first step's predicted decrease, independent of the loss "
        "scale (relative), or in loss units (absolute)")
    momentum: float = param(0.0, "heavy-ball momentum on the preconditioned direction (step_model line: the "
                            "exact model sizes the step along the direction with momentum)", ge=0.0, lt=1.0)
    step_model: Literal["kronecker", "line", "subspace"] = param(
        "line", "step size from the Kronecker curvature and trust region (kronecker, the paper's rule), the "
        "exact quadratic model along the preconditioned direction (line), or step size and momentum from the "
        "exact model over that direction and the previous step (subspace; Martens & Grosse 2015, sec. 7)")
    jvp_method: Literal["forward_mode", "finite_difference"] = param(
        "finite_difference", "how the line model's output tangents J V are computed: one forward pass at "
        "w + eps V (finite_difference: relative error ~1e-3, 0.25-1.2x an Adam step cheaper) or forward-mode "
        "autodiff (forward_mode: exact)")
    diagonal_learning_rate: float = param(1e-3, "Adam step of variables outside Kronecker blocks "
                                          "(RMSNorm scales, an objective's own weights)", gt=0.0)
    ggn_mode: Literal["exact", "sampled", "majorizer"] = param(
        "majorizer", "curvature of the loss in the outputs: the objective's GGN factor only (exact), plus the L2 cost "
        "surrogate (sampled), or plus the costs' quadratic majorizer at the current trades (majorizer)")
    ggn_cost_l2: float = param(0.0, "weight c2 of the L2 cost surrogate (ggn_mode = sampled)", ge=0.0)
    ggn_cost_floor: float = param(1.0, "majorizer: trades are floored at this multiple of the instrument's mean "
                                  "|trade| in the curvature c P / |u|", gt=0.0)
    curvature_paths: Optional[int] = param(
        None, "paths of each batch for the statistics and the exact step model (null: all; gauss_newton: the "
        "step model only, its statistics come from the jacobian_rows paths; the Gauss-Newton step sized on a "
        "quarter of the batch overshoots and is rejected more often, BENCHMARKS.md)", ge=1)

    def check(self, key):
        mode = self.damping_mode or ("levenberg_marquardt" if self.preconditioner == "gauss_newton" else "shrinkage")
        if (mode == "levenberg_marquardt") != (self.preconditioner == "gauss_newton"):
            raise ConfigError(f"{key}.damping_mode", mode, "levenberg_marquardt exactly when preconditioner is "
                              "gauss_newton")
        if self.preconditioner == "gauss_newton" and (self.momentum or self.step_model == "subspace"):
            raise ConfigError(f"{key}.preconditioner", self.preconditioner, "kronecker when momentum > 0 or "
                              "step_model is subspace (gauss_newton takes neither)")
        if mode == "levenberg_marquardt" and self.damping is not None and not self.damping > 0.0:
            raise ConfigError(f"{key}.damping", self.damping, "> 0 for levenberg_marquardt damping")
        if mode == "shrinkage" and self.damping is not None and self.damping > 1.0:
            raise ConfigError(f"{key}.damping", self.damping, "<= 1.0 for shrinkage damping")
        if self.late_max_step is not None and self.preconditioner != "gauss_newton":
            raise ConfigError(f"{key}.late_max_step", self.late_max_step, "null unless preconditioner is "
                              "gauss_newton (the kronecker rule's trust region decays instead)")
        if self.metric not in (None, "identity") and self.preconditioner != "gauss_newton":
            raise ConfigError(f"{key}.metric", self.metric, "null or identity unless preconditioner is gauss_newton")
        if self.momentum and self.step_model == "subspace":
            raise ConfigError(f"{key}.momentum", self.momentum, "0 when step_model is subspace (it chooses "
                              "the momentum itself)")
        if self.trust_radius is not None and self.trust_radius < self.trust_radius_min:
            raise ConfigError(f"{key}.trust_radius", self.trust_radius,
                              f">= trust_radius_min ({self.trust_radius_min}); it would be clamped to it")


@dataclasses.dataclass(frozen=True)
class DHLNNConfig:
    inner_steps: int = param(5, "inner Adam steps on the linearised objective per batch (1: plain Adam); the "
                             "learning-rate schedule and reported step counts count inner steps", ge=1)
    tolerance: float = param(0.0, "stop the inner steps once one moves the weights by less than this (0: never)",
                             ge=0.0)
    cost_smoothing: Literal["majorizer", "square"] = param(
        "majorizer", "smoothing of |u| in the linearised costs: the quadratic touching it at the batch's trades "
        "(majorizer) or the paper's eq. 13 u^2 (square)")
    majorizer_floor: float = param(0.1, "majorizer: floor of |u| as a multiple of the mean |u| per instrument",
                                   gt=0.0)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    optimizer: str = param("adam", "optimizer ('dhkfac': the second-order DH-KFAC, set up by training.kfac; "
                           "'dhlnn': the DHLNN paper's linearised nested Adam, set up by training.dhlnn; "
                           "learning_rate, warmup, decay and clipnorm are Adam's; python: optimizer_callable)",
                           choices=registry.OPTIMIZERS.kinds)
    optimizer_callable: str = param("", "optimizer python: a Keras optimizer class or function, "
                                    "'package.module:name'")
    optimizer_params: Optional[dict] = param(None, "optimizer python: its keyword arguments (null: none)")
    learning_rate: float = param(1e-3, "Adam's peak learning rate (dhkfac: see training.kfac.max_step)", gt=0.0)
    warmup_steps: int = param(0, "linear learning-rate warm-up", units="steps", ge=0)
    decay_rate: float = param(1.0, "exponential decay factor per decay_steps after warm-up (1: none)",
                              gt=0.0, le=1.0)
    decay_steps: int = param(1000, "steps over which the learning rate decays by decay_rate", units="steps",
                             ge=1)
    clipnorm: Optional[float] = param(None, "Adam: clip each gradient to this norm (null: no clipping)", gt=0.0)
    ema_momentum: Optional[float] = param(
        None, "Adam: keep a moving average of the iterates with this momentum (Keras' use_ema), which fit "
        "validates and ends on (null: none; dhkfac: training.kfac.use_ema)", ge=0.0, lt=1.0)
    batch_size: int = param(2048, "paths per training step", ge=1)
    batches_per_epoch: int = param(10, "training steps per epoch", ge=1)
    epochs: int = param(20, "epochs", ge=1)
    fresh_paths: bool = param(True, "new paths every epoch (false: a fixed set of "
                              "batch_size * batches_per_epoch paths)")
    validation_paths: int = param(8192, "paths of the validation set (seed + 1)", ge=1)
    early_stopping_patience: Optional[int] = param(None, "stop after this many epochs without a better "
                                                   "validation loss (null: never)", ge=1)
    target_loss: Optional[float] = param(None, "stop when the validation loss reaches this value "
                                         "(null: never)")
    jit_compile: Optional[bool] = param(None, "XLA-compile the train step (null: auto = on GPU, off on CPU)")
    tensorboard: bool = param(False, "deephedge train: write TensorBoard logs to RUN_DIR/tensorboard (losses "
                              "and the optimizer's diagnostics per epoch; tensorboard --logdir RUN_DIR/tensorboard)")
    time_loop: str = param("graph", "the decision loop over time steps: graph (one tf.while_loop: compile "
                           "time independent of time.steps) or python (unrolled when traced: compile time "
                           "grows with time.steps, steps up to 1.5x faster: for long runs at short horizons); "
                           "also the exported whole_path's",
                           choices=("python", "graph"))  # policies.base.TIME_LOOPS (no TensorFlow import here)
    distribute: Literal["none", "mirrored", "multi_worker"] = param(
        "none", "none: one device; mirrored: tf.distribute.MirroredStrategy over this machine's GPUs (else its "
        "logical CPUs); multi_worker: MultiWorkerMirroredStrategy over the workers of TF_CONFIG. Each global "
        "batch is sharded by path index across the replicas, the objective and DH-KFAC's curvature see all of "
        "it (the one-device run); adam, a python optimizer or dhkfac (not dhlnn, not kfac.curvature_paths; "
        "docs/guide/distributed.md)")
    kfac: KFACConfig = section(KFACConfig, "DH-KFAC settings (optimizer = dhkfac)")
    dhlnn: DHLNNConfig = section(DHLNNConfig, "linearised nested optimiser settings (optimizer = dhlnn)")

    def check(self, key):
        if self.ema_momentum is not None and self.optimizer != "adam":
            raise ConfigError(f"{key}.ema_momentum", self.ema_momentum, "null unless training.optimizer is adam "
                              "(dhkfac averages by training.kfac.use_ema / ema_momentum)")
        if (self.optimizer == registry.PYTHON) != bool(self.optimizer_callable):
            raise ConfigError(f"{key}.optimizer_callable", self.optimizer_callable,
                              f"'package.module:name' when {key}.optimizer is python, else empty")
        if self.distribute != "none":
            self._check_distributed(key)

    def _check_distributed(self, key):
        """What runs as the one-device run under training.distribute (docs/guide/distributed.md)."""
        if self.optimizer == "dhlnn":  # its inner loop is a one-replica computation
            raise ConfigError(f"{key}.distribute", self.distribute, "none for optimizer dhlnn")
        if self.optimizer != "dhkfac":
            return
        k = self.kfac
        # Each replica's first curvature_paths paths are not the batch's first (the Gauss-Newton rows, which
        # are, are laid side by side from the replicas' shares instead; see optimizers.train_step).
        if k.curvature_paths is not None:
            raise ConfigError(f"{key}.kfac.curvature_paths", k.curvature_paths,
                              f"null (all paths) under {key}.distribute {self.distribute}")


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    paths: int = param(32768, "out-of-sample paths for the metrics table (seed + 2)", ge=2)
    plots: bool = param(True, "write PNG plots")


@dataclasses.dataclass(frozen=True)
class Config:
    seed: int = param(0, "seed of every random stream (paths, initialisation)", ge=0)
    dtype: Literal["float32", "float64"] = param("float32", "floating-point precision of paths and model")
    time: TimeConfig = section(TimeConfig, "time grid")
    market: MarketConfig = section(MarketConfig, "market model")
    derivative: DerivativeConfig = section(DerivativeConfig, "the liability to hedge")
    hedges: HedgesConfig = section(HedgesConfig, "hedging instruments")
    simulation: SimulationConfig = section(SimulationConfig, "simulation sizes")
    policy: PolicyConfig = section(PolicyConfig, "hedging policy")
    objective: ObjectiveConfig = section(ObjectiveConfig, "training objective")
    training: TrainingConfig = section(TrainingConfig, "training")
    evaluation: EvaluationConfig = section(EvaluationConfig, "out-of-sample evaluation")

    def check(self, key):
        steps = self.time.steps
        d = self.derivative
        whole_steps("derivative.maturity", d.maturity, self.time)
        whole_steps("hedges.fixed_grid.maturity", self.hedges.fixed_grid.maturity, self.time)
        if d.kind == "cliquet":
            n = self.derivative_steps
            if n % d.cliquet.reset_every:
                raise ConfigError("derivative.cliquet.reset_every", d.cliquet.reset_every,
                                  f"a divisor of the derivative's {n} steps")
        fg = self.hedges.floating_grid
        for i, m in enumerate(fg.maturities):
            if m > steps:
                raise ConfigError(f"hedges.floating_grid.maturities[{i}]", m,
                                  f"<= time.steps ({steps}): a longer option is never available")
        if self.hedges.variance_swap.enabled and self.market.model in ("gbm", "historical"):
            raise ConfigError("hedges.variance_swap.enabled", True, "false unless the market's variance mean-reverts "
                              "(heston, or a market with variance_reversion())")
        if self.market.sampling.sobol and self.market.model != "historical" and steps * 2 > 21201:
            raise ConfigError("market.sampling.sobol", True, f"false for more than 10600 steps ({steps})")
        needs_spot = ("no_transaction_band", "delta_band", "bs_delta", "whalley_wilmott")
        if self.policy.kind in needs_spot and not self.hedges.spot.enabled:
            raise ConfigError("policy.kind", self.policy.kind, "a policy that does not need the spot, or "
                              "hedges.spot.enabled = true")
        # A python derivative may have greeks: the builder checks it when the objects exist.
        if self.policy.uses_delta and d.kind in ("cliquet", "variance_swap"):
            raise ConfigError("policy.kind", self.policy.kind, "a policy without a Black-Scholes delta for "
                              f"derivative.kind = {d.kind} (delta needs european, call_spread, lookback or a "
                              "derivative with greeks)")
        if not (self.hedges.spot.enabled or fg.moneyness or self.hedges.fixed_grid.strikes
                or self.hedges.variance_swap.enabled or self.hedges.extra):
            raise ConfigError("hedges", to_dict(self.hedges), "at least one hedging instrument")

    @property
    def derivative_steps(self) -> int:
        """Maturity of the derivative in steps (the horizon when derivative.maturity is null)."""
        return steps_of(self.derivative.maturity, self.time)


def steps_of(maturity: Optional[float], time: TimeConfig) -> int:
    """A maturity in years as a number of steps (None: the horizon)."""
    if maturity is None:
        return time.steps
    return int(round(maturity / time.dt))


def whole_steps(key: str, maturity: Optional[float], time: TimeConfig) -> None:
    """Raises unless ``maturity`` (years) is a whole number of steps within the horizon."""
    if maturity is None:
        return
    n = maturity / time.dt
    if abs(n - round(n)) > _STEP_TOL * max(1.0, n) or round(n) < 1:
        raise ConfigError(key, maturity, f"a whole number of steps of time.dt = {time.dt:.10g} years "
                          f"(e.g. {max(1, round(n)) * time.dt:.10g})")
    if round(n) > time.steps:
        raise ConfigError(key, maturity, f"<= the horizon time.steps * time.dt = {time.horizon:.10g} years")


# -- loading ------------------------------------------------------------------------------------

def parse_override(text: str) -> tuple[str, object]:
    """``"a.b=value"`` -> ``("a.b", value)`` with the value parsed as YAML (``0.5``, ``true``, ``[1, 2]``)."""
    if "=" not in text:
        raise ConfigError(text, None, "an override of the form key.path=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(key.strip(), raw, f"a YAML value ({e.__class__.__name__})") from None
    return key.strip(), value


def from_dict(data: Optional[dict], overrides: Sequence[str] = ()) -> Config:
    """Builds a validated Config from a plain dict plus ``key=value`` overrides."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError("<root>", data, "a mapping of config sections")
    data = copy.deepcopy(data or {})
    for text in overrides:
        key, value = parse_override(text)
        set_by_path(data, key, value)
    _apply_calibration(data)
    return build(Config, data)


def _apply_calibration(data: dict) -> None:
    """Copies the parameters of ``market.calibration`` into ``market.heston`` (in place), so that the
    resolved config, and a run directory's config.yaml, show the numbers the market is built from.  A
    value set in both places must agree: otherwise it is unclear which one the user meant."""
    market = data.get("market")
    name = market.get("calibration") if isinstance(market, dict) else None
    if not name or not isinstance(name, str) or not isinstance(market.get("heston", {}), dict):
        return  # nothing to apply, or a type error that building the config reports by key
    from deephedge_tf.builders import resolve_data_file
    from deephedge_tf.pricing.calibration import load_heston_params

    params = load_heston_params(resolve_data_file(name, "market.calibration"))
    heston = market.setdefault("heston", {})
    for key, value in params.as_dict().items():
        given = heston.get(key)
        if given is not None and not (isinstance(given, (int, float)) and math.isclose(given, value, rel_tol=1e-12)):
            raise ConfigError(f"market.heston.{key}", given, f"unset, or {value!r} as in market.calibration ({name})")
        heston[key] = value


def load_config(path, overrides: Sequence[str] = ()) -> Config:
    """Reads a YAML config file and validates it (see module doc); ``overrides`` are ``key=value``
    strings applied after the file, as the command line's ``--set``.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "task.yaml")
    >>> _ = open(path, "w").write("market: {model: gbm, s0: 100.0}\\nderivative: {kind: european, strike: 1.0}\\n")
    >>> cfg = load_config(path, ["training.learning_rate=0.01"])
    >>> cfg.market.model, cfg.training.learning_rate, cfg.policy.kind    # unset keys take their defaults
    ('gbm', 0.01, 'recurrent')
    >>> load_config(path, ["policy.widht=3"])
    Traceback (most recent call last):
    ...
    deephedge_tf.errors.ConfigError: config key 'policy.widht': got 3; allowed: a known key of 'policy': ... (did you mean 'width'?)
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("<file>", str(path), "an existing YAML config file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("<file>", str(path), f"valid YAML; parser said: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("<root>", data, f"a mapping of config sections in {path}")
    return from_dict(data, overrides)


def dump_config(cfg: Config) -> str:
    """The resolved config (every value, defaults included) as YAML."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_reference() -> str:
    """Markdown reference of every config key (defaults, units, allowed values)."""
    return describe_markdown(Config)
