"""deephedge_tf: deep hedging in TensorFlow/Keras.

Subpackages and modules:
  market       simulators (GBM, Heston) and historical data, all returning MarketPaths
  pricing      Black-Scholes and Heston (Fourier) pricers, floating-grid premium tables
  instruments  derivatives (payoffs on paths) and hedging instruments ([T, B, N] tensors)
  features     what the hedger observes; training batches
  hedger       the keras.Model that unrolls a policy and books trades (Hedger, MarketStep)
  policies     recurrent (action recurrence), MLP, band networks, baselines
  objectives   mean-variance, expected shortfall, entropic risk, exponential utility
  optimizers   DHKFAC, the second-order optimizer, for any Keras model: capture (probes on Dense and
               LSTM layers), losses (each loss's GGN factor), estimator, steps, train_step
               (with_curvature, the train step the Hedger runs too)
  training     config -> optimizer, datasets, callbacks; data: PathBatches
  evaluation   metrics tables, t-tests, plots
  export       SavedModel with whole-path and one-step serving signatures
  config       typed, validated YAML configs; cli: the `deephedge` command

The public classes are importable from the top level (``dh.Heston``, ``dh.PathDerivative``,
``dh.Hedger``, ``dh.DHKFAC``, ``dh.evaluate``, ...; see ``__all__``)::

    import deephedge_tf as dh
    market = dh.GBM(s0=100.0, sigma=0.2, steps=30, dt=1 / 365)
"""


__version__ = "0.1.0"

# The public classes and functions, by module.  Loaded on first use (PEP 562), so that ``import
# deephedge_tf`` and the command line start without importing TensorFlow.
_EXPORTS = {
    "deephedge_tf.market.models": ("GBM", "Heston"),
    "deephedge_tf.market.rough_bergomi": ("RoughBergomi",),
    "deephedge_tf.market.historical": ("HistoricalMarket", "HistoricalPaths", "load_price_series"),
    "deephedge_tf.market.paths": ("MarketPaths",),
    "deephedge_tf.instruments.derivatives": ("Derivative", "PathDerivative", "EuropeanOption", "CallSpread",
                                             "LookbackCall", "Cliquet", "VarianceSwap"),
    "deephedge_tf.instruments.hedges": ("Spot", "FloatingGrid", "FixedGrid", "VarianceSwapHedge",
                                        "bind_instruments"),
    "deephedge_tf.policies": ("Policy", "RecurrentPolicy", "MLPPolicy", "NoTransactionBandPolicy",
                              "DeltaAnchoredBandPolicy", "NoHedgePolicy", "BlackScholesDeltaPolicy",
                              "WhalleyWilmottPolicy"),
    "deephedge_tf.objectives": ("Objective", "MeanVariance", "ExpectedShortfall", "CVaR", "EntropicRisk",
                                "ExponentialUtility", "indifference_price"),
    "deephedge_tf.optimizers": ("DHKFAC", "LinearizedNested", "with_curvature"),
    "deephedge_tf.hedger": ("Hedger",),
    "deephedge_tf.data": ("PathBatches",),
    "deephedge_tf.evaluation.compare": ("evaluate",),
    "deephedge_tf.config": ("load_config",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", *_WHERE]


def __getattr__(name):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'deephedge_tf' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
