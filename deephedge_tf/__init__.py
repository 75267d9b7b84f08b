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
"""

__version__ = "0.1.0"
