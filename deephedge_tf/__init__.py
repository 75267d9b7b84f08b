"""deephedge_tf: deep hedging in TensorFlow/Keras.

Subpackages:
  market       simulators (GBM, Heston) and historical data, all returning MarketPaths
  pricing      Black-Scholes and Heston (Fourier) pricers, floating-grid premium tables
  instruments  derivatives (payoffs on paths) and hedging instruments ([T, B, N] tensors)
  config       typed, validated YAML configs
"""

__version__ = "0.1.0"
